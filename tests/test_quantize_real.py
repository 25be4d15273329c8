"""The quantization engine on the real tiny.en: the two-stream pass, methods, drop, save/load."""

from __future__ import annotations

import pytest
import torch

from engine.quant.artifacts import FORMAT_VERSION, load_quantized, save_quantized
from engine.quant.calibration import TwoStreamPass
from engine.quant.config import FADEConfig, GPTQConfig, GQConfig, NF4Config, RTNConfig, W8A8Config
from engine.quant.layer_table import apply_overrides, build_table
from engine.quant.quantize import quantize
from engine.speech.audio import load_audio
from engine.speech.samples import SAMPLE_DIR, sample_clips
from engine.speech.transcribe import transcribe
from engine.workflows.experiment import build_calibration, calibration_clips

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibration(tiny):
    return build_calibration(tiny, calibration_clips(SAMPLE_DIR, 4, seed=0))


@pytest.fixture(scope="module")
def demo_audio():
    return [load_audio(c.path) for c in sample_clips() if c.group == "demo"][:4]


@pytest.mark.parametrize("precision", ["float32", "bfloat16-forward"])
def test_pass_without_quantization_reproduces_the_model(tiny, calibration, precision):
    from engine.quant.precision import PRECISIONS

    runner = TwoStreamPass(tiny, calibration, batch_size=3, precision=PRECISIONS[precision])
    runner.run(lambda part, block, layers, stats: None)
    assert all(r.residual_error == 0 for r in runner.block_records)
    y_fp, y_q = runner.decoder_states
    assert torch.equal(y_fp, y_q)
    tokens = torch.tensor([list(t) for t in calibration.tokens if len(t) == len(calibration.tokens[0])][:1])
    index = [i for i, t in enumerate(calibration.tokens) if len(t) == len(calibration.tokens[0])][0]
    with torch.no_grad():
        expected = tiny.model(input_features=calibration.features[index:index + 1], decoder_input_ids=tokens).logits
    with torch.no_grad():
        got = tiny.model.proj_out(tiny.model.model.decoder.layer_norm(y_fp[index:index + 1, : tokens.shape[1]]))
    if precision == "float32":
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-4)
    else:  # bfloat16 products: close to the float32 logits, and the same next token nearly everywhere
        assert float((got - expected).abs().mean()) < 0.02 * float(expected.abs().mean())
        assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) > 0.9


def test_gptq_beats_rtn_layer_by_layer_on_real_activations(tiny, calibration):
    rtn = quantize(tiny, RTNConfig(bits=3), calibration)
    gptq = quantize(tiny, GPTQConfig(bits=3), calibration)
    ratios = [g.local_error / r.local_error for g, r in zip(gptq.layer_records, rtn.layer_records)]
    assert sum(r < 1 for r in ratios) >= 0.9 * len(ratios)
    assert sum(ratios) / len(ratios) < 0.85
    # Error accumulates: the last decoder block's residual error exceeds the first encoder block's.
    assert gptq.block_records[-1].residual_error > gptq.block_records[0].residual_error


def test_fade_records_alpha_and_both_errors(tiny, calibration):
    result = quantize(tiny, FADEConfig(bits=4), calibration)
    quantized = [r for r in result.layer_records if r.bits < 16]
    assert len(quantized) == 64
    assert all(0 <= r.alpha <= 1 for r in quantized)
    assert all(r.output_error_uncorrected is not None and r.input_drift is not None for r in quantized)
    assert len({round(r.alpha, 3) for r in quantized}) > 5  # per-layer, not one global value
    assert result.seconds > 0 and result.size.size_bytes < result.size.fp16_size_bytes
    from engine.quant.precision import pass_precision

    assert result.calibration["pass_precision"] == pass_precision().name  # the artifact says how it was made


def test_drop_removes_a_branch_changes_output_and_size(tiny, demo_audio):
    table = build_table(tiny.model, bits=8, group_size=64)
    dropped = apply_overrides(table, [{"name": "model.decoder.layers.3.fc1", "action": "drop"}])
    base = quantize(tiny, RTNConfig(bits=8), layers=table)
    cut = quantize(tiny, RTNConfig(bits=8), layers=dropped)
    assert cut.dropped == {"model.decoder.layers.3.fc1", "model.decoder.layers.3.fc2"}
    assert cut.size.size_bytes < base.size.size_bytes
    assert float(cut.loaded.model.model.decoder.layers[3].fc2.weight.detach().abs().sum()) == 0
    feats = tiny.feature_extractor(demo_audio[:1], sampling_rate=16000, return_tensors="pt").input_features
    ids = torch.tensor([[50257, 50362, 383, 2068]])
    with torch.no_grad():
        a = base.loaded.model(input_features=feats, decoder_input_ids=ids).logits
        b = cut.loaded.model(input_features=feats, decoder_input_ids=ids).logits
    assert not torch.allclose(a, b, atol=1e-3)


