"""Per-layer quantizers of the baselines: RTN, GPTQ, and QEP (correction, then GPTQ or RTN)."""

from __future__ import annotations

import torch

from engine.quant.config import GPTQConfig, QEPConfig, QuantConfig, RTNConfig
from engine.quant.formats import IntFormat, QuantizedTensor, rtn_quantize
from engine.quant.layer_table import LayerSpec, LayerTableError
from engine.quant.methods.gptq import gptq_quantize
from engine.quant.methods.qep import qep_correct
from engine.quant.moments import LayerStats, Moments
from engine.quant.registry import LayerOutcome, register


def layer_format(spec: LayerSpec, config: QuantConfig) -> IntFormat:
    if spec.bits < 2:
        raise LayerTableError(f"layer {spec.name}: integer grids need 2 bits at least; {spec.bits}-bit layers need gq.")
    return IntFormat(spec.bits, spec.group_size, config.symmetric, config.clip_search, config.integer_zero)


def round_weight(w: torch.Tensor, m: Moments | None, spec: LayerSpec, config: QuantConfig, base: str) -> QuantizedTensor:
    """Round w with GPTQ (needs moments) or RTN."""
    fmt = layer_format(spec, config)
    if base == "gptq":
        act_order = config.act_order if config.act_order is not None else spec.bits <= 3
        return gptq_quantize(w, m.hq32, fmt, config.damping, config.block_size, act_order)
    return rtn_quantize(w, fmt)


@register(RTNConfig, needs_calibration=False, summary="round to nearest on a min-max grid", check_row=layer_format)
def quantize_rtn(w: torch.Tensor, stats: LayerStats | None, spec: LayerSpec, config: RTNConfig) -> LayerOutcome:
    return LayerOutcome(rtn_quantize(w, layer_format(spec, config)), w)


@register(GPTQConfig, needs_calibration=True, summary="Hessian-based rounding with error feedback",
          check_row=layer_format)
def quantize_gptq(w: torch.Tensor, stats: LayerStats, spec: LayerSpec, config: GPTQConfig) -> LayerOutcome:
    return LayerOutcome(round_weight(w, stats.moments(), spec, config, "gptq"), w)


def corrected_outcome(w: torch.Tensor, m: Moments, spec: LayerSpec, config: QEPConfig, alpha: float,
                      notes: dict | None = None) -> LayerOutcome:
    """Correct with the given alpha, round, and also round the uncorrected weight for the diagnostics.

    Both are rounded in one stacked call: given the shared Hessian every row is rounded on its own, so
    the stack gives each weight the codes it would get alone, for one pass of GPTQ's column loop."""
    target = qep_correct(w, m, alpha, config.qep_damping)
    if alpha == 0:
        quantized = round_weight(target, m, spec, config, config.base)
        return LayerOutcome(quantized, target, alpha, quantized, notes)
    quantized, uncorrected = round_weight(torch.cat([target, w]), m, spec, config, config.base).split_rows(
        [target.shape[0], w.shape[0]])
    return LayerOutcome(quantized, target, alpha, uncorrected, notes)


@register(QEPConfig, needs_calibration=True, summary="QEP correction with one global alpha, then GPTQ",
          check_row=layer_format)
def quantize_qep(w: torch.Tensor, stats: LayerStats, spec: LayerSpec, config: QEPConfig) -> LayerOutcome:
    alpha = config.alpha if spec.alpha is None else spec.alpha
    return corrected_outcome(w, stats.moments(), spec, config, alpha)
