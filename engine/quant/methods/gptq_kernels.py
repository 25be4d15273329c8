"""GPTQ's column loop, compiled with numba (engine/quant/methods/gptq.py drives it block by block).

Per column the loop rounds every output row and feeds the error into the block's later columns: about 15 torch
calls a column as torch ops, ~34,000 columns a tiny.en pass. Compiled, a layer takes 1.5-3x less time (the
factorization stays LAPACK), with the same codes. Importing this module loads numba and the kernels (~120 MB,
~0.6 s with numba's cache warm; a first compile ~0.7 s more, cached beside this file or in numba's user cache).
"""

from __future__ import annotations

import numba
import numpy as np

# Compiled (or read from numba's cache) when this module is imported, not on a pass's first layer: explicit
# signatures, all arrays C-contiguous. A lazily compiled kernel's first call took 0.5 s of a FADE pass.
_F32, _F32_2D, _U8_2D = numba.float32, numba.float32[:, ::1], numba.uint8[:, ::1]


@numba.njit(numba.void(_F32_2D, _F32_2D, numba.float32[::1], numba.int64, numba.int64), cache=True, nogil=True,
            fastmath={"contract"})
def feed_back(wt, hinv, e, i, block_end):  # pragma: no cover (compiled)
    """wt[j] -= hinv[i, j] e for the block's columns j after i, each a fused multiply-add (contract)."""
    for j in range(i + 1, block_end):
        h = -hinv[i, j]
        for o in range(wt.shape[1]):
            wt[j, o] = h * e[o] + wt[j, o]


@numba.njit(numba.void(_F32_2D, _F32_2D, _F32_2D, _F32_2D, numba.int64[::1], _F32, numba.int64, numba.int64,
                       numba.int64, _U8_2D, _F32_2D), cache=True, nogil=True)
def round_columns(wt, hinv, scale, zero, group_of, maxq, start, stop, block_end, codes, err):  # pragma: no cover
    """Round the columns start..stop (in visiting order) and feed each one's error into the columns after it up
    to block_end (the lazy block); compiled.

    wt: (in, out) float32, the weight's columns as rows, updated in place; hinv: (in, in) float32, the upper
    factor of H^-1; scale, zero: (groups, out) float32; group_of: (in,) int64, each visited column's group;
    codes: (in, out) uint8 and err: (block, out) float32 (row r: column block_start + r), written. The arithmetic
    is that of the same loop in torch ops, step for step, so the codes are too (tests/test_methods.py checks
    them against such a loop): a float32 quotient rounded half to even and clamped, the error over the pivot,
    and the feedback as torch's addr_ computes it, one fused multiply-add (feed_back)."""
    block_start = block_end - err.shape[0]
    for i in range(start, stop):
        pivot = hinv[i, i]
        s_col, z_col = scale[group_of[i]], zero[group_of[i]]
        e = err[i - block_start]
        for o in range(wt.shape[1]):
            c = np.rint(wt[i, o] / s_col[o] + z_col[o])
            c = min(max(c, np.float32(0.0)), maxq)
            codes[i, o] = np.uint8(c)
            e[o] = (wt[i, o] - s_col[o] * (c - z_col[o])) / pivot
        feed_back(wt, hinv, e, i, block_end)
