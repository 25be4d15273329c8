"""Real low-bit kernels: the int4 kernel computes exactly what the fake-quantized layer computes."""

from __future__ import annotations

import pytest
import torch

from engine.quant.formats import IntFormat, rtn_quantize
from engine.quant.kernels import Int4Linear, int4_supported, int8_dynamic


def test_int4_kernel_matches_the_dequantized_layer():
    torch.manual_seed(0)
    w, b = torch.randn(96, 256) * 0.05, torch.randn(96)
    qt = rtn_quantize(w, IntFormat(4, 64))
    assert int4_supported(qt)
    x = torch.randn(3, 7, 256)
    expected = torch.nn.functional.linear(x, qt.dequantize(), b)
    torch.testing.assert_close(Int4Linear(qt, b)(x), expected, atol=1e-4, rtol=1e-4)


def test_int4_kernel_eligibility():
    w = torch.randn(8, 256)
    assert not int4_supported(rtn_quantize(w, IntFormat(3, 64)))
    assert not int4_supported(rtn_quantize(w, IntFormat(4, 64, symmetric=True)))
    assert not int4_supported(rtn_quantize(w, IntFormat(4, -1)))


@pytest.mark.slow
def test_int8_dynamic_transcribes(tiny):
    from engine.speech.audio import load_audio
    from engine.speech.samples import sample_clips
    from engine.speech.transcribe import transcribe

    model = int8_dynamic(tiny)
    assert "quantized.dynamic" in type(model.model.model.encoder.layers[0].fc1).__module__
    clip = next(c for c in sample_clips() if c.name == "demo-05")
    assert "quick brown fox" in transcribe(model, [load_audio(clip.path)])[0].lower()
