"""The heavy jobs of a server (quantize, personalise): one queue, started in arrival order on one worker process.

``submit`` gives a job an id and a place at the back of the queue, or answers "busy" at once: the queue
holds at most ``capacity`` jobs waiting or running, and one per owner (a browser session), so one visitor
cannot fill it by clicking twice. A job whose result the request alone decides (serving/tasks.py
RESULT_KEYS: a quantization's run id) is shared: a second submit of the same request while the first waits
or runs follows it, taking no place, and gets the same result; warm-up work asked for by a visitor is
adopted (it goes on as the visitor's job) instead of being stopped and started again. A follower's cancel
leaves the job to the others; the job itself stops only when nobody waits for it. One dispatcher thread
starts the jobs in the order they were submitted (a real FIFO: a lock's waiters are woken in no particular
order). ``wait`` blocks the submitting thread
until its job ends, handing it progress (and, while it waits, how many jobs are ahead and for about how
long) through plain callbacks on that same thread. ``cancel`` addresses a job by id under the queue's lock:
a waiting job leaves the queue, a running one has its worker process killed, and a finished job's id is
refused, so a late cancel never touches the next visitor's job.
"""

from __future__ import annotations

import itertools
import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.errors import UserError
from engine.progress import ProgressFn
from serving.admission import refusal
from serving.policy import BusyError
from serving.tasks import RESULT_KEYS, TASKS
from serving.worker import JobCancelled, JobFailed, Worker

log = logging.getLogger(__name__)

WaitingFn = Callable[[int, float | None], None]  # (jobs ahead, estimated seconds until this one starts or None)
KEPT_DURATIONS = 20  # recent run times per task behind the waiting estimate
LEFT_SHARED_JOB = "You stopped waiting; the job goes on for the others who asked for the same settings."
KEPT_STARTS = 1000  # ids in started_order: a server runs for days, the record must not grow with it


@dataclass(eq=False)
class Job:
    """One submitted job; its fields change under the queue's lock only."""

    id: str
    task: str
    settings: dict
    owner: str | None
    timeout: float | None
    submitted: float = field(default_factory=time.monotonic)
    idle: bool = False  # idle-time work (warm-up): no owner, no waiter, gives way to any submitted job
    state: str = "waiting"  # waiting -> running -> done | failed | cancelled (or waiting -> cancelled)
    started: float | None = None
    result: dict | None = None
    error: UserError | None = None
    cancel_requested: bool = False
    messages: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # progress, for the waiting thread
    ended: threading.Event = field(default_factory=threading.Event)
    key: str | None = None  # equal keys, equal results (RESULT_KEYS): such jobs are shared
    leader: "Job | None" = None  # a follower's job, the one that runs
    followers: list["Job"] = field(default_factory=list)  # jobs waiting for this one's result
    was_idle: bool = False  # warm-up work a visitor adopted: idle again if every visitor leaves it

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def _result_key(task: str, settings: dict) -> str | None:
    return RESULT_KEYS[task](settings) if task in RESULT_KEYS else None


class JobQueue:
    """At most ``capacity`` jobs waiting or running, one per owner, run one at a time in arrival order."""

    def __init__(self, capacity: int, worker: Worker | None = None, what: str = "job"):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.what = what
        self.worker = worker or Worker()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: dict[str, Job] = {}  # every job not yet finished, by id
        self._durations: dict[str, deque[float]] = {}  # task -> recent run times in seconds
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._idle_work: deque[tuple[str, dict]] = deque()  # (task, settings) to run while nobody waits
        self.refused = 0  # submits answered busy
        # called (on the dispatcher thread: keep it short) with each finished warm-up result
        self.on_idle_result: Callable[[dict], None] | None = None
        self.started_order: list[str] = []  # the last KEPT_STARTS ids in the order they started (for checks)

    # ------------------------------------------------------------------ submitting and waiting
    @property
    def occupied(self) -> int:
        """Jobs holding a place: waiting or running (followers and warm-up hold none)."""
        with self._lock:
            return self._occupied()

    def _occupied(self) -> int:
        return len(self._waiting) + (self._running is not None and not self._running.idle)

    @property
    def running(self) -> Job | None:
        """The job the worker runs now (a visitor's or idle work), if any."""
        with self._lock:
            return self._running

    def submit(self, task: str, settings: dict, owner: str | None = None, timeout: float | None = None) -> Job:
        """Queue a job (or follow an equal one already waiting or running), or raise BusyError (one sentence)
        when there is no room for it."""
        if task not in TASKS:
            raise JobFailed(f"There is no task called {task!r}.")
        key = _result_key(task, settings)
        with self._lock:
            if self._closed:
                raise BusyError("The server is shutting down.")
            leader = self._equal_job(task, key)
            # a follower takes no place: only its owner's one-job limit applies
            refused = refusal(self.what, [j.owner for j in self._jobs.values()], owner, self.capacity,
                              places=0 if leader is not None else self._occupied())
            if refused is not None:
                self.refused += 1
                raise refused
            job = Job(f"{self.what}-{next(self._ids)}", task, settings, owner, timeout, key=key)
            self._jobs[job.id] = job
            if leader is not None:
                self._follow(job, leader)
            else:
                self._waiting.append(job)
                log.info("%s queued: %s", job.id, task)
            self._start_dispatcher()
            self._lock.notify_all()
        return job

    def _equal_job(self, task: str, key: str | None) -> Job | None:
        """Under the lock: the waiting or running job (warm-up included) that gives the same result, if any."""
        if key is None:
            return None
        candidates = [*self._waiting, *([self._running] if self._running is not None else [])]
        return next((j for j in candidates if j.task == task and j.key == key and not j.cancel_requested), None)

    def _follow(self, job: Job, leader: Job) -> None:
        """Under the lock: job waits for leader's result (and sees its progress) without a place of its own."""
        job.leader, job.state, job.started = leader, leader.state, leader.started
        leader.followers.append(job)
        if leader.idle:  # warm-up of exactly this: it goes on as the visitor's job instead of making way
            leader.idle, leader.was_idle = False, True
            log.info("%s adopted %s", job.id, leader.id)
        else:
            log.info("%s follows %s", job.id, leader.id)

    def wait(self, job: Job, on_progress: ProgressFn | None = None, on_waiting: WaitingFn | None = None) -> dict:
        """Block until ``job`` ends; its result, or JobCancelled / JobFailed. Callbacks run on this thread."""
        on_progress = on_progress or (lambda fraction, text: None)
        on_waiting = on_waiting or (lambda ahead, seconds: None)
        reported = None
        while not job.ended.is_set() or not job.messages.empty():
            if job.state == "waiting":
                place = self.place(job)
                if place != reported:
                    on_waiting(*place)
                    reported = place
            try:
                fraction, text = job.messages.get(timeout=0.5)
                on_progress(fraction, text)
            except queue.Empty:
                pass
        if job.error is not None:
            raise job.error
        return job.result

    def run(self, task: str, settings: dict, owner: str | None = None, on_progress: ProgressFn | None = None,
            on_waiting: WaitingFn | None = None, timeout: float | None = None) -> dict:
        """submit then wait."""
        return self.wait(self.submit(task, settings, owner, timeout), on_progress, on_waiting)

    def place(self, job: Job) -> tuple[int, float | None]:
        """(jobs ahead of ``job``, estimated seconds until it starts, None while nothing has been timed)."""
        with self._lock:
            job = job.leader or job  # a follower waits where the job it follows waits
            if job.state != "waiting":
                return 0, 0.0
            ahead = list(itertools.takewhile(lambda j: j is not job, self._waiting))
            running = self._running if self._running is not None and not self._running.idle else None
            estimates = [self._estimate(j.task) for j in ahead]
            if running is not None:
                left = self._estimate(running.task)
                elapsed = time.monotonic() - (running.started or time.monotonic())
                estimates.append(None if left is None else max(left - elapsed, 1.0))
        seconds = None if any(e is None for e in estimates) else sum(estimates)
        return len(ahead) + (running is not None), seconds

    def _estimate(self, task: str) -> float | None:
        times = self._durations.get(task)
        return statistics.median(times) if times else None

    # ------------------------------------------------------------------ cancelling
    def cancel(self, job_id: str, owner: str | None = None) -> bool:
        """Cancel a waiting or running job by id (only its owner's, when ``owner`` is given); False for a
        finished or unknown job, which is never confused with another."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished or (owner is not None and job.owner != owner):
                return False
            if job.leader is not None:  # a follower stops waiting; the job goes on for the others
                job.leader.followers.remove(job)
                self._finish(job, "cancelled", error=JobCancelled(LEFT_SHARED_JOB))
                self._stop_if_unwanted(job.leader)
            elif job.followers:  # others wait for the same result: its owner stops waiting, the job goes on
                self._finish(job, "cancelled", error=JobCancelled(LEFT_SHARED_JOB))
            elif job.state == "waiting":
                self._waiting.remove(job)
                self._finish(job, "cancelled", error=JobCancelled("The job was cancelled before it started."))
            else:
                job.cancel_requested = True  # the dispatcher's worker polls this and kills the process
            return True

    def _stop_if_unwanted(self, job: Job) -> None:
        """Under the lock, after a follower left ``job``: stop it if nobody waits for its result any more (adopted
        warm-up becomes warm-up again)."""
        if job.followers or (not job.was_idle and not job.ended.is_set()):
            return  # someone still waits: a follower, or its own submitter
        if job.was_idle:
            job.idle = True
        elif job.state == "waiting":
            self._waiting.remove(job)
        else:
            job.cancel_requested = True

    def job_of(self, owner: str) -> Job | None:
        """The owner's waiting or running job, if any."""
        with self._lock:
            return next((j for j in self._jobs.values() if j.owner == owner), None)

    # ------------------------------------------------------------------ idle-time work
    def add_idle_work(self, task: str, settings: dict) -> None:
        """Work to run while no job waits (warm-up: likely settings quantized before anyone asks). A visitor's
        job always goes first: idle work is stopped (its worker killed) as soon as one is submitted."""
        with self._lock:
            self._idle_work.append((task, settings))
            self._start_dispatcher()
            self._lock.notify_all()

    @property
    def idle_work_left(self) -> int:
        with self._lock:
            return len(self._idle_work)

    # ------------------------------------------------------------------ the dispatcher thread
    def _start_dispatcher(self) -> None:
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(target=self._dispatch, name="asrq-job-queue", daemon=True)
            self._dispatcher.start()

    def _next(self) -> Job | None:
        """Under the lock: the first waiting job, else idle work as a job without owner; None when closed."""
        while not self._waiting and not self._idle_work and not self._closed:
            self._lock.wait()
        if self._closed:
            return None
        if self._waiting:
            return self._waiting.popleft()
        task, settings = self._idle_work.popleft()
        return Job(f"idle-{next(self._ids)}", task, settings, None, None, idle=True, key=_result_key(task, settings))

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                job = self._next()
                if job is None:
                    return
                job.state, job.started = "running", time.monotonic()
                for follower in job.followers:
                    follower.state, follower.started = "running", job.started
                self._running = job
                self.started_order.append(job.id)
                del self.started_order[:-KEPT_STARTS]
                log.info("%s started: %s", job.id, job.task)  # bench/load.py checks the order from these lines

            def should_stop(job=job) -> bool:
                return job.cancel_requested or (job.idle and bool(self._waiting))  # a visitor arrived: make way

            def post(fraction: float, text: str, job=job) -> None:
                for waiter in (job, *list(job.followers)):
                    waiter.messages.put((fraction, text))

            try:
                result = self.worker.run(job.task, job.settings, post, should_stop=should_stop, timeout=job.timeout)
                outcome, kwargs = "done", {"result": result}
            except JobCancelled as exc:
                outcome, kwargs = "cancelled", {"error": exc}
            except UserError as exc:
                outcome, kwargs = "failed", {"error": exc}
            except Exception as exc:  # the dispatcher must outlive any failure, or every later job would hang
                log.exception("the job queue's worker failed")
                outcome, kwargs = "failed", {"error": JobFailed(f"The job failed: {type(exc).__name__}: {exc}")}
            with self._lock:
                if job.idle and outcome == "cancelled" and not self._closed:
                    self._idle_work.appendleft((job.task, job.settings))  # made way: try again when idle
                elif job.idle and outcome == "failed":
                    log.warning("idle work %s failed: %s", job.task, kwargs["error"])
                if outcome == "done":
                    self._durations.setdefault(job.task, deque(maxlen=KEPT_DURATIONS)).append(
                        time.monotonic() - job.started)
                warmed_up = kwargs.get("result") if (job.idle or job.was_idle) and outcome == "done" else None
                self._running = None
                if not job.ended.is_set():  # its submitter may have left a shared job early
                    self._finish(job, outcome, **kwargs)
                for follower in job.followers:
                    self._finish(follower, outcome, **kwargs)
                job.followers = []
            if warmed_up is not None and self.on_idle_result is not None:
                try:
                    self.on_idle_result(warmed_up)
                except Exception:  # the dispatcher must outlive it: every later job would hang
                    log.exception("the warm-up result's follow-up failed")

    def _finish(self, job: Job, state: str, result: dict | None = None, error: UserError | None = None) -> None:
        """Called under the lock: the job leaves the queue's books and its waiter wakes."""
        job.state, job.result, job.error = state, result, error
        self._jobs.pop(job.id, None)
        job.ended.set()

    def close(self) -> None:
        """Stop the dispatcher (waiting jobs are cancelled) and the worker process."""
        with self._lock:
            self._closed = True
            for job in list(self._waiting):
                self._finish(job, "cancelled", error=JobCancelled("The server is shutting down."))
            self._waiting.clear()
            self._lock.notify_all()
        self.worker.close()
