"""Audio to text with a LoadedModel: batched greedy decoding, long-form audio transcribed whole.

Optionally with a token budget per clip (a loop guard: a model caught in a repetition loop stops at a number of
tokens in proportion to the clip's length instead of the decoder's 448, which takes a short clip ~10 s on one
core), and optionally with Whisper's temperature fallback (what openai-whisper and faster-whisper do by default): a
window whose tokens compress too well (a repetition loop) or whose mean log-probability is too low is
decoded again at the next temperature, sampling, seeded so that the same model gives the same text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from engine.progress import ProgressFn
from engine.speech.audio import SAMPLE_RATE
from engine.whisper.models import LoadedModel

CHUNK_SECONDS = 30  # Whisper's fixed input window
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai-whisper's schedule
# transformers measures the zlib compression ratio on the tokens, not on the text: its documented
# counterpart of openai-whisper's 2.4 is 1.35.
COMPRESSION_RATIO_THRESHOLD = 1.35
LOGPROB_THRESHOLD = -1.0  # mean log-probability per token below which a window is decoded again
FALLBACK_SEED = 0
# The loop guard's budget: openai-whisper samples at most 224 tokens (half the decoder's context) for a 30 s window,
# 7.5 a second; the fastest of 166 real and synthetic clips here took tiny.en 3.9 tokens a second (median 3.0).
LOOP_GUARD_TOKENS_PER_SECOND = 8.0
LOOP_GUARD_MIN_TOKENS = 16  # a clip of a second or two may still say a short sentence


@dataclass(frozen=True)
class Decoded:
    text: str
    cut: bool = False  # stopped by the token budget before the model ended the transcript itself


def token_budget(seconds: float, tokens_per_second: float = LOOP_GUARD_TOKENS_PER_SECOND) -> int:
    """New tokens a clip of ``seconds`` may take under the loop guard."""
    return LOOP_GUARD_MIN_TOKENS + math.ceil(tokens_per_second * seconds)


class TokenBudget(StoppingCriteria):
    """Stops each row of a batch after its own number of new tokens (budgets: (batch,)), recording which rows it
    stopped before they ended themselves (``cut``). A row that ends by itself within its budget is untouched, so a
    transcript that is not a loop is the same with and without it."""

    def __init__(self, budgets: Sequence[int], end_of_text: int):
        self.budgets = torch.tensor(list(budgets))
        self.end_of_text = end_of_text
        self.prompt: int | None = None  # the decoder prompt's length, seen at the first step
        self.cut = [False] * len(self.budgets)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.prompt is None:
            self.prompt = input_ids.shape[1] - 1  # called after each new token
        at_limit = (input_ids.shape[1] - self.prompt) >= self.budgets.to(input_ids.device)
        if at_limit.any():
            ended = (input_ids[:, self.prompt:] == self.end_of_text).any(dim=1)
            for row in (at_limit & ~ended).nonzero().flatten().tolist():
                self.cut[row] = True
        return at_limit


class SuppressTokens(LogitsProcessor):
    """transformers' SuppressTokensLogitsProcessor (the same scores out) with its mask built once: that one rebuilds
    it with torch.isin over the whole vocabulary at every decoding step, about 5 ms a step on one thread, a sixth
    of a short clip's transcription with tiny.en."""

    def __init__(self, tokens: Sequence[int]):
        self.tokens = list(tokens)
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if self._mask is None or self._mask.shape[0] != vocab:
            mask = torch.zeros(vocab, dtype=torch.bool)
            mask[[t for t in self.tokens if 0 <= t < vocab]] = True
            self._mask = mask
        return torch.where(self._mask.to(scores.device), -float("inf"), scores)


class SuppressTokensAtBegin(SuppressTokens):
    """transformers' SuppressTokensAtBeginLogitsProcessor (the same scores out) with its mask built once and
    applied only at the first generated token: that one builds the mask at every step, though it uses it at one,
    about 0.4 ms a step on one thread (3% of a decoding step of tiny.en; torch.profiler, a one-off). Whisper's generate sets the prompt's
    length through set_begin_index, as for its own."""

    def __init__(self, tokens: Sequence[int], begin_index: int = 0):
        super().__init__(tokens)
        self.begin_index = begin_index

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.begin_index:
            return scores
        return super().__call__(input_ids, scores)


