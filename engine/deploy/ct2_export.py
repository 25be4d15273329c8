"""Write a CTranslate2 int8 Whisper model (what faster-whisper loads) from our 8-bit per-channel codes.

engine/whisper/ct2.py run backwards: the base model's own CTranslate2 files are the template (spec, aliases,
embeddings, norms, convolutions, vocabulary), and each linear layer we quantized replaces its weight
with CTranslate2's int8 form: int8 values and one float32 scale per output row, w = q / scale. Our
symmetric 8-bit codes are q + 128 with w = s * q, so the int8 values are our codes minus 128 and the
scale is 1 / s (exact up to float32 rounding of 1 / s).

CTranslate2 fuses self-attention's q, k, v into one linear (and cross-attention's k, v): their parts are
written together and must all be 8-bit. Layers left in float keep the template's float16 values, which
CTranslate2 rounds to int8 itself when loaded with compute_type int8.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.quant.formats import QuantizedTensor
from engine.quant.layer_table import OUTPUT_LAYER
from engine.whisper.ct2 import read_model_bin
from engine.whisper.models import REGISTRY

BINARY_VERSION = 6
_INT8, _FLOAT32 = 1, 0
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                np.dtype(np.float16): 4}


class CT2ExportError(UserError):
    """A model CTranslate2's int8 format cannot carry as it is."""


def _scopes(n_enc: int, n_dec: int) -> dict[str, list[str]]:
    """CT2 linear scope -> our layer names, in the order their rows are stacked."""
    out = {}
    for part, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            ours, theirs = f"model.{part}.layers.{i}", f"{part}/layer_{i}"
            out[f"{theirs}/self_attention/linear_0"] = [f"{ours}.self_attn.{p}_proj" for p in "qkv"]
            out[f"{theirs}/self_attention/linear_1"] = [f"{ours}.self_attn.out_proj"]
            out[f"{theirs}/ffn/linear_0"] = [f"{ours}.fc1"]
            out[f"{theirs}/ffn/linear_1"] = [f"{ours}.fc2"]
            if part == "decoder":
                out[f"{theirs}/attention/linear_0"] = [f"{ours}.encoder_attn.q_proj"]
                out[f"{theirs}/attention/linear_1"] = [f"{ours}.encoder_attn.{p}_proj" for p in "kv"]
                out[f"{theirs}/attention/linear_2"] = [f"{ours}.encoder_attn.out_proj"]
    return out


def int8_rows(name: str, qt: QuantizedTensor) -> tuple[np.ndarray, np.ndarray]:
    """Our symmetric 8-bit per-channel codes -> (int8 (out, in), scale (out,) float32) with w = q / scale."""
    fmt = getattr(qt, "fmt", None)
    if getattr(qt, "kind", None) != "int" or fmt.bits != 8 or not fmt.symmetric or qt.scale.shape[1] != 1:
        raise CT2ExportError(f"layer {name} is not 8-bit symmetric with one scale per output row, the only "
                             "integer form CTranslate2 stores; quantize with --bits 8 --symmetric --group-size -1.")
    q = (qt.codes.to(torch.int16) - 128).to(torch.int8).numpy()
    return q, (1.0 / qt.scale[:, 0].double()).float().numpy()


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _variable(name: str, array: np.ndarray) -> bytes:
    array = np.array(array, order="C", copy=False) if array.ndim else np.array(array)  # ascontiguousarray makes 0-d 1-d
    head = _string(name) + struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
    return head + struct.pack("<BI", _DTYPE_CODES[array.dtype], array.nbytes) + array.tobytes()


def export_ctranslate2(base_model: str, weights: dict[str, QuantizedTensor], out_dir: str | Path,
                       dropped: frozenset[str] = frozenset()) -> Path:
    """Write base_model's CTranslate2 folder to out_dir with our 8-bit layers in int8."""
    if base_model not in REGISTRY:
        raise CT2ExportError(f"CTranslate2 export needs one of the bundled models ({', '.join(REGISTRY)}) as its "
                             f"template; {base_model!r} is not one.")
    if OUTPUT_LAYER in weights:
        raise CT2ExportError("the output layer (tied to the token embedding) is quantized, and this export keeps "
                             "CTranslate2's float embedding; quantize without --quantize-output.")
    files = REGISTRY[base_model].locate()
    template = read_model_bin(files.model_parts)
    variables = dict(template.variables)
    n_enc = sum(1 for k in variables if k.startswith("encoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    n_dec = sum(1 for k in variables if k.startswith("decoder/layer_") and k.endswith("/ffn/linear_0/weight"))
    for scope, layers in _scopes(n_enc, n_dec).items():
        present = [name for name in layers if name in weights]
        if any(name in dropped for name in layers):
            variables[f"{scope}/weight"] = np.zeros_like(variables[f"{scope}/weight"])
            variables[f"{scope}/bias"] = np.zeros_like(variables[f"{scope}/bias"])
            continue
        if not present:
            continue
        if len(present) != len(layers):
            raise CT2ExportError(f"CTranslate2 stores {', '.join(layers)} as one matrix; quantize all of them to "
                                 "8 bits or none.")
        rows = [int8_rows(name, weights[name]) for name in layers]
        variables[f"{scope}/weight"] = np.concatenate([q for q, _ in rows])
        variables[f"{scope}/weight_scale"] = np.concatenate([s for _, s in rows])
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with (partial / "model.bin").open("wb") as f:
        f.write(struct.pack("<I", BINARY_VERSION) + _string(template.spec_name) + struct.pack("<I", template.revision))
        f.write(struct.pack("<I", len(variables)))
        for name, array in variables.items():
            f.write(_variable(name, array))
        f.write(struct.pack("<I", len(template.aliases)))
        for alias, target in template.aliases.items():
            f.write(_string(alias) + _string(target))
    folder = files.model_parts[0].parent
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("model.bin") and not path.name.startswith("__"):
            shutil.copy2(path, partial / path.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir
