"""The worker process that runs heavy tasks (spawn): progress streamed back, killed to cancel, restarted on use.

``Worker.run(task, settings, on_progress, should_stop, timeout)`` sends one job to the process and blocks
its caller (the job queue's dispatcher, serving/job_queue.py, its only caller) until the process answers.
``should_stop`` is polled a few times a second: when it says so the process is killed and the caller gets
JobCancelled; the next job starts a fresh process. A process that dies (killed, out of memory) is a failed
job, never a hang. Results that hold a model cross back as a saved artifact folder (serving/tasks.py).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import UserError
from engine.progress import ProgressFn

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2  # how often a waiting run checks for a cancel, a timeout or a dead process


class JobCancelled(UserError):
    """The job was cancelled before it finished."""


class JobFailed(UserError):
    """The worker could not finish the job (its error, or the worker process died)."""


def _worker_main(connection, threads: int | None = None, nice: int = 0) -> None:
    """The worker process: answer jobs until the pipe closes. Runs in a fresh interpreter (spawn).
    threads: torch's intra-op threads here (None: torch's default, every core); nice: how much lower its CPU
    priority is than the server's (a process may always lower its own)."""
    import torch

    import engine.quant.methods.gptq_kernels  # noqa: F401  (numba's compiled GPTQ loop: ~0.6 s once, here)
    from serving.memory import release_memory
    from serving.tasks import TASKS

    if threads is not None:
        torch.set_num_threads(threads)
    if nice:
        os.nice(nice)

    context: dict = {}  # lives as long as the process: loaded models, timings already measured
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        name, settings = message

        def progress(fraction: float, text: str) -> None:
            connection.send(("progress", float(fraction), str(text)))

        try:
            try:
                result = TASKS[name](settings, progress, context)
                release_memory()  # the worker falls back from its high-water mark between jobs
                answer = ("done", result)
            except UserError as exc:
                answer = ("user_error", str(exc))
            except (BrokenPipeError, EOFError):
                raise
            except Exception as exc:  # any failure of the job is reported to the caller, the worker lives on
                answer = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            connection.send(answer)
        except (BrokenPipeError, EOFError):
            return  # the server closed the pipe (shutting down): nobody is listening any more


@dataclass
class _Process:
    process: mp.Process
    connection: object


class Worker:
    """One worker process, started on first use, restarted after a cancel or a crash. One job at a time."""

    def __init__(self, start_method: str = "spawn", threads: int | None = None, nice: int = 0):
        self._context = mp.get_context(start_method)
        self.threads = threads  # the process's torch threads (ServingPolicy.worker_threads); None: all cores
        self.nice = nice  # the process's niceness (ServingPolicy.worker_nice)
        self._current: _Process | None = None
        self._lock = threading.Lock()  # guards _current between run() and close() on another thread
        self.jobs_started = 0

    @property
    def pid(self) -> int | None:
        current = self._current
        return current.process.pid if current is not None else None

    def _ensure_process(self) -> _Process:
        with self._lock:
            if self._current is None or not self._current.process.is_alive():
                parent, child = self._context.Pipe()
                process = self._context.Process(target=_worker_main, args=(child, self.threads, self.nice), daemon=True, name="asrq-worker")
                process.start()
                child.close()
                self._current = _Process(process, parent)
            self.jobs_started += 1
            return self._current

    def run(self, name: str, settings: dict, on_progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] = lambda: False, timeout: float | None = None) -> dict:
        """Run task ``name`` in the process and return its result; raises JobCancelled or JobFailed."""
        on_progress = on_progress or (lambda fraction, text: None)
        current = self._ensure_process()
        current.connection.send((name, settings))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if should_stop():
                self._stop(current)
                raise JobCancelled("The job was cancelled.")
            message = self._receive(current)
            if message is not None:
                kind = message[0]
                if kind == "progress":
                    on_progress(message[1], message[2])
                    continue
                if kind == "done":
                    return message[1]
                if kind == "user_error":
                    raise JobFailed(message[1])
                log.error("job failed in the worker:\n%s", message[2])
                raise JobFailed(f"The job failed: {message[1]}")
            if not current.process.is_alive():
                self._stop(current)
                raise JobFailed("The worker process stopped before the job finished (killed or out of memory); "
                                "the next job starts a fresh one.")
            if deadline is not None and time.monotonic() > deadline:
                self._stop(current)
                raise JobFailed(f"The job took longer than its limit of {timeout:.0f} s and was stopped.")

    @staticmethod
    def _receive(current: _Process):
        """The next message, or None after POLL_SECONDS without one (or when the pipe broke)."""
        try:
            if current.connection.poll(POLL_SECONDS):
                return current.connection.recv()
        except (EOFError, OSError):
            pass
        return None

    def _stop(self, current: _Process) -> None:
        with self._lock:
            if current.process.is_alive():
                current.process.kill()
            current.process.join(timeout=10)
            try:
                current.connection.close()
            except OSError:
                pass
            if self._current is current:
                self._current = None

    def close(self) -> None:
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            current.connection.close()  # the process's recv() ends and it returns
            current.process.join(timeout=5)
            if current.process.is_alive():
                current.process.kill()
