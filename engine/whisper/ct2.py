"""Read CTranslate2 Whisper models (faster-whisper format) and convert them to transformers.

The ``model.bin`` layout (CTranslate2 spec version 6):
    uint32 binary version, string spec name ("WhisperSpec"), uint32 spec revision,
    uint32 variable count, then per variable: string name, uint8 rank, uint32 dims[rank],
    uint8 dtype, uint32 byte count, raw little-endian bytes;
    then uint32 alias count and per alias: string alias, string target.
Strings are a uint16 length (including a trailing NUL), the bytes, and the NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# CTranslate2 dtype codes -> numpy dtypes; bf16 is read as raw uint16 and widened.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5
SUPPORTED_BINARY_VERSION = 6


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


@dataclass(frozen=True)
class CT2Model:
    """The raw content of a CTranslate2 model: named tensors plus the spec header."""

    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        return self.variables[self.aliases.get(name, name)]


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CT2FormatError("the CTranslate2 model file ends early (truncated download?)")
    return data


def _read_u(f: BinaryIO, fmt: str) -> int:
    return struct.unpack("<" + fmt, _read_exact(f, struct.calcsize(fmt)))[0]


def _read_string(f: BinaryIO) -> str:
    length = _read_u(f, "H")
    return _read_exact(f, length)[:-1].decode("utf-8")


class _ConcatenatedFiles:
    """Read several files as one stream (model.bin split into parts by some packages)."""

    def __init__(self, paths: list[Path]):
        self._files = [p.open("rb") for p in paths]
        self._index = 0

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0 and self._index < len(self._files):
            chunk = self._files[self._index].read(n)
            if not chunk:
                self._index += 1
                continue
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def __enter__(self) -> "_ConcatenatedFiles":
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()


def read_model_bin(paths: str | Path | list[Path]) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or its parts, in order) into numpy arrays.

    float16 stays float16 here; conversion to float32 happens when building torch tensors.
    """
    parts = [Path(p) for p in paths] if isinstance(paths, list) else [Path(paths)]
    path = parts[0]
    with _ConcatenatedFiles(parts) as f:
        version = _read_u(f, "I")
        if version != SUPPORTED_BINARY_VERSION:
            raise CT2FormatError(
                f"{path} has CTranslate2 binary version {version}; this reader supports "
                f"version {SUPPORTED_BINARY_VERSION}"
            )
        spec_name = _read_string(f)
        revision = _read_u(f, "I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(_read_u(f, "I")):
            name = _read_string(f)
            rank = _read_u(f, "B")
            shape = tuple(_read_u(f, "I") for _ in range(rank))
            dtype_code = _read_u(f, "B")
            if dtype_code not in _DTYPES:
                raise CT2FormatError(f"{path}: variable {name} has unknown dtype code {dtype_code}")
            nbytes = _read_u(f, "I")
            array = np.frombuffer(_read_exact(f, nbytes), dtype=_DTYPES[dtype_code]).reshape(shape)
            if dtype_code == _BF16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array
        aliases = {}
        for _ in range(_read_u(f, "I")):
            alias = _read_string(f)
            aliases[alias] = _read_string(f)
    if spec_name != "WhisperSpec":
        raise CT2FormatError(f"{path} holds a {spec_name!r} model, not a Whisper model")
    return CT2Model(spec_name, revision, variables, aliases)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy of the file's bytes


def _attention(model: CT2Model, src: str, dst: str, fused_qkv: bool, sd: dict) -> None:
    """Map one CT2 attention block to transformers' q/k/v/out projections.

    Self-attention: linear_0 is fused [q; k; v], linear_1 the output projection.
    Cross-attention: linear_0 is q, linear_1 fused [k; v], linear_2 the output projection.
    Whisper's k projection has no bias.
    """
    if fused_qkv:
        w, b = model.get(f"{src}/linear_0/weight"), model.get(f"{src}/linear_0/bias")
        (qw, kw, vw), (qb, _, vb) = np.split(w, 3), np.split(b, 3)
        out = 1
    else:
        qw, qb = model.get(f"{src}/linear_0/weight"), model.get(f"{src}/linear_0/bias")
        kv_w, kv_b = model.get(f"{src}/linear_1/weight"), model.get(f"{src}/linear_1/bias")
        (kw, vw), (_, vb) = np.split(kv_w, 2), np.split(kv_b, 2)
        out = 2
    sd[f"{dst}.q_proj.weight"], sd[f"{dst}.q_proj.bias"] = _t(qw), _t(qb)
    sd[f"{dst}.k_proj.weight"] = _t(kw)
    sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = _t(vw), _t(vb)
    sd[f"{dst}.out_proj.weight"] = _t(model.get(f"{src}/linear_{out}/weight"))
    sd[f"{dst}.out_proj.bias"] = _t(model.get(f"{src}/linear_{out}/bias"))


def _layer_norm(model: CT2Model, src: str, dst: str, sd: dict) -> None:
    sd[f"{dst}.weight"] = _t(model.get(f"{src}/gamma"))
    sd[f"{dst}.bias"] = _t(model.get(f"{src}/beta"))


def _ffn(model: CT2Model, src: str, dst: str, sd: dict) -> None:
    for i, name in enumerate(("fc1", "fc2")):
        sd[f"{dst}.{name}.weight"] = _t(model.get(f"{src}/linear_{i}/weight"))
        sd[f"{dst}.{name}.bias"] = _t(model.get(f"{src}/linear_{i}/bias"))


def _count_layers(model: CT2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in model.variables:
        n += 1
    return n


@dataclass(frozen=True)
class WhisperDims:
    """Model dimensions, read from the tensors themselves."""

    d_model: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_layers: int
    decoder_layers: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    num_mel_bins: int
    max_source_positions: int
    max_target_positions: int


def _scalar(model: CT2Model, name: str, default: int) -> int:
    # Whisper heads are always 64 wide; older specs omit num_heads.
    return int(model.variables[name]) if name in model.variables else default


def read_dims(model: CT2Model) -> WhisperDims:
    conv1 = model.get("encoder/conv1/weight")  # (d_model, n_mels, 3)
    embed = model.get("decoder/embeddings/weight")  # (vocab, d_model)
    d_model = conv1.shape[0]
    return WhisperDims(
        d_model=d_model,
        encoder_attention_heads=_scalar(model, "encoder/num_heads", d_model // 64),
        decoder_attention_heads=_scalar(model, "decoder/num_heads", d_model // 64),
        encoder_layers=_count_layers(model, "encoder"),
        decoder_layers=_count_layers(model, "decoder"),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        vocab_size=embed.shape[0],
        num_mel_bins=conv1.shape[1],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
    )


def to_transformers_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """Map CT2 Whisper variables to ``WhisperForConditionalGeneration`` parameter names (float32)."""
    dims = read_dims(model)
    sd: dict[str, torch.Tensor] = {}
    for i in (1, 2):
        sd[f"model.encoder.conv{i}.weight"] = _t(model.get(f"encoder/conv{i}/weight"))
        sd[f"model.encoder.conv{i}.bias"] = _t(model.get(f"encoder/conv{i}/bias"))
    for part in ("encoder", "decoder"):
        sd[f"model.{part}.embed_positions.weight"] = _t(model.get(f"{part}/position_encodings/encodings"))
        _layer_norm(model, f"{part}/layer_norm", f"model.{part}.layer_norm", sd)
    sd["model.decoder.embed_tokens.weight"] = _t(model.get("decoder/embeddings/weight"))
    for i in range(dims.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _attention(model, f"{src}/self_attention", f"{dst}.self_attn", True, sd)
        _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
        _ffn(model, f"{src}/ffn", dst, sd)
        _layer_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", sd)
    for i in range(dims.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _attention(model, f"{src}/self_attention", f"{dst}.self_attn", True, sd)
        _layer_norm(model, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm", sd)
        _attention(model, f"{src}/attention", f"{dst}.encoder_attn", False, sd)
        _layer_norm(model, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm", sd)
        _ffn(model, f"{src}/ffn", dst, sd)
        _layer_norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", sd)
    return sd

