"""Evaluation data, WER/CER after Whisper's English normalizer, and real-time factor."""

from __future__ import annotations

import csv
import random
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from engine.errors import DatasetError
from engine.progress import ProgressFn
from engine.speech.audio import SAMPLE_RATE, load_audio
from engine.speech.transcribe import transcribe
from engine.whisper.models import LoadedModel

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


LIBRISPEECH_ID = re.compile(r"^(\d+)-\d+-\d+$")  # speaker-chapter-utterance
VOICE_COLUMNS = ("voice", "speaker")  # refs.tsv columns that name who speaks


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    reference: str
    voice: str = ""  # declared by a refs.tsv voice/speaker column; "" when the folder does not say

    @property
    def speaker(self) -> str:
        """Who speaks: the declared voice, else the LibriSpeech speaker id in the name, else the folder."""
        if self.voice:
            return self.voice
        match = LIBRISPEECH_ID.match(self.id)
        return f"librispeech-{match.group(1)}" if match else f"folder:{self.path.parent.name}"


def _find_audio(folder: Path, stem_or_name: str) -> Path | None:
    direct = folder / stem_or_name
    if direct.suffix.lower() in AUDIO_SUFFIXES and direct.is_file():
        return direct
    for suffix in AUDIO_SUFFIXES:
        candidate = folder / f"{stem_or_name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_refs_tsv(path: Path) -> list[Utterance]:
    """filename TAB transcript [TAB extra columns...]; a header line is allowed, and a header column named
    voice or speaker says who speaks each clip."""
    utterances = []
    voice_column = None
    with path.open(newline="", encoding="utf-8") as f:
        for row_number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
            if len(row) < 2 or not row[0].strip():
                continue
            audio = _find_audio(path.parent, row[0].strip())
            if audio is None:
                if row_number == 0:  # header
                    names = [c.strip().lower() for c in row]
                    voice_column = next((names.index(c) for c in VOICE_COLUMNS if c in names), None)
                    continue
                raise DatasetError(f"{path} line {row_number + 1} names {row[0]!r}, which is not in {path.parent}.")
            voice = row[voice_column].strip() if voice_column is not None and voice_column < len(row) else ""
            utterances.append(Utterance(audio.stem, audio, row[1].strip(), voice))
    return utterances


