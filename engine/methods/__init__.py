"""Method registry: name -> config class and per-layer quantizer. No if/elif chains on method names.

A per-layer quantizer takes the full-precision weight, the layer's calibration moments (None for methods
that need no calibration and were given none), its table row and the method config, and returns a
LayerOutcome. Implementations register themselves with @register in their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.config import QuantConfig
from engine.errors import UserError
from engine.formats import QuantizedTensor
from engine.layer_table import LayerSpec
from engine.methods.moments import LayerStats


@dataclass(frozen=True)
class LayerOutcome:
    quantized: QuantizedTensor
    target: torch.Tensor  # the weight the rounding aimed at: W, or W* after QEP correction
    alpha: float | None = None  # propagation strength used (QEP/FADE)
    uncorrected: QuantizedTensor | None = None  # the same rounding without correction, for diagnostics
    notes: dict | None = None  # method-specific per-layer scores (e.g. FADE's vulnerability, reliability)


LayerQuantizer = Callable[[torch.Tensor, LayerStats | None, LayerSpec, QuantConfig], LayerOutcome]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[QuantConfig]
    quantize_layer: LayerQuantizer
    needs_calibration: bool
    summary: str


METHODS: dict[str, MethodEntry] = {}


def register(config_cls: type[QuantConfig], needs_calibration: bool, summary: str):
    def decorator(fn: LayerQuantizer) -> LayerQuantizer:
        METHODS[config_cls.method] = MethodEntry(config_cls.method, config_cls, fn, needs_calibration, summary)
        return fn

    return decorator


def get_method(name: str) -> MethodEntry:
    if name not in METHODS:
        raise UserError(f"Unknown method '{name}'; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def make_config(name: str, **settings) -> QuantConfig:
    """Build a method's config from settings, rejecting settings the method does not have."""
    entry = get_method(name)
    unknown = set(settings) - entry.config_cls.setting_names()
    if unknown:
        raise UserError(f"Method '{name}' has no setting(s) {', '.join(sorted(unknown))}.")
    return entry.config_cls(**settings)


# Importing the implementations registers them.
from engine.methods import fade, rtn_gptq_qep  # noqa: E402,F401
