"""Uniform integer number formats: scales/zeros, rounding, bit packing and exact size of the deployable form.

Pure tensor functions. Shapes: a weight is W: (out_features, in_features); a group is a run of
``group_size`` consecutive input columns of one row (group_size -1 means the whole row: per-channel).
Deployable form of a quantized layer: codes packed at ``bits`` bits each, one float16 scale per group,
and for asymmetric formats one float16 minimum per group (w = scale * code + minimum, ggml's q4_1/q5_1 and
HQQ's grid) or, with ``integer_zero``, one uint8 zero point (w = scale * (code - zero), the GPTQ reference's
grid); biases stay float16. In memory both asymmetric grids keep zero = -minimum / scale as a float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SCALE_BYTES = 2  # float16 scale per group
ZERO_BYTES = 1  # uint8 zero point per group (asymmetric with integer_zero)
MIN_BYTES = 2  # float16 minimum per group (asymmetric, the default)
FP16_BYTES = 2
FP32_BYTES = 4


@dataclass(frozen=True)
class IntFormat:
    """A uniform integer grid: 2^bits levels per group, symmetric or asymmetric (float minimum or integer zero)."""

    bits: int
    group_size: int = -1  # -1: one group per output row
    symmetric: bool = False
    clip_search: bool = False  # fit each grid by searching a shrunk range (GPTQ's "mse" option), not min-max
    # Asymmetric only: an integer zero point, which must put 0 on the grid and so shifts it by up to half a
    # step from the group's range (clipping its extreme weight), instead of the group's own float minimum.
    integer_zero: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"integer formats need 2 to 8 bits, not {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError(f"group size must be -1 (per channel) or positive, not {self.group_size}")
        if self.symmetric and self.integer_zero:
            raise ValueError("a symmetric grid has no zero point to choose: integer_zero is for asymmetric grids")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups_per_row(self, in_features: int) -> int:
        return 1 if self.group_size == -1 else math.ceil(in_features / self.group_size)

    def check_shape(self, in_features: int) -> None:
        if self.group_size != -1 and in_features % self.group_size:
            raise ValueError(f"group size {self.group_size} does not divide the {in_features} input features")


def qparams(w: torch.Tensor, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point per row of w: (rows, cols) -> scale, zero: (rows, 1).

    Asymmetric grids span [min(w), max(w)] from a float16 minimum, or with integer_zero [min(w, 0), max(w, 0)]
    from the nearest integer zero point. Symmetric grids (zero at the middle code) follow ggml's q4_0 rule:
    the row's largest-magnitude weight lands exactly on the end code, the scale taking its sign.
    """
    if fmt.symmetric:
        extreme = w.gather(1, w.abs().argmax(dim=1, keepdim=True))
        scale, zero = signed_grid(extreme, fmt)
        if fmt.clip_search:
            scale, zero = _shrink_search(w, lambda p: signed_grid(p * extreme, fmt), scale, zero, fmt.maxq)
        return scale, zero
    xmin, xmax = w.min(dim=1, keepdim=True).values, w.max(dim=1, keepdim=True).values
    if fmt.integer_zero:
        xmin, xmax = torch.minimum(xmin, torch.zeros(1)), torch.maximum(xmax, torch.zeros(1))
    scale, zero = range_grid(xmin, xmax, fmt)
    if fmt.clip_search:
        scale, zero = _shrink_search(w, lambda p: range_grid(p * xmin, p * xmax, fmt), scale, zero, fmt.maxq)
    return scale, zero


