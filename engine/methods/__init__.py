"""Method registry: name -> config class and per-layer quantizer. No if/elif chains on method names.

A per-layer quantizer takes the full-precision weight, the layer's calibration moments (None for methods
that need no calibration and were given none), its table row and the method config, and returns a
LayerOutcome. A method may also register a ``refine`` step that retrains the quantized layers together once
the layer-wise pass is done (GQ's end-to-end distillation) and a ``finalize`` step that runs once on the
whole quantized model (W8A8 attaches its activation quantizers there). Implementations register
themselves with @register in their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.codebook import CodebookTensor
from engine.config import QuantConfig
from engine.errors import UserError
from engine.formats import QuantizedTensor
from engine.layer_table import LayerSpec
from engine.methods.moments import LayerStats


QuantizedWeight = QuantizedTensor | CodebookTensor


@dataclass(frozen=True)
class LayerOutcome:
    quantized: QuantizedWeight
    target: torch.Tensor  # the weight the rounding aimed at: W, or W* after QEP correction
    alpha: float | None = None  # propagation strength used (QEP/FADE)
    uncorrected: QuantizedWeight | None = None  # the same rounding without correction, for diagnostics
    notes: dict | None = None  # method-specific per-layer scores (e.g. FADE's vulnerability, reliability)


LayerQuantizer = Callable[[torch.Tensor, LayerStats | None, LayerSpec, QuantConfig], LayerOutcome]
# finalize(model, config, calibration, loaded) -> settings to store with the result (and reapply on load)
Finalizer = Callable[..., dict]
# refine(model, loaded, calibration, tensors, targets, config, progress) -> new tensors for (some of) the layers
Refiner = Callable[..., dict]
# check_row(spec, config) raises LayerTableError (one sentence) for a row the method cannot quantize
RowCheck = Callable[[LayerSpec, QuantConfig], object]


def _any_row(spec: LayerSpec, config: QuantConfig) -> None:
    return None


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type[QuantConfig]
    quantize_layer: LayerQuantizer
    calibration: bool | Callable[[QuantConfig], bool]  # a config-dependent answer for methods with modes
    summary: str
    finalize: Finalizer | None = None
    needs_moments: bool = True  # per-layer moments from the two-stream pass (False: calibration used elsewhere)
    refine: Refiner | None = None
    refines: Callable[[QuantConfig], bool] = lambda config: True  # whether refine runs with these settings
    check_row: RowCheck = _any_row

    def check_table(self, table: list[LayerSpec], config: QuantConfig) -> None:
        """Refuse, before any work, a row this method cannot quantize (e.g. 1 bit on an integer grid)."""
        for row in table:
            if row.quantized:
                self.check_row(row, config)

    def refines_with(self, config: QuantConfig) -> bool:
        return self.refine is not None and self.refines(config)

    @property
    def needs_calibration(self) -> bool:
        """Whether the method can need calibration audio at all (with its default settings)."""
        return self.uses_calibration(self.config_cls())

    def uses_calibration(self, config: QuantConfig) -> bool:
        return self.calibration(config) if callable(self.calibration) else self.calibration


METHODS: dict[str, MethodEntry] = {}


def register(config_cls: type[QuantConfig], needs_calibration: bool | Callable[[QuantConfig], bool], summary: str,
             finalize: Finalizer | None = None, needs_moments: bool = True, refine: Refiner | None = None,
             refines: Callable[[QuantConfig], bool] = lambda config: True, check_row: RowCheck = _any_row):
    def decorator(fn: LayerQuantizer) -> LayerQuantizer:
        METHODS[config_cls.method] = MethodEntry(config_cls.method, config_cls, fn, needs_calibration, summary,
                                                 finalize, needs_moments, refine, refines, check_row)
        return fn

    return decorator


def get_method(name: str) -> MethodEntry:
    if not isinstance(name, str) or name not in METHODS:
        raise UserError(f"Unknown method {str(name)[:40]!r}; choose one of {', '.join(METHODS)}.")
    return METHODS[name]


def make_config(name: str, **settings) -> QuantConfig:
    """Build a method's config from settings, rejecting settings the method does not have."""
    entry = get_method(name)
    unknown = set(settings) - entry.config_cls.setting_names()
    if unknown:
        raise UserError(f"Method '{name}' has no setting(s) {', '.join(sorted(unknown))}.")
    return entry.config_cls(**settings)


# Importing the implementations registers them.
from engine.methods import fade, gq, nf4, rtn_gptq_qep, w8a8  # noqa: E402,F401
