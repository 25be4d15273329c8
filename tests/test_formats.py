"""Number formats: grids, rounding, bit packing and exact sizes (small shapes, no model)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.formats import IntFormat, pack_codes, packed_bytes, rtn_quantize, unpack_codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [-1, 16])
def test_rtn_codes_in_range_and_error_bounded_by_half_a_step(bits, symmetric, group_size):
    torch.manual_seed(bits)
    w = torch.randn(12, 64)
    q = rtn_quantize(w, IntFormat(bits, group_size, symmetric))
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2**bits - 1
    groups = 1 if group_size == -1 else 64 // group_size
    assert q.scale.shape == (12, groups)
    err = (w - q.dequantize()).abs().reshape(12, groups, -1)
    # Inside the grid, rounding moves a weight by at most half a step (plus float16 scale rounding).
    step = q.scale[..., None]
    assert bool((err <= 0.5 * step * 1.01 + 1e-6).all()) or symmetric  # symmetric grids clip the top code


def test_more_bits_give_smaller_error():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    errors = [float((w - rtn_quantize(w, IntFormat(b, 32)).dequantize()).norm()) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * float(w.norm())


def test_zero_row_survives():
    w = torch.zeros(2, 8)
    assert torch.equal(rtn_quantize(w, IntFormat(4)).dequantize(), w)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(1, 300), seed=st.integers(0, 1000))
def test_pack_unpack_round_trip_and_size(bits, n, seed):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    packed = pack_codes(codes, bits)
    assert packed.nbytes == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n).long(), codes)


@pytest.mark.parametrize("bits,group,sym", [(4, 64, False), (3, 64, True), (8, -1, False), (2, 128, False)])
def test_packed_size_formula(bits, group, sym):
    out_f, in_f = 384, 1536
    fmt = IntFormat(bits, group, sym)
    q = rtn_quantize(torch.randn(out_f, in_f), fmt)
    groups = out_f * (1 if group == -1 else in_f // group)
    expected = out_f * in_f * bits // 8 + groups * 2 + (0 if sym else groups)
    assert packed_bytes(out_f, in_f, fmt) == expected
    assert pack_codes(q.codes, bits).nbytes + q.scale.numel() * 2 + (0 if sym else q.zero.numel()) == expected


def test_invalid_formats_are_rejected():
    with pytest.raises(ValueError):
        IntFormat(1)
    with pytest.raises(ValueError):
        IntFormat(4, 0)
    with pytest.raises(ValueError, match="does not divide"):
        rtn_quantize(torch.randn(4, 100), IntFormat(4, 64))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_clip_search_grid_has_lower_error_than_min_max(bits):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(bits))
    plain = rtn_quantize(w, IntFormat(bits, 32)).dequantize()
    searched = rtn_quantize(w, IntFormat(bits, 32, clip_search=True)).dequantize()
    assert (searched - w).abs().pow(2.4).sum() < (plain - w).abs().pow(2.4).sum()
    assert (searched - w).norm() < (plain - w).norm()