def _generate(loaded: LoadedModel, batch: Sequence[np.ndarray], long_form: bool, language: str | None,
              fallback: bool, tokens_per_second: float | None = None) -> list[Decoded]:
    extractor = loaded.feature_extractor
    if long_form:
        # Keep the full length; transformers' generate walks it window by window using timestamps.
        inputs = extractor(list(batch), sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                           padding="longest", return_attention_mask=True)
    else:
        inputs = extractor(list(batch), sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    kwargs = dict(num_beams=1, do_sample=False, return_timestamps=long_form)
    if long_form:
        kwargs["condition_on_prev_tokens"] = False
    suppress = loaded.model.generation_config.suppress_tokens
    begin_suppress = loaded.model.generation_config.begin_suppress_tokens
    if (suppress or begin_suppress) and not long_form:
        # Whisper's generate puts its suppression first and the timestamp rule after it, which reads the masked
        # scores; short-form decoding has no timestamp rule, so only masks meet here and their order is moot.
        processors = [SuppressTokens(suppress)] if suppress else []
        processors += [SuppressTokensAtBegin(begin_suppress)] if begin_suppress else []
        kwargs.update(suppress_tokens=None, begin_suppress_tokens=None, logits_processor=LogitsProcessorList(processors))
    if loaded.tokens.is_multilingual:
        kwargs.update(language=language or "en", task="transcribe")
    budget = None
    if tokens_per_second is not None and not long_form:  # long-form decodes window by window: no one budget
        budget = TokenBudget([token_budget(len(a) / SAMPLE_RATE, tokens_per_second) for a in batch],
                             loaded.tokens.end_of_text)
        kwargs["stopping_criteria"] = StoppingCriteriaList([budget])
    if fallback:
        kwargs.update(temperature=FALLBACK_TEMPERATURES, compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
                      logprob_threshold=LOGPROB_THRESHOLD)
    # Only the fallback samples; its fork keeps the seeding from touching the caller's random state.
    with torch.inference_mode(), torch.random.fork_rng(enabled=fallback):
        if fallback:
            torch.manual_seed(FALLBACK_SEED)
        out = loaded.model.generate(inputs.input_features, attention_mask=inputs.attention_mask, **kwargs)
    sequences = out["sequences"] if isinstance(out, dict) else out
    cut = budget.cut if budget is not None else [False] * len(batch)
    return [Decoded(loaded.tokens.decode(seq.tolist()), stopped) for seq, stopped in zip(sequences, cut)]


def transcribe(
    loaded: LoadedModel,
    audios: Sequence[np.ndarray],
    batch_size: int = 8,
    language: str | None = None,
    progress: ProgressFn | None = None,
    fallback: bool = False,
) -> list[str]:
    """Transcribe 16 kHz mono float32 arrays; returns one text per input, in order.

    Clips up to 30 s are batched together; longer clips are transcribed whole (long-form). fallback: Whisper's
    temperature fallback instead of greedy decoding alone.
    """
    return [d.text for d in transcribe_detailed(loaded, audios, batch_size, language, progress, fallback)]


def transcribe_detailed(loaded: LoadedModel, audios: Sequence[np.ndarray], batch_size: int = 8,
                        language: str | None = None, progress: ProgressFn | None = None, fallback: bool = False,
                        tokens_per_second: float | None = None) -> list[Decoded]:
    """transcribe(), saying of each text whether the loop guard cut it: with ``tokens_per_second`` a clip of up to
    30 s stops after token_budget(its seconds) new tokens (LOOP_GUARD_TOKENS_PER_SECOND is the page's)."""
    if fallback and tokens_per_second is not None:
        raise ValueError("the loop guard and the temperature fallback do not combine: the fallback redoes loops")
    texts: list[Decoded | None] = [None] * len(audios)
    limit = CHUNK_SECONDS * SAMPLE_RATE
    short = [i for i, a in enumerate(audios) if len(a) <= limit]
    long = [i for i, a in enumerate(audios) if len(a) > limit]
    # Sort by length so each batch pads little.
    batches = [(sorted(short, key=lambda i: len(audios[i])), False), (long, True)]
    done = 0
    with loaded.in_use():
        for indices, long_form in batches:
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                decoded = _generate(loaded, [audios[i] for i in chunk], long_form, language, fallback,
                                    tokens_per_second)
                for i, text in zip(chunk, decoded):
                    texts[i] = text
                done += len(chunk)
                if progress:
                    progress(done / max(len(audios), 1), f"transcribed {done}/{len(audios)}")
    return [t or Decoded("") for t in texts]
