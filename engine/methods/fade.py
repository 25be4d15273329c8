"""FADE-style per-layer alpha: QEP whose propagation strength is set per layer from layer diagnostics.

Our design (the paper's exact formulas were not available; this is labelled as our reconstruction):
the calibration moments are kept in two clip-disjoint halves A and B. For each layer,
  1. the QEP direction D_A = W (C_A - H^_A) (H^_A + lambda I)^-1 is fitted on A, and the layer's output
     error on B is a quadratic in alpha (before rounding):
         E_B(alpha) = E_B(0) - 2 alpha g_B + alpha^2 h_B,  g_B = tr(W (C_B - H^_B) D_A^T), h_B = tr(D_A H^_B D_A^T)
     so alpha_AB = g_B / h_B; likewise alpha_BA with the halves swapped; alpha_ho = their mean;
  2. reliability r in [0, 1]: the share of the in-sample error reduction that survives on held-out data,
         r = clip( (g_B^2 / h_B) / (g_A^2 / h_A), 0, 1 )  averaged over both directions;
  3. alpha_l = clip( r * alpha_ho + (1 - r) * alpha_prior, 0, alpha_max ), alpha_prior = the config's alpha,
     alpha_max its upper bound (1 by default).
A poorly conditioned or overfitted solve (few tokens for the layer's width, noisy drift) has r near 0
and falls back to the global prior; a solve that generalizes keeps its own optimum.
No search and no retraining: everything comes from the moments the pass collects anyway.
"""

from __future__ import annotations

import torch

from engine.config import FADEConfig
from engine.layer_table import LayerSpec
from engine.methods import LayerOutcome, register
from engine.methods.moments import LayerStats, Moments
from engine.methods.qep import qep_direction
from engine.methods.rtn_gptq_qep import corrected_outcome


def _gain_curvature(w: torch.Tensor, d: torch.Tensor, m: Moments) -> tuple[float, float]:
    """g = tr(W (C - H^) D^T), h = tr(D H^ D^T) of the output-error quadratic on moments m."""
    w, d = w.double(), d.double()
    g = torch.einsum("oi,ij,oj->", w, m.cross - m.hq, d)
    h = torch.einsum("oi,ij,oj->", d, m.hq, d)
    return float(g), float(h)


def fade_alpha(w: torch.Tensor, a: Moments, b: Moments, prior: float, damping: float,
               alpha_max: float = 1.0) -> tuple[float, dict]:
    """Per-layer alpha from two clip-disjoint halves of the calibration moments; returns (alpha, scores)."""
    alphas, shares = [], []
    for fit, check in ((a, b), (b, a)):
        d = qep_direction(w, fit, damping)
        g_in, h_in = _gain_curvature(w, d, fit)
        g_out, h_out = _gain_curvature(w, d, check)
        if h_in <= 0 or h_out <= 0 or g_in <= 0:
            alphas.append(prior)
            shares.append(0.0)
            continue
        alphas.append(g_out / h_out)
        shares.append(max(0.0, (g_out * g_out / h_out) / (g_in * g_in / h_in)) if g_out > 0 else 0.0)
    alpha_ho = sum(alphas) / 2
    reliability = min(1.0, sum(shares) / 2)
    alpha = min(alpha_max, max(0.0, reliability * alpha_ho + (1 - reliability) * prior))
    return alpha, {"alpha_heldout": alpha_ho, "reliability": reliability}


@register(FADEConfig, needs_calibration=True, summary="QEP with a per-layer alpha from held-out layer diagnostics")
def quantize_fade(w: torch.Tensor, stats: LayerStats, spec: LayerSpec, config: FADEConfig) -> LayerOutcome:
    m = stats.moments()
    if spec.alpha is not None:  # a user-set alpha in the table wins
        return corrected_outcome(w, m, spec, config, spec.alpha)
    alpha, notes = fade_alpha(w, stats.split_moments(0), stats.split_moments(1), config.alpha, config.qep_damping,
                              config.alpha_max)
    return corrected_outcome(w, m, spec, config, alpha, notes)
