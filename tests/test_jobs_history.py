"""The worker process (progress, cancel, crash) and the SQLite run history (one row per run, concurrency, crash)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import threading
import time

import pytest

from engine.quant.artifacts import WEIGHTS_FILE
from engine.run_history import RunHistory
from serving.job_queue import JobQueue
from serving.policy import BusyError
from serving.results import ResultStore
from serving.tasks import run_id_of
from serving.worker import JobCancelled, JobFailed, Worker


def fake_summary(run_id: str, wer: float = 0.1) -> dict:
    """A run summary shaped like the quantize task's (the history stores whatever the task returns)."""
    return {"run_id": run_id, "model": "tiny.en", "method": "rtn", "bits": 4, "group_size": 64, "seed": 0,
            "size_bytes": 20_000_000, "fp32_size_bytes": 150_000_000, "demo_wer": wer,
            "demo_wer_fp32": 0.05, "demo_rtf": 0.1, "quantization_seconds": 1.0}


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


@pytest.fixture
def open_queue():
    """JobQueue(capacity) factory; every queue it made is closed (its worker stopped) after the test."""
    made = []

    def make(capacity: int) -> JobQueue:
        made.append(JobQueue(capacity=capacity))
        return made[-1]

    yield make
    for queue in made:
        queue.close()


def rtn_request(tmp_path, bits: int = 8, method: str = "rtn") -> dict:
    return {"model": "tiny.en", "method": method, "settings": {"bits": bits, "group_size": 64}, "seed": 0,
            "overrides": None, "artifact_root": str(tmp_path / "results")}


@pytest.mark.slow
def test_worker_runs_a_job_with_progress_then_cancel_and_kill_leave_it_usable(tmp_path, open_queue):
    jobs = open_queue(2)
    seen = []
    summary = jobs.run("quantize", rtn_request(tmp_path), on_progress=lambda f, m: seen.append((f, m)))
    assert summary["method"] == "rtn" and summary["demo_wer"] < 0.5 and os.path.isdir(summary["artifact"])
    assert len(seen) >= 3 and seen[-1][0] > seen[0][0]
    # The same settings again: answered from the saved artifact.
    assert jobs.run("quantize", rtn_request(tmp_path))["run_id"] == summary["run_id"]

    # Cancel a calibrated job by its id shortly after it starts.
    job = jobs.submit("quantize", rtn_request(tmp_path, 3, "gptq"))
    threading.Timer(2.0, jobs.cancel, args=(job.id,)).start()
    with pytest.raises(JobCancelled):
        jobs.wait(job)
    assert jobs.occupied == 0 and not any(p.name.startswith(".") for p in (tmp_path / "results").iterdir())
    assert not jobs.cancel(job.id)  # a finished job's id is refused

    # kill -9 of the worker mid-job is a failed job, not a hang.
    def kill_worker():
        time.sleep(2.0)
        os.kill(jobs.worker.pid, signal.SIGKILL)

    threading.Thread(target=kill_worker).start()
    with pytest.raises(JobFailed, match="stopped"):
        jobs.run("quantize", rtn_request(tmp_path, 3, "gptq"))

    again = jobs.run("quantize", rtn_request(tmp_path, 4))
    assert again["bits"] == 4 and jobs.worker.jobs_started == 5


def test_a_failing_job_reports_its_sentence_and_the_worker_lives_on(tmp_path, open_queue):
    jobs = open_queue(2)
    with pytest.raises(JobFailed, match="nf4 is a 4-bit format"):
        jobs.run("quantize", {**rtn_request(tmp_path), "method": "nf4", "settings": {"bits": 3}})
    with pytest.raises(JobFailed, match="no task"):
        jobs.run("nonsense", {})


def test_a_lower_priority_worker_runs_its_jobs_at_that_niceness(tmp_path):
    """ASRQ_THREADS=priority: the worker process itself lowers its priority; the server keeps its own."""
    jobs = JobQueue(capacity=1, worker=Worker(nice=7))
    try:
        with pytest.raises(JobFailed):  # the worker refuses the model quickly: started, no model work
            jobs.run("quantize", unknown_model_request(tmp_path, 0))
        niceness = int(open(f"/proc/{jobs.worker.pid}/stat").read().rsplit(")", 1)[1].split()[16])
        assert niceness == os.nice(0) + 7
    finally:
        jobs.close()


def unknown_model_request(tmp_path, tag: int) -> dict:
    """A job the worker answers quickly (the model does not exist) after starting: enough to test the order."""
    return {**rtn_request(tmp_path), "model": f"no-such-model-{tag}"}


