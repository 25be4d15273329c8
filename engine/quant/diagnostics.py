"""Per-layer error records from the calibration pass (what the error-propagation plots show)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from engine.quant.layer_table import LayerSpec
from engine.quant.moments import LayerStats, layer_errors
from engine.quant.registry import LayerOutcome


@dataclass(frozen=True)
class LayerRecord:
    """Errors of one linear layer, relative (fractions). None where no calibration data was used.

    input_drift:  ||X - X^|| / ||X||        error that arrived from upstream
    local_error:  ||W X^ - Q X^|| / ||W X^|| error this layer adds by itself
    output_error: ||W X - Q X^|| / ||W X||   what the rest of the model sees
    output_error_uncorrected: the same with alpha 0 (QEP/FADE only)
    """

    name: str
    part: str
    block: int
    kind: str
    bits: int
    group_size: int
    action: str
    alpha: float | None
    weight_error: float  # ||W - Q|| / ||W||, needs no calibration
    input_drift: float | None = None
    local_error: float | None = None
    output_error: float | None = None
    output_error_uncorrected: float | None = None
    notes: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def record_for(spec: LayerSpec, w: torch.Tensor, outcome: LayerOutcome | None, stats: LayerStats | None) -> LayerRecord:
    """Build a layer's record; ``outcome`` None means the layer stayed in full precision."""
    q = w if outcome is None else outcome.quantized.dequantize()
    weight_error = float((w - q).norm() / w.norm()) if w.norm() > 0 else 0.0
    common = dict(name=spec.name, part=spec.part, block=spec.block, kind=spec.kind, bits=spec.bits if outcome else 16,
                  group_size=spec.group_size, action=spec.action, alpha=outcome.alpha if outcome else None,
                  weight_error=weight_error, notes=outcome.notes if outcome else None)
    if stats is None:
        return LayerRecord(**common)
    second = outcome.uncorrected if outcome is not None else None
    same = second is not None and second is outcome.quantized  # alpha 0: the plain codes are the codes
    errors = layer_errors(w, q, stats.moments(), second.dequantize() if second is not None and not same else None)
    return LayerRecord(**common, input_drift=errors.input_drift, local_error=errors.local_error,
                       output_error=errors.output_error,
                       output_error_uncorrected=errors.output_error if same else errors.output_error_uncorrected)


def refined_record(record: LayerRecord, w: torch.Tensor, quantized) -> LayerRecord:
    """A record after a model-level refine step changed the layer's codes (GQ's end-to-end distillation).

    The weight error is the final one; the moments are gone by then, so the input drift and the local and
    output errors stay those of the layer-wise stage, and the notes say so."""
    w, q = w.detach(), quantized.dequantize()
    weight_error = float((w - q).norm() / w.norm()) if w.norm() > 0 else 0.0
    notes = {**(record.notes or {}), "distilled": True, "weight_error_layerwise": record.weight_error}
    if "levels" in notes:  # a learned codebook: show the centroids that ship
        notes["levels_layerwise"], notes["levels"] = notes["levels"], quantized.levels.tolist()[:16]
    return replace(record, weight_error=weight_error, notes=notes)
