"""Fuzz the audio loader: damaged real files and random bytes must decode cleanly or raise AudioError.

Inputs come from hypothesis: real encoded clips (WAV 16-bit and float, FLAC, OGG, MP3) with header bytes
overwritten, cut short, spliced onto another format's body, or replaced by random bytes. Anything other
than a clean 16 kHz mono float32 array or one AudioError sentence counts as a crash.

    python -m bench.fuzz_audio [--examples 5000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

from bench.common import write_results
from engine.errors import AudioError
from engine.speech.audio import load_audio
from tests.audio_fuzz import SEEDS, check_loaded, damaged_audio

log = logging.getLogger("bench.fuzz_audio")


def fuzz(examples: int, folder: Path) -> dict:
    outcomes: Counter = Counter()
    crashes: list[str] = []
    path = folder / "upload.bin"

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(data=damaged_audio())
    def probe(data: bytes) -> None:
        path.write_bytes(data)
        try:
            check_loaded(load_audio(path, max_seconds=600))
            outcomes["decoded"] += 1
        except AudioError as exc:
            outcomes["refused"] += 1
            if "\n" in str(exc) or not str(exc):
                crashes.append(f"not one sentence: {exc!r}")
        except Exception:  # anything else is what the fuzz run looks for
            outcomes["crash"] += 1
            crashes.append(traceback.format_exc(limit=3))

    probe()
    return {"tried": sum(outcomes.values()), **outcomes, "crashes": len(crashes), "crash_examples": crashes[:5]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = fuzz(args.examples, Path(tmp))
    result["seconds"] = time.perf_counter() - start
    result["seed_formats"] = len(SEEDS)
    md = (f"# Audio loader fuzz run\n\n{result['tried']} inputs (damaged WAV/FLAC/OGG/MP3 clips and random bytes, "
          f"{len(SEEDS)} seed files) in {result['seconds']:.0f} s: {result.get('decoded', 0)} decoded cleanly, "
          f"{result.get('refused', 0)} refused with one sentence, **{result['crashes']} crashes**.\n")
    write_results("fuzz_audio", result, md)
    log.info(md)


if __name__ == "__main__":
    main()
