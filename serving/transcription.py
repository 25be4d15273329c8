"""Transcriptions for every visitor of one server: bounded, one at a time on the CPU, and shared.

In a workshop most requests transcribe the same demo clips with the same few models, so each answer is
kept by (audio content, model, run, decoding) and handed to the next visitor who asks for it without
touching the model. Audio is keyed by its decoded samples, so the same clip uploaded under another name
or served from gradio's cache is the same key.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from engine.models import LoadedModel
from engine.transcribe import transcribe
from serving.admission import Admission

DECODING = "greedy"  # the page's decoding; part of the key so that another decoding never shares an answer


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float  # how long the model took when it ran (for a shared answer: the first time)
    shared: bool = False  # answered from the cache


def audio_key(audio: np.ndarray) -> str:
    """A digest of the decoded samples (float32, 16 kHz mono)."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


class TranscriptionDesk:
    """At most ``capacity`` transcriptions running or waiting (one per session); ``kept`` answers shared."""

    def __init__(self, capacity: int = 8, kept: int = 2048):
        self.admission = Admission(capacity, "transcription")
        self._kept = kept
        self._answers: OrderedDict[tuple[str, str, str], Transcript] = OrderedDict()
        self._answers_lock = threading.Lock()
        self._cpu = threading.Lock()  # one model call at a time: two would only share the same cores
        self.model_calls = 0

    @contextmanager
    def entered(self, session: str | None) -> Iterator[None]:
        """A place in the bounded waiting room for the whole request (BusyError in one sentence when full)."""
        with self.admission.enter(session):
            yield

    def _shared(self, key: tuple[str, str, str]) -> Transcript | None:
        with self._answers_lock:
            found = self._answers.get(key)
            if found is not None:
                self._answers.move_to_end(key)
        return None if found is None else Transcript(found.text, found.seconds, shared=True)

    def transcribe(self, loaded: LoadedModel, model_key: str, audio: np.ndarray, digest: str | None = None) -> Transcript:
        """The transcript of ``audio`` by ``loaded`` (named ``model_key``: a model name, or name/run id)."""
        key = (digest or audio_key(audio), model_key, DECODING)
        found = self._shared(key)
        if found is not None:
            return found
        with self._cpu:
            found = self._shared(key)  # a visitor ahead in the line may have just asked the same
            if found is not None:
                return found
            start = time.perf_counter()
            text = transcribe(loaded, [audio])[0]
            answer = Transcript(text, time.perf_counter() - start)
            self.model_calls += 1
        with self._answers_lock:
            self._answers[key] = answer
            while len(self._answers) > self._kept:
                self._answers.popitem(last=False)
        return answer
