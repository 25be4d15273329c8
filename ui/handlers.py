"""Plain functions behind the page's events: UI values in, display values out.

The only place where gradio meets the engine: engine errors become gr.Error with the engine's sentence.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field

import gradio as gr

from engine.audio import SAMPLE_RATE, load_audio
from engine.errors import UserError
from engine.evaluate import TextScorer
from engine.model_cache import ModelCache
from engine.samples import SampleClip, sample_clips
from engine.transcribe import transcribe

MAX_AUDIO_SECONDS = 10 * 60  # the page transcribes up to ten minutes; the CLI has no limit


@dataclass
class Explorer:
    """What the page's handlers share: the model cache, the sample clips, the scorer."""

    models: ModelCache = field(default_factory=ModelCache)
    samples: dict[str, SampleClip] = field(default_factory=lambda: {c.name: c for c in sample_clips()})
    scorer: TextScorer = field(default_factory=TextScorer)

    def sample_path(self, name: str | None) -> str | None:
        clip = self.samples.get(name or "")
        return str(clip.path) if clip else None

    def sample_choices(self) -> list[tuple[str, str]]:
        return [(f"{c.name}: {c.transcript[:60]}", c.name) for c in self.samples.values()]

    def transcribe_audio(self, audio_path: str | None, model_name: str, sample_name: str | None = None):
        """Transcribe one file with the full-precision model; returns (text, details markdown)."""
        if not audio_path:
            raise gr.Error("Choose a sample clip, upload a file or record something first.")
        try:
            audio = load_audio(audio_path, max_seconds=MAX_AUDIO_SECONDS)
            loaded = self.models.get(model_name)
            start = time.perf_counter()
            text = transcribe(loaded, [audio])[0]
            elapsed = time.perf_counter() - start
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        seconds = len(audio) / SAMPLE_RATE
        details = f"**{seconds:.1f} s** of audio in **{elapsed:.2f} s** (real-time factor {elapsed / seconds:.3f})"
        clip = self.samples.get(sample_name or "")
        # gradio hands over a cached copy of the sample, which keeps the file name.
        if clip is not None and Path(audio_path).name == clip.path.name:
            wer, _ = self.scorer.score([clip.transcript], [text])
            details += f"  \nReference: *{clip.transcript}*  \nWER: **{100 * wer:.1f}%**"
        return text, details
