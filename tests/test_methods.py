"""GPTQ, QEP and FADE on single layers with synthetic correlated inputs: numbers that can fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.quant.config import ConfigError, FADEConfig, GPTQConfig, QEPConfig
from engine.quant.formats import IntFormat, rtn_quantize
from engine.quant.layer_table import LayerSpec
from engine.quant.methods.fade import fade_alpha
from engine.quant.methods.gptq import gptq_quantize
from engine.quant.methods.qep import qep_correct
from engine.quant.moments import LayerStats, local_error, output_error
from engine.quant.registry import all_methods, get_method, make_config
from tests.helpers import correlated_inputs, layer_setup


def test_gptq_local_error_below_rtn_on_the_same_layer():
    w, _, x_hat, stats, _ = layer_setup()
    fmt = IntFormat(3, -1)
    m = stats.moments()
    rtn = rtn_quantize(w, fmt).dequantize()
    gptq = gptq_quantize(w, m.hq, fmt).dequantize()
    assert local_error(w, gptq, m) < 0.8 * local_error(w, rtn, m)
    # The moment formula agrees with the error measured on the activations themselves.
    direct = float((x_hat @ (w - gptq).T).norm() / (x_hat @ w.T).norm())
    assert local_error(w, gptq, m) == pytest.approx(direct, rel=1e-4)


@pytest.mark.parametrize("act_order,group", [(False, 16), (True, 16), (True, -1)])
def test_gptq_variants_beat_rtn(act_order, group):
    w, _, _, stats, _ = layer_setup(seed=1)
    fmt = IntFormat(3, group)
    m = stats.moments()
    gptq = gptq_quantize(w, m.hq, fmt, act_order=act_order).dequantize()
    assert local_error(w, gptq, m) < local_error(w, rtn_quantize(w, fmt).dequantize(), m)


def _gptq_in_torch_ops(w, h, fmt, damping, act_order, block_size=32):
    """The GPTQ column loop written plainly in torch ops (what the compiled loop replaced), for reference."""
    from engine.quant.formats import qparams
    from engine.quant.methods.gptq import inverse_upper_factor, prepare_hessian

    group = fmt.group_size
    h, dead = prepare_hessian(h, damping)
    W = w.clone()
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(w.shape[1])
    W, h = W[:, perm], h[perm][:, perm]
    hinv = inverse_upper_factor(h)
    scale, zero = torch.zeros(w.shape[0], w.shape[1] // group), torch.zeros(w.shape[0], w.shape[1] // group)
    if act_order:
        for g in range(w.shape[1] // group):
            s, z = qparams(w[:, g * group:(g + 1) * group], fmt)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
    codes = torch.zeros(w.shape, dtype=torch.uint8)
    for i1 in range(0, w.shape[1], block_size):
        i2 = i1 + block_size
        W1, err1 = W[:, i1:i2].clone(), torch.zeros(w.shape[0], block_size)
        for i in range(block_size):
            col = int(perm[i1 + i])
            if not act_order and col % group == 0:
                s, z = qparams(torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group], fmt)
                scale[:, col // group], zero[:, col // group] = s[:, 0], z[:, 0]
            s, z = scale[:, col // group], zero[:, col // group]
            c = torch.clamp(torch.round(W1[:, i] / s + z), 0, fmt.maxq)
            codes[:, col] = c.to(torch.uint8)
            err1[:, i] = (W1[:, i] - s * (c - z)) / hinv[i1 + i, i1 + i]
            W1[:, i + 1:].addr_(err1[:, i], hinv[i1 + i, i1 + i + 1:i2], alpha=-1)
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes, scale, zero


@pytest.mark.parametrize("bits,act_order", [(4, False), (3, True), (8, False)])
def test_compiled_gptq_loop_gives_the_codes_of_the_loop_in_torch_ops(bits, act_order):
    w, _, _, stats, _ = layer_setup(seed=11, d_in=128, d_out=48)
    fmt = IntFormat(bits, 32)
    compiled = gptq_quantize(w, stats.moments().hq, fmt, damping=0.1, block_size=32, act_order=act_order)
    codes, scale, zero = _gptq_in_torch_ops(w, stats.moments().hq, fmt, 0.1, act_order)
    assert torch.equal(compiled.codes, codes)
    assert torch.equal(compiled.scale, scale) and torch.equal(compiled.zero, zero)


def test_a_weighted_row_counts_as_that_many_copies():
    x, x_hat = correlated_inputs(40, 8, 0), correlated_inputs(40, 8, 1)
    copies, weighted = LayerStats(8, splits=1), LayerStats(8, splits=1)
    copies.add_batch(x[:10], x_hat[:10])
    for _ in range(3):
        copies.add_batch(x[10:], x_hat[10:])
    weighted.add_batch(x[:10], x_hat[:10])
    weighted.add_batch(x[10:], x_hat[10:], weight=3.0)
    a, b = copies.moments(), weighted.moments()
    assert a.n == b.n == 100
    for name in ("hq", "cross", "hx"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)


def test_corrected_and_uncorrected_rounded_in_one_stack_get_their_own_codes():
    from engine.quant.methods.rtn_gptq_qep import corrected_outcome, round_weight

    w, _, _, stats, spec = layer_setup(drift=0.4)
    config = QEPConfig(bits=3, group_size=16, alpha=0.8)
    spec = LayerSpec(spec.name, spec.part, spec.block, spec.kind, spec.out_features, spec.in_features, bits=3,
                     group_size=16)
    m = stats.moments()
    outcome = corrected_outcome(w, m, spec, config, 0.8)
    alone = round_weight(outcome.target, m, spec, config, "gptq"), round_weight(w, m, spec, config, "gptq")
    for stacked, single in zip((outcome.quantized, outcome.uncorrected), alone):
        assert torch.equal(stacked.codes, single.codes)
        assert torch.equal(stacked.scale, single.scale) and torch.equal(stacked.zero, single.zero)
    assert not torch.equal(outcome.quantized.codes, outcome.uncorrected.codes)


def test_encoder_padding_rows_sampled_cover_every_position_and_keep_the_count():
    from engine.quant.calibration import CalibrationData, TwoStreamPass

    frames = (3, 7, 0, 10, 5, 1, 2, 9, 4)
    data = CalibrationData(torch.zeros(len(frames), 1, 40), frames, ((1, 2),) * len(frames))
    runner = TwoStreamPass.__new__(TwoStreamPass)  # only the row choice is under test: no model needed
    runner.data, runner.pad_stride = data, 4
    rows = runner._encoder_rows(20)
    for clip, speech in enumerate(frames):
        weights = rows.weight[clip]
        assert bool((weights[:speech] == 1).all())  # every speech frame counts once
        padding = weights[speech:]
        assert set(padding.unique().tolist()) <= {0.0, 4.0}
        assert abs(float(weights.sum()) - 20) < 4  # the sampled frames stand for all of the padding
    sampled = (rows.weight == 4).any(dim=0)
    assert bool(sampled[10:].all())  # past the longest speech every window position is seen by some clip
    runner.pad_stride = 1
    assert bool((runner._encoder_rows(20).weight == 1).all())  # stride 1: every frame, the exact moments


def test_qep_with_alpha_zero_equals_gptq():
    w, _, _, stats, spec = layer_setup()
    gptq = get_method("gptq").quantize_layer(w, stats, spec, GPTQConfig(bits=3, group_size=-1))
    qep = get_method("qep").quantize_layer(w, stats, spec, QEPConfig(bits=3, group_size=-1, alpha=0.0))
    assert torch.equal(gptq.quantized.codes, qep.quantized.codes)
    assert torch.equal(qep_correct(w, stats.moments(), 0.0, 0.01), w)


def test_qep_lowers_output_error_when_inputs_drift():
    w, x, x_hat, stats, spec = layer_setup(drift=0.4)
    m = stats.moments()
    gptq = get_method("gptq").quantize_layer(w, stats, spec, GPTQConfig(bits=4, group_size=-1))
    qep = get_method("qep").quantize_layer(w, stats, spec, QEPConfig(bits=4, group_size=-1, alpha=1.0))
    err_gptq, err_qep = output_error(w, gptq.quantized.dequantize(), m), output_error(w, qep.quantized.dequantize(), m)
    assert err_qep < 0.8 * err_gptq
    direct = float((x @ w.T - x_hat @ qep.quantized.dequantize().T).norm() / (x @ w.T).norm())
    assert err_qep == pytest.approx(direct, rel=1e-4)


def test_fade_rounded_check_keeps_a_correction_that_helps_after_rounding_and_drops_one_that_does_not():
    from engine.quant.methods.fade import rounded_gain

    config = FADEConfig(bits=3, group_size=-1, check_rounded=True, alpha_max=1.0)
    # Strong, consistent drift: fitted on one half and rounded, the correction still lowers the other's error.
    w, _, _, stats, spec = layer_setup(drift=0.5, n=4096)
    a, b = stats.split_moments(0), stats.split_moments(1)
    assert rounded_gain(w, a, b, 1.0, spec, config) > 0.2
    kept = get_method("fade").quantize_layer(w, stats, spec, config)
    assert kept.alpha > 0.7 and kept.notes["rounded_gain"] > 0
    # Halves that drift in opposite directions: a correction fitted on one makes the other worse, rounded too.
    d = w.shape[1]
    x = correlated_inputs(2048, d, 5)
    shift = 0.3 * torch.randn(d, d, generator=torch.Generator().manual_seed(7)) / d**0.5
    opposite = LayerStats(d, 2)
    opposite.add_batch(x[:1024], x[:1024] @ (torch.eye(d) + shift).T, 0)
    opposite.add_batch(x[1024:], x[1024:] @ (torch.eye(d) - shift).T, 1)
    assert rounded_gain(w, opposite.split_moments(0), opposite.split_moments(1), 1.0, spec, config) < 0
    forced = get_method("fade").quantize_layer(w, opposite, spec, FADEConfig(bits=3, group_size=-1, alpha=0.75,
                                                                            check_rounded=True, rule="shrink"))
    assert forced.alpha == 0.0 and forced.notes["alpha_before_rounded_check"] > 0


def test_fade_caps_alpha_at_half_for_layers_of_four_bits_or_fewer_unless_told():
    from engine.quant.methods.fade import fade_alpha_max

    assert [fade_alpha_max(FADEConfig(bits=4), bits) for bits in (2, 3, 4, 5, 8)] == [0.5, 0.5, 0.5, 1.0, 1.0]
    assert fade_alpha_max(FADEConfig(bits=3, alpha_max=0.9), 3) == 0.9
    assert fade_alpha_max(FADEConfig(bits=4, alpha_max=0.25), 4) == 0.25
    # A layer whose held-out optimum is above the cap: 4-bit rows are capped, a 5-bit row is not.
    w, _, _, stats, spec = layer_setup(drift=0.5, n=4096)
    outcome = {bits: get_method("fade").quantize_layer(w, stats, dataclasses.replace(spec, bits=bits),
                                                       FADEConfig(bits=bits, group_size=-1)) for bits in (4, 5)}
    assert outcome[4].alpha == 0.5 and outcome[5].alpha > 0.7
    with pytest.raises(ConfigError):
        FADEConfig(bits=3, alpha_max=1.5)


def test_fade_alpha_follows_the_evidence():
    # Strong, consistent drift: the correction generalizes, FADE keeps most of it.
    w, _, _, stats, _ = layer_setup(drift=0.5, n=4096)
    alpha, notes = fade_alpha(w, stats.split_moments(0), stats.split_moments(1), prior=0.5, damping=0.01)
    assert notes["reliability"] > 0.5 and alpha > 0.7
    # alpha_max caps it (at the prior: a reliable layer may only lower alpha).
    capped, _ = fade_alpha(w, stats.split_moments(0), stats.split_moments(1), 0.5, 0.01, alpha_max=0.5)
    assert capped == 0.5
    # No drift at all, only noise, and few tokens: nothing to learn, alpha falls back toward the prior or below.
    d = 64
    x = correlated_inputs(160, d, 3)
    noisy = LayerStats(d, 2)
    noisy.add_batch(x[:80], x[:80] + 0.05 * torch.randn(80, d), 0)
    noisy.add_batch(x[80:], x[80:] + 0.05 * torch.randn(80, d), 1)
    alpha_noise, notes_noise = fade_alpha(w, noisy.split_moments(0), noisy.split_moments(1), 0.5, 0.01)
    assert notes_noise["reliability"] < notes["reliability"]
    assert alpha_noise < alpha
    # The default rule keeps a held-out optimum that says "this correction does not transfer" (near 0);
    # the old shrink rule pulls the same layer up toward the prior.
    assert alpha_noise == pytest.approx(min(1.0, max(0.0, notes_noise["alpha_heldout"])))
    shrunk, _ = fade_alpha(w, noisy.split_moments(0), noisy.split_moments(1), 0.75, 0.01, rule="shrink")
    assert alpha_noise < 0.3 < shrunk


def test_registry_and_config_validation():
    assert {"rtn", "gptq", "qep", "fade"} <= set(all_methods())
    assert isinstance(make_config("fade", bits=3), FADEConfig)
    with pytest.raises(UserError, match="no setting"):
        make_config("rtn", alpha=0.5)
    with pytest.raises(UserError, match="Unknown method"):
        make_config("magic")
    with pytest.raises(ConfigError, match="alpha"):
        QEPConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="bits"):
        GPTQConfig(bits=7)
    # Codebook formats have no integer grid: its settings are refused, not silently ignored.
    for method, bits in (("nf4", 4), ("gq", 2)):
        for setting in ("symmetric", "clip_search", "integer_zero"):
            with pytest.raises(ConfigError, match=f"{method} has no {setting.replace('_', ' ')} setting"):
                make_config(method, bits=bits, **{setting: True})
        assert make_config(method, bits=bits, symmetric=False).symmetric is False  # the default is accepted
    assert make_config("rtn", symmetric=True).symmetric and make_config("w8a8").symmetric


def test_calibration_halves_are_speaker_disjoint_when_speakers_differ():
    from engine.quant.windows import speaker_halves

    def split_of(speakers):
        return speaker_halves(len(speakers), speakers)

    speakers = ("a", "a", "b", "c", "b", "a", "d")
    split = split_of(speakers)
    halves = {s: {h for h, t in zip(split, speakers) if t == s} for s in set(speakers)}
    assert all(len(h) == 1 for h in halves.values())  # each speaker feeds one half only
    assert sorted([split.count(0), split.count(1)]) == [3, 4]  # dealt to balance the clip counts
    assert split_of(("a",) * 5) == [0, 1, 0, 1, 0]  # one speaker: clips alternate


def test_packed_windows_keep_every_recording_in_its_half_and_in_30_seconds():
    from engine.quant.windows import GAP_SECONDS, pack_windows, speaker_halves

    rate = 100  # samples per second: small arrays, the same arithmetic
    seconds = [5, 6, 12, 4, 9, 29, 3, 7, 8]
    audios = [np.full(s * rate, i + 1, dtype=np.float32) for i, s in enumerate(seconds)]
    texts = [f"clip{i}" for i in range(len(audios))]
    halves = speaker_halves(len(audios), ["a", "b", "a", "c", "b", "a", "c", "b", "a"])
    packed = pack_windows(audios, texts, halves, per_window=3, sample_rate=rate)
    gap = round(GAP_SECONDS * rate)
    assert len(packed.audios) < len(audios)
    seen = []
    for audio, text, half in zip(packed.audios, packed.transcripts, packed.halves):
        members = [int(word[4:]) for word in text.split()]
        assert 1 <= len(members) <= 3 and len(audio) <= 30 * rate
        assert {halves[i] for i in members} == {half}  # a window never mixes the halves
        assert len(audio) == sum(len(audios[i]) for i in members) + gap * (len(members) - 1)
        assert sorted(set(audio[audio > 0].tolist())) == [i + 1 for i in sorted(members)]  # their samples, gaps silent
        seen += members
    assert sorted(seen) == list(range(len(audios)))  # every recording once
    alone = pack_windows(audios, texts, halves, per_window=1, sample_rate=rate)
    assert alone.transcripts == texts and alone.halves == tuple(halves)
    with pytest.raises(UserError, match="per window"):
        pack_windows(audios, texts, halves, per_window=0, sample_rate=rate)


@pytest.mark.slow
def test_sample_calibration_splits_fade_halves_by_voice(tiny):
    from engine.quant.windows import speaker_halves
    from engine.workflows.experiment import build_calibration, calibration_clips
    from engine.speech.samples import SAMPLE_DIR, eval_set

    clips = calibration_clips(SAMPLE_DIR, 6, 0, exclude=eval_set(None).utterances)
    halves = speaker_halves(len(clips), [u.voice for u in clips])
    assert {u.voice for u, h in zip(clips, halves) if h == 0} != {u.voice for u, h in zip(clips, halves) if h == 1}
    assert all(len({h for u, h in zip(clips, halves) if u.voice == v}) == 1 for v in ("joe", "heart"))
    alone = build_calibration(tiny, clips, per_window=1)
    assert alone.split_of_clip().tolist() == halves
    packed = build_calibration(tiny, clips)  # the default: clips of one half share a window
    assert packed.n_recordings == 6 and packed.n_clips == 2 and sorted(packed.split_of_clip().tolist()) == [0, 1]
    prompt = len(alone.tokens[0]) - len(tiny.tokens.encode(clips[0].reference)) - 1  # before the text, then end
    for window in range(packed.n_clips):  # each window's transcript is its half's clips', in order
        members = [u.reference.strip() for u, h in zip(clips, halves) if h == packed.halves[window]]
        assert tiny.tokens.decode(list(packed.tokens[window][prompt:-1])).strip() == " ".join(members)


@pytest.mark.parametrize("features", [100, 256, 257, 1536])
def test_gram_from_half_the_strips_is_the_full_product(features):
    from engine.quant.moments import gram

    x = torch.randn(700, features, generator=torch.Generator().manual_seed(features))
    g = gram(x)
    assert torch.equal(g, g.T)  # mirrored, so exactly symmetric
    torch.testing.assert_close(g, x.T @ x, rtol=1e-5, atol=1e-3)


def test_bfloat16_inputs_give_the_moments_of_their_values_and_leave_the_precision_flag_as_it_was():
    """bfloat16 inputs are multiplied from bfloat16 copies with float32 sums (exact products): the moments
    match float64 products of the same values as closely as float32 products do, weight included."""
    from engine.quant.moments import LayerStats

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(600, 320, generator=g) * torch.rand(320, generator=g) * 4).bfloat16()
    x_hat = (x.float() + 0.05 * torch.randn(600, 320, generator=g)).bfloat16()
    before = torch.backends.mkldnn.matmul.fp32_precision
    stats = LayerStats(320, splits=1)
    stats.add_batch(x, x_hat, weight=3.0)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    m = stats.moments()
    xd, xhd = x.double(), x_hat.double()
    for got, exact in ((m.hq, xhd.T @ xhd / 600), (m.cross, xd.T @ xhd / 600), (m.hx, xd.T @ xd / 600)):
        assert float((got - exact).abs().max() / exact.abs().max()) < 1e-5


def test_layer_errors_at_once_equal_the_separate_functions():
    from engine.quant.moments import input_drift, layer_errors

    w, _, _, stats, _ = layer_setup(seed=5)
    m = stats.moments()
    g = torch.Generator().manual_seed(6)
    q, u = w + 0.05 * torch.randn(w.shape, generator=g), w + 0.08 * torch.randn(w.shape, generator=g)
    errors = layer_errors(w, q, m, u)  # float32 products in the drift form; the separate functions: float64
    assert errors.input_drift == pytest.approx(input_drift(m), rel=1e-9)
    assert errors.local_error == pytest.approx(local_error(w, q, m), rel=1e-5)
    assert errors.output_error == pytest.approx(output_error(w, q, m), rel=1e-5)
    assert errors.output_error_uncorrected == pytest.approx(output_error(w, u, m), rel=1e-5)
    assert layer_errors(w, q, m).output_error_uncorrected is None


def test_layer_errors_in_float32_keep_the_float64_digits_at_8_bit_sized_errors():
    """Output errors of 0.2% (8-bit rounding of a layer whose inputs barely drifted): the form with Hx and C
    subtracts terms 1e-5 apart, and with float32 products it was 6e-4 (relative) off here; the drift form in
    float32 gives the float64 values of the separate functions."""
    from engine.quant.moments import layer_errors

    g = torch.Generator().manual_seed(7)
    x = torch.randn(4000, 384, generator=g) * torch.rand(384, generator=g) * 3
    stats = LayerStats(384, splits=1)
    stats.add_batch(x, x + 1e-3 * torch.randn(x.shape, generator=g))
    m = stats.moments()
    w = torch.randn(256, 384, generator=g) * 0.05
    q, u = w + 1e-4 * torch.randn(w.shape, generator=g), w + 2e-4 * torch.randn(w.shape, generator=g)
    errors = layer_errors(w, q, m, u)
    assert 1e-3 < errors.output_error < 1e-2
    assert errors.output_error == pytest.approx(output_error(w, q, m), rel=1e-5)
    assert errors.output_error_uncorrected == pytest.approx(output_error(w, u, m), rel=1e-5)
    assert errors.local_error == pytest.approx(local_error(w, q, m), rel=1e-5)


def test_gptq_inverse_factor_from_one_factorization_is_the_reference_one():
    from engine.quant.methods.gptq import inverse_upper_factor, prepare_hessian

    h = prepare_hessian(layer_setup(seed=7, d_in=96)[3].moments().hq, 0.01)[0]
    for dtype, rtol in ((torch.float64, 1e-10), (h.dtype, 1e-4)):  # exact in float64; the solves' float32 rounding
        h = h.to(dtype)
        reference = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h.double())), upper=True)
        u = inverse_upper_factor(h)
        assert u.dtype == dtype and torch.equal(u, u.triu())
        torch.testing.assert_close(u.double(), reference, rtol=rtol, atol=rtol * float(reference.abs().max()))


def test_moments_are_averaged_once_in_place_and_then_closed():
    x, x_hat = torch.randn(30, 6, dtype=torch.float64), torch.randn(30, 6, dtype=torch.float64)
    stats = LayerStats(6, splits=2)
    stats.add_batch(x[:10], x_hat[:10], split=0)
    stats.add_batch(x[10:], x_hat[10:], split=1)
    first, again = stats.split_moments(1), stats.split_moments(1)  # read twice: divided by the count once
    expected = (x_hat[10:].float().T @ x_hat[10:].float()).double() / 20
    torch.testing.assert_close(first.hq, expected)
    torch.testing.assert_close(again.hq, expected)
    merged = stats.moments()
    torch.testing.assert_close(merged.hx, (x.float().T @ x.float()).double() / 30, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="already averaged"):
        stats.add_batch(x[:5], x_hat[:5], split=0)


def test_recomputed_activations_give_the_rows_a_stored_tensor_gives():
    from engine.quant.calibration import Recomputed, _rows

    fc = torch.nn.Linear(4, 16)
    source = torch.randn(5, 7, 4)
    lazy, stored = Recomputed(lambda t: torch.relu(fc(t)), source, 16), torch.relu(fc(source))
    assert lazy.shape == stored.shape
    clips = torch.tensor([3, 0])
    every, some = torch.ones(2, 7, dtype=torch.bool), torch.rand(2, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    for select in (every, some):
        torch.testing.assert_close(_rows(lazy, clips, select), _rows(stored, clips, select))


@pytest.mark.parametrize("drift_dtype", [torch.float32, torch.bfloat16])
def test_moments_from_the_drift_equal_the_direct_products(drift_dtype):
    """C and Hx are built from H^ and the drift e = x - x^: the same moments as x^T x^ etc., and with bfloat16
    drift products the error is relative to the drift, not to the moments (H^ stays a float32 product)."""
    x_hat = correlated_inputs(600, 48, 3)
    x = x_hat + 0.05 * correlated_inputs(600, 48, 4)  # a small drift, as in a quantized stream
    stats = LayerStats(48, splits=1, drift_dtype=drift_dtype)
    for rows in (slice(0, 250), slice(250, 600)):
        stats.add_batch(x[rows], x_hat[rows])
    m = stats.moments()
    x64, x_hat64 = x.double(), x_hat.double()
    exact = {"hq": x_hat64.T @ x_hat64 / 600, "cross": x64.T @ x_hat64 / 600, "hx": x64.T @ x64 / 600}
    torch.testing.assert_close(m.hq, exact["hq"], rtol=1e-5, atol=1e-6)
    drift_exact = exact["cross"] - exact["hq"]
    # float32: direct products, the drift a difference of two moments; bfloat16: 8 bits of the drift products
    tolerance = 2e-4 if drift_dtype == torch.float32 else 2e-2
    assert float((m.cross - m.hq - drift_exact).norm() / drift_exact.norm()) < tolerance
    assert float((m.hx - exact["hx"]).norm() / (exact["hx"] - exact["hq"]).norm()) < max(1e-4, 2 * tolerance)


def test_pass_precision_names_and_refusals():
    from engine.quant.precision import PRECISIONS, PassPrecision, native_bfloat16, pass_precision

    assert pass_precision("float32") == PassPrecision() and pass_precision("float32").name == "float32"
    assert pass_precision("bfloat16").name == "bfloat16"
    assert pass_precision("auto") == PRECISIONS["bfloat16-forward" if native_bfloat16() else "float32"]
    assert PassPrecision(torch.bfloat16, torch.float32).name == "bfloat16-forward"
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        PassPrecision(torch.float16)
    with pytest.raises(ValueError, match="auto or one of float32, bfloat16-forward, bfloat16"):
        pass_precision("fp8")
