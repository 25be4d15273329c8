"""GPTQ: column-by-column rounding with Hessian-based error feedback (Frantar et al., ICLR 2023).

Pure function of a weight and its Hessian; follows the reference implementation (IST-DASLab/gptq):
dead columns, optional act-order, damping by a fraction of mean(diag H), the upper Cholesky factor of
H^-1, lazy block updates. The column-by-column loop inside a block is compiled (gptq_kernels.py); the blocks'
lazy updates and the factorization stay torch.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.quant.formats import IntFormat, QuantizedTensor, qparams

# The solves' dtype (GPTQ's updates, QEP's direction, FADE's gains): float32, as the GPTQ and QEP reference
# code run; the moments they read are float64 sums, and a factorization that fails in float32 is redone in
# float64 (cholesky).
SOLVE_DTYPE = torch.float32


def cholesky(h: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of h (in, in), in h's dtype; from float64 when float32 rounding leaves the damped
    matrix not positive definite."""
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        factor = torch.linalg.cholesky(h.double()).to(h.dtype)
    return factor


def prepare_hessian(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped copy of H (in, in) and the mask of dead inputs (never active in calibration): dead inputs get
    1 on the diagonal, then every input gets damping_amount(h, damping)."""
    h = h.to(SOLVE_DTYPE, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damping_amount(h, damping) * torch.eye(h.shape[0], dtype=h.dtype)
    return h, dead


def damping_amount(h: torch.Tensor, damping: float) -> float:
    """lambda, what prepare_hessian adds to every diagonal entry of h: damping * mean(diag H), dead inputs
    counted as 1."""
    diag = torch.diag(h).double()
    return damping * float(torch.where(diag == 0, 1.0, diag).mean())


def inverse_upper_factor(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U) that GPTQ's updates read, from one factorization:
    with J the reversal of rows and columns, J H J = L L^T gives H = R R^T with R = J L J upper triangular,
    so H^-1 = R^-T R^-1 and U = R^-1 (the reference factors H, inverts it and factors the inverse: 1.7x the
    time for fc2's 1536 inputs here, the same matrix to float64 rounding). h: (in, in) -> (in, in)."""
    r = cholesky(h.flip(0, 1)).flip(0, 1)
    return torch.linalg.solve_triangular(r, torch.eye(h.shape[0], dtype=h.dtype), upper=True)


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    fmt: IntFormat,
    damping: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> QuantizedTensor:
    """Quantize w: (out, in) against the input Hessian h: (in, in). Returns codes and grid.

    With act_order and groups, the group grids are computed up front from w (static groups), so that the
    columns can be visited in any order and codes stay in original column order.
    """
    # Imported here, not with this module: numba and the compiled kernels take ~120 MB and ~0.6 s, which a process
    # that only validates settings (the web server) should not pay. The job worker loads them when it starts.
    from engine.quant.methods.gptq_kernels import round_columns

    out_features, in_features = w.shape
    fmt.check_shape(in_features)
    group = in_features if fmt.group_size == -1 else fmt.group_size
    n_groups = in_features // group
    h, dead = prepare_hessian(h, damping)
    # Rows of the transposed weight are its columns: each step reads and updates contiguous memory.
    Wt = torch.empty(in_features, out_features, dtype=SOLVE_DTYPE)  # (in, out), in visiting order
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        Wt.copy_(w.T[perm])
        h, dead = h[perm][:, perm], dead[perm]
    else:  # visiting order is column order: no gathers of the weight and H
        perm = torch.arange(in_features)
        Wt.copy_(w.T)
    Wt[dead] = 0
    hinv = inverse_upper_factor(h).contiguous()  # (LAPACK's result is column-major; the loop reads rows)

    scale = torch.zeros(out_features, n_groups, dtype=SOLVE_DTYPE)
    zero = torch.zeros(out_features, n_groups, dtype=SOLVE_DTYPE)
    if act_order:  # static groups on the original column order
        for g in range(n_groups):
            s, z = qparams(w[:, g * group:(g + 1) * group].float(), fmt)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
    scale_t, zero_t = scale.T.contiguous(), zero.T.contiguous()  # (groups, out): a group's grid is one row
    codes_v = torch.empty(in_features, out_features, dtype=torch.uint8)  # in visiting order
    group_of = (perm // group).numpy()  # each visited column's group
    wt_, hinv_, scale_, zero_, codes_ = Wt.numpy(), hinv.numpy(), scale_t.numpy(), zero_t.numpy(), codes_v.numpy()
    maxq = np.float32(fmt.maxq)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        err = torch.empty(i2 - i1, out_features, dtype=SOLVE_DTYPE)
        # Dynamic groups: a group's grid is fitted when the loop reaches its first column, from the weights as
        # updated so far, so a block is rounded in segments that end where a group begins.
        starts = [] if act_order else [i for i in range(i1, i2) if i % group == 0]
        bounds = sorted({i1, i2, *starts})
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a in starts:
                # (a group reaching past the block sees its later columns before this block's lazy update,
                # as in the reference)
                s, z = qparams(Wt[a:a + group].T.float(), fmt)
                scale_t[a // group], zero_t[a // group] = s[:, 0], z[:, 0]
            round_columns(wt_, hinv_, scale_, zero_, group_of, maxq, a, b, i2, codes_, err.numpy())
        Wt[i2:] -= hinv[i1:i2, i2:].T @ err
    codes_t = codes_v if not act_order else codes_v[torch.argsort(perm)]
    return QuantizedTensor(codes_t.T.contiguous(), scale_t.T.float().contiguous(), zero_t.T.float().contiguous(), fmt)