def test_save_and_load_give_identical_weights_and_transcripts(tiny, calibration, demo_audio, tmp_path):
    table = apply_overrides(build_table(tiny.model, bits=4, group_size=64), [
        {"name": "model.encoder.layers.0.fc1", "bits": 3, "alpha": 0.2},
        {"name": "model.decoder.layers.0.fc2", "action": "keep"},
        {"name": "model.decoder.layers.1.encoder_attn.q_proj", "action": "drop"},
    ])
    result = quantize(tiny, FADEConfig(bits=4, symmetric=False), calibration, layers=table)
    folder = save_quantized(result, tmp_path / "fade4")
    loaded, meta = load_quantized(folder)
    original = result.loaded.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert transcribe(loaded, demo_audio) == transcribe(result.loaded, demo_audio)
    _assert_compact_load_matches(folder, result, demo_audio)
    assert meta["quant_config"]["method"] == "fade" and meta["format_version"] == FORMAT_VERSION == 3
    on_disk = (folder / "weights.safetensors").stat().st_size
    assert abs(on_disk - result.size.size_bytes) / result.size.size_bytes < 0.01
    row = {r["name"]: r for r in meta["layers"]}["model.encoder.layers.0.fc1"]
    assert (row["bits"], row["alpha"]) == (3, 0.2)


def _assert_compact_load_matches(folder, result, demo_audio):
    """A run loaded as codes holds no float weights for its quantized layers between uses, and inside in_use()
    has the very weights (so the very transcripts) of the run it was saved from."""
    compact, meta = load_quantized(folder, compact=True)
    quantized = [name for name, desc in meta["weights"].items()]
    held = sum(compact.model.get_submodule(name).weight.numel() for name in quantized)
    assert quantized and held == 0
    original = result.loaded.model.state_dict()
    with compact.in_use(), compact.in_use():  # users share one unpacking
        for name, tensor in compact.model.state_dict().items():
            assert torch.equal(tensor, original[name]), name
    assert compact.model.get_submodule(quantized[0]).weight.numel() == 0
    assert transcribe(compact, demo_audio) == transcribe(result.loaded, demo_audio)
    tokenizers = {}  # a server's: a model's runs share the tokenizer read for the first of them
    first, _ = load_quantized(folder, compact=True, tokenizers=tokenizers)
    again, _ = load_quantized(folder, compact=True, tokenizers=tokenizers)
    assert len(tokenizers) == 1 and first.tokens is again.tokens
    assert first.tokens.tokenizer.get_vocab() == compact.tokens.tokenizer.get_vocab()


def _round_trip(result, demo_audio, folder):
    loaded, meta = load_quantized(save_quantized(result, folder))
    original = result.loaded.model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert transcribe(loaded, demo_audio) == transcribe(result.loaded, demo_audio)
    _assert_compact_load_matches(folder, result, demo_audio)
    on_disk = (folder / "weights.safetensors").stat().st_size
    assert abs(on_disk - result.size.size_bytes) / result.size.size_bytes < 0.01
    return meta


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_quantizes_exact_size_and_round_trips(tiny, demo_audio, tmp_path, double_quant):
    result = quantize(tiny, NF4Config(double_quant=double_quant))
    n_weights = sum(r.out_features * r.in_features for r in result.table)
    bits_per_weight = 8 * result.size.quantized_weight_bytes / n_weights
    assert bits_per_weight == pytest.approx(4.127 if double_quant else 4.5, abs=0.002)
    texts = transcribe(result.loaded, demo_audio)
    assert sum(len(t.split()) for t in texts) > 20
    meta = _round_trip(result, demo_audio, tmp_path / "nf4")
    assert next(iter(meta["weights"].values()))["kind"] == "codebook"


def test_gq_trains_centroids_per_layer_including_one_and_two_bit_rows(tiny, calibration, demo_audio, tmp_path):
    table = apply_overrides(build_table(tiny.model, bits=4, group_size=64), [
        {"name": "model.encoder.layers.1.fc1", "bits": 2},
        {"name": "model.encoder.layers.2.fc2", "bits": 1},
    ])
    result = quantize(tiny, GQConfig(bits=4, steps=20, distill_steps=2, distill_batch=2), calibration, layers=table)
    one_bit = result.tensors["model.encoder.layers.2.fc2"]
    assert one_bit.bits == 1 and len(one_bit.levels) == 2 and set(one_bit.codes.unique().tolist()) <= {0, 1}
    record = {r.name: r for r in result.layer_records}["model.encoder.layers.1.fc1"]
    assert record.notes["levels"] != record.notes["levels_initial"]  # the centroids moved
    assert record.notes["distilled"] and record.weight_error != record.notes["weight_error_layerwise"]
    # Still a speech recognizer with a 1-bit and a 2-bit layer inside (the WER table is in the benchmark).
    assert sum(len(t.split()) for t in transcribe(result.loaded, demo_audio)) > 8
    _round_trip(result, demo_audio, tmp_path / "gq")


@pytest.mark.parametrize("activations", ["static", "dynamic"])
def test_w8a8_runs_end_to_end_and_reloads_its_activation_quantizers(tiny, calibration, demo_audio, tmp_path, activations):
    config = W8A8Config(activations=activations)
    result = quantize(tiny, config, calibration if activations == "static" else None)
    assert result.activations["layers"] == 64 and result.activations["mode"] == activations
    if activations == "static":
        lo, hi = result.activations["ranges"]["model.encoder.layers.0.fc2"]
        assert lo < 0 < hi
    reference = transcribe(tiny, demo_audio)
    texts = transcribe(result.loaded, demo_audio)
    assert texts != [""] * len(texts)
    assert sum(a == b for a, b in zip(texts, reference)) >= 3  # 8-bit keeps most transcripts (all 4 when written)
    meta = _round_trip(result, demo_audio, tmp_path / "w8a8")
    assert meta["activations"]["mode"] == activations
