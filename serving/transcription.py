"""Transcriptions for every visitor of one server: bounded, one at a time on the CPU, and shared.

In a workshop most requests transcribe the same demo clips with the same few models, so each answer is
kept by (audio content, model, run, decoding) and handed to the next visitor who asks for it without
touching the model. Audio is keyed by its decoded samples, so the same clip uploaded under another name
or served from gradio's cache is the same key. Requests that wait for the CPU while another runs are
answered in arrival order and together: whoever gets the CPU next transcribes the oldest waiting request with
the others waiting for its model in one batch (up to ``max_batch``), so a queue of uploads is worked off in
fewer, wider model calls and no request is overtaken by a later one for another model. A request that needs
two models (an upload: full precision and the visitor's run) waits in the line once and is answered by both
in that one turn.

Two bounded rooms, one place per session in each: ``reading`` for decoding a request's audio and looking up
shared answers (quick), ``entered`` for the requests that need the model. A shared answer never waits for,
nor is turned away by, a room full of uploads. ``keep`` takes answers made elsewhere (the worker's transcripts of
the demo clips a run was scored on), and ``answer_ahead`` transcribes likely requests in a thread before anyone
asks (the demo clips with a run whose summary brought none).
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

from engine.speech.transcribe import transcribe
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
    waiting requests for one model answered ``max_batch`` at a time (1: one by one)."""

    def __init__(self, capacity: int = 8, kept: int = 2048, max_batch: int = 4):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.admission = Admission(capacity, "transcription")
        # as many as the transcription room: the decoding memory bound (docs/threat-model.md) stays what it was
        self.reading_room = Admission(capacity, "transcription")
        self._kept = kept
        self.max_batch = max_batch
        self._answers: OrderedDict[tuple[str, str, str], Transcript] = OrderedDict()
        self._answers_lock = threading.Lock()  # guards _answers and _waiting
        self._waiting: list[_Waiting] = []
        self._cpu = threading.Lock()  # one model call at a time: two would only share the same cores
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
        return None if found is None else Transcript(found.text, found.seconds, shared=True)

    def transcribe(self, loaded: LoadedModel, model_key: str, audio: np.ndarray, digest: str | None = None) -> Transcript:
        """The transcript of ``audio`` by ``loaded`` (named ``model_key``: a model name, or name/run id)."""
        return self.transcribe_each([(loaded, model_key)], audio, digest)[0]

    def transcribe_each(self, models: list[tuple[LoadedModel, str]], audio: np.ndarray,
                        digest: str | None = None) -> list[Transcript]:
        """The transcripts of one ``audio`` by several models ((loaded, model_key) each), in one turn on the CPU:
        a request that needs two models (full precision and its quantized run) waits in the line once, not
        once per model."""
        digest = digest or audio_key(audio)
        answers: list[Transcript | None] = [self._shared((digest, key, DECODING)) for _, key in models]
        mine = [_Waiting((digest, key, DECODING), loaded, audio) for (loaded, key), found in zip(models, answers)
                if found is None]
        if mine:
            with self._answers_lock:
                self._waiting.extend(mine)
            with self._cpu:
                # Whoever holds the CPU works off the line from its oldest request, not from its own: a lock
                # hands itself to no one in particular, so serving one's own first let newcomers overtake a
                # request for another model again and again (uploads waited 40-50 s at the 95th percentile).
                while not all(waiting.answer.done() for waiting in mine):
                    with self._answers_lock:
                        oldest = self._waiting[0]
                    self._run_batch(oldest)
        made = iter(mine)
        return [found or next(made).answer.result() for found in answers]

    def _run_batch(self, mine: _Waiting) -> None:
        """Under the CPU lock: answer ``mine`` (the oldest waiting request) and the next requests waiting for the
        same model, in one call."""
        with self._answers_lock:
            batch = [w for w in self._waiting if w.loaded is mine.loaded and w.key[1:] == mine.key[1:]]
            batch = [mine] + [w for w in batch if w is not mine][: self.max_batch - 1]
            for w in batch:
                self._waiting.remove(w)
        todo: dict[tuple[str, str, str], list[_Waiting]] = {}
        for w in batch:
            found = self._shared(w.key)  # answered since it asked (the same clip from another visitor)
            if found is not None:
                w.answer.set_result(found)
            else:
                todo.setdefault(w.key, []).append(w)
        if not todo:
            return
        start = time.perf_counter()
        try:
            texts = transcribe(mine.loaded, [same[0].audio for same in todo.values()])
        except Exception as exc:  # every request of the batch gets the failure, none waits forever
            for same in todo.values():
                for w in same:
                    w.answer.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        self.model_calls += 1
        self.batch_sizes = (self.batch_sizes + [len(todo)])[-1000:]
        with self._answers_lock:
            for (key, same), text in zip(todo.items(), texts):
                answer = Transcript(text, seconds)
                self._answers[key] = answer
                for w in same:
                    w.answer.set_result(answer)
            while len(self._answers) > self._kept:
                self._answers.popitem(last=False)
