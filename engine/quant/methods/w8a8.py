"""W8A8: the fully 8-bit setting. Weights round to a symmetric per-channel int8 grid (RTN: at 8 bits the
rounding error is far below the activation error); every block linear's input is quantized too, with static
ranges from calibration (fixed point, the paper's setting) or per token at run time (dynamic, what the real
int8 kernels in engine/quant/kernels.py compute)."""

from __future__ import annotations

import torch
from torch import nn

from engine.quant.activation_quant import attach_input_quantizers, collect_input_ranges
from engine.quant.calibration import CalibrationData
from engine.quant.config import W8A8Config
from engine.quant.formats import rtn_quantize
from engine.quant.layer_table import LayerSpec
from engine.quant.methods.rtn_gptq_qep import layer_format
from engine.quant.moments import LayerStats
from engine.quant.registry import LayerOutcome, register
from engine.whisper.models import LoadedModel


def attach_activation_quantizers(model: nn.Module, config: W8A8Config, calibration: CalibrationData | None,
                                 loaded: LoadedModel) -> dict:
    """Measure static ranges if needed, hook the quantizers in, return the settings to save."""
    settings = {"mode": config.activations, "bits": config.activation_bits, "ranges": {}}
    if config.activations == "static":
        settings["ranges"] = collect_input_ranges(model, calibration, loaded.tokens.end_of_text)
    settings["layers"] = attach_input_quantizers(model, settings)
    return settings


@register(W8A8Config, needs_calibration=lambda config: config.activations == "static", needs_moments=False,
          finalize=attach_activation_quantizers, summary="8-bit weights and 8-bit activations (static or dynamic)")
def quantize_w8a8(w: torch.Tensor, stats: LayerStats | None, spec: LayerSpec, config: W8A8Config) -> LayerOutcome:
    return LayerOutcome(rtn_quantize(w, layer_format(spec, config)), w)