def _read_librispeech(folder: Path) -> list[Utterance]:
    """LibriSpeech layout: speaker/chapter/*.trans.txt with 'utt-id TRANSCRIPT' lines."""
    utterances = []
    for trans in sorted(folder.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.partition(" ")
            audio = _find_audio(trans.parent, utt_id)
            if audio is None:
                raise DatasetError(f"{trans} lists {utt_id}, but no audio file of that name is beside it.")
            utterances.append(Utterance(utt_id, audio, text.strip()))
    return utterances


def load_dataset(folder: str | Path) -> list[Utterance]:
    """Utterances of a data folder with refs.tsv or LibriSpeech *.trans.txt files, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The data folder {folder} does not exist.")
    if (folder / "refs.tsv").is_file():
        utterances = _read_refs_tsv(folder / "refs.tsv")
    else:
        utterances = _read_librispeech(folder)
    if not utterances:
        raise DatasetError(f"{folder} has no refs.tsv or LibriSpeech *.trans.txt transcripts with matching audio.")
    return sorted(utterances, key=lambda u: u.id)


def _stratified_order(utterances: Sequence[Utterance], n: int, rng: random.Random) -> list[int]:
    """n indices, each declared voice getting its share of n (largest remainder), shuffled within the voice."""
    strata: dict[str, list[int]] = {}
    for i, u in enumerate(utterances):
        strata.setdefault(getattr(u, "voice", ""), []).append(i)
    quotas = {v: n * len(idx) / len(utterances) for v, idx in strata.items()}
    counts = {v: int(q) for v, q in quotas.items()}
    for v in sorted(quotas, key=lambda v: (counts[v] - quotas[v], v))[: n - sum(counts.values())]:
        counts[v] += 1
    chosen = []
    for v in sorted(strata):
        idx = list(strata[v])
        rng.shuffle(idx)
        chosen += idx[: counts[v]]
    return chosen


def split_calibration(utterances: Sequence[Utterance], n_calibration: int, seed: int) -> tuple[list, list]:
    """Draw n_calibration utterances by seed; the rest is for evaluation. The two never overlap.

    When the clips declare voices (a refs.tsv voice column, as sample_audio does) the draw is stratified:
    each voice gets its share, so a draw never leans on one voice. Otherwise a plain seeded shuffle."""
    if not 0 <= n_calibration <= len(utterances):
        raise DatasetError(f"Cannot draw {n_calibration} calibration clips from {len(utterances)} utterances.")
    rng = random.Random(seed)
    if len({getattr(u, "voice", "") for u in utterances}) > 1:
        chosen = set(_stratified_order(utterances, n_calibration, rng))
    else:
        order = list(range(len(utterances)))
        rng.shuffle(order)
        chosen = set(order[:n_calibration])
    calibration = [u for i, u in enumerate(utterances) if i in chosen]
    evaluation = [u for i, u in enumerate(utterances) if i not in chosen]
    return calibration, evaluation


class TextScorer:
    """WER/CER after Whisper's English normalizer (numbers, spellings, punctuation)."""

    def __init__(self) -> None:
        self._normalize = EnglishTextNormalizer()

    def normalize(self, text: str) -> str:
        return self._normalize(text)

    def word_errors(self, reference: str, hypothesis: str) -> tuple[int, int]:
        """(errors, reference words) of one utterance after normalization; (0, 0) for an empty reference."""
        ref, hyp = self.normalize(reference), self.normalize(hypothesis)
        if not ref.split():
            return 0, 0
        out = jiwer.process_words(ref, hyp if hyp.split() else "")
        return out.substitutions + out.deletions + out.insertions, len(ref.split())

    def error_counts(self, references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[int], list[int]]:
        """Per-utterance (errors, reference words) as two lists, in order: what the bootstrap intervals take."""
        counts = [self.word_errors(r, h) for r, h in zip(references, hypotheses)]
        return [e for e, _ in counts], [w for _, w in counts]

    def score(self, references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, float]:
        """Corpus-level (WER, CER) as fractions; empty normalized references are skipped."""
        pairs = [(self.normalize(r), self.normalize(h)) for r, h in zip(references, hypotheses)]
        pairs = [(r, h) for r, h in pairs if r]
        if not pairs:
            return 0.0, 0.0
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


@dataclass(frozen=True)
class UtteranceResult:
    id: str
    reference: str
    hypothesis: str
    wer: float
    errors: int = 0  # substitutions + deletions + insertions after normalization
    words: int = 0  # reference words after normalization (0: not scored)


@dataclass(frozen=True)
class EvalReport:
    """Corpus scores as fractions; rtf is processing seconds per audio second."""

    n_utterances: int
    wer: float
    cer: float
    rtf: float
    audio_seconds: float
    utterances: tuple[UtteranceResult, ...]

    def to_dict(self, per_utterance: bool = False) -> dict:
        data = asdict(self)
        if not per_utterance:
            data.pop("utterances")
        return data


def evaluate(
    loaded: LoadedModel,
    utterances: Sequence[Utterance],
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    scorer: TextScorer | None = None,
    fallback: bool = False,
) -> EvalReport:
    """Transcribe every utterance with our model in torch and score it; decoding time excludes file loading.

    fallback: Whisper's temperature fallback (engine/speech/transcribe.py) instead of greedy decoding alone."""
    return evaluate_transcriber(
        lambda audios: transcribe(loaded, audios, batch_size=batch_size, progress=progress, fallback=fallback),
        utterances, scorer)


def evaluate_transcriber(transcribe_all: Callable[[list[np.ndarray]], list[str]], utterances: Sequence[Utterance],
                         scorer: TextScorer | None = None) -> EvalReport:
    """Score any transcriber (audios -> texts; a runtime's transcribe) on the utterances, timing the decoding."""
    scorer = scorer or TextScorer()
    audios = [load_audio(u.path) for u in utterances]
    start = time.perf_counter()
    hypotheses = transcribe_all(audios)
    elapsed = time.perf_counter() - start
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    wer, cer = scorer.score([u.reference for u in utterances], hypotheses)
    per_utt = tuple(
        UtteranceResult(u.id, u.reference, h, scorer.score([u.reference], [h])[0], *scorer.word_errors(u.reference, h))
        for u, h in zip(utterances, hypotheses)
    )
    return EvalReport(len(utterances), wer, cer, elapsed / seconds if seconds else 0.0, seconds, per_utt)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else 0.0)
