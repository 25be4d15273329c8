"""ggml's own block quantizers and dequantizers, called in the library the whisper.cpp wheel ships.

The whisper.cpp bindings on PyPI (pywhispercpp) bundle libggml-base. Calling its functions, rather than a
re-implementation, is what makes two claims checkable: an exported file decodes in ggml to our weights,
and "whisper.cpp's own round-to-nearest" is exactly what its quantize tool writes (it calls
ggml_quantize_chunk on the float weights of the f16 file).

Arrays: a weight (rows, cols) float32 with cols a multiple of the block size (32) <-> its blocks, uint8
(rows * cols / 32 * block_bytes,) in ggml's layout.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError


class GgmlUnavailableError(UserError):
    """The whisper.cpp wheel (pywhispercpp) and its ggml library are not installed."""


@dataclass(frozen=True)
class GgmlType:
    """One ggml tensor type: its enum value, the whisper.cpp file type (ftype) that makes it the file's type."""

    name: str
    type_id: int  # enum ggml_type
    ftype: int  # enum ggml_ftype written in a whisper.cpp file header
    block: int  # values per block
    block_bytes: int

    def nbytes(self, count: int) -> int:
        return count // self.block * self.block_bytes


# enum values from ggml.h (ggml_type, ggml_ftype); block layouts from ggml-common.h.
F32 = GgmlType("f32", 0, 0, 1, 4)
F16 = GgmlType("f16", 1, 1, 1, 2)
Q4_0 = GgmlType("q4_0", 2, 2, 32, 18)  # half d; 16 bytes of nibbles: x = d * (q - 8)
Q4_1 = GgmlType("q4_1", 3, 3, 32, 20)  # half d, half m; 16 bytes of nibbles: x = d * q + m
Q5_1 = GgmlType("q5_1", 7, 9, 32, 24)  # half d, half m; 4 bytes of fifth bits; 16 bytes of nibbles
Q8_0 = GgmlType("q8_0", 8, 7, 32, 34)  # half d; 32 int8: x = d * q
TYPES = {t.name: t for t in (F32, F16, Q4_0, Q4_1, Q5_1, Q8_0)}
QNT_VERSION = 2  # ggml's GGML_QNT_VERSION: quantized files store ftype + 1000 * QNT_VERSION
QNT_VERSION_FACTOR = 1000


def _library_path() -> Path:
    spec = importlib.util.find_spec("pywhispercpp")
    if spec is None or not spec.submodule_search_locations:
        raise GgmlUnavailableError("whisper.cpp export and runtime need the pywhispercpp package (pip install pywhispercpp).")
    site = Path(list(spec.submodule_search_locations)[0]).parent
    for candidate in [site / "libggml-base.so", *sorted((site / "pywhispercpp.libs").glob("libggml-base*.so*"))]:
        if candidate.exists():
            return candidate
    raise GgmlUnavailableError(f"pywhispercpp is installed but its ggml library is not under {site}.")


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(_library_path()))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    for name in ("q4_0", "q4_1", "q5_1", "q8_0"):
        fn = getattr(lib, f"dequantize_row_{name}")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _check_layout(kind: GgmlType) -> None:
    """The block sizes above must be the library's (a different ggml would make every file wrong)."""
    if _lib().ggml_row_size(kind.type_id, kind.block) != kind.block_bytes:
        raise GgmlUnavailableError(f"this ggml's {kind.name} block is not {kind.block_bytes} bytes; unsupported version.")


def quantize(weight: np.ndarray, kind: GgmlType) -> np.ndarray:
    """ggml's own round-to-nearest of a (rows, cols) weight into kind's blocks (what whisper.cpp's quantize does)."""
    _check_layout(kind)
    rows, cols = weight.shape
    src = np.ascontiguousarray(weight, dtype=np.float32)
    dst = np.empty(kind.nbytes(rows * cols), dtype=np.uint8)
    _lib().ggml_quantize_init(kind.type_id)
    written = _lib().ggml_quantize_chunk(kind.type_id, src.ctypes.data, dst.ctypes.data, 0, rows, cols, None)
    if written != dst.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes for a {rows}x{cols} {kind.name} tensor, expected {dst.nbytes}")
    return dst


def dequantize(blocks: np.ndarray, kind: GgmlType, shape: tuple[int, int]) -> np.ndarray:
    """ggml's own dequantization of kind's blocks back to a float32 (rows, cols) weight."""
    _check_layout(kind)
    count = shape[0] * shape[1]
    if blocks.nbytes != kind.nbytes(count):
        raise ValueError(f"{blocks.nbytes} bytes do not hold {count} {kind.name} values")
    src = np.ascontiguousarray(blocks, dtype=np.uint8)
    out = np.empty(count, dtype=np.float32)
    getattr(_lib(), f"dequantize_row_{kind.name}")(src.ctypes.data, out.ctypes.data, count)
    return out.reshape(shape)
