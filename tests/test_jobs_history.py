"""The worker process (progress, cancel, crash) and the SQLite run history (one row per run, concurrency, crash)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import threading
import time

import pytest

from engine.history import RunHistory
from engine.jobs import JobCancelled, JobFailed, WorkerPool


def fake_summary(run_id: str, wer: float = 0.1) -> dict:
    """A run summary shaped like the quantize task's (the history stores whatever the task returns)."""
    return {"run_id": run_id, "model": "tiny.en", "method": "rtn", "bits": 4, "group_size": 64, "seed": 0,
            "size": {"size_bytes": 20_000_000, "fp32_size_bytes": 150_000_000}, "demo_wer": wer,
            "demo_wer_fp32": 0.05, "demo_rtf": 0.1, "seconds": 1.0}


def test_history_keeps_one_row_per_run_and_its_summary_without_the_table(tmp_path):
    history = RunHistory(tmp_path / "h.sqlite")
    table = [{"name": f"model.encoder.layers.0.fc{i % 2 + 1}", "bits": 8} for i in range(1000)]
    history.add(fake_summary("a", 0.2) | {"overrides": table, "layers_key": "1000 edited rows #abc123"}, session="s1")
    history.add(fake_summary("a", 0.3), session="s2")  # the same run finished twice
    history.add(fake_summary("b"))
    assert history.count() == 2
    assert {r["run_id"] for r in history.runs()} == {"a", "b"}
    assert history.summary("a")["demo_wer"] == 0.2 and history.summary("missing") is None
    # An edited table lives in the run's artifact folder; the row keeps its short key.
    assert "overrides" not in history.summary("a") and history.summary("a")["layers_key"] == "1000 edited rows #abc123"
    assert (tmp_path / "h.sqlite").stat().st_size < 200_000


def _writer(path: str, start: int, count: int) -> None:
    history = RunHistory(path)
    for i in range(start, start + count):
        history.add(fake_summary(f"run-{i}"))


def test_history_survives_concurrent_writers_and_a_killed_writer(tmp_path):
    path = str(tmp_path / "h.sqlite")
    RunHistory(path)
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(path, 100 * k, 40)) for k in range(4)]
    for w in writers:
        w.start()
    victim = ctx.Process(target=_writer, args=(path, 10_000, 100_000))  # killed mid-stream
    victim.start()
    time.sleep(1.0)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    history = RunHistory(path)
    ids = [r["run_id"] for r in history.runs(limit=1_000_000)]
    assert len(ids) == len(set(ids))
    assert sum(i.startswith("run-") and int(i[4:]) < 10_000 for i in ids) == 160  # nothing lost or duplicated
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def rtn_request(tmp_path, bits: int = 8, method: str = "rtn") -> dict:
    return {"model": "tiny.en", "method": method, "settings": {"bits": bits, "group_size": 64}, "seed": 0,
            "overrides": None, "artifact_root": str(tmp_path / "results")}


@pytest.mark.slow
def test_worker_runs_a_job_with_progress_then_cancel_and_kill_leave_it_usable(tmp_path):
    pool = WorkerPool()
    try:
        seen = []
        summary = pool.run("quantize", rtn_request(tmp_path), lambda f, m: seen.append((f, m)))
        assert summary["method"] == "rtn" and summary["demo_wer"] < 0.5 and os.path.isdir(summary["artifact"])
        assert len(seen) >= 3 and seen[-1][0] > seen[0][0]
        # The same settings again: answered from the saved artifact.
        assert pool.run("quantize", rtn_request(tmp_path))["run_id"] == summary["run_id"]

        # Cancel a calibrated job shortly after it starts.
        timer = threading.Timer(2.0, pool.cancel)
        timer.start()
        with pytest.raises(JobCancelled):
            pool.run("quantize", rtn_request(tmp_path, 3, "gptq"))
        assert not pool.busy and not any(p.name.startswith(".") for p in (tmp_path / "results").iterdir())

        # kill -9 of the worker mid-job is a failed job, not a hang.
        def kill_worker():
            time.sleep(2.0)
            os.kill(pool._worker.process.pid, signal.SIGKILL)

        threading.Thread(target=kill_worker).start()
        with pytest.raises(JobFailed, match="stopped"):
            pool.run("quantize", rtn_request(tmp_path, 3, "gptq"))

        again = pool.run("quantize", rtn_request(tmp_path, 4))
        assert again["bits"] == 4 and pool.jobs_started == 5
    finally:
        pool.close()


def test_a_failing_job_reports_its_sentence_and_the_worker_lives_on(tmp_path):
    pool = WorkerPool()
    try:
        with pytest.raises(JobFailed, match="nf4 is a 4-bit format"):
            pool.run("quantize", {**rtn_request(tmp_path), "method": "nf4", "settings": {"bits": 3}})
        with pytest.raises(JobFailed, match="no task"):
            pool.run("nonsense", {})
    finally:
        pool.close()
