"""Number formats: grids, rounding, bit packing and exact sizes (small shapes, no model)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant.formats import (IntFormat, QuantizedTensor, pack_codes, packed_bytes, range_grid, rtn_quantize,
                                  unpack_codes)


GRIDS = {"float minimum": dict(), "integer zero": dict(integer_zero=True), "symmetric": dict(symmetric=True)}


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("group_size", [-1, 16])
def test_rtn_codes_in_range_and_error_bounded(bits, grid, group_size):
    torch.manual_seed(bits)
    w = torch.randn(12, 64)
    q = rtn_quantize(w, IntFormat(bits, group_size, **GRIDS[grid]))
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    groups = 1 if group_size == -1 else 64 // group_size
    assert q.scale.shape == (12, groups)
    err = (w - q.dequantize()).abs().reshape(12, groups, -1)
    step = q.scale.abs()[..., None]  # a symmetric grid's scale carries the sign of its group's largest weight
    # Rounding moves a weight by at most half a step (plus float16 rounding of scale and minimum). An integer zero
    # point shifts the grid by up to half a step from the group's range, and the symmetric grid has one code
    # fewer on the side opposite its largest weight: there an extreme weight can move by a whole step.
    wide = grid in ("integer zero", "symmetric")
    allowed = step * 1.01 if wide else 0.5 * step * 1.02 + w.abs().max() * 2.0**-11
    assert bool((err <= allowed + 1e-6).all())


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_float_minimum_keeps_each_groups_extremes(bits):
    # Heavy-tailed weights, as Whisper's: the extreme weight of a group matters most, and the float minimum
    # grid keeps both ends of every group (to float16), where an integer zero point clips one of them.
    w = torch.distributions.StudentT(3.0).sample((256, 256)) * 0.02
    rows = w.reshape(-1, 32)
    extremes = torch.cat([rows.argmin(1, keepdim=True), rows.argmax(1, keepdim=True)], dim=1)
    worst = {}  # the largest error at a group's min or max, in steps of its grid
    for name, kw in GRIDS.items():
        qt = rtn_quantize(w, IntFormat(bits, 32, **kw))
        err = (qt.dequantize().reshape(-1, 32) - rows).abs().gather(1, extremes)
        worst[name] = float((err / qt.scale.reshape(-1, 1)).max())
    assert worst["float minimum"] < 0.02  # float16 rounding of scale and minimum only
    assert worst["integer zero"] > 0.3 and worst["symmetric"] > 0.3


def test_more_bits_give_smaller_error():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    errors = [float((w - rtn_quantize(w, IntFormat(b, 32)).dequantize()).norm()) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * float(w.norm())


def test_zero_row_survives():
    w = torch.zeros(2, 8)
    assert torch.equal(rtn_quantize(w, IntFormat(4)).dequantize(), w)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_a_tiny_range_row_stays_finite(grid):
    # a scale below float16's smallest step used to round to 0 and turn the row into NaN
    w = torch.tensor([[0.0, 1e-9, 2e-9, 3e-9], [0.0, 1e-3, -1e-3, 5e-4]])
    restored = rtn_quantize(w, IntFormat(4, **GRIDS[grid])).dequantize()
    assert torch.isfinite(restored).all() and (restored - w).abs().max() < 1.3e-4  # one step (1/8 of 1e-3) at most


def test_activation_grid_is_the_weight_grid_unstored_with_zero_on_it():
    lo, hi = torch.tensor([[-0.7], [0.2], [-3.0]]), torch.tensor([[1.3], [0.9], [-0.5]])
    scale, zero = range_grid(torch.clamp(lo, max=0), torch.clamp(hi, min=0), IntFormat(8, integer_zero=True), None)
    expected = (torch.clamp(hi, min=0) - torch.clamp(lo, max=0)) / 255
    assert torch.equal(scale, expected) and torch.equal(zero, torch.round(-torch.clamp(lo, max=0) / expected))
    stored, _ = range_grid(lo, hi, IntFormat(8))
    assert torch.equal(stored, ((hi - lo) / 255).half().float())


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(1, 300), seed=st.integers(0, 1000))
def test_pack_unpack_round_trip_and_size(bits, n, seed):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.nbytes == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n).long(), codes)


@pytest.mark.parametrize("bits", [3, 4, 5, 7])
def test_unpack_a_layers_worth(bits):
    n = 2 * (1 << 20) + 13  # more than a large layer's codes, not a whole number of eight-code words
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, n), codes)


@pytest.mark.parametrize("bits,group,grid", [(4, 64, "float minimum"), (3, 64, "symmetric"), (8, -1, "integer zero"),
                                             (2, 128, "float minimum")])
def test_packed_size_formula_and_round_trip(bits, group, grid):
    out_f, in_f = 384, 1536
    fmt = IntFormat(bits, group, **GRIDS[grid])
    q = rtn_quantize(torch.randn(out_f, in_f), fmt)
    groups = out_f * (1 if group == -1 else in_f // group)
    zero_bytes = {"float minimum": 2, "integer zero": 1, "symmetric": 0}[grid]
    expected = out_f * in_f * bits // 8 + groups * (2 + zero_bytes)
    assert packed_bytes(out_f, in_f, fmt) == expected
    arrays = q.to_arrays()
    assert sum(a.nbytes for a in arrays.values()) == expected
    again = QuantizedTensor.from_arrays(arrays, q.describe())
    assert again.fmt == fmt and torch.equal(again.codes, q.codes) and torch.equal(again.dequantize(), q.dequantize())


def test_invalid_formats_are_rejected():
    with pytest.raises(ValueError):
        IntFormat(1)
    with pytest.raises(ValueError):
        IntFormat(4, 0)
    with pytest.raises(ValueError, match="no zero point"):
        IntFormat(4, 64, symmetric=True, integer_zero=True)
    with pytest.raises(ValueError, match="does not divide"):
        rtn_quantize(torch.randn(4, 100), IntFormat(4, 64))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_clip_search_grid_has_lower_error_than_min_max(bits):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(bits))
    plain = rtn_quantize(w, IntFormat(bits, 32)).dequantize()
    searched = rtn_quantize(w, IntFormat(bits, 32, clip_search=True)).dequantize()
    assert (searched - w).abs().pow(2.4).sum() < (plain - w).abs().pow(2.4).sum()
    assert (searched - w).norm() < (plain - w).norm()


def test_symmetric_grid_keeps_zero_exact_and_mirrors_signs():
    torch.manual_seed(3)
    w = torch.randn(8, 64)
    w[:, ::7] = 0.0
    fmt = IntFormat(4, 32, symmetric=True)
    q, q_neg = rtn_quantize(w, fmt), rtn_quantize(-w, fmt)
    assert bool((q.zero == 8).all())  # zero sits at the middle code of 16
    d, d_neg = q.dequantize(), q_neg.dequantize()
    assert bool((d[:, ::7] == 0).all())  # a zero weight stays exactly zero
    # ggml's q4_0 rule: the scale takes the sign of the group's largest weight, so -w has the same codes and
    # rounds to exactly minus what w rounds to, and each group's largest weight is exact (to float16).
    assert torch.equal(q.codes, q_neg.codes) and torch.equal(d_neg, -d)
    groups, back = w.reshape(8, 2, 32), d.reshape(8, 2, 32)
    top = groups.abs().argmax(dim=2, keepdim=True)
    assert torch.allclose(back.gather(2, top), groups.gather(2, top), rtol=2.0**-10, atol=0)
    # and its step is |largest| / 8, finer than spanning +-|largest| with 15 steps
    assert torch.allclose(q.scale.abs(), groups.abs().amax(dim=2) / 8, rtol=2.0**-10)