"""8-bit (or fewer) activations at the inputs of the block linear layers: fixed-point simulation.

Pure functions (fake_quant_static, fake_quant_dynamic) apart from the hooks that apply them to a model
(attach_input_quantizers) and the calibration pass that measures static ranges (collect_input_ranges).
Static: one asymmetric range per layer input, min/max over the calibration tokens (the fully quantized
Transformer's fixed-point setting). Dynamic: the range of every token's vector, measured at run time (what
int8 dynamic kernels do). The hooks are plain objects, so a model carrying them deep-copies.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from engine.quant.calibration import CalibrationData
from engine.quant.formats import IntFormat, range_grid
from engine.quant.layer_table import linear_layers
from engine.whisper.tokens import padded_rows


def _grid(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point of the grid covering [min(lo, 0), max(hi, 0)]: 0 is exactly representable."""
    return range_grid(torch.clamp(lo, max=0), torch.clamp(hi, min=0), IntFormat(bits, integer_zero=True), stored_as=None)


def fake_quant_static(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
    """x: (..., features) rounded to the fixed grid of [lo, hi]; values outside saturate."""
    scale, zero = _grid(torch.tensor(lo), torch.tensor(hi), bits)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale


def fake_quant_dynamic(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """x: (..., features) rounded per token (per row of the last dimension) to its own min-max grid."""
    scale, zero = _grid(x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), bits)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1) - zero) * scale


@dataclass(frozen=True)
class InputQuantizer:
    """A forward pre-hook: quantizes a linear layer's input, statically (lo, hi) or dynamically (None)."""

    bits: int
    lo: float | None = None
    hi: float | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        q = fake_quant_dynamic(x, self.bits) if self.lo is None else fake_quant_static(x, self.lo, self.hi, self.bits)
        return (q.to(x.dtype), *args[1:])


def attach_input_quantizers(model: nn.Module, settings: dict) -> int:
    """Apply {"bits", "mode", "ranges": {layer: [lo, hi]}} (as saved with a result); returns layers hooked."""
    count = 0
    for name, layer in linear_layers(model).items():
        if settings["mode"] == "dynamic":
            hook = InputQuantizer(settings["bits"])
        elif name in settings["ranges"]:
            hook = InputQuantizer(settings["bits"], *settings["ranges"][name])
        else:
            continue
        layer.register_forward_pre_hook(hook)
        count += 1
    return count


def remove_input_quantizers(model: nn.Module) -> int:
    """Take the simulated quantizers off (a real int8 kernel quantizes its input itself); returns how many."""
    removed = 0
    for layer in linear_layers(model).values():
        # torch keeps pre-hooks in this dict; handles are not kept, so we find ours by type.
        for key, hook in list(layer._forward_pre_hooks.items()):
            if isinstance(hook, InputQuantizer):
                del layer._forward_pre_hooks[key]
                removed += 1
    return removed


@torch.inference_mode()
def collect_input_ranges(model: nn.Module, calibration: CalibrationData, pad_token: int,
                         batch_size: int = 8) -> dict[str, list[float]]:
    """Min and max of every block linear's input over the calibration clips (teacher-forced decoder)."""
    ranges: dict[str, list[float]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(name)
            ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in linear_layers(model).items()]
    try:
        for start in range(0, calibration.n_clips, batch_size):
            ids, _ = padded_rows(calibration.tokens[start:start + batch_size], pad_token)
            model(input_features=calibration.features[start:start + batch_size], decoder_input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return ranges
