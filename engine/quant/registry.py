"""Method registry: name -> config class, per-layer quantizer and optional hooks. No if/elif chains on names.

A per-layer quantizer takes the full-precision weight, the layer's calibration moments (None for methods
that need no calibration and were given none), its table row and the method config, and returns a
LayerOutcome. A method may also register a ``refine`` step that retrains the quantized layers together once
the layer-wise pass is done (GQ's end-to-end distillation) and a ``finalize`` step that runs once on the
whole quantized model (W8A8 attaches its activation quantizers there).

Implementations register themselves with @register in their modules under engine/quant/methods/; the
registry imports them the first time a method is looked up, so importing the registry (or the moments, or
the calibration pass) never imports every method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from engine.errors import UserError
from engine.progress import ProgressFn
from engine.quant.calibration import CalibrationData
from engine.quant.codebook import CodebookTensor
from engine.quant.config import QuantConfig
from engine.quant.formats import QuantizedTensor
from engine.quant.layer_table import LayerSpec
from engine.quant.moments import LayerStats
from engine.whisper.models import LoadedModel

IMPLEMENTATIONS = ("rtn_gptq_qep", "fade", "gq", "nf4", "w8a8")  # modules of engine.quant.methods

QuantizedWeight = QuantizedTensor | CodebookTensor


@dataclass(frozen=True)
class LayerOutcome:
    quantized: QuantizedWeight
    target: torch.Tensor  # the weight the rounding aimed at: W, or W* after QEP correction
    alpha: float | None = None  # propagation strength used (QEP/FADE)
    uncorrected: QuantizedWeight | None = None  # the same rounding without correction, for diagnostics
    notes: dict | None = None  # method-specific per-layer scores (e.g. FADE's vulnerability, reliability)


class LayerQuantizer(Protocol):
    def __call__(self, w: torch.Tensor, stats: LayerStats | None, spec: LayerSpec, config: QuantConfig) -> LayerOutcome:
        """w: (out, in) full-precision weight; stats: the layer's calibration moments or None."""


class Finalizer(Protocol):
    def __call__(self, model: nn.Module, config: QuantConfig, calibration: CalibrationData | None,
                 loaded: LoadedModel) -> dict:
        """Runs once on the whole quantized model; returns the settings to save with the result (and reapply)."""


class Refiner(Protocol):
    def __call__(self, model: nn.Module, loaded: LoadedModel, calibration: CalibrationData,
                 tensors: dict[str, QuantizedWeight], targets: dict[str, torch.Tensor], config: QuantConfig,
                 progress: ProgressFn) -> dict[str, QuantizedWeight]:
        """Retrains quantized layers together; returns new quantized weights for (some of) them."""


class RowCheck(Protocol):
    def __call__(self, spec: LayerSpec, config: QuantConfig) -> object:
        """Raises LayerTableError (one sentence) for a row the method cannot quantize."""


def _any_row(spec: LayerSpec, config: QuantConfig) -> None:
    return None


def _always(config: QuantConfig) -> bool:
    return True


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[QuantConfig]
    quantize_layer: LayerQuantizer
    calibration: Callable[[QuantConfig], bool]  # whether these settings need calibration audio
    summary: str
    finalize: Finalizer | None = None
    needs_moments: bool = True  # per-layer moments from the two-stream pass (False: calibration used elsewhere)
    refine: Refiner | None = None
    refines: Callable[[QuantConfig], bool] = _always  # whether refine runs with these settings
    check_row: RowCheck = _any_row

    def check_table(self, table: list[LayerSpec], config: QuantConfig) -> None:
        """Refuse, before any work, a row this method cannot quantize (e.g. 1 bit on an integer grid)."""
        for row in table:
            if row.quantized:
                self.check_row(row, config)

    def refines_with(self, config: QuantConfig) -> bool:
        return self.refine is not None and self.refines(config)

    def needs_calibration(self, config: QuantConfig | None = None) -> bool:
        """Whether quantizing with these settings (default: the method's defaults) needs calibration audio."""
        return self.calibration(config if config is not None else self.config_cls())


_METHODS: dict[str, MethodEntry] = {}


def register(config_cls: type[QuantConfig], needs_calibration: bool | Callable[[QuantConfig], bool], summary: str,
             finalize: Finalizer | None = None, needs_moments: bool = True, refine: Refiner | None = None,
             refines: Callable[[QuantConfig], bool] = _always, check_row: RowCheck = _any_row):
    """needs_calibration: True/False, or a function of the config for methods with modes (W8A8's dynamic)."""
    calibration = needs_calibration if callable(needs_calibration) else (lambda config: needs_calibration)

    def decorator(fn: LayerQuantizer) -> LayerQuantizer:
        _METHODS[config_cls.method] = MethodEntry(config_cls.method, config_cls, fn, calibration, summary,
                                                  finalize, needs_moments, refine, refines, check_row)
        return fn

    return decorator


def all_methods() -> dict[str, MethodEntry]:
    """Every registered method by name, in registration order (importing the implementations the first time)."""
    for module in IMPLEMENTATIONS:  # imported once; later calls find them in sys.modules
        importlib.import_module(f"engine.quant.methods.{module}")
    return dict(_METHODS)


def get_method(name: str) -> MethodEntry:
    methods = all_methods()
    if not isinstance(name, str) or name not in methods:
        raise UserError(f"Unknown method {str(name)[:40]!r}; choose one of {', '.join(methods)}.")
    return methods[name]


def make_config(name: str, **settings) -> QuantConfig:
    """Build a method's config from settings, rejecting settings the method does not have."""
    entry = get_method(name)
    unknown = set(settings) - entry.config_cls.setting_names()
    if unknown:
        raise UserError(f"Method '{name}' has no setting(s) {', '.join(sorted(unknown))}.")
    return entry.config_cls(**settings)
