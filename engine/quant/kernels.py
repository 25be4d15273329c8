"""Real low-bit kernels for measured latency, next to the fake-quantized (dequantized float) models.

- int8: torch's dynamic quantization (int8 weights per output channel, activations quantized on the fly,
  fbgemm/x86 int8 GEMM). Deprecated in torch in favour of torchao but present and fast in torch 2.13.
- int4: torch's CPU int4 weight-only kernel (_weight_int4pack_mm_for_cpu) running our own 4-bit codes
  exactly: our grid w = s (q - z) is the kernel's (q - 8) s + zt with zt = s (8 - z).
Which layers run on a real kernel is reported, never assumed.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import torch
from torch import nn

from engine.quant.activation_quant import remove_input_quantizers
from engine.quant.formats import QuantizedTensor
from engine.quant.layer_table import linear_layers
from engine.quant.quantize import QuantizationResult
from engine.whisper.models import LoadedModel

INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_INNER_K_TILES = 2


def int8_dynamic(loaded: LoadedModel) -> LoadedModel:
    """A copy whose block linear layers run torch's dynamic int8 kernels (from the float weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    model = copy.deepcopy(loaded.model)
    remove_input_quantizers(model)  # a W8A8 model's simulated input quantizers: the kernel does it for real
    spec = {name: per_channel_dynamic_qconfig for name in linear_layers(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model = quantize_dynamic(model, spec, dtype=torch.qint8)
    return replace(loaded, model=model.eval(), name=f"{loaded.name} int8-dynamic")


class Int4Linear(nn.Module):
    """A linear layer computed by the CPU int4 weight-only kernel from packed 4-bit codes."""

    def __init__(self, qt: QuantizedTensor, bias: torch.Tensor | None):
        super().__init__()
        out_features, in_features = qt.codes.shape
        self.in_features, self.out_features, self.group_size = in_features, out_features, qt.fmt.group_size
        packed = torch._convert_weight_to_int4pack_for_cpu(qt.codes.to(torch.int32), INT4_INNER_K_TILES)
        scale, zero = qt.scale.float(), qt.zero.float()
        # (groups, out, 2): scale and the kernel's additive zero, s * (8 - z)
        scales_and_zeros = torch.stack([scale, scale * (8 - zero)], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).float(), self.packed, self.group_size,
                                              self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


def int4_supported(qt) -> bool:
    return isinstance(qt, QuantizedTensor) and (qt.fmt.bits == 4 and not qt.fmt.symmetric and qt.fmt.group_size in INT4_GROUP_SIZES
            and qt.codes.shape[1] % (INT4_INNER_K_TILES * 16) == 0)


def int4_weight_only(result: QuantizationResult) -> tuple[LoadedModel, list[str]]:
    """A copy of the quantized model whose eligible 4-bit layers run the real int4 kernel.

    Returns the model and the names of the layers that run on it (the rest stay dequantized floats).
    """
    model = copy.deepcopy(result.loaded.model)
    on_kernel = []
    for name, qt in result.tensors.items():
        if not int4_supported(qt):
            continue
        parent_name, _, leaf = name.rpartition(".")  # the output layer ("proj_out") hangs off the model itself
        parent = model.get_submodule(parent_name)
        setattr(parent, leaf, Int4Linear(qt, getattr(parent, leaf).bias))
        on_kernel.append(name)
    return replace(result.loaded, model=model.eval(), name=f"{result.loaded.name} int4-kernel"), on_kernel
