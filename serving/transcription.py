"""Transcriptions for every visitor of one server: bounded, in arrival order on a few lanes of the CPU, and shared.

In a workshop most requests transcribe the same demo clips with the same few models, so each answer is
kept by (audio content, model, run, decoding) and handed to the next visitor who asks for it without
touching the model. Audio is keyed by its decoded samples, so the same clip uploaded under another name
or served from gradio's cache is the same key. Requests wait in one line, worked off in arrival order by
``lanes`` model calls at once (threads of the desk's own, started while the line is not empty): a free lane
takes the oldest waiting request, and with ``max_batch`` above 1 others waiting for its model in one batch when
the line is longer than the lanes not in a call, so a short line runs in every lane at once and no request is
overtaken by a later one for another model. The server answers one by one (ServingPolicy.transcription_batch):
with the output layer laid out for decoding a batch of 4 upload clips took 0.94x the time of one by one on a
thread (bench/results/batching.md, 7 rounds; 0.82x before the layout), while each of its requests waits for
the whole call: about four times a clip's own.
A request that needs two models (an upload: full precision and the visitor's run) joins the line once with
both, and with two lanes both run at the same time. On 2 cores two calls of 1 torch thread each answered
such a request in 0.61x the time of one 2-thread call after the other (bench/results/lanes.md).

Two bounded rooms, one place per session in each: ``reading`` for decoding a request's audio and looking up
shared answers (quick), ``entered`` for the requests that need the model. A shared answer never waits for,
nor is turned away by, a room full of uploads. ``keep`` takes answers made elsewhere (the worker's transcripts of
the demo clips a run was scored on), and ``answer_ahead`` transcribes likely requests in a thread before anyone
asks (the demo clips with a run whose summary brought none).

The desk's model calls decode with the loop guard (engine/speech/transcribe.py): a run caught in a repetition
loop stops at 16 + 8 tokens a second of audio instead of the decoder's 448 (RTN 2-bit on 16 upload clips, one
thread: 76.7 s without it, 23.5 s with it; bench/results/loop_guard.md). A transcript that ends by itself is the same with or
without it, so the worker's scored transcripts (made without it) are shared under the same decoding; only a
looping one among them is longer than the desk would make it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine.speech.audio import SAMPLE_RATE
from engine.speech.transcribe import LOOP_GUARD_TOKENS_PER_SECOND, transcribe_detailed
from engine.whisper.models import LoadedModel
from engine.errors import UserError
from serving.admission import Admission

log = logging.getLogger(__name__)
DECODING = "greedy"  # the page's decoding; part of the key so that another decoding never shares an answer


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float  # how long the model took when it ran (for a shared answer: the first time)
    shared: bool = False  # answered from the cache
    cut: bool = False  # stopped by the loop guard: the model was repeating itself


@dataclass(eq=False)
class _Waiting:
    """One request waiting for the CPU; ``answer`` is set by whichever thread transcribes it."""

    key: tuple[str, str, str]
    loaded: LoadedModel
    audio: np.ndarray
    answer: Future = field(default_factory=Future)


def audio_key(audio: np.ndarray) -> str:
    """A digest of the decoded samples (float32, 16 kHz mono)."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


