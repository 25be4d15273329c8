"""NF4, the General Quantizer and W8A8 activation quantization on small shapes: numbers that can fail."""

from __future__ import annotations

import pytest
import torch

from engine.quant.activation_quant import fake_quant_dynamic, fake_quant_static
from engine.quant.codebook import NF4_LEVELS, CodebookTensor, DoubleQuant, codebook_quantize, nf4_quantize
from engine.quant.config import ConfigError, GQConfig, NF4Config
from engine.quant.formats import IntFormat, rtn_quantize
from engine.quant.layer_table import LayerSpec, LayerTableError
from engine.quant.methods.gq import mu_law_levels, train_codebook
from engine.quant.moments import LayerStats, output_error
from engine.quant.registry import get_method, make_config
from tests.helpers import layer_setup


def test_nf4_levels_are_the_sixteen_qlora_constants_sorted():
    levels = torch.tensor(NF4_LEVELS)
    assert len(levels) == 16 and levels[0] == -1 and levels[-1] == 1 and 0.0 in NF4_LEVELS
    assert torch.all(levels[1:] > levels[:-1])
    assert NF4_LEVELS[8] == pytest.approx(0.07958029955625534, abs=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_codes_round_trip_and_every_weight_is_a_scaled_level(double_quant):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(0))
    qt = nf4_quantize(w, 64, double_quant)
    back = CodebookTensor.from_arrays(qt.to_arrays(), qt.describe())
    assert torch.equal(back.dequantize(), qt.dequantize())
    normalized = (qt.dequantize().reshape(-1, 64) / qt.scales.reshape(-1, 1))
    nearest = (normalized[..., None] - torch.tensor(NF4_LEVELS)).abs().min(dim=-1).values
    assert float(nearest.max()) < 1e-6
    # NF4 is a good 4-bit format for Gaussian weights: less error than uniform 4-bit on the same blocks
    # (absmax-symmetric, as NF4's own scaling, with ggml's q4_0 step |absmax| / 8) and than uniform 4-bit with one
    # grid per output channel.
    nf4_err = float((w - qt.dequantize()).norm() / w.norm())
    for fmt, ratio in ((IntFormat(4, 64, symmetric=True), 0.99), (IntFormat(4, -1), 0.95)):
        uniform_err = float((w - rtn_quantize(w, fmt).dequantize()).norm() / w.norm())
        assert nf4_err < ratio * uniform_err, (fmt, nf4_err, uniform_err)  # measured 0.97 and 0.84


def test_nf4_size_formula_with_and_without_double_quantization():
    w = torch.randn(384, 384)
    n = w.numel()
    plain, dq = nf4_quantize(w, 64, False), nf4_quantize(w, 64, True)
    blocks = n // 64
    assert plain.nbytes() == n // 2 + 4 * blocks  # 4.5 bits per weight
    assert dq.nbytes() == n // 2 + blocks + 4 * -(-blocks // 256) + 4
    assert 8 * dq.nbytes() / n == pytest.approx(4.127, abs=0.002)
    assert 8 * plain.nbytes() / n == pytest.approx(4.5)


def test_double_quantized_scales_stay_close():
    scales = torch.rand(1000) + 0.5
    dq = DoubleQuant.of(scales)
    assert dq.codes.dtype == torch.int8 and len(dq.group_absmax) == 4
    assert float((dq.scales() - scales).abs().max()) < 0.01


def test_nf4_refuses_other_bit_widths_naming_the_layer():
    with pytest.raises(ConfigError):
        NF4Config(bits=3)
    w, _, _, stats, spec = layer_setup()
    with pytest.raises(LayerTableError, match="model.encoder.layers.0.fc1"):
        get_method("nf4").quantize_layer(w, None, spec, NF4Config())


