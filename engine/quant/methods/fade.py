"""FADE-style per-layer alpha: QEP whose propagation strength is set per layer from layer diagnostics.

Our design (the paper's exact formulas were not available; this is labelled as our reconstruction):
the calibration moments are kept in two clip-disjoint halves A and B. For each layer,
  1. the QEP direction D_A = W (C_A - H^_A) (H^_A + lambda I)^-1 is fitted on A, and the layer's output
     error on B is a quadratic in alpha (before rounding):
         E_B(alpha) = E_B(0) - 2 alpha g_B + alpha^2 h_B,  g_B = tr(W (C_B - H^_B) D_A^T), h_B = tr(D_A H^_B D_A^T)
     so alpha_AB = g_B / h_B; likewise alpha_BA with the halves swapped; alpha_ho = their mean;
  2. reliability r in [0, 1]: the share of the in-sample error reduction that survives on held-out data,
         r = clip( (g_B^2 / h_B) / (g_A^2 / h_A), 0, 1 )  averaged over both directions;
  3. the layer's alpha, by the config's rule:
       "heldout" (default): alpha_l = clip( alpha_ho, 0, alpha_max ): the held-out optimum itself;
       "shrink":            alpha_l = clip( r * alpha_ho + (1 - r) * alpha_prior, 0, alpha_max ).
     alpha_prior = the config's alpha, used by "heldout" only where the solve is degenerate (no drift to
     correct, or no gain even in-sample); alpha_max = the config's, else 0.5 at 4 bits or fewer and 1 above.
With speaker-disjoint halves alpha_ho answers "how much of a correction fitted on these voices helps another
voice". r is close to alpha_ho^2 (the in-sample optimum is about 1), so "shrink" pulls exactly the layers
whose correction does not transfer (small alpha_ho) up to the prior: measured, that made FADE loop with TTS
calibration (docs/methods.md), hence the "heldout" default.
No search and no retraining: everything comes from the moments the pass collects anyway.
With check_rounded the quadratic's verdict is checked after rounding (rounded_gain): the correction and the
rounding are fitted on one half and the output error scored on the other, against plain rounding fitted on the
same half; a layer whose corrected codes do no better there keeps plain rounding (alpha 0). At 5 bits, where
rounding error is small and a correction fitted on 32 clips can cost more than it fixes, this is the question
that matters (docs/deployment.md).
"""

from __future__ import annotations

import torch

from engine.quant.config import FADEConfig
from engine.quant.layer_table import LayerSpec
from engine.quant.methods.gptq import SOLVE_DTYPE, damping_amount
from engine.quant.methods.qep import drift_product, qep_direction
from engine.quant.methods.rtn_gptq_qep import corrected_outcome, layer_format
from engine.quant.moments import LayerStats, Moments, output_error
from engine.quant.registry import LayerOutcome, register


def _gain_curvature(drift: torch.Tensor, d: torch.Tensor, m: Moments) -> tuple[float, float]:
    """g = tr(W (C - H^) D^T), h = tr(D H^ D^T) of the output-error quadratic on moments m.
    drift: W (C - H^) on m, (out, in); d: (out, in), both SOLVE_DTYPE."""
    return float((drift * d).sum()), float(((d @ m.hq32) * d).sum())


def _heldout_rule(alpha_ho: float, reliability: float, prior: float, degenerate: bool) -> float:
    return prior if degenerate else alpha_ho


def _shrink_rule(alpha_ho: float, reliability: float, prior: float, degenerate: bool) -> float:
    return reliability * alpha_ho + (1 - reliability) * prior


ALPHA_RULES = {"heldout": _heldout_rule, "shrink": _shrink_rule}


