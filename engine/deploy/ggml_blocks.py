"""Our integer codes packed as they are into ggml's 32-wide blocks (never re-quantized).

Pure functions. A QuantizedTensor with codes (out, in) in [0, 2^bits), per-group scale s and zero z
(groups of g input columns, g a multiple of 32 or a whole row) dequantizes to s * (q - z). ggml blocks:
    q4_0: x = d * (q - 8)      d = s, q = our code           (symmetric 4-bit: z = 8)
    q4_1: x = d * q + m        d = s, m = -s * z             (any grid of 4 bits or fewer)
    q5_1: x = d * q + m        d = s, m = -s * z             (5 bits or fewer)
    q8_0: x = d * q8           d = s, q8 = q - z (int8)      (symmetric 8-bit, or an integer-zero grid of 7 bits
                                                              or fewer)
so ggml's dequantizer returns our weights up to float16 rounding of m (d is a float16 scale already, and our
default asymmetric grid's minimum is a float16 too: q4_1/q5_1 are its native blocks).
A group wider than 32 repeats its scale (and minimum) in each of its 32-blocks.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.deploy.ggml_lib import F16, Q4_0, Q4_1, Q5_1, Q8_0, GgmlType
from engine.errors import UserError
from engine.quant.formats import QuantizedTensor

BLOCK = 32
# Narrowest first: a file's one type is the narrowest that carries every layer.
CONTAINERS = (Q4_0, Q4_1, Q5_1, Q8_0, F16)


class GgmlExportError(UserError):
    """A weight that no ggml block carries exactly."""


def fits(qt: QuantizedTensor, kind: GgmlType) -> bool:
    """Whether kind's blocks carry qt's codes exactly (up to float16 rounding of the block minimum)."""
    fmt = qt.fmt
    if kind is Q4_0:
        return fmt.symmetric and fmt.bits == 4
    if kind is Q4_1:
        return fmt.bits <= 4
    if kind is Q5_1:
        return fmt.bits <= 5
    if kind is Q8_0:
        return (fmt.bits <= 7 and (fmt.symmetric or fmt.integer_zero)) or (fmt.symmetric and fmt.bits == 8)
    return kind is F16


def check_exportable(name: str, qt: QuantizedTensor) -> None:
    """Refuse, in one sentence, what ggml's blocks cannot carry as it is."""
    if getattr(qt, "kind", None) != "int":
        raise GgmlExportError(f"layer {name} holds {getattr(qt, 'kind', 'an unknown')} weights (NF4 or GQ codebooks), "
                              "which have no ggml block; whisper.cpp export carries integer grids only.")
    if qt.fmt.bits == 8 and not qt.fmt.symmetric:
        raise GgmlExportError(f"layer {name} is asymmetric 8-bit, and ggml's 8-bit block (q8_0) is symmetric; "
                              "quantize with --symmetric to export 8 bits.")
    if qt.fmt.bits > 5 and not (qt.fmt.symmetric or qt.fmt.integer_zero):
        raise GgmlExportError(f"layer {name} is {qt.fmt.bits}-bit with a float minimum, and ggml's only wider block "
                              "(q8_0) has no minimum; quantize with --integer-zero or --symmetric to export it.")
    in_features = qt.codes.shape[1]
    group = in_features if qt.fmt.group_size == -1 else qt.fmt.group_size
    if group % BLOCK:
        raise GgmlExportError(f"layer {name} has groups of {group}; ggml blocks are {BLOCK} wide, so whisper.cpp "
                              f"export needs a group size that is a multiple of {BLOCK}.")


def container_for(weights: dict[str, QuantizedTensor], has_full_precision: bool) -> GgmlType:
    """The narrowest ggml type that carries every layer (f16 when a linear layer stayed in full precision)."""
    if has_full_precision or not weights:
        return F16
    for kind in CONTAINERS:
        if all(fits(qt, kind) for qt in weights.values()):
            return kind
    return F16


def _blocks(qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 32-block codes (n, 32) int64, d (n,) float32 and zero (n,) float32, rows in order."""
    out_features, in_features = qt.codes.shape
    per_row = in_features // BLOCK
    groups = qt.scale.shape[1]
    repeat = per_row // groups  # 32-blocks per group
    codes = qt.codes.to(torch.int64).reshape(out_features * per_row, BLOCK).numpy()
    d = qt.scale.repeat_interleave(repeat, dim=1).reshape(-1).numpy().astype(np.float32)
    zero = qt.zero.repeat_interleave(repeat, dim=1).reshape(-1).numpy().astype(np.float32)
    return codes, d, zero


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values < 16 -> (n, 16) bytes: low nibble value j, high nibble value j + 16 (ggml's order)."""
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _half_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(-1, 2)


def pack(qt: QuantizedTensor, kind: GgmlType) -> np.ndarray:
    """qt's codes as kind's blocks, bytes in ggml's layout: (rows * in / 32 * block_bytes,) uint8."""
    if not fits(qt, kind) or kind is F16:
        raise GgmlExportError(f"a {qt.fmt.bits}-bit {'symmetric' if qt.fmt.symmetric else 'asymmetric'} grid does "
                              f"not fit ggml's {kind.name} block.")
    q, d, zero = _blocks(qt)
    if kind is Q4_0:
        parts = [_half_bytes(d), _nibbles(q)]
    elif kind is Q8_0:
        parts = [_half_bytes(d), (q - zero[:, None].astype(np.int64)).astype(np.int8).view(np.uint8)]
    else:
        head = [_half_bytes(d), _half_bytes(-d * zero)]
        if kind is Q4_1:
            parts = [*head, _nibbles(q)]
        else:  # Q5_1: the fifth bits as one little-endian uint32 per block, bit j for value j
            high = ((q >> 4) & 1).astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)
            qh = np.bitwise_or.reduce(high, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)
            parts = [*head, qh, _nibbles(q & 0xF)]
    return np.concatenate(parts, axis=1).reshape(-1)
