"""QEP: quantization error propagation (Arai & Ichikawa, NeurIPS 2025), from the reference code.

The layer is fitted to the quantized model's inputs X^ while targeting the full-precision outputs W X:
    W*(alpha) = W + alpha * W (C - H^) (H^ + lambda I)^-1,   C = E[x x^T], H^ = E[x^ x^T]
(the reference's H_delta = E[(x - x^) x^T] equals C - H^). alpha = 1 is the least-squares solution of
min ||W X - W* X^||, alpha = 0 leaves W unchanged. lambda = damping * mean(diag H^).
W* is then rounded by GPTQ (or RTN) using H^.
"""

from __future__ import annotations

import torch

from engine.quant.methods.gptq import SOLVE_DTYPE, cholesky, prepare_hessian
from engine.quant.moments import Moments


def drift_product(w: torch.Tensor, m: Moments) -> torch.Tensor:
    """W (C - H^): (out, in) in SOLVE_DTYPE, the right-hand side of the direction's solve (C - H^, a difference
    of near-equal moments, taken in their float64: Moments.shift32)."""
    return w.to(SOLVE_DTYPE) @ m.shift32


def qep_direction(w: torch.Tensor, m: Moments, damping: float, drift: torch.Tensor | None = None) -> torch.Tensor:
    """D = W (C - H^) (H^ + lambda I)^-1, so that W*(alpha) = W + alpha D. w: (out, in) -> (out, in).
    drift: drift_product(w, m) when the caller already has it."""
    h, dead = prepare_hessian(m.hq32, damping)
    drift = drift_product(w, m) if drift is None else drift
    # Solve D H = W Hd rather than forming the inverse: D^T = H^-1 Hd^T W^T (H symmetric).
    chol = cholesky(h)
    d = torch.cholesky_solve(drift.T, chol).T
    d[:, dead] = 0
    return d.to(w.dtype)


def qep_correct(w: torch.Tensor, m: Moments, alpha: float, damping: float) -> torch.Tensor:
    """W*(alpha); alpha 0 returns w itself."""
    if alpha == 0:
        return w
    return w + alpha * qep_direction(w, m, damping)
