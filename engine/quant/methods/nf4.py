"""NF4: blockwise NormalFloat-4 (QLoRA), the frozen base of PQM personalisation. No calibration."""

from __future__ import annotations

import torch

from engine.quant.codebook import nf4_quantize
from engine.quant.config import NF4Config
from engine.quant.layer_table import LayerSpec, LayerTableError
from engine.quant.moments import LayerStats
from engine.quant.registry import LayerOutcome, register


def check_nf4_row(spec: LayerSpec, config: NF4Config) -> None:
    if spec.bits != 4:
        raise LayerTableError(f"layer {spec.name}: nf4 is a 4-bit format; set its bits to 4 or its action to keep.")


@register(NF4Config, needs_calibration=False, summary="blockwise NormalFloat-4 (QLoRA), optional double quantization",
          check_row=check_nf4_row)
def quantize_nf4(w: torch.Tensor, stats: LayerStats | None, spec: LayerSpec, config: NF4Config) -> LayerOutcome:
    check_nf4_row(spec, config)
    return LayerOutcome(nf4_quantize(w, spec.group_size, config.double_quant), w)
