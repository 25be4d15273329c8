"""PQM personalisation: a frozen NF4 base plus per-speaker LoRA adapters (peft), trained on a few clips.

Training is teacher-forced cross-entropy on the speaker's clips and transcripts, on CPU. Adapters live
apart from the base, one folder per speaker under the adapters root:
  <root>/<speaker>/adapter_model.safetensors, adapter_config.json   (peft's own files)
  <root>/<speaker>/asrq-adapter.json                                (speaker, base model and its quant
                                                                     config, LoRA and training settings)
Loading checks that the adapter was trained on the same base before applying it.

Never worse off: with validation recordings (held out from training), the adapter is scored after every
epoch and at epoch 0 (the base alone) by greedy WER on them. The adapter is kept only when some epoch has a
lower validation WER than the base (the best such epoch, ties broken by teacher-forced loss); else it is not
kept at all (``kept`` False): the speaker is better served by the base model. A kept adapter is trained
again on all the recordings for the best epoch count.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.paths import data_dir
from engine.progress import ProgressFn
from engine.speech.audio import SAMPLE_RATE
from engine.whisper.models import LoadedModel
from engine.whisper.tokens import padded_rows

log = logging.getLogger(__name__)

ADAPTER_KIND, ADAPTER_VERSION, ADAPTER_META = "asrq-speaker-adapter", 1, "asrq-adapter.json"
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # attention (self and cross) and FFN
_SPEAKER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PersonalizeError(UserError):
    """Personalisation cannot run with these inputs."""


def default_adapters_root() -> Path:
    return data_dir() / "adapters"


def check_speaker(name: str) -> str:
    if not isinstance(name, str) or not _SPEAKER.match(name) or ".." in name:
        raise PersonalizeError(f"Speaker name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (it names a folder).")
    return name


@dataclass(frozen=True)
class LoRASettings:
    """LoRA on every attention and feed-forward linear of the blocks; rank 6 is about 1% of tiny.en."""

    rank: int = 6
    scale: float = 2.0  # lora_alpha = scale * rank
    epochs: int = 8
    lr: float = 1e-3
    batch_size: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low, high in (("rank", 1, 256), ("epochs", 1, 200), ("batch_size", 1, 64)):
            value = getattr(self, name)
            if not (isinstance(value, int) and low <= value <= high):
                raise PersonalizeError(f"{name} must be an integer from {low} to {high}, not {value!r}.")
        if not 0 < self.lr <= 0.1:
            raise PersonalizeError(f"learning rate must be in (0, 0.1], not {self.lr}.")


@dataclass
class SpeakerAdapter:
    speaker: str
    model: torch.nn.Module  # the peft model: frozen base + trainable adapters
    settings: LoRASettings
    base: dict  # base model name and quant config, to check on load
    trainable_parameters: int
    base_parameters: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    clips: list[str] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # per epoch (0 = base): epoch, wer, loss
    best_epoch: int | None = None  # the epoch whose weights were kept (None: no validation recordings)

    @property
    def kept(self) -> bool:
        """False when validation found that no epoch beat the base model: use the base alone."""
        return self.best_epoch != 0

    @property
    def extra_fraction(self) -> float:
        return self.trainable_parameters / self.base_parameters


def training_text(text: str) -> str:
    """LibriSpeech-style ALL CAPS references become sentence case, closer to what Whisper writes."""
    return text.capitalize() if text.isupper() else text


def _batches(loaded: LoadedModel, audios: Sequence[np.ndarray], texts: Sequence[str]):
    from engine.quant.calibration import prepare_calibration

    data = prepare_calibration(loaded, audios, [training_text(t) for t in texts])
    inputs, _ = padded_rows([toks[:-1] for toks in data.tokens], loaded.tokens.end_of_text)
    labels, _ = padded_rows([toks[1:] for toks in data.tokens], -100)  # -100: no loss (padding)
    for i, toks in enumerate(data.tokens):
        prompt = toks.index(loaded.tokens.no_timestamps) + 1
        labels[i, : prompt - 1] = -100  # the prompt is given, not learned
    return data.features, inputs, labels


def _validation_score(peft_model, base: LoadedModel, val, val_audios, val_texts) -> dict:
    """Greedy WER on the validation recordings and the teacher-forced loss (the model in eval mode)."""
    from engine.speech.evaluate import TextScorer
    from engine.speech.transcribe import transcribe

    features, inputs, labels = val
    with torch.no_grad():
        loss = float(peft_model(input_features=features, decoder_input_ids=inputs, labels=labels).loss)
    hyps = transcribe(replace(base, model=peft_model), list(val_audios))
    return {"wer": TextScorer().score(list(val_texts), hyps)[0], "loss": loss}


def best_epoch_of(validation: Sequence[dict]) -> int:
    """The trained epoch with the lowest validation WER (ties: lowest loss), or 0 when none has a lower WER than
    the base (epoch 0): a lower loss alone is no evidence the speaker would hear fewer mistakes."""
    best = min(validation[1:], key=lambda v: (v["wer"], v["loss"]), default=validation[0])
    return best["epoch"] if best["wer"] < validation[0]["wer"] else 0


def _check_clips(speaker: str, audios, texts, val_audios, val_texts) -> None:
    check_speaker(speaker)
    if len(audios) != len(texts) or not audios:
        raise PersonalizeError("Personalisation needs at least one clip, each with its transcript.")
    if len(val_audios) != len(val_texts):
        raise PersonalizeError("Each validation recording needs its transcript.")
    if any(len(a) < SAMPLE_RATE // 2 for a in [*audios, *val_audios]):
        raise PersonalizeError("Every personalisation clip must hold at least half a second of speech.")


def _train(base: LoadedModel, audios, texts, settings: LoRASettings, epochs: int, progress: ProgressFn,
           on_epoch: Callable[[int, torch.nn.Module], None] = lambda epoch, model: None):
    """A fresh LoRA model on a copy of base, trained for ``epochs``; on_epoch(epoch, model) runs after each
    epoch (and once before training, with epoch 0). Returns (peft model, trainable parameters, losses)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)
    features, inputs, labels = _batches(base, audios, texts)
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.scale * settings.rank, lora_dropout=0.0, bias="none",
                      target_modules=r".*\.layers\.\d+\..*(" + "|".join(TARGET_MODULES) + r")$")
    peft_model = get_peft_model(copy.deepcopy(base.model), lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    n = len(texts)
    steps = max(1, epochs * -(-n // settings.batch_size))
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    peft_model.eval()
    on_epoch(0, peft_model)
    for epoch in range(epochs):
        peft_model.train()
        order = torch.randperm(n, generator=generator)
        for first in range(0, n, settings.batch_size):
            idx = order[first:first + settings.batch_size]
            out = peft_model(input_features=features[idx], decoder_input_ids=inputs[idx], labels=labels[idx])
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(float(out.loss.detach()))
            progress(len(losses) / steps, f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
        peft_model.eval()
        on_epoch(epoch + 1, peft_model)
    return peft_model, sum(p.numel() for p in trainable), losses


def personalize(base: LoadedModel, speaker: str, audios: Sequence[np.ndarray], texts: Sequence[str],
                settings: LoRASettings = LoRASettings(), base_info: dict | None = None,
                progress: ProgressFn | None = None, val_audios: Sequence[np.ndarray] = (),
                val_texts: Sequence[str] = ()) -> SpeakerAdapter:
    """Train LoRA adapters on a frozen copy of ``base`` (normally the NF4 model) for one speaker.

    val_audios/val_texts: recordings held out from training that choose the epoch count and whether to keep
    the adapter at all (see the module docstring). A kept adapter is then trained again from the start on the
    training and validation recordings together, for the chosen number of epochs: the validation recordings
    are the speaker's data too. Without them every epoch is trained and kept."""
    _check_clips(speaker, audios, texts, val_audios, val_texts)
    progress = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    base_parameters = sum(p.numel() for p in base.model.parameters())
    validation: list[dict] = []
    best_epoch = None
    if val_audios:
        val = _batches(base, val_audios, val_texts)
        validation_progress = lambda f, m: progress(0.6 * f, f"choosing the epoch count: {m}")  # noqa: E731
        _train(base, audios, texts, settings, settings.epochs, validation_progress,
               lambda epoch, model: validation.append(
                   {"epoch": epoch, **_validation_score(model, base, val, val_audios, val_texts)}))
        best_epoch = best_epoch_of(validation)
    if best_epoch == 0:  # no epoch beat the base: an adapter with LoRA's B at zero is the base itself
        peft_model, trainable, losses = _train(base, audios, texts, settings, 0, progress)
    elif best_epoch is not None:
        peft_model, trainable, losses = _train(base, [*audios, *val_audios], [*texts, *val_texts], settings,
                                               best_epoch, lambda f, m: progress(0.6 + 0.4 * f, m))
    else:
        peft_model, trainable, losses = _train(base, audios, texts, settings, settings.epochs, progress)
    info = base_info or {"name": base.name}
    adapter = SpeakerAdapter(speaker, peft_model, settings, info, trainable, base_parameters,
                             losses, time.perf_counter() - start, validation=validation, best_epoch=best_epoch)
    log.info("adapter for %s: %d parameters (%.2f%%), epoch %s kept, %d steps in %.0f s", speaker,
             adapter.trainable_parameters, 100 * adapter.extra_fraction, best_epoch, len(losses), adapter.seconds)
    return adapter


def adapted(base: LoadedModel, adapter: SpeakerAdapter) -> LoadedModel:
    """The base with the adapter merged into a copy of its weights, ready to transcribe."""
    merged = copy.deepcopy(adapter.model).merge_and_unload()
    return replace(base, model=merged.eval(), name=f"{base.name} + {adapter.speaker}")


def save_adapter(adapter: SpeakerAdapter, root: str | Path | None = None) -> Path:
    root = Path(root) if root else default_adapters_root()
    folder = root / check_speaker(adapter.speaker)
    tmp = root / f".{adapter.speaker}.partial"
    root.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(str(tmp), safe_serialization=True)
    meta = {"kind": ADAPTER_KIND, "format_version": ADAPTER_VERSION, "speaker": adapter.speaker, "base": adapter.base,
            "settings": asdict(adapter.settings), "trainable_parameters": adapter.trainable_parameters,
            "base_parameters": adapter.base_parameters, "losses": adapter.losses, "seconds": adapter.seconds,
            "clips": adapter.clips, "validation": adapter.validation, "best_epoch": adapter.best_epoch,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=1))
    if folder.exists():  # replace the speaker's previous adapter only once the new one is complete
        old = root / f".{adapter.speaker}.old"
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(folder)
    return folder


def list_speakers(root: str | Path | None = None) -> list[str]:
    root = Path(root) if root else default_adapters_root()
    return sorted(p.parent.name for p in root.glob(f"*/{ADAPTER_META}")) if root.is_dir() else []


def load_adapter(base: LoadedModel, speaker: str, root: str | Path | None = None,
                 base_info: dict | None = None) -> tuple[LoadedModel, dict]:
    """The base with the speaker's saved adapter merged in; the base must be the one it was trained on."""
    from peft import PeftModel

    root = Path(root) if root else default_adapters_root()
    folder = root / check_speaker(speaker)
    try:
        meta = json.loads((folder / ADAPTER_META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PersonalizeError(f"No readable adapter for speaker {speaker!r} in {root}.") from exc
    if meta.get("kind") != ADAPTER_KIND or meta.get("format_version") != ADAPTER_VERSION:
        raise PersonalizeError(f"{folder} is not an adapter this version can read.")
    expected = base_info or {"name": base.name}
    if meta["base"] != expected:
        raise PersonalizeError(f"The adapter of {speaker!r} was trained on {meta['base']}, not on {expected}.")
    model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder), is_trainable=False)
    merged = model.merge_and_unload().eval()
    return replace(base, model=merged, name=f"{base.name} + {speaker}"), meta


def before_after(fp32: LoadedModel, base: LoadedModel, adapter: SpeakerAdapter, audios: Sequence[np.ndarray],
                 references: Sequence[str]) -> dict:
    """WER and transcripts of fp32, the base (NF4) and the base with the adapter on held-out clips. An adapter
    that validation did not keep is the base itself, so its row repeats NF4's (what the speaker would get)."""
    from engine.speech.evaluate import TextScorer
    from engine.speech.transcribe import transcribe

    scorer, out = TextScorer(), {"wer": {}, "transcripts": {}, "adapter_kept": adapter.kept}
    with_adapter = adapted(base, adapter) if adapter.kept else base
    for name, model in (("fp32", fp32), ("nf4", base), ("nf4+lora", with_adapter)):
        hyps = transcribe(model, list(audios))
        out["wer"][name] = scorer.score(list(references), hyps)[0]
        out["transcripts"][name] = hyps
    return out


def validation_count(n_recordings: int) -> int:
    """How many of a speaker's training recordings validate: one in three, at least one once there are three
    (fewer leave too little to train on). They train too, once the epoch count is chosen."""
    return max(1, n_recordings // 3) if n_recordings >= 3 else 0


def adapt_and_compare(fp32: LoadedModel, speaker: str, audios: Sequence[np.ndarray], texts: Sequence[str],
                      n_train: int, settings: LoRASettings = LoRASettings(), adapters_root: str | Path | None = None,
                      clip_names: Sequence[str] = (), progress: ProgressFn | None = None) -> dict:
    """The personalisation workflow of the CLI and the page: NF4 base, LoRA on the first n_train recordings
    (the last of them first validate the epoch count, see validation_count, then train too), the adapter saved
    when validation keeps it, and fp32 / NF4 / NF4+LoRA compared on the recordings after n_train."""
    from engine.quant.config import NF4Config
    from engine.quant.quantize import quantize

    check_speaker(speaker)
    if len(audios) != len(texts) or not 0 < n_train < len(audios):
        raise PersonalizeError(f"Record at least {n_train + 1} prompts: {n_train} to learn from and one to test on.")
    progress = progress or (lambda fraction, message: None)
    n_val = validation_count(n_train)
    fit = n_train - n_val
    progress(0.02, "quantizing to NF4")
    base = quantize(fp32, NF4Config()).loaded
    base_info = {"name": fp32.name, "quant_config": NF4Config().to_dict()}
    adapter = personalize(base, speaker, audios[:fit], texts[:fit], settings, base_info,
                          lambda f, m: progress(0.05 + 0.8 * f, m), audios[fit:n_train], texts[fit:n_train])
    adapter.clips = list(clip_names[:n_train]) if clip_names else [f"prompt {i + 1}" for i in range(n_train)]
    folder = save_adapter(adapter, adapters_root) if adapter.kept else None
    progress(0.9, "comparing before and after on the held-out recordings")
    return {"speaker": speaker, "adapter": str(folder) if folder else None, "train_clips": n_train,
            "validation_clips": n_val, "test_clips": len(texts) - n_train, "best_epoch": adapter.best_epoch,
            "validation": adapter.validation, "trainable_parameters": adapter.trainable_parameters,
            "extra_fraction": adapter.extra_fraction, "train_seconds": adapter.seconds, "losses": adapter.losses,
            **before_after(fp32, base, adapter, audios[n_train:], texts[n_train:])}
