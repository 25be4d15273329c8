"""Audio in: any file soundfile can decode (wav, flac, ogg, mp3) or a raw array, out: 16 kHz mono float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from engine.errors import AudioError

SAMPLE_RATE = 16_000  # Whisper's input rate
SILENCE_PEAK = 1e-4  # below -80 dBFS the clip holds nothing to transcribe
MAX_SAMPLE_RATE = 384_000  # the highest rate audio interfaces record at; FLAC's headers allow 655,350 Hz
DECODE_BLOCK_FRAMES = 1 << 16  # files are decoded, mixed down and resampled this many frames at a time


def _header(path: Path):
    """soundfile's header info (no decoding), or one sentence for a missing, empty or non-audio file."""
    if not path.is_file():
        raise AudioError(f"The audio file {path} does not exist.")
    if path.stat().st_size == 0:
        raise AudioError(f"The audio file {path.name} is empty (0 bytes).")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path.name} is not a readable audio file (wav, flac, ogg or mp3 expected).") from exc


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the header alone (cheap: no decoding)."""
    info = _header(Path(path))
    return info.frames / info.samplerate if info.samplerate else 0.0


def load_audio(path: str | Path, max_seconds: float | None = None, max_bytes: int | None = None) -> np.ndarray:
    """Decode a file to a 16 kHz mono float32 array in [-1, 1].

    The size and duration caps are checked from the file system and the header, before any decoding.
    Raises AudioError (one sentence) for missing, empty, corrupt, non-audio, silent, too big or too long input.
    """
    path = Path(path)
    if max_bytes is not None and path.is_file() and path.stat().st_size > max_bytes:
        raise AudioError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit here is "
                         f"{max_bytes / 2**20:.0f} MB.")
    info = _header(path)
    duration = info.frames / info.samplerate if info.samplerate else 0.0
    if max_seconds is not None and duration > max_seconds:
        raise AudioError(
            f"{path.name} is {duration / 60:.1f} minutes long; the limit here is {max_seconds / 60:.1f} minutes."
        )
    if not 0 < info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path.name} has a sample rate of {info.samplerate:,} Hz; up to {MAX_SAMPLE_RATE:,} Hz "
                         "is accepted.")
    try:
        samples = _decode_mono_16k(path, info.samplerate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path.name} could not be decoded: the file is damaged or not audio.") from exc
    except MemoryError as exc:  # a header claiming more samples than memory holds
        raise AudioError(f"{path.name} is too large to decode here ({duration / 60:.0f} minutes).") from exc
    return prepare_audio(samples, SAMPLE_RATE, name=path.name)


def _decode_mono_16k(path: Path, rate: int) -> np.ndarray:
    """Decode block by block, mixing down and resampling as it goes: memory holds one block and the 16 kHz
    mono result, whatever rate and channel count the header claims (a wide file never exists in full).
    float32 output normalises 8/16/24/32-bit integer and float sources alike."""
    resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ") if rate != SAMPLE_RATE else None
    parts = []
    with sf.SoundFile(str(path)) as f:
        for block in f.blocks(blocksize=DECODE_BLOCK_FRAMES, dtype="float32", always_2d=True):
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            parts.append(resampler.resample_chunk(mono) if resampler else mono.copy())
    if resampler:
        parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def prepare_audio(samples: np.ndarray, sample_rate: int, name: str = "the audio") -> np.ndarray:
    """Mix to mono, scale integers to [-1, 1], resample to 16 kHz, and reject unusable signals.

    samples: (frames,) or (frames, channels), any integer or float dtype.
    """
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError(f"{name} contains no audio samples.")
    if sample_rate is None or sample_rate <= 0:
        raise AudioError(f"{name} has an invalid sample rate ({sample_rate}).")
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        # Unsigned 8-bit PCM is centred on 128.
        offset = (info.max + 1) / 2 if info.min == 0 else 0.0
        samples = (samples.astype(np.float64) - offset) / max(abs(info.min - offset), info.max - offset)
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"{name} has an unsupported sample type ({samples.dtype}).")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    elif samples.ndim != 1:
        raise AudioError(f"{name} has an unexpected shape {samples.shape}; expected (frames,) or (frames, channels).")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name} contains invalid samples (NaN or infinity).")
    if sample_rate != SAMPLE_RATE:
        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    if samples.size == 0 or float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise AudioError(f"{name} is silent: there is no speech to transcribe.")
    return np.clip(samples, -1.0, 1.0)
