"""Real transcription: the JFK clip in its hardest encoding, and long-form audio transcribed whole."""

from __future__ import annotations

import numpy as np
import pytest

from engine.speech.audio import SAMPLE_RATE, load_audio
from engine.speech.evaluate import TextScorer, load_dataset
from engine.speech.transcribe import transcribe

from tests.helpers import speech_dir

pytestmark = pytest.mark.slow


def test_jfk_44k_stereo_24bit_flac(tiny):
    text = transcribe(tiny, [load_audio(speech_dir("jfk") / "jfk.flac")])[0]
    assert "ask not what your country can do for you" in TextScorer().normalize(text)


def test_sixty_seconds_are_transcribed_whole(tiny, test_other):
    utterances = load_dataset(test_other)
    clips, refs = [], []
    for u in utterances:  # concatenate real clips until there is a minute of speech
        clips.append(load_audio(u.path))
        refs.append(u.reference)
        if sum(map(len, clips)) >= 60 * SAMPLE_RATE:
            break
    long_audio = np.concatenate(clips)
    assert len(long_audio) >= 60 * SAMPLE_RATE
    text = transcribe(tiny, [long_audio])[0]
    wer, _ = TextScorer().score([" ".join(refs)], [text])
    assert wer < 0.35, (wer, text)
    # The last clip's words are there: nothing after 30 s was cut.
    last_words = TextScorer().normalize(refs[-1]).split()[-3:]
    assert sum(w in TextScorer().normalize(text) for w in last_words) >= 2, text


def test_batched_and_single_decoding_agree(tiny):
    from engine.speech.samples import sample_clips

    audios = [load_audio(c.path) for c in sample_clips()[:4]]
    assert transcribe(tiny, audios, batch_size=4) == [transcribe(tiny, [a])[0] for a in audios]


def test_temperature_fallback_breaks_the_loops_of_a_collapsed_model(tiny, test_other):
    from engine.quant.registry import make_config
    from engine.quant.quantize import quantize

    # Two clips on which RTN 3-bit tiny.en loops under greedy decoding (17 words each, 220+ decoded).
    utterances = [u for u in load_dataset(test_other) if u.id in ("1998-15444-0003", "2414-128291-0004")]
    audios = [load_audio(u.path) for u in utterances]
    refs = [u.reference for u in utterances]
    # RTN at 3 bits on the integer-zero grid (bench/results/decoding.md: 171.7% WER greedy, 52.6% with the
    # fallback); the default float-minimum grid no longer loops on these two clips.
    collapsed = quantize(tiny, make_config("rtn", bits=3, integer_zero=True)).loaded
    scorer = TextScorer()
    greedy = transcribe(collapsed, audios)
    fallback = transcribe(collapsed, audios, fallback=True)
    assert any(len(h.split()) > 2 * len(r.split()) for h, r in zip(greedy, refs)), greedy  # it does loop here
    assert scorer.score(refs, fallback)[0] < 0.7 * scorer.score(refs, greedy)[0]
    # A confident full-precision model never needs the fallback: the same text as greedy decoding.
    jfk = [load_audio(speech_dir("jfk") / "jfk.wav")]
    assert transcribe(tiny, jfk, fallback=True) == transcribe(tiny, jfk)


