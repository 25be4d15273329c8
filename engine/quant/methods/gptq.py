"""GPTQ: column-by-column rounding with Hessian-based error feedback (Frantar et al., ICLR 2023).

Pure function of a weight and its Hessian; follows the reference implementation (IST-DASLab/gptq):
dead columns, optional act-order, damping by a fraction of mean(diag H), the upper Cholesky factor of
H^-1, lazy block updates.
"""

from __future__ import annotations

import torch

from engine.quant.formats import IntFormat, QuantizedTensor, qparams, quantize_to_codes


def prepare_hessian(h: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped copy of H (in, in) and the mask of dead inputs (never active in calibration)."""
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damping * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    return h, dead


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
    W = w.double().clone()
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_features)
    W, h = W[:, perm], h[perm][:, perm]
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    scale = torch.zeros(out_features, n_groups, dtype=torch.float64)
    zero = torch.zeros(out_features, n_groups, dtype=torch.float64)
    if act_order:  # static groups on the original column order
        for g in range(n_groups):
            s, z = qparams(w[:, g * group:(g + 1) * group].float(), fmt)
            scale[:, g], zero[:, g] = s[:, 0].double(), z[:, 0].double()
    # Rows of the transposed weight are its columns: each step reads and updates contiguous memory.
    Wt = W.T.contiguous()  # (in, out), in visiting order
    scale_t, zero_t = scale.T.contiguous(), zero.T.contiguous()  # (groups, out): a group's grid is one row
    codes_t = torch.zeros(in_features, out_features, dtype=torch.uint8)
    for i1 in range(0, in_features, block_size):
        i2 = min(i1 + block_size, in_features)
        W1, err1, hinv1 = Wt[i1:i2].clone(), torch.zeros(i2 - i1, out_features, dtype=W.dtype), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // group
            if not act_order and col % group == 0:
                # Dynamic groups: the grid of a group is fitted when GPTQ reaches its first column.
                rows = W1[i:i + group] if i + group <= len(W1) else torch.cat([W1[i:], Wt[i2:]])[:group]
                s, z = qparams(rows.T.float(), fmt)
                scale_t[g], zero_t[g] = s[:, 0].double(), z[:, 0].double()
            w_col, s_g, z_g = W1[i], scale_t[g], zero_t[g]
            c = quantize_to_codes(w_col, s_g, z_g, fmt.maxq)
            codes_t[col] = c
            err = (w_col - s_g * (c - z_g)) / hinv1[i, i]
            W1[i + 1:].addr_(hinv1[i, i + 1:], err, alpha=-1)
            err1[i] = err
        Wt[i2:] -= hinv[i1:i2, i2:].T @ err1
    return QuantizedTensor(codes_t.T.contiguous(), scale_t.T.float().contiguous(), zero_t.T.float().contiguous(), fmt)