def signed_grid(extreme: torch.Tensor, fmt: IntFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric grid whose end code -2^(bits-1) is ``extreme`` (rows, 1): scale -extreme / 2^(bits-1), a float16.

    ggml's q4_0 rule: the levels are scale * (code - 2^(bits-1)), so a group's largest weight is exact whatever its
    sign and the step is |extreme| / 2^(bits-1), where spanning [-|extreme|, |extreme|] with 2^bits - 1 steps would
    make it 7% coarser at 4 bits and clip the largest weight when positive. -w gets -scale and the same codes.
    A zero row keeps scale 1."""
    half = (fmt.maxq + 1) / 2
    magnitude = (extreme.abs() / half).clamp(min=torch.finfo(torch.float16).smallest_normal * 2.0**-10)
    scale = torch.where(extreme > 0, -1.0, 1.0) * magnitude.to(torch.float16).float()
    scale = torch.where(extreme == 0, torch.ones_like(scale), scale)
    return scale, torch.full_like(scale, half)


def range_grid(lo: torch.Tensor, hi: torch.Tensor, fmt: IntFormat,
               stored_as: torch.dtype | None = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of the asymmetric grid spanning [lo, hi]: (rows, 1) each. With ``stored_as`` the scale (and a
    float minimum) are rounded to the dtype they are stored in, so that what we compute is what we ship; activation
    grids (engine/quant/activation_quant.py) are never stored and pass None. A constant row keeps scale 1."""
    scale = (hi - lo) / fmt.maxq
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if stored_as is not None:
        # never below the dtype's smallest step: a scale that rounds to 0 would turn the row into NaN
        scale = scale.clamp(min=torch.finfo(stored_as).smallest_normal * 2.0**-10).to(stored_as).float()
    if fmt.integer_zero:
        return scale, torch.round(-lo / scale)
    minimum = lo if stored_as is None else lo.to(stored_as).float()
    return scale, -minimum / scale


CLIP_GRID, CLIP_MAX_SHRINK, CLIP_NORM = 100, 0.8, 2.4  # the GPTQ reference's values


def _shrink_search(w, grid_at, scale, zero, maxq: int):
    """Per row, the range shrink p in (0.2, 1] whose grid (grid_at(p) -> scale, zero) minimises sum |w - q(w)|^2.4
    (GPTQ's mse search)."""
    best = torch.full((w.shape[0], 1), float("inf"))
    for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
        s, z = grid_at(1 - i / CLIP_GRID)
        err = (round_to_grid(w, s, z, maxq) - w).abs().pow(CLIP_NORM).sum(dim=1, keepdim=True)
        better = err < best
        best, scale, zero = torch.where(better, err, best), torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def quantize_to_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq]; w, scale and zero (integer or float) broadcast together."""
    return torch.clamp(torch.round(w / scale + zero), 0, maxq)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (codes - zero)


def round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Quantize and dequantize in one step (what GPTQ does column by column)."""
    return dequantize_codes(quantize_to_codes(w, scale, zero, maxq), scale, zero)


