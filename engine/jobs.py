"""Heavy engine work in a worker process (spawn): progress streamed back, Cancel kills the process.

The server keeps one WorkerPool. ``run(task, settings, on_progress)`` sends a job to its worker process
and blocks the calling thread (not the server) until the worker answers; progress messages arrive as
plain callbacks. One job at a time per worker: callers queue on a lock in arrival order (the web server's
own queue sits in front of it). ``cancel()`` terminates the worker; the waiting caller gets JobCancelled
and the next job starts a fresh worker. A worker that dies (killed, out of memory) is reported as a failed
job, never as a hang. Results that hold a model cross back as a saved artifact folder.

Tasks are functions of (settings: dict, progress, context) -> dict registered in TASKS (engine/tasks.py);
they run in the worker, where ``context`` is a dict that lives as long as the worker (loaded models).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import UserError
from engine.memory import release_memory

log = logging.getLogger(__name__)
ProgressFn = Callable[[float, str], None]
Task = Callable[[dict, ProgressFn, dict], dict]

TASKS: dict[str, Task] = {}


def task(name: str):
    """Register a function as a worker task under ``name``."""
    def decorator(fn: Task) -> Task:
        TASKS[name] = fn
        return fn
    return decorator


class JobCancelled(UserError):
    """The job was cancelled before it finished."""


class JobFailed(UserError):
    """The worker could not finish the job (its error, or the worker process died)."""


def _worker_main(connection) -> None:
    """The worker process: answer jobs until the pipe closes. Runs in a fresh interpreter (spawn)."""
    import engine.tasks  # noqa: F401  (registers the tasks)

    context: dict = {}
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        name, settings = message

        def progress(fraction: float, text: str) -> None:
            connection.send(("progress", float(fraction), str(text)))

        try:
            result = TASKS[name](settings, progress, context)
            release_memory()  # the worker falls back from its high-water mark between jobs
            connection.send(("done", result))
        except UserError as exc:
            connection.send(("user_error", str(exc)))
        except Exception as exc:  # any failure of the job is reported to the caller, the worker lives on
            connection.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


@dataclass
class _Worker:
    process: mp.Process
    connection: object


class WorkerPool:
    """One worker process, started on first use, restarted after a cancel or a crash."""

    def __init__(self, start_method: str = "spawn"):
        self._context = mp.get_context(start_method)
        self._worker: _Worker | None = None
        self._run_lock = threading.Lock()  # one job at a time
        self._state_lock = threading.Lock()
        self._cancelled = False
        self.jobs_started = 0

    def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.process.is_alive():
            parent, child = self._context.Pipe()
            process = self._context.Process(target=_worker_main, args=(child,), daemon=True, name="asrq-worker")
            process.start()
            child.close()
            self._worker = _Worker(process, parent)
        return self._worker

    @property
    def busy(self) -> bool:
        return self._run_lock.locked()

    def run(self, name: str, settings: dict, on_progress: ProgressFn | None = None, timeout: float | None = None) -> dict:
        """Run task ``name`` in the worker and return its result; raises JobCancelled or JobFailed."""
        if name not in TASKS:
            import engine.tasks  # noqa: F401
        if name not in TASKS:
            raise JobFailed(f"There is no task called {name!r}.")
        on_progress = on_progress or (lambda fraction, text: None)
        with self._run_lock:
            with self._state_lock:
                self._cancelled = False
                worker = self._ensure_worker()
                self.jobs_started += 1
            worker.connection.send((name, settings))
            return self._wait(worker, on_progress, timeout)

    def _wait(self, worker: _Worker, on_progress: ProgressFn, timeout: float | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._cancelled:
                self._stop(worker)
                raise JobCancelled("The job was cancelled.")
            try:
                ready = worker.connection.poll(0.2)
            except (OSError, EOFError):
                ready = False
            if ready:
                try:
                    message = worker.connection.recv()
                except (EOFError, OSError):
                    message = None
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
            if not worker.process.is_alive():
                self._stop(worker)
                raise JobFailed("The worker process stopped before the job finished (killed or out of memory); "
                                "the next job starts a fresh one.")
            if deadline is not None and time.monotonic() > deadline:
                self._stop(worker)
                raise JobFailed(f"The job took longer than its limit of {timeout:.0f} s and was stopped.")

    def cancel(self) -> bool:
        """Stop the running job (kills the worker process); returns whether a job was running."""
        with self._state_lock:
            if not self._run_lock.locked():
                return False
            self._cancelled = True
            return True

    def _stop(self, worker: _Worker) -> None:
        with self._state_lock:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(timeout=10)
            try:
                worker.connection.close()
            except OSError:
                pass
            if self._worker is worker:
                self._worker = None

    def close(self) -> None:
        with self._state_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.connection.close()  # the worker's recv() ends and it returns
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