def fade_alpha(w: torch.Tensor, a: Moments, b: Moments, prior: float, damping: float,
               alpha_max: float = 1.0, rule: str = "heldout") -> tuple[float, dict]:
    """Per-layer alpha from two disjoint halves of the calibration moments; returns (alpha, scores).

    w: (out, in); a, b: the halves' moments, (in, in) each.
    """
    alphas, shares = [], []
    drift_a, drift_b = drift_product(w, a), drift_product(w, b)  # each used by both directions
    for fit, check, drift_fit, drift_check in ((a, b, drift_a, drift_b), (b, a, drift_b, drift_a)):
        d = qep_direction(w, fit, damping, drift_fit).to(SOLVE_DTYPE)
        g_in = float((drift_fit * d).sum())
        # In sample D (H^ + lambda I) = W (C - H^), so tr(D H^ D^T) = g_in - lambda ||D||^2: no product needed.
        h_in = g_in - damping_amount(fit.hq, damping) * float((d * d).sum())
        g_out, h_out = _gain_curvature(drift_check, d, check)
        if h_in <= 0 or h_out <= 0 or g_in <= 0:
            continue
        alphas.append(g_out / h_out)
        shares.append(max(0.0, (g_out * g_out / h_out) / (g_in * g_in / h_in)) if g_out > 0 else 0.0)
    degenerate = not alphas
    alpha_ho = sum(alphas) / len(alphas) if alphas else prior
    reliability = min(1.0, sum(shares) / 2)
    alpha = ALPHA_RULES[rule](alpha_ho, reliability, prior, degenerate)
    alpha = min(alpha_max, max(0.0, alpha))
    notes = {"alpha_heldout": alpha_ho, "reliability": reliability}
    notes.update({f"alpha_{name}": value for name, value in zip(("ab", "ba"), alphas)})  # each direction's optimum
    return alpha, notes


def rounded_gain(w: torch.Tensor, a: Moments, b: Moments, alpha: float, spec: LayerSpec, config: FADEConfig) -> float:
    """The share of plain rounding's held-out output error that the rounded correction removes (> 0: it helps).

    Both ways round: the correction (with this alpha) and the rounding's Hessian come from one half, the
    squared relative output errors of corrected and plain codes are measured on the other. alpha > 0 (at 0 the
    two codes are the same). w: (out, in)."""
    plain = corrected = 0.0
    for fit, check in ((a, b), (b, a)):
        fitted = corrected_outcome(w, fit, spec, config, alpha)  # corrected and plain codes, one stacked rounding
        corrected += output_error(w, fitted.quantized.dequantize(), check) ** 2
        plain += output_error(w, fitted.uncorrected.dequantize(), check) ** 2
    return (plain - corrected) / plain if plain > 0 else 0.0


LOW_BIT_ALPHA_MAX = 0.5  # the cap of a layer of LOW_BITS or fewer when the config sets none
LOW_BITS = 4  # measured at 3 and 4 bits; 5 bits and up were not, so they stay uncapped


def fade_alpha_max(config: FADEConfig, bits: int) -> float:
    """A layer's upper bound of alpha: the config's, else 0.5 at 4 bits or fewer and 1 above. A strong correction
    fitted on a few voices does not carry over to other speakers: at 3 bits it made greedy decoding loop (sample
    calibration: 2 of 5 draws looped uncapped, 1 with the cap), at 4 bits capped was lower on every sample draw
    (-0.47 points on test-other, -0.42 on 54 held-out real clips; docs/methods.md, "The cap on alpha")."""
    if config.alpha_max is not None:
        return config.alpha_max
    return LOW_BIT_ALPHA_MAX if bits <= LOW_BITS else 1.0


@register(FADEConfig, needs_calibration=True, summary="QEP with a per-layer alpha from held-out layer diagnostics",
          check_row=layer_format)
def quantize_fade(w: torch.Tensor, stats: LayerStats, spec: LayerSpec, config: FADEConfig) -> LayerOutcome:
    m = stats.moments()
    if spec.alpha is not None:  # a user-set alpha in the table wins
        return corrected_outcome(w, m, spec, config, spec.alpha)
    a, b = stats.split_moments(0), stats.split_moments(1)
    alpha, notes = fade_alpha(w, a, b, config.alpha, config.qep_damping, fade_alpha_max(config, spec.bits), config.rule)
    if config.check_rounded and alpha > 0 and a.n and b.n:
        notes["rounded_gain"] = rounded_gain(w, a, b, alpha, spec, config)
        if notes["rounded_gain"] <= 0:
            notes["alpha_before_rounded_check"], alpha = alpha, 0.0
    return corrected_outcome(w, m, spec, config, alpha, notes)
