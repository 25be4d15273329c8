"""Microphone recording for the CLI (optional: needs the sounddevice package and PortAudio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from engine.errors import UserError
from engine.speech.audio import SAMPLE_RATE


class MicrophoneUnavailableError(UserError):
    """No PortAudio library, no sounddevice package, or no input device."""


def _sounddevice():
    try:
        import sounddevice
    except ImportError as exc:
        raise MicrophoneUnavailableError(
            "Recording needs the optional sounddevice package: pip install '.[mic]'."
        ) from exc
    except OSError as exc:  # raised at import when the PortAudio shared library is missing
        raise MicrophoneUnavailableError(
            "Recording needs the PortAudio library (Debian/Ubuntu: apt-get install libportaudio2)."
        ) from exc
    return sounddevice


def record(seconds: float, out: str | Path) -> Path:
    """Record mono 16 kHz audio from the default input device into a WAV file."""
    if not 0 < seconds <= 600:
        raise UserError(f"Recording length must be between 0 and 600 seconds, not {seconds}.")
    sd = _sounddevice()
    try:
        sd.check_input_settings(samplerate=SAMPLE_RATE, channels=1)
        samples = sd.rec(int(seconds * SAMPLE_RATE), samplerate=SAMPLE_RATE, channels=1, dtype="float32")
        sd.wait()
    except (sd.PortAudioError, ValueError) as exc:
        raise MicrophoneUnavailableError(f"No usable microphone was found ({exc}).") from exc
    out = Path(out)
    sf.write(str(out), np.asarray(samples)[:, 0], SAMPLE_RATE, subtype="PCM_16")
    return out
