"""The one entry point: quantize(loaded, config, calibration, layers, progress) -> QuantizationResult.

The full-precision model is left untouched; the result holds a quantized copy whose linear weights are
the dequantized codes (fake quantization: same speed as fp32, labelled as such), plus the codes
themselves for saving and for real low-bit kernels, the layer table, diagnostics and the exact size.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from engine.errors import UserError
from engine.progress import ProgressFn
from engine.quant.calibration import PAD_STRIDE, BlockRecord, CalibrationData, TwoStreamPass, check_layers_covered
from engine.quant.config import QuantConfig
from engine.quant.diagnostics import LayerRecord, record_for, refined_record
from engine.quant.layer_table import OUTPUT_LAYER, LayerSpec, build_table, table_layers
from engine.quant.precision import PassPrecision, pass_precision
from engine.quant.moments import LayerStats
from engine.quant.registry import QuantizedWeight, get_method
from engine.quant.size import SizeReport, size_report, weight_storage
from engine.whisper.models import LoadedModel

log = logging.getLogger(__name__)



def branch_of(layer_name: str) -> str:
    """'model.encoder.layers.0.self_attn.q_proj' -> 'model.encoder.layers.0.self_attn'; fc1/fc2 -> '...0.ffn'."""
    prefix, _, leaf = layer_name.rpartition(".")
    return prefix + ".ffn" if leaf in ("fc1", "fc2") else prefix


@dataclass
class QuantizationResult:
    loaded: LoadedModel  # the quantized copy, ready to transcribe
    config: QuantConfig
    table: list[LayerSpec]
    tensors: dict[str, QuantizedWeight]  # quantized layer name -> codes and grid (or codebook)
    dropped: set[str]  # layer names in removed branches
    layer_records: list[LayerRecord]
    block_records: list[BlockRecord]
    size: SizeReport
    seconds: float
    calibration: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)  # activation quantizers a method attached (W8A8), as saved

    def to_dict(self) -> dict:
        """What every report of this quantization says (`asrq quantize/eval --json`, the page's run summary):
        the config, the size figures, the seconds it took, and the per-layer and per-block error records."""
        return {"method": self.config.method, "bits": self.config.bits, "group_size": self.config.group_size,
                "config": self.config.to_dict(), **self.size.to_dict(), "quantization_seconds": self.seconds,
                "calibration": self.calibration, "per_layer": [r.to_dict() for r in self.layer_records],
                "per_block": [asdict(r) for r in self.block_records]}


def _apply_drops(model: nn.Module, table: list[LayerSpec]) -> set[str]:
    """Zero every linear of a branch that has a dropped layer: with its output projection at zero the
    branch adds nothing to the residual stream, and the zeros are what a saved artifact reloads."""
    branches = {branch_of(row.name) for row in table if row.action == "drop"}
    dropped = {row.name for row in table if branch_of(row.name) in branches}
    with torch.no_grad():
        for name in dropped:
            layer = model.get_submodule(name)
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    return dropped


def _round_other_parameters_to_fp16(model: nn.Module, quantized_layers: set[str]) -> None:
    """The deployable form stores every non-quantized parameter as float16: evaluate exactly that."""
    quantized = weight_storage(model, quantized_layers)
    with torch.no_grad():
        for p in model.parameters():
            if p.data_ptr() not in quantized:
                p.copy_(p.half().float())


def resolve_table(model: nn.Module, config: QuantConfig, layers: list[LayerSpec] | None) -> list[LayerSpec]:
    default = build_table(model, config.bits, config.group_size, with_output=config.quantize_output)
    if layers is None:
        return default
    names = [row.name for row in default]
    if sorted(row.name for row in layers) != sorted(names):
        missing = set(names) - {row.name for row in layers}
        raise UserError(f"The layer table does not match this model (e.g. {sorted(missing)[:1] or 'extra rows'}).")
    for row in layers:
        row.validate()
    return layers


def quantize(
    loaded: LoadedModel,
    config: QuantConfig,
    calibration: CalibrationData | None = None,
    layers: list[LayerSpec] | None = None,
    progress: ProgressFn | None = None,
    batch_size: int = 8,
    pad_stride: int = PAD_STRIDE,
    precision: PassPrecision | None = None,
) -> QuantizationResult:
    """Quantize a copy of ``loaded`` with ``config``; per-layer rows in ``layers`` override bits etc.
    pad_stride: one encoder padding frame in this many enters the calibration moments (1: all).
    precision: the calibration pass's dtypes (None: pass_precision('auto'), bfloat16 where the CPU has the units)."""
    precision = precision or pass_precision()
    progress = progress or (lambda fraction, message: None)
    method = get_method(config.method)
    if method.needs_calibration(config) and calibration is None:
        raise UserError(f"Method '{config.method}' needs calibration audio.")
    start = time.perf_counter()
    model = copy.deepcopy(loaded.model)
    table = resolve_table(model, config, layers)
    method.check_table(table, config)  # a row the method cannot take fails now, before calibration
    specs = {row.name: row for row in table}
    dropped = _apply_drops(model, table)
    tensors: dict[str, QuantizedWeight] = {}
    targets: dict[str, torch.Tensor] = {}  # what each layer's codes round, kept only for a refine step
    records: dict[str, LayerRecord] = {}
    refining = method.refines_with(config) and calibration is not None
    # A refine step gets the second half of the progress bar.
    pass_progress = (lambda f, msg: progress(f / 2, msg)) if refining else progress

    def quantize_layer(name: str, layer: nn.Linear, stats: LayerStats | None) -> None:
        spec = specs[name]
        w = layer.weight.detach().clone()
        if name in dropped or not spec.quantized:
            records[name] = record_for(spec, w, None, stats)
            return
        outcome = method.quantize_layer(w, stats, spec, config)
        tensors[name] = outcome.quantized
        if refining:
            targets[name] = outcome.target
        with torch.no_grad():
            layer.weight.copy_(outcome.quantized.dequantize())
        records[name] = record_for(spec, w, outcome, stats)

    linears = table_layers(model, with_output=OUTPUT_LAYER in specs)
    if calibration is not None and method.needs_moments:
        check_layers_covered(model)
        qloaded = replace(loaded, model=model)

        def on_group(part: str, block: int, group: dict[str, nn.Linear], stats: dict[str, LayerStats]) -> None:
            for name, layer in group.items():
                quantize_layer(name, layer, stats[name])

        runner = TwoStreamPass(qloaded, calibration, batch_size=batch_size, progress=pass_progress,
                               output_layer=OUTPUT_LAYER in specs, pad_stride=pad_stride,
                               precision=precision)
        runner.run(on_group)
        block_records = runner.block_records
    else:
        for i, (name, layer) in enumerate(linears.items()):
            quantize_layer(name, layer, None)
            pass_progress((i + 1) / len(linears), f"layer {i + 1}/{len(linears)}")
        block_records = []
    _round_other_parameters_to_fp16(model, set(tensors))
    if refining and tensors:
        refined = method.refine(model, loaded, calibration, tensors, targets, config,
                                lambda f, msg: progress(0.5 + f / 2, msg))
        tensors.update(refined)
        for name, quantized in refined.items():
            records[name] = refined_record(records[name], loaded.model.get_submodule(name).weight, quantized)
        targets.clear()
    activations = method.finalize(model, config, calibration, loaded) if method.finalize else {}
    result = QuantizationResult(
        loaded=replace(loaded, model=model.eval()),
        config=config,
        table=table,
        tensors=tensors,
        dropped=dropped,
        layer_records=[records[name] for name in linears],
        block_records=block_records,
        size=size_report(model, {name: t.nbytes() for name, t in tensors.items()}, dropped),
        seconds=time.perf_counter() - start,
        calibration=({"n_clips": calibration.n_recordings, "windows": calibration.n_clips}
                     | ({"pass_precision": precision.name} if method.needs_moments else {})
                     if calibration is not None else {}),
        activations=activations,
    )
    log.info("%s quantized in %.1f s: %.2f MB", config.method, result.seconds, result.size.size_bytes / 1e6)
    return result
