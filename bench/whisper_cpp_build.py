"""whisper.cpp built for this CPU against the pywhispercpp wheel (built for AVX2): is a native build faster?

Build pywhispercpp from its source distribution with ggml's native flags and install it into a folder of its own:

    curl -LO <pywhispercpp-1.5.1.tar.gz from PyPI>; tar xzf pywhispercpp-1.5.1.tar.gz; cd pywhispercpp-1.5.1
    PYWHISPERCPP_VERSION=1.5.1 GGML_NATIVE=ON pip wheel . --no-deps -w WHEELS
    pip install --no-deps --target NATIVE WHEELS/pywhispercpp-1.5.1-*.whl

then

    python -m bench.whisper_cpp_build --native NATIVE [--rounds 2] [--limit N] [--threads 2]

(`make whispercpp-native` does all of it on a CPU with AVX-512 VNNI.)

The same whisper.cpp files (f16 and ggml's own round-to-nearest q4_0, q4_1, q5_1, q8_0 of tiny.en) are timed by
each build in a subprocess of its own (two builds of libggml cannot share a process: they have the same soname),
the builds alternating round by round, with faster-whisper int8 timed in each round as the common yardstick.
Transcripts of the two builds are compared clip by clip.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import cpu, speech_clips, write_results
from engine.deploy.ggml_lib import Q4_0, Q4_1, Q5_1, Q8_0
from engine.deploy.runtimes import CTranslate2Runtime
from engine.deploy.whisper_cpp_export import export_whisper_cpp
from engine.speech.evaluate import TextScorer
from engine.whisper.models import REGISTRY, load_model

log = logging.getLogger("bench.whisper_cpp_build")

NAME = "whisper_cpp_build"
EVAL_FOLDERS = ("librispeech-test-other",)
KINDS = (None, Q4_0, Q4_1, Q5_1, Q8_0)  # None: f16


def time_files(files: dict[str, str], threads: int, limit: int) -> dict:
    """In this process's pywhispercpp: each file's seconds over the clips (after one warm-up clip) and texts."""
    from pywhispercpp.model import Model

    import pywhispercpp
    from engine.deploy.runtimes import WhisperCppRuntime

    clips = speech_clips(EVAL_FOLDERS)
    audios = clips.audios[:limit] if limit else clips.audios
    out = {"pywhispercpp": str(Path(pywhispercpp.__file__).parent), "system_info": Model.system_info(), "files": {}}
    for container, path in files.items():
        runtime = WhisperCppRuntime(Path(path), threads, container)
        runtime.transcribe(audios[:1])
        start = time.perf_counter()
        texts = runtime.transcribe(audios)
        out["files"][container] = {"seconds": time.perf_counter() - start, "texts": texts}
    return out


def run_build(pythonpath: str | None, files: dict[str, str], threads: int, limit: int) -> dict:
    env = dict(os.environ)
    if pythonpath:
        # The built extension's RUNPATH names the build's temporary folder, not its own: its libraries are found
        # through LD_LIBRARY_PATH instead.
        for variable in ("PYTHONPATH", "LD_LIBRARY_PATH"):
            env[variable] = os.pathsep.join([pythonpath, env.get(variable, "")]).rstrip(os.pathsep)
    request = json.dumps({"files": files, "threads": threads, "limit": limit})
    done = subprocess.run([sys.executable, "-m", "bench.whisper_cpp_build", "--time-files", request], env=env,
                          cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--native", help="folder holding pywhispercpp built for this CPU (pip install --target)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-files", help=argparse.SUPPRESS)  # the subprocess's side
    args = parser.parse_args(argv)
    if args.time_files:
        request = json.loads(args.time_files)
        print(json.dumps(time_files(request["files"], request["threads"], request["limit"])))
        return {}
    if not args.native or not (Path(args.native) / "pywhispercpp").is_dir():
        raise SystemExit("--native must name a folder with a pywhispercpp built for this CPU (see the docstring)")
    clips = speech_clips(EVAL_FOLDERS)
    utterances, audios = clips.utterances, clips.audios
    if args.limit:
        utterances, audios = utterances[: args.limit], audios[: args.limit]
    seconds = sum(map(len, audios)) / 16000
    loaded = load_model("tiny.en")
    workdir = Path(tempfile.mkdtemp(prefix="asrq-build-"))
    files = {}
    for kind in KINDS:
        report = export_whisper_cpp(loaded, {}, workdir / f"{kind.name if kind else 'f16'}.bin", container=kind)
        files[report.container] = str(report.path)
    faster = CTranslate2Runtime(REGISTRY["tiny.en"].locate().model_parts[0].parent, args.threads, "int8")
    rounds = []
    for number in range(args.rounds):
        faster.transcribe(audios[:1])
        start = time.perf_counter()
        faster.transcribe(audios)
        entry = {"faster-whisper int8": time.perf_counter() - start}
        for build, path in (("wheel", None), ("native", str(Path(args.native).resolve()))):
            entry[build] = run_build(path, files, args.threads, args.limit)
            log.info("round %d %s: %s", number, build, {k: round(v["seconds"], 1)
                                                        for k, v in entry[build]["files"].items()})
        rounds.append(entry)
    scorer = TextScorer()
    rows = {}
    for container in files:
        row = {}
        for build in ("wheel", "native"):
            texts = rounds[0][build]["files"][container]["texts"]
            errors, words = scorer.error_counts([u.reference for u in utterances], texts)
            row[build] = {"rtf": [r[build]["files"][container]["seconds"] / seconds for r in rounds],
                          "wer": sum(errors) / sum(words)}
        row["same_texts"] = sum(a == b for a, b in zip(rounds[0]["wheel"]["files"][container]["texts"],
                                                       rounds[0]["native"]["files"][container]["texts"]))
        rows[container] = row
    data = {"rows": rows, "clips": len(utterances), "threads": args.threads, "rounds": args.rounds,
            "faster_whisper_int8_rtf": [r["faster-whisper int8"] / seconds for r in rounds],
            "system_info": {b: rounds[0][b]["system_info"] for b in ("wheel", "native")},
            "libraries": {b: rounds[0][b]["pywhispercpp"] for b in ("wheel", "native")}}
    write_results(NAME, data, markdown(data))
    return data


def markdown(data: dict) -> str:
    base = statistics.median(data["faster_whisper_int8_rtf"])
    processor = cpu()
    lines = [f"# whisper.cpp: a native build against the pywhispercpp wheel, tiny.en, {data['clips']} test-other "
             f"clips, {data['threads']} threads", "",
             f"CPU: {processor.get('model', '?')} ({', '.join(processor.get('isa', []))}). {data['rounds']} rounds, "
             "the builds alternating; times are medians over rounds, as ratios to faster-whisper int8 timed in the "
             "same rounds.", "",
             f"- wheel: `{data['system_info']['wheel'].strip()}`",
             f"- native: `{data['system_info']['native'].strip()}`", "",
             "| file | wheel time / fw int8 | native time / fw int8 | native / wheel | WER wheel % | WER native % "
             "| same transcripts |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for container, row in data["rows"].items():
        wheel, native = statistics.median(row["wheel"]["rtf"]), statistics.median(row["native"]["rtf"])
        lines.append(f"| {container} | {wheel / base:.2f} | {native / base:.2f} | {native / wheel:.2f} | "
                     f"{100 * row['wheel']['wer']:.2f} | {100 * row['native']['wer']:.2f} | "
                     f"{row['same_texts']} of {data['clips']} |")
    lines += ["", f"faster-whisper int8 RTF per round: {', '.join(f'{r:.3f}' for r in data['faster_whisper_int8_rtf'])}."]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