def test_mu_law_levels_are_symmetric_ascending_and_denser_near_zero():
    levels = mu_law_levels(16, 8.0)
    assert torch.allclose(levels, -levels.flip(0)) and levels[0] == -1 and levels[-1] == 1
    gaps = levels[1:] - levels[:-1]
    assert gaps[7] < gaps[0]  # companding puts centroids closer together near zero


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gq_centroids_move_lower_the_output_error_and_end_hard(bits):
    w, _, _, stats, spec = layer_setup(seed=2, d_in=64, d_out=32)
    m = stats.moments()
    config = GQConfig(bits=max(bits, 2), group_size=32, steps=80, train_weights=False)
    levels, _, _ = train_codebook(w, m, 2**bits, 32, config)
    initial = mu_law_levels(2**bits, config.mu)
    assert float((levels - initial).abs().max()) > 1e-3  # the centroids moved
    trained = codebook_quantize(w, levels, bits, 32)
    untrained = codebook_quantize(w, initial, bits, 32)
    assert output_error(w, trained.dequantize(), m) < output_error(w, untrained.dequantize(), m)
    normalized = trained.dequantize().reshape(-1, 32) / trained.scales.reshape(-1, 1)
    assert float((normalized[..., None] - trained.levels).abs().min(dim=-1).values.max()) < 1e-6  # hard
    assert len(torch.unique(trained.codes)) <= 2**bits


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gq_output_error_below_rtn_at_the_same_width(bits):
    w, _, _, stats, spec = layer_setup(seed=3, d_in=64, d_out=32)
    m = stats.moments()
    spec = LayerSpec(spec.name, "encoder", 0, "fc1", 32, 64, bits=bits, group_size=32)
    gq = get_method("gq").quantize_layer(w, stats, spec, make_config("gq", bits=bits, group_size=32))
    rtn = rtn_quantize(w, IntFormat(bits, 32))
    assert output_error(w, gq.quantized.dequantize(), m) < output_error(w, rtn.dequantize(), m)


def test_gq_damping_trades_calibration_fit_for_weight_fidelity():
    # 24 calibration tokens for 64 inputs, as the decoder's wide layers see fewer tokens than inputs. Damping
    # adds lam ||W - Q||^2 to the output-error loss, as GPTQ's damping does: the result stays closer to W
    # and fits the few calibration tokens a little less tightly.
    w, x, x_hat, _, _ = layer_setup(seed=4, d_in=64, d_out=32)
    few = LayerStats(64, splits=2)
    few.add_batch(x[:12], x_hat[:12], split=0)
    few.add_batch(x[12:24], x_hat[12:24], split=1)
    spec = LayerSpec("model.decoder.layers.0.fc2", "decoder", 0, "fc2", 32, 64, bits=3, group_size=32)
    weight_error, calibration_error = {}, {}
    for damping in (0.0, 0.1):
        config = make_config("gq", bits=3, group_size=32, damping=damping)
        q = get_method("gq").quantize_layer(w, few, spec, config).quantized.dequantize()
        weight_error[damping] = float((q - w).norm() / w.norm())
        calibration_error[damping] = output_error(w, q, few.moments())
    assert weight_error[0.1] < weight_error[0.0] and calibration_error[0.1] > calibration_error[0.0]


def test_one_bit_rows_need_a_codebook_method():
    w, _, _, stats, spec = layer_setup()
    one_bit = LayerSpec(spec.name, "encoder", 0, "fc1", spec.out_features, spec.in_features, bits=1, group_size=-1)
    one_bit.validate()
    with pytest.raises(LayerTableError, match="gq"):
        get_method("rtn").quantize_layer(w, None, one_bit, make_config("rtn"))


def test_static_and_dynamic_activation_quantization():
    x = torch.randn(10, 64) * 3
    static = fake_quant_static(x, float(x.min()), float(x.max()), 8)
    step = float(x.max() - x.min()) / 255
    assert float((static - x).abs().max()) <= step / 2 + 1e-5
    clipped = fake_quant_static(x, -1.0, 1.0, 8)  # values outside the calibrated range saturate
    one_step = 2.0 / 255  # the integer zero point can shift the grid's ends by up to one step
    assert float(clipped.max()) <= 1.0 + one_step and float(clipped.min()) >= -1.0 - one_step
    dynamic = fake_quant_dynamic(x, 8)
    per_token_step = (x.amax(dim=1) - x.amin(dim=1)) / 255
    assert torch.all((dynamic - x).abs().amax(dim=1) <= per_token_step / 2 + 1e-5)
    assert torch.unique(fake_quant_dynamic(x, 2)[0]).numel() <= 4
