"""GPTQ: column-by-column rounding with Hessian-based error feedback (Frantar et al., ICLR 2023).

Pure function of a weight and its Hessian; follows the reference implementation (IST-DASLab/gptq):
dead columns, optional act-order, damping by a fraction of mean(diag H), the upper Cholesky factor of
H^-1, lazy block updates.
"""

from __future__ import annotations

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
    out_features, in_features = w.shape
    fmt.check_shape(in_features)
    group = in_features if fmt.group_size == -1 else fmt.group_size
    n_groups = in_features // group
    h, dead = prepare_hessian(h, damping)
    W = w.to(SOLVE_DTYPE, copy=True)
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_features)
    W, h = W[:, perm], h[perm][:, perm]
    hinv = inverse_upper_factor(h)

    scale = torch.zeros(out_features, n_groups, dtype=SOLVE_DTYPE)
    zero = torch.zeros(out_features, n_groups, dtype=SOLVE_DTYPE)
    if act_order:  # static groups on the original column order
        for g in range(n_groups):
            s, z = qparams(w[:, g * group:(g + 1) * group].float(), fmt)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
    # Rows of the transposed weight are its columns: each step reads and updates contiguous memory.
    Wt = W.T.contiguous()  # (in, out), in visiting order
    scale_t, zero_t = scale.T.contiguous(), zero.T.contiguous()  # (groups, out): a group's grid is one row
    codes_t = torch.zeros(in_features, out_features, dtype=torch.uint8)
    columns = perm.tolist()
    # The column loop runs ~34,000 times per tiny.en pass: each step is written with as few torch calls as
    # give the same values (in-place rounding, the error written straight into its row, the pivot a float).
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        W1, err1, hinv1 = Wt[i1:i2].clone(), torch.zeros(i2 - i1, out_features, dtype=W.dtype), hinv[i1:i2, i1:i2]
        pivots = torch.diagonal(hinv1).tolist()
        for i in range(i2 - i1):
            col = columns[i1 + i]
            g = col // group
            if not act_order and col % group == 0:
                # Dynamic groups: the grid of a group is fitted when GPTQ reaches its first column.
                rows = W1[i:i + group] if i + group <= len(W1) else torch.cat([W1[i:], Wt[i2:]])[:group]
                s, z = qparams(rows.T.float(), fmt)
                scale_t[g], zero_t[g] = s[:, 0], z[:, 0]
            w_col, s_g, z_g = W1[i], scale_t[g], zero_t[g]
            c = (w_col / s_g).add_(z_g).round_().clamp_(0, fmt.maxq)  # formats.quantize_to_codes, in place
            codes_t[col] = c
            err = torch.div(w_col - s_g * c.sub_(z_g), pivots[i], out=err1[i])
            W1[i + 1:].addr_(hinv1[i, i + 1:], err, alpha=-1)
        Wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    return QuantizedTensor(codes_t.T.contiguous(), scale_t.T.float().contiguous(), zero_t.T.float().contiguous(), fmt)
