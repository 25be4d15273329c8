"""Shared benchmark plumbing: where the real speech is, and writing JSON + markdown results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED_SPEECH = REPO.parent / "shared" / "speech"


def speech(name: str) -> Path:
    folder = SHARED_SPEECH / name
    if not folder.is_dir():
        raise SystemExit(f"benchmark data {folder} is missing: ../shared/speech must sit beside the repository")
    return folder


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_results(name: str, data: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
