"""Write a whisper.cpp model file (the legacy ggml format its loader reads) from our model and codes.

File layout (whisper.cpp's whisper_model_load; tensor names as in its convert-h5-to-ggml.py):
    magic 'ggml', 11 int32 hyperparameters (the last is the file type), the mel filters (n_mel, n_fft,
    float32 values), the vocabulary (count, then length + bytes per token), then each tensor:
    n_dims, name length, type, the dims innermost first, the name, the data.
whisper.cpp gives every 2-D weight (each linear layer and the token embedding, which is also the output
layer) the file's one type, convolutions float16 and everything else float32. Our integer codes are
packed as they are (engine/deploy/ggml_blocks.py), the token embedding's too when the output layer tied to it was
quantized (quantize_output); 2-D weights our quantization left in full precision (the token embedding
otherwise) get what whisper.cpp's own quantize tool gives them: ggml's round-to-nearest of their float16
values in the file's type.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from engine.deploy import ggml_lib
from engine.deploy.ggml_blocks import check_exportable, container_for, pack
from engine.deploy.ggml_lib import F16, F32, GgmlType
from engine.quant.formats import QuantizedTensor
from engine.quant.layer_table import OUTPUT_LAYER
from engine.whisper.models import LoadedModel

log = logging.getLogger(__name__)

MAGIC = 0x67676D6C  # "ggml"
TOKEN_EMBEDDING = "model.decoder.embed_tokens.weight"
_RENAMES = {  # transformers sub-names -> whisper.cpp's (OpenAI's) names
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP_RENAMES = {
    "encoder.layer_norm": "encoder.ln_post", "decoder.layer_norm": "decoder.ln",
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
}
_FLOAT32_2D = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}


@dataclass(frozen=True)
class ExportReport:
    path: Path
    container: str  # the file's one type for 2-D weights
    file_bytes: int
    exact_layers: int  # layers whose codes are carried as they are
    ggml_rounded: list[str] = field(default_factory=list)  # 2-D weights rounded by ggml's own round-to-nearest
    notes: list[str] = field(default_factory=list)
    runtime: str = "whisper.cpp"

    def describe(self) -> str:
        parts = [f"{self.path.name}: {self.runtime} {self.container}, {self.file_bytes / 1e6:.1f} MB",
                 f"{self.exact_layers} layers carry our codes exactly"]
        if self.ggml_rounded:
            parts.append(f"{len(self.ggml_rounded)} weights rounded by whisper.cpp's own round-to-nearest "
                         f"({', '.join(whisper_cpp_name(n) for n in self.ggml_rounded[:3])}"
                         f"{', ...' if len(self.ggml_rounded) > 3 else ''})")
        return "; ".join(parts + self.notes) + "."


def whisper_cpp_name(name: str) -> str:
    """'model.encoder.layers.0.self_attn.q_proj.weight' -> 'encoder.blocks.0.attn.query.weight'."""
    name = name.removeprefix("model.")
    parts = name.split(".")
    if len(parts) > 3 and parts[1] == "layers":
        return ".".join([parts[0], "blocks", parts[2], _RENAMES[".".join(parts[3:-1])], parts[-1]])
    for old, new in _TOP_RENAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _header(loaded: LoadedModel, ftype: int) -> bytes:
    c = loaded.model.config
    values = (c.vocab_size, c.max_source_positions, c.d_model, c.encoder_attention_heads, c.encoder_layers,
              c.max_target_positions, c.d_model, c.decoder_attention_heads, c.decoder_layers, c.num_mel_bins, ftype)
    return struct.pack("<I11i", MAGIC, *values)


def _mel_filters(loaded: LoadedModel) -> bytes:
    filters = np.asarray(loaded.feature_extractor.mel_filters, dtype=np.float32).T  # (n_mel, n_fft)
    return struct.pack("<2i", *filters.shape) + np.ascontiguousarray(filters).tobytes()


def _vocabulary(loaded: LoadedModel) -> bytes:
    """The text tokens (ids below <|endoftext|>) as raw bytes; whisper.cpp names the special tokens itself."""
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    tokenizer = loaded.tokens.tokenizer
    out = [struct.pack("<i", loaded.tokens.end_of_text)]
    for i in range(loaded.tokens.end_of_text):
        text = bytes(byte_of[ch] for ch in tokenizer.id_to_token(i))
        out.append(struct.pack("<i", len(text)) + text)
    return b"".join(out)


def _tensor(name: str, array: np.ndarray, kind: GgmlType, shape: tuple[int, ...]) -> bytes:
    encoded = name.encode()
    dims = tuple(reversed(shape))  # ggml lists the innermost dimension first
    return struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), kind.type_id, *dims) + encoded + array.tobytes()


def _codes_of(pname: str, weights: dict[str, QuantizedTensor]) -> QuantizedTensor | None:
    """Our codes for a parameter, if quantized: the token embedding carries the (tied) output layer's."""
    if pname == TOKEN_EMBEDDING:
        return weights.get(OUTPUT_LAYER)
    layer = pname.rsplit(".", 1)[0]
    return weights.get(layer) if pname.endswith(".weight") else None


