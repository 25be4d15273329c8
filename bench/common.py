"""Shared benchmark plumbing: where the real speech is, and writing JSON + markdown results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def commit_of(checkout: str | Path = REPO) -> str:
    """The short commit a checkout is at (what a row of results was measured with); '' outside git."""
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()
SHARED_SPEECH = REPO.parent / "shared" / "speech"


def speech(name: str) -> Path:
    folder = SHARED_SPEECH / name
    if not folder.is_dir():
        raise SystemExit(f"benchmark data {folder} is missing: ../shared/speech must sit beside the repository")
    return folder


@dataclass(frozen=True)
class EvalClips:
    """Evaluation clips decoded once: test-other's 50 (what every table scores on) or another set of folders."""

    utterances: list
    audios: list
    references: list
    seconds: float


def speech_clips(folders: tuple[str, ...]) -> EvalClips:
    """The clips of these ../shared/speech folders, decoded once."""
    from engine.speech.audio import SAMPLE_RATE, load_audio
    from engine.speech.evaluate import load_dataset

    utterances = [u for name in folders for u in load_dataset(speech(name))]
    audios = [load_audio(u.path) for u in utterances]
    return EvalClips(utterances, audios, [u.reference for u in utterances], sum(map(len, audios)) / SAMPLE_RATE)


def test_other_clips() -> EvalClips:
    return speech_clips(("librispeech-test-other",))


def token_kl(reference, candidate, clips: EvalClips, batch_size: int = 8) -> float:
    """Mean KL(p_reference || p_candidate) per predicted token, in nats: both models (LoadedModel) teacher-forced
    on each clip's reference transcript in sentence case. A smooth fidelity measure of a quantized model to its
    full-precision one, free of the greedy decoder's all-or-nothing word errors (a 4-bit WER moves by a point
    when a last-bit change flips one clip into a loop); lower is closer."""
    from engine.quant.calibration import prepare_calibration

    texts = [r.capitalize() for r in clips.references]
    data = prepare_calibration(reference, clips.audios, texts)
    ids, mask = data.padded_tokens(reference.tokens.end_of_text)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            features, tokens = data.features[i:i + batch_size], ids[i:i + batch_size]
            target = mask[i:i + batch_size, 1:]  # positions whose next token is real
            logp = [torch.log_softmax(m.model(input_features=features, decoder_input_ids=tokens).logits[:, :-1].float(),
                                      dim=-1)[target] for m in (reference, candidate)]
            total += float((logp[0].exp() * (logp[0] - logp[1])).sum())
            count += int(target.sum())
    return total / count


# The instruction sets that decide which int8/fp32 kernels a runtime takes: a table's time ratios between int8
# and float systems only compare across runs on CPUs with the same ones.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu() -> dict:
    """The CPU's model name and which of ISA_FLAGS it has (from /proc/cpuinfo; empty elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", ""), "isa": [f for f in ISA_FLAGS if f in flags]}


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_results(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