def test_jobs_start_in_arrival_order_under_concurrent_submits(tmp_path, open_queue):
    jobs = open_queue(32)
    submitted, lock = [], threading.Lock()

    def visitor(tag: int) -> None:
        with lock:  # the order the queue must keep: the order submit() was entered in
            job = jobs.submit("quantize", unknown_model_request(tmp_path, tag), owner=f"visitor-{tag}")
            submitted.append(job.id)
        with pytest.raises(JobFailed, match="no-such-model"):
            jobs.wait(job)

    threads = [threading.Thread(target=visitor, args=(tag,)) for tag in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(submitted) == 12 and jobs.started_order == submitted and jobs.occupied == 0


def test_cancelling_a_waiting_or_finished_job_never_touches_another(tmp_path, open_queue):
    jobs = open_queue(4)
    first = jobs.submit("quantize", unknown_model_request(tmp_path, 1), owner="alice")  # starts the worker
    second = jobs.submit("quantize", unknown_model_request(tmp_path, 2), owner="bob")
    assert jobs.place(second)[0] == 1  # one job ahead of bob's
    assert not jobs.cancel(second.id, owner="alice")  # only its owner's cancel counts
    assert jobs.cancel(second.id, owner="bob") and second.state == "cancelled"
    with pytest.raises(JobCancelled, match="before it started"):
        jobs.wait(second)
    with pytest.raises(JobFailed, match="no-such-model-1"):
        jobs.wait(first)  # alice's job ran to its own end
    third = jobs.submit("quantize", unknown_model_request(tmp_path, 3), owner="alice")
    assert not jobs.cancel(first.id)  # a late cancel of alice's finished job ...
    with pytest.raises(JobFailed, match="no-such-model-3"):
        jobs.wait(third)  # ... never reaches her next one
    assert jobs.started_order == [first.id, third.id]
    waiting = jobs.submit("quantize", unknown_model_request(tmp_path, 4), owner="carol")
    with pytest.raises(BusyError, match="already have a job"):
        jobs.submit("quantize", unknown_model_request(tmp_path, 5), owner="carol")
    with pytest.raises(JobFailed, match="no-such-model-4"):
        jobs.wait(waiting)


def wait_until(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_idle_warm_up_gives_way_to_a_visitor_then_answers_the_same_request_from_its_save(tmp_path, open_queue):
    jobs = open_queue(2)
    jobs.add_idle_work("quantize", rtn_request(tmp_path, 4))
    wait_until(lambda: jobs.running is not None and jobs.running.idle)
    time.sleep(2.0)  # the warm-up is under way in the worker
    start = time.monotonic()
    visitor = jobs.submit("quantize", unknown_model_request(tmp_path, 1), owner="visitor")
    with pytest.raises(JobFailed, match="no-such-model"):
        jobs.wait(visitor)
    assert time.monotonic() - start < 30  # the warm-up made way (its worker stopped, a fresh one started)
    assert jobs.started_order[:2] == ["idle-1", visitor.id]  # ... and resumed only after the visitor's job
    wait_until(lambda: jobs.idle_work_left == 0 and jobs.running is None, 300)  # resumed and finished
    saved = tmp_path / "results" / run_id_of(rtn_request(tmp_path, 4)) / WEIGHTS_FILE
    before = saved.stat()
    summary = jobs.run("quantize", rtn_request(tmp_path, 4), owner="visitor")
    after = saved.stat()
    assert summary["bits"] == 4 and jobs.started_order[-2].startswith("idle")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # answered from the save


@pytest.mark.slow
def test_equal_requests_share_one_job_and_it_stops_only_when_nobody_waits(tmp_path, open_queue):
    jobs = open_queue(1)
    first = jobs.submit("quantize", rtn_request(tmp_path, 4), owner="alice")
    second = jobs.submit("quantize", rtn_request(tmp_path, 4), owner="bob")  # one place only: follows
    third = jobs.submit("quantize", rtn_request(tmp_path, 4), owner="carol")
    assert second.leader is first and third.leader is first and jobs.occupied == 1
    with pytest.raises(BusyError, match="busy"):
        jobs.submit("quantize", rtn_request(tmp_path, 5), owner="dave")  # other settings need a place
    with pytest.raises(BusyError, match="already have"):
        jobs.submit("quantize", rtn_request(tmp_path, 4), owner="bob")
    assert jobs.cancel(third.id, owner="carol")  # a follower leaves ...
    with pytest.raises(JobCancelled, match="goes on for the others"):
        jobs.wait(third)
    assert jobs.cancel(first.id, owner="alice")  # ... and its submitter: bob still waits, so it goes on
    with pytest.raises(JobCancelled, match="goes on for the others"):
        jobs.wait(first)
    summary = jobs.wait(second)
    assert summary["bits"] == 4 and jobs.started_order == [first.id] and jobs.worker.jobs_started == 1
    # Finished: the server answers the same settings from the save without a job; a damaged save is no answer.
    store = ResultStore(tmp_path / "results")
    assert store.finished_summary(summary["run_id"]) == summary
    weights = tmp_path / "results" / summary["run_id"] / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    assert store.finished_summary(summary["run_id"]) is None

    # When everyone who asked leaves, the shared job stops.
    lone = jobs.submit("quantize", rtn_request(tmp_path, 3, "gptq"), owner="erin")
    companion = jobs.submit("quantize", rtn_request(tmp_path, 3, "gptq"), owner="fred")
    wait_until(lambda: lone.state == "running" and companion.state == "running")
    assert jobs.cancel(lone.id, owner="erin") and jobs.cancel(companion.id, owner="fred")
    wait_until(lambda: jobs.running is None and jobs.occupied == 0)
    assert jobs.worker.jobs_started == 2 and not (tmp_path / "results" / run_id_of(companion.settings)).exists()


@pytest.mark.slow
def test_a_visitor_asking_for_the_warm_up_under_way_adopts_it(tmp_path, open_queue):
    jobs = open_queue(2)
    jobs.add_idle_work("quantize", rtn_request(tmp_path, 4))
    wait_until(lambda: jobs.running is not None and jobs.running.idle)
    warm_up = jobs.running
    visitor = jobs.submit("quantize", rtn_request(tmp_path, 4), owner="visitor")
    assert visitor.leader is warm_up and not warm_up.idle and jobs.occupied == 1
    summary = jobs.wait(visitor)
    assert summary["bits"] == 4 and jobs.started_order == [warm_up.id] and jobs.worker.jobs_started == 1
    assert jobs.idle_work_left == 0
