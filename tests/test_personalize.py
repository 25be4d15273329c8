"""PQM personalisation on the real tiny.en (NF4 base) and real clips of one LibriSpeech speaker."""

from __future__ import annotations

import pytest
import torch

from engine.quant.config import NF4Config
from engine.speech.audio import load_audio
from engine.speech.evaluate import load_dataset
from engine.workflows.personalize import (LoRASettings, PersonalizeError, adapted, list_speakers, load_adapter, personalize,
                                save_adapter)
from engine.quant.quantize import quantize
from engine.speech.transcribe import transcribe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nf4_base(tiny):
    return quantize(tiny, NF4Config()).loaded


@pytest.fixture(scope="module")
def speaker_clips(test_other):
    clips = [u for u in load_dataset(test_other) if u.id.startswith("1998-")]
    return [load_audio(u.path) for u in clips], [u.reference for u in clips]


@pytest.fixture(scope="module")
def adapter(nf4_base, speaker_clips):
    audios, texts = speaker_clips
    return personalize(nf4_base, "reader-1998", audios[:3], texts[:3], LoRASettings(rank=4, epochs=3, batch_size=3))


def test_lora_adds_the_expected_parameters_and_leaves_the_base_frozen(tiny, nf4_base, adapter):
    # rank r on every block linear: encoder 4 x (4 x 768 + 2 x 1920) r, decoder 4 x (8 x 768 + 2 x 1920) r
    assert adapter.trainable_parameters == 67584 * 4
    assert 0.005 < adapter.extra_fraction < 0.015
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    merged = adapted(nf4_base, adapter)
    w_base = nf4_base.model.model.encoder.layers[0].fc1.weight.detach()
    assert not torch.equal(merged.model.model.encoder.layers[0].fc1.weight.detach(), w_base)  # adapter merged in
    fresh = quantize(tiny, NF4Config()).loaded.model.state_dict()  # NF4 is deterministic: the base is untouched
    assert all(torch.equal(t, fresh[n]) for n, t in nf4_base.model.state_dict().items())
    assert adapter.losses[-1] < adapter.losses[0]


def test_saved_adapter_reloads_per_speaker_with_identical_transcripts(nf4_base, adapter, speaker_clips, tmp_path):
    audios, _ = speaker_clips
    folder = save_adapter(adapter, tmp_path)
    assert (folder / "adapter_model.safetensors").is_file() and list_speakers(tmp_path) == ["reader-1998"]
    reloaded, meta = load_adapter(nf4_base, "reader-1998", tmp_path)
    assert meta["trainable_parameters"] == adapter.trainable_parameters
    assert transcribe(reloaded, audios[6:8]) == transcribe(adapted(nf4_base, adapter), audios[6:8])
    with pytest.raises(PersonalizeError, match="trained on"):
        load_adapter(nf4_base, "reader-1998", tmp_path, base_info={"name": "another base"})
    with pytest.raises(PersonalizeError, match="No readable adapter"):
        load_adapter(nf4_base, "nobody", tmp_path)


@pytest.mark.parametrize("name", ["../etc", "", "a/b", "x" * 80])
def test_speaker_names_that_are_not_safe_folder_names_are_refused(nf4_base, speaker_clips, name):
    audios, texts = speaker_clips
    with pytest.raises(PersonalizeError, match="Speaker name"):
        personalize(nf4_base, name, audios[:1], texts[:1])


def test_before_after_scores_the_three_models_on_held_out_clips(tiny, nf4_base, adapter, speaker_clips):
    from engine.workflows.personalize import before_after

    audios, texts = speaker_clips
    out = before_after(tiny, nf4_base, adapter, audios[8:], texts[8:])
    assert set(out["wer"]) == {"fp32", "nf4", "nf4+lora"} and all(len(t) == 2 for t in out["transcripts"].values())
    assert out["wer"]["fp32"] < 0.6  # real speech, real model: a WER that can fail


def test_validation_picks_the_epoch_and_drops_an_adapter_that_does_not_help(nf4_base, speaker_clips):
    audios, texts = speaker_clips
    settings = LoRASettings(rank=4, epochs=2, batch_size=3)
    adapter = personalize(nf4_base, "reader-1998", audios[:3], texts[:3], settings,
                          val_audios=audios[3:4], val_texts=texts[3:4])
    assert [v["epoch"] for v in adapter.validation] == [0, 1, 2]
    best = min(adapter.validation[1:], key=lambda v: (v["wer"], v["loss"]))
    assert adapter.best_epoch == (best["epoch"] if best["wer"] < adapter.validation[0]["wer"] else 0)
    # A learning rate far too high wrecks the adapter; validation must see it and keep the base alone.
    wrecked = personalize(nf4_base, "reader-1998", audios[:3], texts[:3],
                          LoRASettings(rank=4, epochs=2, batch_size=3, lr=0.1), val_audios=audios[3:4],
                          val_texts=texts[3:4])
    assert wrecked.validation[1]["wer"] > wrecked.validation[0]["wer"]
    assert wrecked.best_epoch == 0 and not wrecked.kept
    assert all(not p.any() for n, p in wrecked.model.named_parameters() if "lora_B" in n)  # back to the base
    from engine.workflows.personalize import before_after

    out = before_after(nf4_base, nf4_base, wrecked, audios[8:], texts[8:])
    assert not out["adapter_kept"] and out["wer"]["nf4+lora"] == out["wer"]["nf4"]


def test_an_adapter_is_kept_only_for_a_lower_validation_wer():
    from engine.workflows.personalize import best_epoch_of

    def trace(*pairs):
        return [{"epoch": i, "wer": w, "loss": loss} for i, (w, loss) in enumerate(pairs)]

    assert best_epoch_of(trace((0.2, 1.0), (0.1, 0.8), (0.1, 0.7), (0.15, 0.6))) == 2  # lowest WER, then loss
    assert best_epoch_of(trace((0.0, 1.0), (0.0, 0.3), (0.1, 0.2))) == 0  # nothing to fix: a lower loss is not enough
    assert best_epoch_of(trace((0.1, 1.0), (0.2, 0.5))) == 0
