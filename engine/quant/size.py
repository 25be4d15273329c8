"""Exact size of the deployable form of a (quantized) model, compared with fp32 and fp16.

Deployable form: quantized linear weights in their packed form (each weight kind knows its exact bytes:
integer grids in engine/quant/formats.py, codebooks in engine/quant/codebook.py); dropped
branches take no bytes; every other parameter (kept layers, biases, norms, embeddings, convolutions) is
stored as float16. Tied parameters count once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from engine.quant.formats import FP16_BYTES, FP32_BYTES


@dataclass(frozen=True)
class SizeReport:
    size_bytes: int
    fp32_size_bytes: int
    fp16_size_bytes: int
    quantized_weight_bytes: int  # the packed linear weights alone (codes + grids)

    @property
    def compression_vs_fp32(self) -> float:
        return self.fp32_size_bytes / self.size_bytes

    @property
    def bits_per_parameter(self) -> float:
        return 8 * self.size_bytes / (self.fp32_size_bytes / FP32_BYTES)

    def to_dict(self) -> dict:
        return {**asdict(self), "compression_vs_fp32": self.compression_vs_fp32,
                "bits_per_parameter": self.bits_per_parameter}


def unique_parameters(model: nn.Module) -> dict[str, int]:
    """name -> element count, each tensor once (tied weights share storage)."""
    seen, out = set(), {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        out[name] = p.numel()
    return out


def weight_storage(model: nn.Module, layers) -> dict[int, str]:
    """Storage address of each named layer's weight -> the layer name. A quantized weight is found this way,
    not by parameter name: a tied one (the output layer's) is also the token embedding's."""
    return {model.get_submodule(layer).weight.data_ptr(): layer for layer in layers}


def size_report(model: nn.Module, weight_bytes: dict[str, int], dropped: set[str]) -> SizeReport:
    """weight_bytes: quantized layer name -> bytes of its packed weight; dropped: layers of removed branches."""
    packed = {ptr: weight_bytes[layer] for ptr, layer in weight_storage(model, weight_bytes).items()}
    params = {name: p for name, p in model.named_parameters()}  # each tensor once, under its first name
    total_elements = sum(p.numel() for p in params.values())
    size = quantized = 0
    for name, p in params.items():
        if name.rsplit(".", 1)[0] in dropped:
            continue
        if p.data_ptr() in packed:
            quantized += packed[p.data_ptr()]
            size += packed[p.data_ptr()]
        else:
            size += p.numel() * FP16_BYTES
    return SizeReport(size, total_elements * FP32_BYTES, total_elements * FP16_BYTES, quantized)