class TranscriptionDesk:
    """At most ``capacity`` transcriptions running or waiting (one per session); ``kept`` answers shared;
    waiting requests for one model answered ``max_batch`` at a time (1: one by one), ``lanes`` model calls at
    once."""

    def __init__(self, capacity: int = 8, kept: int = 2048, max_batch: int = 1, lanes: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        self.admission = Admission(capacity, "transcription")
        # as many as the transcription room: the decoding memory bound (docs/threat-model.md) stays what it was
        self.reading_room = Admission(capacity, "transcription")
        self._kept = kept
        self.max_batch = max_batch
        self._answers: OrderedDict[tuple[str, str, str], Transcript] = OrderedDict()
        self._answers_lock = threading.Lock()  # guards _answers, _pending, _waiting and _runners
        self._pending: dict[tuple[str, str, str], Future] = {}  # answers waited for: each key in the line once
        self._waiting: list[_Waiting] = []  # the line, oldest first
        self.lanes = lanes
        self._lanes = threading.Semaphore(lanes)  # held by a runner during each model call
        self._runners = 0  # the desk's threads working off the line (at most ``lanes``), under _answers_lock
        self._calls = 0  # model calls running (taken from the line, not yet answered), under _answers_lock
        self.model_calls = 0
        self.batch_sizes: list[int] = []  # of the last model calls (bounded), for the load test and checks

    @contextmanager
    def entered(self, session: str | None) -> Iterator[None]:
        """A place in the bounded waiting room for the whole request (BusyError in one sentence when full)."""
        with self.admission.enter(session):
            yield

    @contextmanager
    def reading(self, session: str | None) -> Iterator[None]:
        """A place while a request's audio is decoded and its shared answers looked up (BusyError when full)."""
        with self.reading_room.enter(session):
            yield

    def shared(self, model_key: str, digest: str) -> Transcript | None:
        """The kept answer for this audio (by digest) and model, if any: no model call, no place needed."""
        return self._shared((digest, model_key, DECODING))

    def keep(self, model_key: str, answers: dict[str, dict]) -> int:
        """Keep answers made elsewhere (the worker's transcripts of the clips it scored a run on: digest -> text
        and seconds) for whoever asks; returns how many were new."""
        with self._answers_lock:
            new = 0
            for digest, answer in answers.items():
                key = (digest, model_key, DECODING)
                if key not in self._answers:
                    self._answers[key] = Transcript(answer["text"], answer["seconds"])
                    new += 1
            while len(self._answers) > self._kept:
                self._answers.popitem(last=False)
        return new

    def answer_ahead(self, load: Callable[[], LoadedModel], model_key: str,
                     audios: Callable[[], list[np.ndarray]]) -> threading.Thread:
        """In a thread: load the model and the audio and transcribe it, keeping the answers for whoever asks (it
        takes turns for the CPU with visitors' requests, one batch at a time; the caller's thread reads nothing)."""
        def run() -> None:
            try:
                todo = [a for a in audios() if self.shared(model_key, audio_key(a)) is None]
                loaded = load() if todo else None  # every answer kept already: the model is not even loaded
                for audio in todo:
                    self.transcribe(loaded, model_key, audio)
            except (UserError, OSError, RuntimeError) as exc:  # a pruned result or a failing model: nobody waits on it
                log.warning("answers ahead for %s not made: %s", model_key, exc)

        thread = threading.Thread(target=run, name=f"asrq-ahead-{model_key}", daemon=True)
        thread.start()
        return thread

    def _shared(self, key: tuple[str, str, str]) -> Transcript | None:
        with self._answers_lock:
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
        return None if found is None else Transcript(found.text, found.seconds, shared=True, cut=found.cut)

    def transcribe(self, loaded: LoadedModel, model_key: str, audio: np.ndarray, digest: str | None = None) -> Transcript:
        """The transcript of ``audio`` by ``loaded`` (named ``model_key``: a model name, or name/run id)."""
        return self.transcribe_each([(lambda: loaded, model_key)], audio, digest)[0]

    def transcribe_each(self, models: list[tuple[Callable[[], LoadedModel], str]], audio: np.ndarray,
                        digest: str | None = None) -> list[Transcript]:
        """The transcripts of one ``audio`` by several models ((load, model_key) each, ``load`` giving the model):
        a request that needs two models (full precision and its quantized run) joins the line with both. A model
        is loaded only for an answer not kept, and each joins the line as soon as it is loaded, so full
        precision's call runs while the run loads. An answer another request is already waiting for (the same
        clip and model) is that request's answer, not a second model call. A failing load raises after the
        models before it joined the line (their answers are kept for whoever asks)."""
        digest = digest or audio_key(audio)
        answers: list[Transcript | Future | None] = [self._shared((digest, key, DECODING)) for _, key in models]
        for i, (load, model_key) in enumerate(models):
            if answers[i] is None:
                answers[i] = self._join(load, (digest, model_key, DECODING), audio)
        return [a.result() if isinstance(a, Future) else a for a in answers]

    def _join(self, load: Callable[[], LoadedModel], key: tuple[str, str, str], audio: np.ndarray) -> Future:
        """The future answer for ``key``: the one already waited for, else a new place in the line (a runner
        started if a lane has none)."""
        with self._answers_lock:
            pending = self._pending.get(key)
        if pending is not None:
            return pending
        loaded = load()  # outside the lock: a model load takes a second; others keep joining and leaving meanwhile
        found = self._shared(key)
        if found is not None:  # answered while this one loaded
            done: Future = Future()
            done.set_result(found)
            return done
        with self._answers_lock:
            if key in self._pending:
                return self._pending[key]
            waiting = _Waiting(key, loaded, audio)
            self._pending[key] = waiting.answer
            self._waiting.append(waiting)
            start = self._runners < self.lanes
            self._runners += start
        if start:
            threading.Thread(target=self._work_off, name="asrq-transcribe", daemon=True).start()
        return waiting.answer

    def _work_off(self) -> None:
        """A runner: in a free lane, answer the oldest waiting request (with the others for its model) until the
        line is empty. Always the oldest, never the runner's own: uploads once waited 40-50 s at the 95th
        percentile while newcomers for other models overtook them."""
        while True:
            with self._lanes:
                with self._answers_lock:
                    if not self._waiting:
                        self._runners -= 1
                        return
                    batch = self._take_batch(self._waiting[0])
                try:
                    self._run_batch(batch)
                finally:
                    with self._answers_lock:
                        self._calls -= 1

    def _take_batch(self, oldest: _Waiting) -> list[_Waiting]:
        """Under _answers_lock: ``oldest`` and the next requests waiting for the same model, out of the line, as
        many as spread the line over the lanes not in a call (its length / those lanes, rounded up, at most
        ``max_batch``): a batch makes each of its requests wait for the whole call, so two requests and two free
        lanes are two calls at once, and only a line longer than the free lanes is worked off in batches."""
        same = [w for w in self._waiting if w.loaded is oldest.loaded and w.key[1:] == oldest.key[1:]]
        free = max(1, self.lanes - self._calls)
        size = min(self.max_batch, -(-len(self._waiting) // free))
        batch = [oldest] + [w for w in same if w is not oldest][: size - 1]
        self._calls += 1
        for w in batch:
            self._waiting.remove(w)
        return batch

    def _run_batch(self, batch: list[_Waiting]) -> None:
        """In a lane: answer the requests of ``batch`` (one model, each clip once) in one call."""
        try:
            start = time.perf_counter()
            decoded = transcribe_detailed(batch[0].loaded, [w.audio for w in batch],
                                          tokens_per_second=LOOP_GUARD_TOKENS_PER_SECOND)
            seconds = time.perf_counter() - start
        except Exception as exc:  # every request of the batch (and whoever follows it) gets the failure, none waits
            with self._answers_lock:
                for w in batch:
                    self._pending.pop(w.key, None)
            for w in batch:
                w.answer.set_exception(exc)
            return
        with self._answers_lock:
            self.model_calls += 1
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            waiting = len(self._waiting)
            for w, d in zip(batch, decoded):
                self._answers[w.key] = Transcript(d.text, seconds, cut=d.cut)
                self._pending.pop(w.key, None)
            while len(self._answers) > self._kept:
                self._answers.popitem(last=False)
        log.info("model call %s: %d clip(s), %.1f s of audio, %.3f s, %d cut by the loop guard; %d waiting",
                 batch[0].key[1], len(batch), sum(len(w.audio) for w in batch) / SAMPLE_RATE, seconds,
                 sum(d.cut for d in decoded), waiting)
        for w, d in zip(batch, decoded):
            w.answer.set_result(Transcript(d.text, seconds, cut=d.cut))
