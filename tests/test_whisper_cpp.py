"""whisper.cpp export: our codes in ggml blocks (checked by ggml's own dequantizer) and real transcription."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from engine.deploy import ggml_lib
from engine.deploy.ggml_blocks import GgmlExportError, check_exportable, container_for, fits, pack
from engine.deploy.ggml_lib import F16, Q4_0, Q4_1, Q5_1, Q8_0
from engine.quant.codebook import nf4_quantize
from engine.quant.config import FADEConfig
from engine.quant.formats import IntFormat, rtn_quantize
from engine.speech.evaluate import TextScorer, load_dataset
from tests.helpers import speech_dir

GRIDS = [  # (bits, symmetric, group size, integer zero) -> the narrowest ggml block that carries it
    ((4, True, 32, False), Q4_0), ((4, False, 64, False), Q4_1), ((3, False, 32, False), Q4_1),
    ((2, False, 128, False), Q4_1), ((5, False, 32, False), Q5_1), ((8, True, -1, False), Q8_0),
    ((6, False, 64, True), Q8_0), ((4, False, 32, True), Q4_1), ((5, False, 64, True), Q5_1),
]


@pytest.mark.parametrize("grid, narrowest", GRIDS)
def test_ggml_dequantizes_our_codes_to_our_weights(grid, narrowest):
    bits, symmetric, group, integer_zero = grid
    torch.manual_seed(bits)
    w = torch.randn(24, 256) * torch.linspace(0.1, 3, 256)  # columns of different ranges: groups differ
    qt = rtn_quantize(w, IntFormat(bits, group, symmetric, integer_zero=integer_zero))
    ours = qt.dequantize().numpy()
    assert container_for({"layer": qt}, has_full_precision=False) is narrowest
    for kind in (Q4_0, Q4_1, Q5_1, Q8_0):
        if not fits(qt, kind):
            continue
        theirs = ggml_lib.dequantize(pack(qt, kind), kind, tuple(w.shape))
        # Exact up to float16 rounding of the block minimum m = -scale * zero (d is a float16 scale already).
        m_rounding = np.abs(qt.scale * qt.zero).max().item() * 2.0**-11
        assert np.abs(theirs - ours).max() <= m_rounding + 1e-7, kind.name


def test_ggml_round_to_nearest_is_its_own_and_coarser_than_f16():
    w = torch.randn(8, 64).numpy()
    blocks = ggml_lib.quantize(w, Q4_1)
    assert blocks.nbytes == 8 * 2 * Q4_1.block_bytes
    err = np.abs(ggml_lib.dequantize(blocks, Q4_1, w.shape) - w).max()
    assert 0 < err < 0.5 * np.abs(w).max()


def test_our_symmetric_4bit_grid_is_ggml_q4_0s():
    # Our symmetric grid follows q4_0's rule (the group's largest weight on code 0, the scale taking its sign), so
    # round-to-nearest on it is whisper.cpp's own q4_0 but for ties and the float16 rounding of the scale, which
    # ggml applies only after rounding; GPTQ and FADE improve on the very grid the baseline uses.
    torch.manual_seed(0)
    w = (torch.distributions.StudentT(3.0).sample((256, 512)) * 0.02).half().float()
    ours = rtn_quantize(w, IntFormat(4, 32, symmetric=True)).dequantize().numpy()
    theirs = ggml_lib.dequantize(ggml_lib.quantize(w.numpy(), Q4_0), Q4_0, w.shape)
    assert (ours == theirs).mean() > 0.999
    assert np.isclose(((ours - w.numpy()) ** 2).sum(), ((theirs - w.numpy()) ** 2).sum(), rtol=1e-3)


def test_formats_with_no_ggml_block_get_a_sentence():
    w = torch.randn(16, 64)
    with pytest.raises(GgmlExportError, match="no ggml block"):
        check_exportable("model.encoder.layers.0.fc1", nf4_quantize(w, 64))
    with pytest.raises(GgmlExportError, match="q8_0\\) is symmetric"):
        check_exportable("layer", rtn_quantize(w, IntFormat(8, 64, False)))
    with pytest.raises(GgmlExportError, match="float minimum"):
        check_exportable("layer", rtn_quantize(w, IntFormat(6, 64)))
    with pytest.raises(GgmlExportError, match="multiple of 32"):
        check_exportable("layer", rtn_quantize(w, IntFormat(4, 16, False)))
    assert container_for({"a": rtn_quantize(w, IntFormat(4, 32, True))}, has_full_precision=True) is F16


@pytest.mark.slow
def test_exported_fade_4bit_transcribes_with_whisper_cpp(tiny, test_other, tmp_path):
    from engine.workflows.experiment import build_calibration, calibration_clips
    from engine.quant.quantize import quantize
    from engine.deploy.runtimes import ModelToRun, open_runtime
    from engine.speech.samples import SAMPLE_DIR
    from engine.speech.transcribe import transcribe
    from engine.deploy.whisper_cpp_export import export_whisper_cpp

    calibration = build_calibration(tiny, calibration_clips(SAMPLE_DIR, 16, 0))  # as the page calibrates
    result = quantize(tiny, FADEConfig(bits=4, group_size=64), calibration)
    report = export_whisper_cpp(result.loaded, result.tensors, tmp_path / "fade4.bin")
    assert report.container == "q4_1" and report.exact_layers == 64
    assert report.ggml_rounded == ["model.decoder.embed_tokens.weight"]  # as whisper.cpp's quantize tool would
    with (tmp_path / "fade4.bin").open("rb") as f:
        magic, n_vocab, *_rest, ftype = struct.unpack("<I11i", f.read(48))
    assert magic == 0x67676D6C and n_vocab == 51864 and ftype == 2003  # q4_1 with ggml's quantization version 2

    runtime = open_runtime("whisper.cpp", ModelToRun(result.loaded, result.tensors), threads=2, workdir=tmp_path)
    jfk = load_dataset(speech_dir("jfk"))[:1]
    clips = jfk + load_dataset(test_other)[:8]
    from engine.speech.audio import load_audio

    audios = [load_audio(u.path) for u in clips]
    theirs = runtime.transcribe(audios)
    ours = transcribe(result.loaded, audios)
    scorer = TextScorer()
    assert scorer.score([jfk[0].reference], theirs[:1])[0] <= 0.1
    assert scorer.score([u.reference for u in clips[1:]], theirs[1:])[0] < 0.35
    # The same codes in both runtimes: most clips come out the same up to a word or two (float16 activations
    # and a different summation order may tip a clip into a repetition loop in either runtime).
    close = [scorer.score([a], [b])[0] <= 0.15 for a, b in zip(ours, theirs)]
    assert sum(close) >= 0.7 * len(close)


@pytest.mark.slow
def test_ctranslate2_export_transcribes_with_faster_whisper_like_our_model(tiny, test_other, tmp_path):
    from engine.speech.audio import load_audio
    from engine.quant.config import RTNConfig
    from engine.deploy.ct2_export import CT2ExportError, export_ctranslate2
    from engine.quant.quantize import quantize
    from engine.deploy.runtimes import CTranslate2Runtime
    from engine.speech.transcribe import transcribe

    result = quantize(tiny, RTNConfig(bits=8, group_size=-1, symmetric=True))
    folder = export_ctranslate2("tiny.en", result.tensors, tmp_path / "ct2")
    clips = load_dataset(test_other)[:6]
    audios = [load_audio(u.path) for u in clips]
    ours = transcribe(result.loaded, audios)
    scorer = TextScorer()
    # Loaded as float32, CTranslate2 dequantizes our int8 codes: its encoder output is our quantized model's (to
    # float32 rounding), 2% away from full precision's on this clip.
    import ctranslate2
    from engine.speech.audio import SAMPLE_RATE

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    features = result.loaded.feature_extractor([audios[0]], sampling_rate=SAMPLE_RATE,
                                               return_tensors="pt").input_features
    with torch.no_grad():
        ours_encoded = result.loaded.model.model.encoder(features).last_hidden_state.numpy()
        full_encoded = tiny.model.model.encoder(features).last_hidden_state.numpy()
    runtime = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    theirs_encoded = np.array(runtime.encode(ctranslate2.StorageView.from_array(features.numpy())))
    assert distance(theirs_encoded, ours_encoded) < 1e-4
    assert distance(ours_encoded, full_encoded) > 0.005
    # The same words but for clips at the edge, where a different summation order flips a word or a name
    # (measured: 2 of these 6 clips, a few words, with either symmetric grid).
    as_float = CTranslate2Runtime(folder, threads=2, compute_type="float32").transcribe(audios)
    assert scorer.score(ours, as_float)[0] < 0.1
    # As int8 it also rounds activations to int8 (what faster-whisper users run): a WER ceiling.
    as_int8 = CTranslate2Runtime(folder, threads=2, compute_type="int8").transcribe(audios)
    assert scorer.score([u.reference for u in clips], as_int8)[0] < 0.3
    with pytest.raises(CT2ExportError, match="8-bit symmetric"):
        export_ctranslate2("tiny.en", quantize(tiny, RTNConfig(bits=4)).tensors, tmp_path / "bad")


def test_fitted_encoder_window_covers_the_clip_and_never_exceeds_whisper_s():
    from engine.deploy.runtimes import AUDIO_CTX_MARGIN, FULL_AUDIO_CTX, fitted_audio_ctx

    assert fitted_audio_ctx(5 * 16000) == 250 + AUDIO_CTX_MARGIN  # 50 encoder frames per second
    assert fitted_audio_ctx(5 * 16000 + 1) == 251 + AUDIO_CTX_MARGIN
    assert fitted_audio_ctx(40 * 16000) == FULL_AUDIO_CTX


@pytest.mark.slow
def test_real_latency_times_each_format_once_and_names_it(tiny, tmp_path):
    from engine.speech.audio import load_audio
    from engine.quant.config import NF4Config, RTNConfig
    from engine.deploy.latency import fastest_real_runtime
    from engine.quant.quantize import quantize
    from engine.deploy.runtimes import ModelToRun

    audios = [load_audio(u.path) for u in load_dataset(speech_dir("jfk"))[:1]]
    timed = {}
    rtn4, rtn3 = (ModelToRun.from_result(quantize(tiny, RTNConfig(bits=b, group_size=g)), "tiny.en")
                  for b, g in ((4, 32), (3, 64)))
    first = fastest_real_runtime(rtn4, audios, 2, tmp_path / "rtn4", timed)
    assert first.runtime == "whisper.cpp q4_1, 2 threads" and 0 < first.rtf < 5 and first.clips == 1
    # 3-bit codes ride in the same q4_1 container: not timed again, and nothing opened or written for it.
    assert fastest_real_runtime(rtn3, audios, 2, tmp_path / "rtn3", timed) is first and len(timed) == 1
    assert not (tmp_path / "rtn3").exists()
    # A file the caller already wrote is timed as it is, not written again.
    written = rtn4.write_whisper_cpp(tmp_path / "mine.bin").path
    again = fastest_real_runtime(rtn4, audios, 2, tmp_path / "again", {}, whisper_cpp_file=written)
    assert again.runtime == first.runtime and not (tmp_path / "again").exists()
    nf4 = ModelToRun.from_result(quantize(tiny, NF4Config()), "tiny.en")
    assert fastest_real_runtime(nf4, audios, 2, tmp_path / "nf4", timed) is None  # fake quant only


def test_quantized_output_layer_is_the_token_embedding_everywhere(tiny, tmp_path):
    from engine.quant.artifacts import load_quantized, save_quantized
    from engine.quant.config import RTNConfig
    from engine.deploy.ct2_export import CT2ExportError, export_ctranslate2
    from engine.quant.layer_table import LayerTableError, apply_overrides, build_table
    from engine.quant.quantize import quantize
    from engine.deploy.runtimes import ModelToRun

    plain = quantize(tiny, RTNConfig(bits=4, group_size=32))
    result = quantize(tiny, RTNConfig(bits=4, group_size=32, quantize_output=True))
    model = result.loaded.model
    assert result.table[-1].name == "proj_out" and result.table[-1].kind == "output" and len(result.tensors) == 65
    # Tied: the codes are the token embedding's as well, and the embedding is no longer counted in float16.
    assert model.model.decoder.embed_tokens.weight.data_ptr() == model.proj_out.weight.data_ptr()
    assert torch.equal(model.model.decoder.embed_tokens.weight, result.tensors["proj_out"].dequantize())
    embedding_fp16 = 51864 * 384 * 2
    saved = embedding_fp16 - result.tensors["proj_out"].nbytes()
    assert plain.size.size_bytes - result.size.size_bytes == saved
    again, _ = load_quantized(save_quantized(result, tmp_path / "art"))
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), model.state_dict().values()))
    assert sum(f.stat().st_size for f in (tmp_path / "art").iterdir()) < 0.6 * plain.size.size_bytes
    # whisper.cpp carries our codes in the token embedding instead of rounding it itself.
    run = ModelToRun.from_artifact(tmp_path / "art")
    report = run.write_whisper_cpp(tmp_path / "out.bin")
    assert report.container == "q4_1" and report.exact_layers == 65 and report.ggml_rounded == []
    with pytest.raises(CT2ExportError, match="output layer"):
        export_ctranslate2("tiny.en", result.tensors, tmp_path / "ct2")
    with pytest.raises(LayerTableError, match="not dropped"):
        apply_overrides(build_table(tiny.model, with_output=True), [{"name": "proj_out", "action": "drop"}])


@pytest.mark.slow
def test_calibrated_methods_quantize_the_output_layer_from_the_final_norm(tiny):
    from engine.quant.config import GPTQConfig
    from engine.workflows.experiment import build_calibration, calibration_clips
    from engine.quant.layer_table import apply_overrides, build_table
    from engine.quant.quantize import quantize
    from engine.speech.samples import SAMPLE_DIR

    calibration = build_calibration(tiny, calibration_clips(SAMPLE_DIR, 4, 0))
    config = GPTQConfig(bits=4, group_size=32, quantize_output=True)
    # Only the last decoder block's fc2 and the output layer quantized: the pass still runs every block.
    table = apply_overrides(build_table(tiny.model, 4, 32, with_output=True),
                            [{"name": r.name, "bits": 16} for r in build_table(tiny.model)
                             if r.name != "model.decoder.layers.3.fc2"])
    result = quantize(tiny, config, calibration, layers=table)
    assert sorted(result.tensors) == ["model.decoder.layers.3.fc2", "proj_out"]
    output = result.layer_records[-1]
    assert output.name == "proj_out" and output.block == 4
    # Its input is the decoder's final layer norm in both streams: the quantized fc2 before it made it drift,
    # and GPTQ keeps the logits' error small.
    assert output.input_drift > 0 and output.output_error < 0.1
