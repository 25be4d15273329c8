"""Faults a long-running server meets: damaged caches, a full disk, a job that runs too long.

(A worker killed with kill -9 and the history under concurrent and killed writers: tests/test_jobs_history.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from engine.quant.artifacts import ArtifactError, WEIGHTS_FILE, load_quantized
from serving.job_queue import JobQueue
from serving.tasks import quantize_task
from serving.worker import JobFailed

from tests.helpers import REPO

pytestmark = pytest.mark.slow


def request(tmp_path, method: str = "rtn", bits: int = 8) -> dict:
    return {"model": "tiny.en", "method": method, "settings": {"bits": bits, "group_size": 64}, "seed": 0,
            "overrides": None, "artifact_root": str(tmp_path / "results")}


def damage(path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # zeros over some weights: still parses, wrong numbers
    path.write_bytes(bytes(data))


def test_a_damaged_saved_result_is_refused_and_rebuilt(tmp_path, tiny):
    context = {}
    first = quantize_task(request(tmp_path), lambda f, m: None, context)
    weights = tmp_path / "results" / first["run_id"] / WEIGHTS_FILE
    damage(weights)
    with pytest.raises(ArtifactError, match="damaged"):
        load_quantized(weights.parent)
    again = quantize_task(request(tmp_path), lambda f, m: None, context)  # the cache entry is rebuilt, not loaded
    assert again["run_id"] == first["run_id"] and again["demo_wer"] == first["demo_wer"]
    load_quantized(weights.parent)


def test_a_full_disk_while_saving_leaves_no_half_written_result(tmp_path, tiny):
    # The save runs in a child process whose files may not grow past 8 MB (RLIMIT_FSIZE): writes fail the
    # way they do on a full disk (an error from write), which the artifact writer must clean up after.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from engine.quant.artifacts import ArtifactError, save_quantized
        from engine.quant.config import RTNConfig
        from engine.whisper.models import load_model
        from engine.quant.quantize import quantize

        result = quantize(load_model("tiny.en"), RTNConfig(bits=4))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 2**20, 8 * 2**20))
        try:
            save_quantized(result, {str(tmp_path / "out")!r})
        except ArtifactError as exc:
            print("save failed:", exc)
            sys.exit(0)
        sys.exit("the save did not fail")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "save failed: Saving the quantized model" in done.stdout and "File too large" in done.stdout
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its partial save


def test_a_damaged_model_cache_is_converted_again(tmp_path, monkeypatch):
    from engine.whisper.models import load_model

    monkeypatch.setenv("ASRQ_CACHE_DIR", str(tmp_path))
    first = load_model("tiny.en")
    (cached,) = (tmp_path / "models").glob("tiny.en-*/model.safetensors")
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short, as by a crash or a full disk
    again = load_model("tiny.en")
    for name, value in first.model.state_dict().items():
        assert again.model.state_dict()[name].equal(value), name
    assert cached.stat().st_size > 1_000_000  # and the cache entry is whole again


def test_a_job_past_its_time_limit_is_stopped_and_the_next_runs(tmp_path):
    jobs = JobQueue(capacity=2)
    try:
        start = time.monotonic()
        with pytest.raises(JobFailed, match="longer than its limit of 3 s"):
            jobs.run("quantize", request(tmp_path, "gptq", 3), timeout=3)
        assert time.monotonic() - start < 20
        assert jobs.run("quantize", request(tmp_path, "rtn", 8))["bits"] == 8
        assert not any(p.name.startswith(".") for p in (tmp_path / "results").iterdir())
    finally:
        jobs.close()