def block_view(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """(out, in) -> (out * blocks, block): one row per block of block_size input columns (-1: the whole row)."""
    out_features, in_features = w.shape
    size = in_features if block_size == -1 else block_size
    if in_features % size:
        raise ValueError(f"block size {block_size} does not divide the {in_features} input features")
    return w.reshape(out_features * (in_features // size), size)


def group_view(w: torch.Tensor, fmt: IntFormat) -> torch.Tensor:
    """(out, in) -> (out * groups, group_size): one row per quantization group."""
    fmt.check_shape(w.shape[1])
    return block_view(w, fmt.group_size)


@dataclass(frozen=True)
class QuantizedTensor:
    """Codes and grid of one weight: codes (out, in) uint8, scale/zero (out, groups) float32."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    fmt: IntFormat

    kind = "int"

    @property
    def bits(self) -> int:
        return self.fmt.bits

    def nbytes(self) -> int:
        return packed_bytes(*self.codes.shape, self.fmt)

    def split_rows(self, sizes: list[int]) -> list["QuantizedTensor"]:
        """The weights of a row-wise stack, each (sizes[i], in) with its own rows' grids."""
        parts = zip(self.codes.split(sizes), self.scale.split(sizes), self.zero.split(sizes))
        return [QuantizedTensor(codes, scale, zero, self.fmt) for codes, scale, zero in parts]

    def describe(self) -> dict:
        return {"kind": self.kind, "bits": self.fmt.bits, "group_size": self.fmt.group_size,
                "symmetric": self.fmt.symmetric, "integer_zero": self.fmt.integer_zero,
                "shape": list(self.codes.shape)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"qweight": pack_codes(self.codes, self.fmt.bits), "scales": self.scale.half().numpy()}
        if self.fmt.integer_zero:
            arrays["zeros"] = self.zero.to(torch.uint8).numpy()
        elif not self.fmt.symmetric:
            arrays["mins"] = (-self.zero * self.scale).half().numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "QuantizedTensor":
        # Artifacts written before float minimums existed have uint8 zeros and no "integer_zero" key.
        fmt = IntFormat(meta["bits"], meta["group_size"], meta["symmetric"],
                        integer_zero=meta.get("integer_zero", "zeros" in arrays))
        out_features, in_features = meta["shape"]
        scale = torch.from_numpy(arrays["scales"].astype(np.float32))
        if fmt.symmetric:
            zero = torch.full_like(scale, (fmt.maxq + 1) / 2)
        elif fmt.integer_zero:
            zero = torch.from_numpy(arrays["zeros"].astype(np.float32))
        else:
            zero = -torch.from_numpy(arrays["mins"].astype(np.float32)) / scale
        codes = unpack_codes(arrays["qweight"], fmt.bits, out_features * in_features).reshape(out_features, in_features)
        return cls(codes, scale, zero, fmt)

    def dequantize(self) -> torch.Tensor:
        out_features, in_features = self.codes.shape
        groups = self.scale.shape[1]
        codes = self.codes.float().reshape(out_features, groups, in_features // groups)
        w = (codes - self.zero[..., None]) * self.scale[..., None]
        return w.reshape(out_features, in_features)


def rtn_quantize(w: torch.Tensor, fmt: IntFormat) -> QuantizedTensor:
    """Round-to-nearest with a min-max grid per group. w: (out, in)."""
    out_features, in_features = w.shape
    rows = group_view(w.float(), fmt)
    scale, zero = qparams(rows, fmt)
    codes = quantize_to_codes(rows, scale, zero, fmt.maxq)
    groups = fmt.groups_per_row(in_features)
    return QuantizedTensor(
        codes.reshape(out_features, in_features).to(torch.uint8),
        scale.reshape(out_features, groups),
        zero.reshape(out_features, groups),
        fmt,
    )


def pack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Pack integer codes (any shape, values < 2**bits) into a dense little bit stream of uint8."""
    flat = codes.reshape(-1).to(torch.uint8).numpy()
    bit_planes = np.unpackbits(flat[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_planes.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_codes: the first ``count`` codes as uint8."""
    if bits == 8:
        return torch.from_numpy(packed[:count].copy())
    if bits == 4:  # two codes a byte, the first in the low nibble
        nibbles = np.stack((packed & 15, packed >> 4), axis=-1).reshape(-1)[:count]
        return torch.from_numpy(nibbles.copy())
    # Eight codes fill ``bits`` whole bytes: read each such run as one little-endian word and shift the codes out
    # of it (a server loading a 3-bit run paid 0.25 s in bit planes here; this takes a few milliseconds).
    words = -(-count // 8)
    stream = np.zeros(words * bits, dtype=np.uint8)
    used = min(packed.size, stream.size)
    stream[:used] = packed[:used]
    runs = stream.reshape(words, bits).astype(np.uint64)
    word = np.zeros(words, dtype=np.uint64)
    for k in range(bits):
        word |= runs[:, k] << np.uint64(8 * k)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    codes = ((word[:, None] >> shifts) & np.uint64((1 << bits) - 1)).astype(np.uint8)
    return torch.from_numpy(codes.reshape(-1)[:count].copy())


def packed_bytes(out_features: int, in_features: int, fmt: IntFormat) -> int:
    """Exact bytes of a packed weight: codes + float16 scales (+ float16 minimums or uint8 zeros when asymmetric)."""
    groups = out_features * fmt.groups_per_row(in_features)
    code_bytes = math.ceil(out_features * in_features * fmt.bits / 8)
    zero_bytes = 0 if fmt.symmetric else ZERO_BYTES if fmt.integer_zero else MIN_BYTES
    return code_bytes + groups * (SCALE_BYTES + zero_bytes)
