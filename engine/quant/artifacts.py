"""Saved quantized models that describe themselves and reload without guessing.

A folder with:
  asrq-quantized.json   format version, model name/source, Whisper and generation configs, method config,
                        layer table, dropped layers, size, diagnostics, calibration, library versions
  weights.safetensors   per quantized layer the arrays of its weight kind under <name>.<array>: integer
                        grids (kind "int"): qweight (codes packed at `bits` bits), scales (float16),
                        asymmetric grids mins (float16; v3) or zeros (uint8, integer_zero); codebooks (kind "codebook", NF4 and learned
                        centroids): qweight, scales or double-quantized scale codes, levels;
                        every other parameter in float16 under its own name
  tokenizer.json        the model's tokenizer
Saving writes to a temporary folder beside the target and renames it at the end, so an interrupted save
(crash, full disk) never leaves a half-written artifact under the target name. The metadata records the
weights file's SHA-256, so a file damaged later is refused on load instead of giving a broken model.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from engine.digest import files_sha256
from engine.errors import UserError
from engine.quant.activation_quant import attach_input_quantizers
from engine.quant.codebook import CodebookTensor
from engine.quant.compact import CompactWeights
from engine.quant.formats import QuantizedTensor
from engine.quant.quantize import QuantizationResult
from engine.quant.size import unique_parameters, weight_storage
from engine.whisper.models import LoadedModel
from engine.whisper.tokens import WhisperTokens

# 3: asymmetric integer grids store float16 minimums (or uint8 zeros with integer_zero); 2: weight kinds (int,
# codebook), asymmetric grids with uint8 zeros; 1: integer grids only. Older versions still load.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
KIND = "asrq-quantized-whisper"
META_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "asrq-quantized.json", "weights.safetensors", "tokenizer.json"


class ArtifactError(UserError):
    """A folder is not a readable quantized-model artifact."""


WEIGHT_KINDS = {cls.kind: cls for cls in (QuantizedTensor, CodebookTensor)}


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def save_quantized(result: QuantizationResult, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Save atomically; ``extra`` adds keys (e.g. the app's run summary) to the metadata."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ArtifactError(f"{out_dir} already exists and is not empty; choose a new folder.")
    model = result.loaded.model
    tensors: dict[str, np.ndarray] = {}
    for name, qt in result.tensors.items():
        tensors |= {f"{name}.{key}": array for key, array in qt.to_arrays().items()}
    state = model.state_dict()
    quantized = weight_storage(model, result.tensors)
    for pname in unique_parameters(model):
        if pname.rsplit(".", 1)[0] in result.dropped or state[pname].data_ptr() in quantized:
            continue
        tensors[pname] = state[pname].half().numpy()
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": {"name": result.loaded.name, "source": result.loaded.source},
        "whisper_config": model.config.to_dict(),
        "generation_config": model.generation_config.to_dict(),
        "quant_config": result.config.to_dict(),
        "weights": {name: qt.describe() for name, qt in result.tensors.items()},
        "layers": [asdict(row) for row in result.table],
        "dropped": sorted(result.dropped),
        "size": result.size.to_dict(),
        "layer_records": [r.to_dict() for r in result.layer_records],
        "block_records": [asdict(r) for r in result.block_records],
        "calibration": result.calibration,
        "quantization_seconds": result.seconds,
        "activations": result.activations,
        "versions": _versions(),
        **(extra or {}),
    }
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION), "kind": KIND})
        meta["weights_sha256"] = files_sha256([tmp / WEIGHTS_FILE])
        result.loaded.tokens.tokenizer.save(str(tmp / TOKENIZER_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    except (OSError, SafetensorError) as exc:  # a full disk, a file size limit, a vanished folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"Saving the quantized model to {out_dir} failed ({exc}); nothing was left behind.") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def verify_artifact(folder: str | Path) -> dict:
    """The metadata of a sound artifact; ArtifactError if any file is missing or its weights changed since saving."""
    folder = Path(folder)
    meta = read_metadata(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file() or not (folder / TOKENIZER_FILE).is_file():
        raise ArtifactError(f"{folder} is incomplete (its weights or tokenizer file is missing).")
    expected = meta.get("weights_sha256")
    if expected is not None and files_sha256([weights]) != expected:
        raise ArtifactError(f"{weights} is damaged (its checksum differs from the one saved with it).")
    return meta


def prune_artifacts(root: str | Path, keep: int, protect: frozenset[str] = frozenset()) -> list[str]:
    """Delete all but the ``keep`` most recently written artifact folders under ``root`` (never those named in
    ``protect``, nor partial saves in progress); returns the deleted folder names."""
    root = Path(root)
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in protect]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for folder in folders[max(keep - len(protect), 0):]:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def read_metadata(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a quantized model folder (no {META_FILE}).")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is damaged ({exc}).") from exc
    if meta.get("kind") != KIND or meta.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{folder} holds format {meta.get('kind')} v{meta.get('format_version')}; this version reads {KIND} v{FORMAT_VERSION}."
        )
    return meta


def load_quantized(folder: str | Path, compact: bool = False,
                   tokenizers: dict[str, WhisperTokens] | None = None) -> tuple[LoadedModel, dict]:
    """Rebuild the quantized model exactly (bit-identical weights) and return it with its metadata.

    compact: keep the quantized layers as codes, unpacked only inside ``loaded.in_use()`` (which transcribe
    enters): for a server holding many runs (engine/quant/compact.py). tokenizers: tokenizers read before, by
    their file's digest, shared with this run when its file is the same (every run of one model has the same
    file; reading it took a fifth of a tiny.en run's load); a new one is added."""
    folder = Path(folder)
    meta = verify_artifact(folder)
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"{folder / WEIGHTS_FILE} is missing or damaged ({exc}).") from exc
    config = WhisperConfig.from_dict(meta["whisper_config"])
    # Built on the meta device and given memory without random initialisation: every tensor is set below from
    # the artifact (the random init took 1.2 of the 1.6 s a server spent loading a tiny.en run for an upload).
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model = model.to_empty(device="cpu").eval()
    model.generation_config = GenerationConfig.from_dict(meta["generation_config"])
    model.tie_weights()  # before the copies: a quantized output layer's codes also set the token embedding
    state = model.state_dict()
    dropped = set(meta["dropped"])
    weights = weights_from(meta, tensors, model)
    quantized = {model.get_submodule(name).weight.data_ptr() for name in weights}  # tied: one storage, two names
    with torch.no_grad():
        for pname in unique_parameters(model):
            layer = pname.rsplit(".", 1)[0]
            if layer in dropped:
                state[pname].zero_()
            elif pname in tensors:
                state[pname].copy_(torch.from_numpy(tensors[pname]))  # float16 to float32 in the copy: exact
            elif state[pname].data_ptr() not in quantized:
                raise ArtifactError(f"{folder / WEIGHTS_FILE} has no tensor for {pname}.")
        if not compact:
            for name, qt in weights.items():
                model.get_submodule(name).weight.copy_(qt.dequantize())
    if meta.get("activations"):
        attach_input_quantizers(model, meta["activations"])
    tokens = _tokenizer(folder / TOKENIZER_FILE, config.vocab_size, tokenizers)
    loaded = LoadedModel(f"{meta['model']['name']} ({meta['quant_config']['method']})", model,
                         WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokens, f"quantized artifact {folder}")
    if compact:
        loaded.in_use = CompactWeights(model, weights).in_use
    return loaded, meta


def _tokenizer(path: Path, vocab_size: int, tokenizers: dict[str, WhisperTokens] | None) -> WhisperTokens:
    if tokenizers is None:
        return WhisperTokens.from_file(path, vocab_size)
    digest = files_sha256([path], salt=f"vocab {vocab_size}")
    if digest not in tokenizers:
        tokenizers[digest] = WhisperTokens.from_file(path, vocab_size)
    return tokenizers[digest]


def weights_from(meta: dict, tensors: dict[str, np.ndarray], model) -> dict:
    """name -> quantized weight object, from the metadata's descriptions and the stored arrays."""
    if meta["format_version"] == 1:  # integer grids only, described by their IntFormat
        described = {name: {"kind": "int", **fmt, "shape": list(model.get_submodule(name).weight.shape)}
                     for name, fmt in meta["formats"].items()}
    else:
        described = meta["weights"]
    out = {}
    for name, desc in described.items():
        if desc.get("kind") not in WEIGHT_KINDS:
            raise ArtifactError(f"layer {name} has weight kind {desc.get('kind')!r}, which this version cannot read.")
        prefix = f"{name}."
        arrays = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        out[name] = WEIGHT_KINDS[desc["kind"]].from_arrays(arrays, desc)
    return out

