"""The CTranslate2 reader against the ctranslate2 package's own converter, on a small random Whisper."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

from engine.whisper import ct2
from engine.whisper.models import REGISTRY, load_model


@pytest.fixture(scope="module")
def random_whisper_ct2(tmp_path_factory):
    """A random-init tiny Whisper (real vocabulary), converted to CT2 float32 by ctranslate2 itself."""
    converters = pytest.importorskip("ctranslate2.converters")
    root = tmp_path_factory.mktemp("random-whisper")
    hf_dir, ct2_dir = root / "hf", root / "ct2"
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448,
        pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, decoder_start_token_id=50257,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases and norms, so a swapped or dropped tensor shows
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(hf_dir)
    tokenizer_json = REGISTRY["tiny.en"].locate().tokenizer
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json)).save_pretrained(hf_dir)
    converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), quantization="float32")
    shutil.copy(tokenizer_json, ct2_dir / "tokenizer.json")
    return model, ct2_dir


def test_reader_returns_identical_tensors(random_whisper_ct2):
    model, ct2_dir = random_whisper_ct2
    raw = ct2.read_model_bin(ct2_dir / "model.bin")
    assert raw.spec_name == "WhisperSpec"
    converted = ct2.to_transformers_state_dict(raw)
    original = model.state_dict()
    assert set(converted) == set(original) - {"proj_out.weight"}
    for name, tensor in converted.items():
        assert torch.equal(tensor, original[name]), name


def test_dims_are_read_from_the_tensors(random_whisper_ct2):
    _, ct2_dir = random_whisper_ct2
    dims = ct2.read_dims(ct2.read_model_bin(ct2_dir / "model.bin"))
    assert (dims.d_model, dims.encoder_layers, dims.decoder_layers) == (64, 2, 2)
    assert (dims.encoder_attention_heads, dims.encoder_ffn_dim, dims.vocab_size) == (2, 128, 51864)


def test_ct2_folder_loads_as_the_same_model(random_whisper_ct2):
    model, ct2_dir = random_whisper_ct2
    loaded = load_model(str(ct2_dir))
    features = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 400, 500]])
    with torch.no_grad():
        expected = model(input_features=features, decoder_input_ids=tokens).logits
        got = loaded.model(input_features=features, decoder_input_ids=tokens).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not loaded.tokens.is_multilingual


def test_split_model_bin_reads_like_one_file(random_whisper_ct2, tmp_path):
    _, ct2_dir = random_whisper_ct2
    data = (ct2_dir / "model.bin").read_bytes()
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 3])
    parts[1].write_bytes(data[len(data) // 3:])
    whole, split = ct2.read_model_bin(ct2_dir / "model.bin"), ct2.read_model_bin(parts)
    assert whole.variables.keys() == split.variables.keys()
    assert all((whole.variables[k] == split.variables[k]).all() for k in whole.variables)


def test_truncated_model_bin_is_a_format_error(random_whisper_ct2, tmp_path):
    _, ct2_dir = random_whisper_ct2
    cut = tmp_path / "model.bin"
    cut.write_bytes((ct2_dir / "model.bin").read_bytes()[:5000])
    with pytest.raises(ct2.CT2FormatError, match="ends early"):
        ct2.read_model_bin(cut)
