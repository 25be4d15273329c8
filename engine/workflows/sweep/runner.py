"""Running a grid: in this process one point at a time, or on Ray actors (local or on a cluster).

The driver (this process) owns every write: points.jsonl, the run history and the exports. Workers only
compute records, so a cluster's nodes need the data folders and the package, not the history file.
Each model's full-precision baseline is submitted first; a point's delta against it is added when both are
known. Points already finished in the sweep's folder are skipped; failed ones run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run_history import RunHistory
from engine.whisper.models import LoadedModel
from engine.workflows.sweep.grid import Grid, Point
from engine.workflows.sweep.point import PointWorker, run_point
from engine.workflows.sweep.records import (PointLog, finished_keys, public_record, record_in_history, with_delta,
                                            write_exports)

log = logging.getLogger(__name__)


@dataclass
class SweepState:
    """What the progress bar shows; eta_seconds from the mean time of the points finished in this run."""

    total: int
    done: int = 0  # finished ok, including points skipped as already finished
    failed: int = 0
    running: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.running

    @property
    def eta_seconds(self) -> float | None:
        finished_here = self.done - self.skipped + self.failed
        if finished_here <= 0:
            return None
        per_point = (time.monotonic() - self.started) / finished_here
        return per_point * (self.left + self.running)


SweepProgressFn = Callable[[SweepState], None]


def _failed(point: Point, reason: str) -> dict:
    now = time.time()
    return {"key": point.key, "label": point.label(), "model": point.model, "method": point.method,
            "bits": point.bits, "group_size": point.group_size, "seed": point.seed, "settings": point.settings,
            "status": "failed", "error": reason, "started": now, "finished": now}


def _one_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


class InProcess:
    """Points one after another in this process, sharing one loaded copy of each model."""

    name = "in-process"

    def __init__(self) -> None:
        self.models: dict[str, LoadedModel] = {}

    def run(self, points: Sequence[Point], started: Callable[[Point], None]) -> Iterator[dict]:
        for point in points:
            started(point)
            try:
                yield run_point(point, self.models)
            except Exception as exc:  # a bug or an exhausted resource in one point must not end the sweep
                log.exception("%s crashed", point.label())
                yield _failed(point, _one_sentence(exc))

    def close(self) -> None:
        self.models.clear()


class RayTasks:
    """max_parallel Ray actors (PointWorker), each asking for the grid's CPUs and memory per point and keeping
    the models it loaded; every point goes to the next free actor. A lost actor is replaced.

    address None starts a local Ray (num_cpus: its CPU count, default all); "auto" or "ray://host:10001"
    joins a running cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, max_parallel: int | None = None, num_cpus: int | None = None,
                 cpus_per_point: int = 1, memory_gb: float = 3.0):
        try:
            import ray
        except ImportError as exc:
            raise UserError("Ray is not installed: pip install '.[sweep]', or run without --address "
                            "(--in-process).") from exc
        self.ray = ray
        options = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(**options, ignore_reinit_error=True, log_to_driver=False)
        self.actor = ray.remote(num_cpus=cpus_per_point, memory=int(memory_gb * 2**30), max_restarts=0)(PointWorker)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.max_parallel = max_parallel or max(1, cluster_cpus // cpus_per_point)
        self.workers: list = []

    def run(self, points: Sequence[Point], started: Callable[[Point], None]) -> Iterator[dict]:
        waiting = list(points)
        idle = [self.actor.remote() for _ in range(min(self.max_parallel, len(waiting)))]
        self.workers = list(idle)
        in_flight: dict = {}  # object ref -> (point, actor)
        while waiting or in_flight:
            while waiting and idle:
                point, worker = waiting.pop(0), idle.pop()
                started(point)
                in_flight[worker.run.remote(point)] = (point, worker)
            ready, _ = self.ray.wait(list(in_flight), num_returns=1)
            point, worker = in_flight.pop(ready[0])
            try:
                record = self.ray.get(ready[0])
                idle.append(worker)
            except self.ray.exceptions.RayActorError as exc:  # the actor died (out of memory, a lost node)
                log.warning("%s: its Ray worker was lost: %s", point.label(), _one_sentence(exc))
                record = _failed(point, _one_sentence(exc))
                replacement = self.actor.remote()
                self.workers.append(replacement)
                idle.append(replacement)
            except self.ray.exceptions.RayError as exc:  # the point raised inside the actor
                cause = getattr(exc, "cause", None) or exc
                log.warning("%s failed on Ray: %s", point.label(), _one_sentence(cause))
                record = _failed(point, _one_sentence(cause))
                idle.append(worker)
            yield record

    def close(self) -> None:
        for worker in self.workers:  # Ctrl-C or an error in the driver: stop what is still running
            self.ray.kill(worker)
        self.ray.shutdown()


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    folder: Path
    runs: list[dict]  # the grid's points in grid order (their latest records)
    baselines: list[dict]
    skipped: int  # points found finished in the folder and not run again
    executor: str
    seconds: float

    def to_json(self) -> dict:
        return {"name": self.name, "folder": str(self.folder), "executor": self.executor, "seconds": self.seconds,
                "skipped": self.skipped, "runs": [public_record(r) for r in self.runs],
                "baselines": [public_record(b) for b in self.baselines]}


def run_sweep(grid: Grid, folder: str | Path, executor: InProcess | RayTasks, history: RunHistory | None = None,
              progress: SweepProgressFn | None = None) -> SweepOutcome:
    """Run every point of the grid not yet finished in folder; record each as it finishes (points.jsonl, then
    the history once its baseline is known); write results.json and results.csv at the end."""
    start = time.monotonic()
    progress = progress or (lambda state: None)
    points_log = PointLog(folder)
    records = points_log.records()
    finished = finished_keys(records)
    everything = [*grid.baselines, *grid.points]
    todo = [p for p in everything if p.key not in finished]
    state = SweepState(total=len(everything), done=len(everything) - len(todo), skipped=len(everything) - len(todo))
    if state.skipped:
        log.info("%d of %d points already finished in %s", state.skipped, state.total, folder)
    baseline_of = {b.model: b.key for b in grid.baselines}
    waiting_for_baseline: list[dict] = []

    def started(point: Point) -> None:
        state.running += 1
        progress(state)

    def to_history(record: dict) -> None:
        if history is None or record["status"] != "ok" or record["method"] == "fp32":
            return
        baseline = records.get(baseline_of[record["model"]])
        if baseline is None or baseline["status"] != "ok":
            waiting_for_baseline.append(record)
            return
        records[record["key"]] = with_delta(record, baseline)
        record_in_history(history, records[record["key"]], grid.name)

    progress(state)
    try:
        for record in executor.run(todo, started):
            points_log.append(record)
            records[record["key"]] = record
            state.running -= 1
            if record["status"] == "ok":
                state.done += 1
            else:
                state.failed += 1
            log.info("[%d/%d] %s: %s", state.done + state.failed, state.total, record["label"],
                     f"WER {100 * record['wer']:.2f}%" if record["status"] == "ok" else f"failed: {record['error']}")
            to_history(record)
            if record["method"] == "fp32":  # the points that waited for this baseline
                pending, waiting_for_baseline[:] = list(waiting_for_baseline), []
                for held in pending:
                    to_history(held)
            progress(state)
    finally:
        executor.close()
    runs = [with_delta(records[p.key], records.get(baseline_of[p.model])) for p in grid.points if p.key in records]
    baselines = [records[b.key] for b in grid.baselines if b.key in records]
    if history is not None and state.skipped:  # points finished by an earlier run: make sure they are recorded
        for record in runs:
            if record["status"] == "ok" and "wer_fp32" in record:
                record_in_history(history, record, grid.name)  # the same run id is written once
    outcome = SweepOutcome(grid.name, Path(folder), runs, baselines, state.skipped, executor.name,
                           time.monotonic() - start)
    write_exports(outcome.folder, outcome.to_json())
    return outcome
