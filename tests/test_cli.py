"""The asrq command: exit codes and one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True)


def test_models_lists_the_registry():
    out = run("models", "--json")
    assert out.returncode == 0
    assert {"tiny.en", "base", "small"} <= {row["name"] for row in json.loads(out.stdout)}


@pytest.mark.parametrize(
    "args,expected",
    [
        (["transcribe", "no-such-file.wav"], "does not exist"),
        (["transcribe", "--model", "no-such-model", "sample_audio/demo-01.flac"], "not available"),
        (["eval", "--data", "no-such-folder"], "does not exist"),
        (["transcribe", "--method", "gptq", "--bits", "4", "--n-calib", "4", "--per-window", "0",
          "sample_audio/demo-01.flac"], "per window must be 1 or more"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(args, expected):
    out = run(*args)
    assert out.returncode == 2
    assert expected in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_record_without_sounddevice_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    assert main(["record", "--seconds", "1", str(tmp_path / "x.wav")]) == 2
    assert "sounddevice" in capsys.readouterr().err


def test_record_without_portaudio_says_what_to_install(monkeypatch, capsys, tmp_path):
    class MissingPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [MissingPortAudio(), *sys.meta_path])
    assert main(["record", "--seconds", "1", str(tmp_path / "x.wav")]) == 2
    assert "PortAudio" in capsys.readouterr().err


@pytest.mark.slow
def test_transcribe_prints_the_text():
    out = run("transcribe", "sample_audio/demo-05.flac")
    assert out.returncode == 0, out.stderr
    assert "quick brown fox" in out.stdout.lower()
    guarded = run("transcribe", "--loop-guard", "--json", "sample_audio/demo-05.flac")
    assert guarded.returncode == 0, guarded.stderr
    (answer,) = json.loads(guarded.stdout)
    assert answer["text"].strip() == out.stdout.strip() and answer["cut_by_loop_guard"] is False
    refused = run("transcribe", "--loop-guard", "--fallback", "sample_audio/demo-05.flac")
    assert refused.returncode == 2 and "--loop-guard is for" in refused.stderr


@pytest.mark.slow
def test_quantize_save_then_transcribe_and_eval_the_artifact(tmp_path):
    out = tmp_path / "rtn4"
    done = run("quantize", "--method", "rtn", "--bits", "4", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["size_bytes"] < info["fp32_size_bytes"] / 2.5 and len(info["per_layer"]) == 64
    direct = run("transcribe", "--method", "rtn", "--bits", "4", "sample_audio/demo-03.flac")
    reloaded = run("transcribe", "--quantized", str(out), "sample_audio/demo-03.flac")
    assert direct.returncode == reloaded.returncode == 0
    assert direct.stdout == reloaded.stdout and direct.stdout.strip()
    evaluated = run("eval", "--quantized", str(out), "--data", "sample_audio", "--limit", "5", "--json")
    result = json.loads(evaluated.stdout)
    for key in ("model", "method", "bits", "n_utterances", "wer", "cer", "wer_std", "size_bytes", "fp32_size_bytes",
                "rtf", "per_layer", "wer_ci95", "wer_fp32", "delta_wer", "delta_ci95"):
        assert key in result, key
    assert result["method"] == "rtn" and result["n_utterances"] == 5
    low, high = result["delta_ci95"]
    assert low <= result["delta_wer"] <= high
    assert result["delta_wer"] == pytest.approx(result["wer"] - result["wer_fp32"])


def test_bad_layer_table_names_the_layer(tmp_path):
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps([{"name": "model.encoder.layers.0.fc1", "bits": 9}]))
    out = run("quantize", "--method", "rtn", "--layers", str(layers), "--out", str(tmp_path / "x"))
    assert out.returncode == 2
    assert "model.encoder.layers.0.fc1" in out.stderr and "bits" in out.stderr
    assert not (tmp_path / "x").exists()


def test_preset_fills_the_table_and_layers_edit_it(tmp_path):
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps([{"name": "model.decoder.layers.0.fc1", "bits": 8}]))
    done = run("quantize", "--method", "rtn", "--bits", "4", "--preset", "encoder FFN 2-bit", "--layers", str(layers),
               "--out", str(tmp_path / "mixed"), "--json")
    assert done.returncode == 0, done.stderr
    bits = {row["name"]: row["bits"] for row in json.loads(done.stdout)["per_layer"]}
    assert bits["model.encoder.layers.2.fc2"] == 2 and bits["model.encoder.layers.2.fc1"] == 2
    assert bits["model.decoder.layers.0.fc1"] == 8 and bits["model.encoder.layers.2.self_attn.q_proj"] == 4
    unknown = run("quantize", "--method", "rtn", "--preset", "everything at 1 bit", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "Unknown preset" in unknown.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_export_for_whisper_cpp_then_eval_on_that_runtime(tmp_path):
    art = tmp_path / "rtn4g32"
    assert run("quantize", "--method", "rtn", "--bits", "4", "--group-size", "32", "--out", str(art)).returncode == 0
    exported = run("export", "--quantized", str(art), "--format", "whisper.cpp", "--out", str(tmp_path / "m.bin"),
                   "--json")
    assert exported.returncode == 0, exported.stderr
    info = json.loads(exported.stdout)
    assert info["container"] == "q4_1" and info["exact_layers"] == 64
    assert info["ggml_rounded"] == ["model.decoder.embed_tokens.weight"]
    assert (tmp_path / "m.bin").stat().st_size == info["file_bytes"]
    evaluated = run("eval", "--quantized", str(art), "--data", "../shared/speech/jfk", "--runtime", "whisper.cpp",
                    "--threads", "2", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["runtime"] == "whisper.cpp q4_1, 2 threads" and result["fake_quant"] is False
    assert result["wer"] <= 0.1 and result["rtf"] > 0 and "delta_ci95" in result
    nf4 = tmp_path / "nf4"
    assert run("quantize", "--method", "nf4", "--out", str(nf4)).returncode == 0
    refused = run("export", "--quantized", str(nf4), "--format", "whisper.cpp", "--out", str(tmp_path / "n.bin"))
    assert refused.returncode == 2 and "no ggml block" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / "n.bin").exists()
