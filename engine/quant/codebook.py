"""Codebook number formats: NormalFloat-4 (QLoRA) and learned per-layer centroids (General Quantizer).

Pure tensor functions plus one frozen container. A weight W: (out_features, in_features) is cut into
blocks of ``block_size`` consecutive input columns of one row (-1: the whole row); each block is divided
by its absmax scale and every normalized value is stored as the index of a level of a small codebook.

Deployable form (exact bytes in ``CodebookTensor.nbytes``):
  codes   ``bits`` bits per weight, packed
  scales  one per block: float32 (NF4 as in QLoRA) or float16 (learned codebooks); with NF4 double
          quantization the scales are themselves int8 codes in groups of 256 with one float32 scale per
          group and one float32 mean per tensor (about 4.127 bits per weight instead of 4.5)
  levels  the codebook: NF4's 16 constants ship with the code, learned ones are stored as float16
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.quant.formats import block_view, pack_codes, unpack_codes

# The 16 NormalFloat-4 levels of QLoRA (Dettmers et al. 2023), exactly as bitsandbytes ships them.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
DQ_BLOCK = 256  # scales per double-quantization group (QLoRA)
_SCALE_BYTES = {"float32": 4, "float16": 2}


def absmax_scales(blocks: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """(n, block) -> (n, 1) absmax per block, rounded to its storage dtype; an all-zero block keeps 1."""
    scale = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale.to(getattr(torch, scale_dtype)).float()


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for every element of x; levels: (K,) sorted ascending."""
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(x, midpoints)


@dataclass(frozen=True)
class DoubleQuant:
    """int8 codes of the block scales: scale = code / 127 * group_absmax + mean (QLoRA's double quantization)."""

    codes: torch.Tensor  # (n_scales,) int8
    group_absmax: torch.Tensor  # (ceil(n_scales / 256),) float32
    mean: float

    @staticmethod
    def of(scales: torch.Tensor) -> "DoubleQuant":
        flat = scales.reshape(-1).float()
        mean = float(flat.mean())
        centred = flat - mean
        pad = (-len(centred)) % DQ_BLOCK
        groups = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, DQ_BLOCK)
        absmax = groups.abs().amax(dim=1)
        absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        codes = torch.round(groups / absmax[:, None] * 127).clamp(-127, 127).reshape(-1)[: len(flat)]
        return DoubleQuant(codes.to(torch.int8), absmax, mean)

    def scales(self) -> torch.Tensor:
        n = len(self.codes)
        per_code = self.group_absmax.repeat_interleave(DQ_BLOCK)[:n]
        scales = self.codes.float() / 127 * per_code + self.mean
        return torch.where(scales > 0, scales, torch.ones_like(scales))


@dataclass(frozen=True)
class CodebookTensor:
    """codes (out, in) uint8 level indices; scales (out, blocks) float32; levels (K,) float32 ascending."""

    codes: torch.Tensor
    scales: torch.Tensor
    levels: torch.Tensor
    bits: int
    block_size: int
    scale_dtype: str = "float32"
    levels_stored: bool = True  # False for NF4: the levels are constants of the format
    double_quant: DoubleQuant | None = None

    kind = "codebook"

    def dequantize(self) -> torch.Tensor:
        out_features, in_features = self.codes.shape
        blocks = self.scales.shape[1]
        values = self.levels[self.codes.long()].reshape(out_features, blocks, in_features // blocks)
        return (values * self.scales[..., None]).reshape(out_features, in_features)

    @property
    def n_scales(self) -> int:
        return self.scales.numel()

    def nbytes(self) -> int:
        code_bytes = math.ceil(self.codes.numel() * self.bits / 8)
        if self.double_quant is not None:
            scale_bytes = self.n_scales + 4 * len(self.double_quant.group_absmax) + 4
        else:
            scale_bytes = self.n_scales * _SCALE_BYTES[self.scale_dtype]
        level_bytes = 2 * len(self.levels) if self.levels_stored else 0
        return code_bytes + scale_bytes + level_bytes

    def describe(self) -> dict:
        return {"kind": self.kind, "bits": self.bits, "block_size": self.block_size, "scale_dtype": self.scale_dtype,
                "levels_stored": self.levels_stored, "double_quant": self.double_quant is not None,
                "shape": list(self.codes.shape), "n_levels": len(self.levels)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"qweight": pack_codes(self.codes, self.bits)}
        if self.double_quant is not None:
            dq = self.double_quant
            arrays |= {"scale_codes": dq.codes.numpy(), "scale_group_absmax": dq.group_absmax.numpy(),
                       "scale_mean": np.array([dq.mean], dtype=np.float32)}
        else:
            arrays["scales"] = self.scales.to(getattr(torch, self.scale_dtype)).numpy()
        if self.levels_stored:
            arrays["levels"] = self.levels.half().numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> "CodebookTensor":
        out_features, in_features = meta["shape"]
        codes = unpack_codes(arrays["qweight"], meta["bits"], out_features * in_features).reshape(out_features, in_features)
        blocks = 1 if meta["block_size"] == -1 else in_features // meta["block_size"]
        dq = None
        if meta["double_quant"]:
            dq = DoubleQuant(torch.from_numpy(arrays["scale_codes"].copy()),
                             torch.from_numpy(arrays["scale_group_absmax"].copy()), float(arrays["scale_mean"][0]))
            scales = dq.scales()
        else:
            scales = torch.from_numpy(arrays["scales"].astype(np.float32))
        levels = (torch.from_numpy(arrays["levels"].astype(np.float32)) if meta["levels_stored"]
                  else torch.tensor(NF4_LEVELS, dtype=torch.float32))
        return cls(codes, scales.reshape(out_features, blocks), levels, meta["bits"], meta["block_size"],
                   meta["scale_dtype"], meta["levels_stored"], dq)


def codebook_quantize(w: torch.Tensor, levels: torch.Tensor, bits: int, block_size: int, scale_dtype: str = "float16",
                      levels_stored: bool = True, double_quant: bool = False,
                      scales: torch.Tensor | None = None) -> CodebookTensor:
    """Absmax-normalize each block of w: (out, in) and snap every value to the nearest of ``levels``.

    ``scales`` (out * blocks, 1), already in their storage precision, replace the absmax ones (GQ keeps
    the scales of the original weight while its latent weights move)."""
    out_features, in_features = w.shape
    blocks = block_view(w.float(), block_size)
    scales = absmax_scales(blocks, scale_dtype) if scales is None else scales
    dq = None
    if double_quant:
        dq = DoubleQuant.of(scales)
        scales = dq.scales().reshape(-1, 1)
    levels = levels.float() if not levels_stored else levels.half().float()  # what ships is what we compute
    codes = nearest_level(blocks / scales, levels)
    n_blocks = blocks.shape[0] // out_features
    return CodebookTensor(codes.reshape(out_features, in_features).to(torch.uint8), scales.reshape(out_features, n_blocks),
                          levels, bits, block_size, scale_dtype, levels_stored, dq)


def nf4_quantize(w: torch.Tensor, block_size: int = 64, double_quant: bool = True) -> CodebookTensor:
    """Blockwise NormalFloat-4 with float32 absmax scales (optionally double-quantized), as QLoRA."""
    return codebook_quantize(w, torch.tensor(NF4_LEVELS), 4, block_size, "float32", levels_stored=False,
                             double_quant=double_quant)
