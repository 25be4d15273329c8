"""A loaded quantized model that keeps its quantized layers as codes between uses.

A server keeping a room's quantized runs in memory would otherwise hold each run's quantized layers as float32
weights: 66 MB for tiny.en's blocks, against 8 MB of 4-bit codes (two per byte) and 2 MB of grids. Here the
float weights exist only while the model runs: ``in_use()`` unpacks every quantized layer (bit-identical to
``load_quantized``'s weights, so the same transcripts) and the last user leaving frees them again. Unpacking
all of tiny.en's layers takes tens of milliseconds, paid once per transcription call, not per decoding step.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_EMPTY = torch.empty(0)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte. codes: (out, in) uint8 < 16, in even -> (out, in / 2) uint8."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles. packed: (out, in / 2) uint8 -> (out, in) uint8."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class _HeldLayer:
    module: nn.Module
    weight: object  # the layer's QuantizedTensor or CodebookTensor, its codes replaced by the held ones
    codes: torch.Tensor  # uint8 (out, in), or two codes per byte (out, in / 2) when nibbles
    nibbles: bool

    def dequantize(self) -> torch.Tensor:
        codes = unpack_nibbles(self.codes) if self.nibbles else self.codes
        return dataclasses.replace(self.weight, codes=codes).dequantize()


class CompactWeights:
    """Holds ``weights`` (layer name -> quantized weight of ``model``) as codes and empties those layers' float
    weights; ``in_use()`` fills them for the duration of a with-block (shared by concurrent users)."""

    def __init__(self, model: nn.Module, weights: dict[str, object]):
        self._layers: list[_HeldLayer] = []
        for name, weight in weights.items():
            codes = weight.codes
            nibbles = weight.bits <= 4 and codes.dim() == 2 and codes.shape[1] % 2 == 0
            held = pack_nibbles(codes) if nibbles else codes
            self._layers.append(_HeldLayer(model.get_submodule(name), dataclasses.replace(weight, codes=_EMPTY),
                                           held, nibbles))
        self._users = 0
        self._lock = threading.Lock()
        self._release()

    def nbytes(self) -> int:
        """Bytes of the held codes (the grids' scales come on top)."""
        return sum(layer.codes.numel() * layer.codes.element_size() for layer in self._layers)

    @property
    def unpacked(self) -> bool:
        return self._users > 0

    def _release(self) -> None:
        for layer in self._layers:
            layer.module.weight.data = _EMPTY

    @contextmanager
    def in_use(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                with torch.no_grad():
                    for layer in self._layers:
                        layer.module.weight.data = layer.dequantize()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._release()