def test_suppression_built_once_gives_transformers_own_scores_and_transcripts(tiny, test_other, monkeypatch):
    import torch
    from transformers import SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor

    from engine.speech.transcribe import SuppressTokens, SuppressTokensAtBegin

    tokens = tiny.model.generation_config.suppress_tokens
    scores = torch.randn(3, tiny.model.config.vocab_size)
    ids = torch.zeros(3, 1, dtype=torch.long)
    assert torch.equal(SuppressTokens(tokens)(ids, scores), SuppressTokensLogitsProcessor(tokens)(ids, scores))
    begin = tiny.model.generation_config.begin_suppress_tokens
    ours, theirs = SuppressTokensAtBegin(begin), SuppressTokensAtBeginLogitsProcessor(begin, begin_index=0)
    ours.set_begin_index(2)
    theirs.set_begin_index(2)
    for length in (2, 3):  # at the first generated token (masked) and after it (untouched)
        ids = torch.zeros(3, length, dtype=torch.long)
        assert torch.equal(ours(ids, scores), theirs(ids, scores))
    assert torch.isinf(ours(torch.zeros(3, 2, dtype=torch.long), scores)[:, begin]).all()
    # transformers' own decoding (its per-step suppression) of real clips gives the very same text
    audios = [load_audio(u.path) for u in load_dataset(test_other)[:4]]
    inputs = tiny.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    with torch.inference_mode():
        out = tiny.model.generate(inputs.input_features, attention_mask=inputs.attention_mask, num_beams=1,
                                  do_sample=False)
    # Whisper's generate tells the begin-suppression where the prompt ends: it masks at the first generated token
    # only (a transcript rarely shows it, so the masks are watched)
    masked_at: list[tuple[int, bool]] = []
    real_call = SuppressTokensAtBegin.__call__

    def watched(self, input_ids, scores):
        out = real_call(self, input_ids, scores)
        masked_at.append((input_ids.shape[-1], bool(torch.isinf(out[:, begin]).all())))
        return out

    monkeypatch.setattr(SuppressTokensAtBegin, "__call__", watched)
    assert transcribe(tiny, audios) == [tiny.tokens.decode(seq.tolist()) for seq in out]
    prompt = masked_at[0][0]
    assert prompt >= 1 and masked_at[0][1] and not any(masked for _, masked in masked_at[1:])
    assert [length for length, _ in masked_at] == list(range(prompt, prompt + len(masked_at)))


def test_token_budget_stops_each_row_at_its_own_length_and_names_the_rows_it_cut():
    import torch

    from engine.speech.transcribe import TokenBudget

    end = 9
    budget = TokenBudget([2, 3, 3], end_of_text=end)
    prompt = [[5, 6]] * 3
    steps = [[1, 1, end], [1, 2, end], [1, 3, end]]  # row 2 ends by itself at its first token
    seen = []
    for k in range(1, len(steps) + 1):
        ids = torch.tensor([p + [s[r] for s in steps[:k]] for r, p in enumerate(prompt)])
        seen.append(budget(ids, None).tolist())
    assert seen == [[False, False, False], [True, False, False], [True, True, True]]
    assert budget.cut == [True, True, False]


def test_loop_guard_cuts_a_looping_model_and_leaves_every_other_transcript_alone(tiny, test_other):
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.speech.transcribe import LOOP_GUARD_TOKENS_PER_SECOND, token_budget, transcribe_detailed

    audios = [load_audio(u.path) for u in load_dataset(test_other)[:6]]
    guarded = transcribe_detailed(tiny, audios, tokens_per_second=LOOP_GUARD_TOKENS_PER_SECOND)
    assert [d.text for d in guarded] == transcribe(tiny, audios) and not any(d.cut for d in guarded)

    collapsed = quantize(tiny, make_config("rtn", bits=2, group_size=64)).loaded  # loops on most real clips
    guarded = transcribe_detailed(collapsed, audios, batch_size=1, tokens_per_second=LOOP_GUARD_TOKENS_PER_SECOND)
    cut = [i for i, d in enumerate(guarded) if d.cut]
    assert cut, [d.text for d in guarded]
    for i in cut:
        assert len(collapsed.tokens.encode(guarded[i].text)) <= token_budget(len(audios[i]) / SAMPLE_RATE)
    i = cut[0]  # the guard only stops early: the same greedy tokens up to its budget
    unguarded = transcribe(collapsed, [audios[i]])[0]
    assert len(unguarded) > len(guarded[i].text) and unguarded.startswith(guarded[i].text.rstrip())
