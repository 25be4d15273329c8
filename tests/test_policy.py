"""Serving policy (public/private mode, model allow-list, safe loading), the bounded waiting room, artifact pruning."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from engine.errors import ModelUnavailableError
from engine.quant.artifacts import prune_artifacts
from engine.whisper import models
from serving.admission import Admission
from serving.policy import BusyError, PolicyError, ServingPolicy


@pytest.mark.parametrize("env,public", [
    ({}, False),
    ({"SPACE_ID": "someone/asrq"}, True),  # Hugging Face Spaces set SPACE_ID
    ({"SPACE_ID": "someone/asrq", "ASRQ_PUBLIC": "0"}, False),
    ({"ASRQ_PUBLIC": "1"}, True),
])
def test_public_mode_follows_the_space_and_the_switch(env, public):
    policy = ServingPolicy.from_env(env)
    assert policy.public is public
    if public:  # tighter caps than on your own machine
        assert policy.max_audio_seconds < ServingPolicy().max_audio_seconds
        assert policy.max_upload_bytes < ServingPolicy().max_upload_bytes


def test_warm_up_is_public_by_default_and_configurable():
    assert ServingPolicy.from_env({}).warm_up == ()
    assert ServingPolicy.from_env({"ASRQ_PUBLIC": "1"}).warm_up[0] == "fade:4"  # the page's default first
    assert ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_WARM_UP": "none"}).warm_up == ()
    assert ServingPolicy.from_env({"ASRQ_WARM_UP": "gptq:3, rtn:4"}).warm_up == ("gptq:3", "rtn:4")


def test_public_mode_gives_transcriptions_priority_and_threads_are_configurable(monkeypatch):
    from serving.policy import split_threads

    assert split_threads(1) == (1, 1) and split_threads(2) == (1, 1) and split_threads(5) == (2, 3)
    monkeypatch.setattr("serving.policy.available_cores", lambda: 4)
    public = ServingPolicy.from_env({"ASRQ_PUBLIC": "1"})  # uploads 12 s at p95 against 29 s split (load*.md)
    # two model calls at once, each on half the cores (an upload's two transcripts side by side)
    assert (public.worker_threads, public.transcribe_threads, public.worker_nice) == (None, 2, 19)
    assert public.transcription_lanes == 2 and "2 calls at once, 2 threads each" in public.thread_split
    one_lane = ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_TRANSCRIPTION_LANES": "1"})
    assert (one_lane.transcription_lanes, one_lane.transcribe_threads) == (1, 4)  # one call on every core
    four = ServingPolicy.from_env({"ASRQ_THREADS": "1:3", "ASRQ_TRANSCRIPTION_LANES": "3"})
    assert (four.transcription_lanes, four.transcribe_threads) == (3, 1)
    # one by one unless asked: a batch bought no time with the output layer laid out (batching.md)
    assert public.transcription_batch == 1
    assert ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_TRANSCRIPTION_BATCH": "4"}).transcription_batch == 4
    split = ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_THREADS": "split"})
    assert (split.worker_threads, split.transcribe_threads) == (2, 2)
    private = ServingPolicy.from_env({})  # one person: a job may use every core
    assert (private.worker_threads, private.transcribe_threads) == (None, None)
    assert "shared" in private.thread_split
    shared = ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_THREADS": "shared"})
    assert (shared.worker_threads, shared.transcribe_threads) == (None, None)
    assert ServingPolicy.from_env({"ASRQ_THREADS": "1:3"}).thread_split == "worker 1 : transcription 3 threads"
    priority = ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_THREADS": "priority"})
    assert (priority.worker_threads, priority.transcribe_threads, priority.worker_nice) == (None, 2, 19)
    monkeypatch.setattr("serving.policy.available_cores", lambda: 1)
    assert ServingPolicy.from_env({"ASRQ_PUBLIC": "1"}).transcription_lanes == 1  # one core: one call at a time
    assert "niceness 19" in priority.thread_split


@pytest.mark.parametrize("env,message", [
    ({"ASRQ_THREADS": "half"}, "ASRQ_THREADS must be"),
    ({"ASRQ_THREADS": "0:2"}, "worker_threads must be 1 or more"),
    ({"ASRQ_PUBLIC": "maybe"}, "must be 1 or 0"),
    ({"ASRQ_ALLOWED_MODELS": "../weights"}, "not a hub id"),
    ({"ASRQ_ALLOWED_MODELS": "/abs/path"}, "not a hub id"),
    ({"ASRQ_WARM_UP": "fade"}, "not of the form method:bits"),
    ({"ASRQ_TRANSCRIPTION_LANES": "0"}, "ASRQ_TRANSCRIPTION_LANES must be"),
    ({"ASRQ_TRANSCRIPTION_LANES": "two"}, "ASRQ_TRANSCRIPTION_LANES must be"),
    ({"ASRQ_TRANSCRIPTION_BATCH": "0"}, "ASRQ_TRANSCRIPTION_BATCH must be"),
])
def test_bad_settings_are_refused_in_one_sentence(env, message):
    with pytest.raises(PolicyError, match=message):
        ServingPolicy.from_env(env)
    with pytest.raises(PolicyError, match="must be positive"):
        ServingPolicy(max_waiting_jobs=0)


def test_public_mode_loads_only_listed_models(tmp_path):
    policy = ServingPolicy.from_env({"ASRQ_PUBLIC": "1", "ASRQ_ALLOWED_MODELS": "openai/whisper-tiny"})
    assert policy.allowed_hub_ids == ("openai/whisper-tiny",)
    for name in ("tiny.en", "base", "openai/whisper-tiny"):
        assert policy.check_model(name) == name
    for name in (str(tmp_path), "/etc/passwd", "~/models/x", "someone/else", "../../x"):
        with pytest.raises(ModelUnavailableError, match="only loads its listed models") as info:
            policy.load_model(name)  # refused before anything is read
        assert "\n" not in str(info.value)
    private = ServingPolicy()
    assert private.check_model(str(tmp_path)) == str(tmp_path)  # your own machine: any folder


def pickle_only_checkpoint(folder):
    """A small random Whisper saved the old way (pytorch_model.bin: pickle, which can run code on load)."""
    config = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=51864,
                           max_source_positions=1500, max_target_positions=448)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    torch.save(WhisperForConditionalGeneration(config).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()


def test_public_mode_never_unpickles_an_allowed_hub_checkpoint(tmp_path, monkeypatch):
    # transformers resolves "owner/name" to a local folder first: stand one in for the hub, pickle only.
    pickle_only_checkpoint(tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    loaded = []
    monkeypatch.setattr("torch.load", lambda *a, **k: loaded.append(a) or pytest.fail("pickle was loaded"))
    policy = ServingPolicy.public_defaults(allowed_hub_ids=("owner/name",))
    with pytest.raises(ModelUnavailableError, match="could not be loaded"):
        policy.load_model("owner/name")
    assert not loaded


def test_waiting_room_is_bounded_one_place_per_session_and_always_freed():
    room = Admission(capacity=2, what="job")
    release = threading.Event()
    entered = threading.Barrier(3)

    def hold(session):
        with room.enter(session):
            entered.wait()
            release.wait()

    holders = [threading.Thread(target=hold, args=(s,)) for s in ("alice", "bob")]
    for t in holders:
        t.start()
    entered.wait()
    with pytest.raises(BusyError, match="already have a job"):
        with room.enter("alice"):
            pass
    with pytest.raises(BusyError, match="busy .* try again"):
        with room.enter("carol"):
            pass
    release.set()
    for t in holders:
        t.join()
    assert room.occupied == 0 and room.refused == 2
    with pytest.raises(RuntimeError):  # a failing job still gives its place back
        with room.enter("carol"):
            raise RuntimeError("job failed")
    with room.enter("carol"):
        assert room.occupied == 1


def test_pruning_keeps_the_newest_and_the_protected(tmp_path):
    for i, name in enumerate(["old", "mid", "new", "newest"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (time.time() - 100 + i, time.time() - 100 + i))
    (tmp_path / ".saving.partial").mkdir()  # a save in progress is never touched
    removed = prune_artifacts(tmp_path, keep=3, protect=frozenset({"old"}))
    assert sorted(removed) == ["mid"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saving.partial", "new", "newest", "old"]
    assert prune_artifacts(tmp_path / "missing", keep=1) == []


def test_the_owner_points_the_page_scoring_at_real_clips(tmp_path):
    assert ServingPolicy.from_env({}).eval_dir is None
    assert ServingPolicy.from_env({"ASRQ_EVAL_DIR": str(tmp_path)}).eval_dir == str(tmp_path)
    public = ServingPolicy.from_env({"ASRQ_EVAL_DIR": str(tmp_path), "SPACE_ID": "me/app"})
    assert public.public and public.eval_dir == str(tmp_path)
    with pytest.raises(PolicyError, match="is not a folder"):
        ServingPolicy.from_env({"ASRQ_EVAL_DIR": str(tmp_path / "missing")})