def export_whisper_cpp(loaded: LoadedModel, weights: dict[str, QuantizedTensor], out: str | Path,
                       container: GgmlType | None = None, full_precision: frozenset[str] = frozenset(),
                       dropped: frozenset[str] = frozenset()) -> ExportReport:
    """Write loaded (with weights: layer name -> our codes) as a whisper.cpp file at out.

    container None chooses the narrowest type that carries every layer's codes; full_precision names
    linear layers our table left unquantized (they make the container f16, since whisper.cpp would
    otherwise round them); dropped names removed layers (zeros, exact in every type). A container given
    explicitly with no weights is whisper.cpp's own quantization of the float16 model (the baseline its
    quantize tool produces).
    """
    for name, qt in weights.items():
        check_exportable(name, qt)
    kind = container or container_for(weights, bool(full_precision))
    ftype = kind.ftype if kind in (F16, F32) else kind.ftype + ggml_lib.QNT_VERSION * ggml_lib.QNT_VERSION_FACTOR
    chunks = [_header(loaded, ftype), _mel_filters(loaded), _vocabulary(loaded)]
    exact, rounded = 0, []
    with torch.no_grad():
        for pname, tensor in loaded.model.state_dict().items():
            if pname.startswith("proj_out"):  # tied to the token embedding; whisper.cpp reuses that
                continue
            name = whisper_cpp_name(pname)
            value = tensor.detach().float().numpy()
            layer = pname.rsplit(".", 1)[0]
            if value.ndim == 1 and name not in _FLOAT32_2D:
                chunks.append(_tensor(name, value.astype(np.float32), F32, value.shape))
            elif name in _FLOAT32_2D:
                value = value.reshape(value.shape[0], -1) if value.ndim == 1 else value
                chunks.append(_tensor(name, value.astype(np.float32), F32, value.shape))
            elif value.ndim == 3:  # convolutions: float16 in every quantized file
                chunks.append(_tensor(name, value.astype(np.float16), F16, value.shape))
            elif kind is F16:
                chunks.append(_tensor(name, value.astype(np.float16), F16, value.shape))
            elif (ours := _codes_of(pname, weights)) is not None:
                chunks.append(_tensor(name, pack(ours, kind), kind, value.shape))
                exact += 1
            else:  # what whisper.cpp's quantize tool does with a float16 2-D weight
                if layer in dropped:
                    exact += pname.endswith(".weight")
                else:
                    rounded.append(pname)
                blocks = ggml_lib.quantize(value.astype(np.float16).astype(np.float32), kind)
                chunks.append(_tensor(name, blocks, kind, value.shape))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("wb") as f:
        for chunk in chunks:
            f.write(chunk)
    partial.replace(out)
    notes = []
    if kind is F16 and weights:
        notes.append("every weight stored as float16 values (a layer left in full precision makes the file f16)")
    report = ExportReport(out, kind.name, out.stat().st_size, exact, rounded, notes)
    log.info("%s", report.describe())
    return report
