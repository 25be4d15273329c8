"""The dtypes of the calibration pass, and which of them this CPU runs fast (engine/quant/calibration.py)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch


@dataclass(frozen=True)
class PassPrecision:
    """The dtypes the pass computes in. ``forward``: both streams' matrix products (torch CPU autocast: linear,
    attention, convolutions; layer norms and the residual stream stay float32); moment products of their
    bfloat16 outputs are exact (bfloat16_input_products). ``drift``: the moment products
    that read the drift x - x^ (LayerStats); H^, which the solves factor, is always a float32 product, and
    solves and rounding run in float32/64 whatever this says. bfloat16 pays on CPUs with bfloat16 matrix units
    (AMX, AVX-512 BF16); elsewhere it is emulated and slower."""

    forward: torch.dtype = torch.float32
    drift: torch.dtype = torch.float32

    def __post_init__(self):
        for dtype in (self.forward, self.drift):
            if dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"the calibration pass computes in float32 or bfloat16, not {dtype}")

    @property
    def name(self) -> str:
        """Its key in PRECISIONS (what artifacts record), or the two dtypes spelled out."""
        return next((key for key, known in PRECISIONS.items() if known == self),
                    f"forward {_dtype_name(self.forward)}, drift {_dtype_name(self.drift)}")

    def forward_context(self):
        # No cast cache: the pass rewrites weights in place as it quantizes them, and a cached bfloat16 copy of
        # a weight cast before its rounding would be stale (the cache also holds a copy of every weight).
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.forward == torch.bfloat16,
                              cache_enabled=False)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


PRECISIONS = {"float32": PassPrecision(), "bfloat16-forward": PassPrecision(torch.bfloat16, torch.float32),
              "bfloat16": PassPrecision(torch.bfloat16, torch.bfloat16)}


@cache
def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX-512 BF16). torch's checks are
    private (torch.cpu._is_*), hence the guard: without them the answer is no."""
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def pass_precision(name: str = "auto") -> PassPrecision:
    """A key of PRECISIONS, or 'auto': bfloat16 forwards where the CPU has bfloat16 units, else float32.

    Measured (bench/results/pass_precision.md, FADE 4-bit tiny.en, 32 real clips, seeds 0-3): bfloat16-forward
    1.36x faster than float32 at the same WER (13.81 +- 1.01% against 13.96 +- 0.68%); 'bfloat16' (the drift's
    moment products too) 1.44x, WER 14.45 +- 1.75%: within the seeds' spread but worse on three of four
    seeds, so it stays opt-in."""
    if name == "auto":
        return PRECISIONS["bfloat16-forward" if native_bfloat16() else "float32"]
    if name not in PRECISIONS:
        raise ValueError(f"pass precision must be auto or one of {', '.join(PRECISIONS)}, not {name!r}")
    return PRECISIONS[name]


@contextmanager
def bfloat16_input_products():
    """float32 matrix products computed by oneDNN from bfloat16 copies of their inputs, accumulated and
    returned in float32 (torch's mkldnn fp32_precision 'bf16'). For inputs that hold bfloat16 values already
    (what the pass's bfloat16 forwards produce) the copies are exact and so is every product: only the
    summation order differs from a float32 product, which runs about 3x slower (this Xeon with AMX, a
    (6000 x 1536) Gram: 104 -> 33 ms, max relative difference to a float64 product 6.6e-7 against float32's
    9.1e-7). A pure bfloat16 product would instead round each result to bfloat16 (2.5e-3 here), which is what
    made bfloat16 moments fail. The flag is process-wide in torch, hence a context kept around the products."""
    matmul = torch.backends.mkldnn.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = previous
