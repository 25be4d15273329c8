"""The output layer laid out for decoding: the same values, still tied, the same transcripts on real clips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.whisper.decoding_layout import laid_out_for_decoding, lay_out_for_decoding


class _TiedHead(nn.Module):
    """A token embedding (vocab, d) tied to an output layer, as in Whisper."""

    def __init__(self, vocab: int = 50, d: int = 8, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, dtype=dtype)
        self.proj_out = nn.Linear(d, vocab, bias=False, dtype=dtype)
        self.proj_out.weight = self.embed.weight


def test_the_same_values_column_major_and_still_tied():
    torch.manual_seed(0)
    model = _TiedHead()
    before = model.proj_out.weight.detach().clone()
    hidden = torch.randn(3, 8)
    logits = model.proj_out(hidden)
    assert lay_out_for_decoding(model) and laid_out_for_decoding(model)
    weight = model.proj_out.weight
    assert weight is model.embed.weight and torch.equal(weight, before) and weight.shape == (50, 8)
    assert weight.t().is_contiguous() and not weight.is_contiguous()
    assert torch.allclose(model.proj_out(hidden), logits, rtol=0, atol=1e-5)
    ids = torch.tensor([[0, 7, 49]])
    assert torch.equal(model.embed(ids), before[ids])
    assert not lay_out_for_decoding(model)  # once is enough


@pytest.mark.parametrize("make", [lambda: _TiedHead(dtype=torch.float16), lambda: nn.Linear(8, 50)])
def test_other_heads_are_left_alone(make):
    model = make()
    assert not lay_out_for_decoding(model) and not laid_out_for_decoding(model)


def test_an_emptied_compact_head_is_left_alone():
    model = _TiedHead()
    model.proj_out.weight = nn.Parameter(torch.empty(0))
    assert not lay_out_for_decoding(model)


@pytest.mark.slow
def test_real_transcripts_are_the_same_and_the_server_loads_it_so(test_other):
    from engine.speech.audio import load_audio
    from engine.speech.evaluate import load_dataset
    from engine.speech.transcribe import transcribe
    from engine.whisper.models import load_model
    from serving.policy import ServingPolicy

    audios = [load_audio(u.path) for u in load_dataset(test_other)[:8]]
    loaded = load_model("tiny.en")  # its own copy: the session's model stays as it loads
    row_major = transcribe(loaded, audios, batch_size=1) + transcribe(loaded, audios, batch_size=4)
    assert lay_out_for_decoding(loaded.model)
    assert transcribe(loaded, audios, batch_size=1) + transcribe(loaded, audios, batch_size=4) == row_major
    assert laid_out_for_decoding(ServingPolicy().load_model("tiny.en").model)
