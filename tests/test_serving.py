"""The serving package's shared state without a model: the model cache's loads, the shared transcripts."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from serving.model_cache import ModelCache
from serving.transcription import TranscriptionDesk, audio_key


class SlowLoader:
    """Stands in for load_model's time (the cache's behaviour is what is tested, not the loading)."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def __call__(self, name: str):
        self.calls.append(name)
        time.sleep(self.seconds)
        if name == "broken":
            raise OSError("disk gone")
        return f"model {name}"


@contextmanager
def lanes_taken(desk: TranscriptionDesk):
    """Every lane of the desk busy (as if transcriptions were running): requests queue in its line."""
    for _ in range(desk.lanes):
        desk._lanes.acquire()
    try:
        yield
    finally:
        for _ in range(desk.lanes):
            desk._lanes.release()


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_one_load_in_flight_per_model_and_none_holds_up_a_cached_model():
    loader = SlowLoader(1.0)
    cache = ModelCache(capacity=2, loader=loader)
    cache.get("small")
    results = {}

    def get(key, name):
        results[key] = cache.get(name)

    threads = [threading.Thread(target=get, args=(i, "big")) for i in range(3)]
    for t in threads:
        t.start()
    start = time.monotonic()
    assert cache.get("small") == "model small"  # while "big" loads
    assert time.monotonic() - start < 0.3
    for t in threads:
        t.join()
    assert results == {0: "model big", 1: "model big", 2: "model big"} and loader.calls == ["small", "big"]


def test_a_failed_load_reaches_every_waiter_and_is_tried_again_later():
    loader = SlowLoader(0.3)
    cache = ModelCache(loader=loader)
    errors = []

    def get():
        try:
            cache.get("broken")
        except OSError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=get) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["disk gone", "disk gone"] and loader.calls == ["broken"]
    with pytest.raises(OSError):
        cache.get("broken")
    assert loader.calls == ["broken", "broken"]


def test_audio_key_is_the_samples_not_the_file():
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    assert audio_key(audio) == audio_key(audio.astype(np.float64))
    assert audio_key(audio) != audio_key(audio[:-1])


@pytest.mark.slow
def test_a_shared_transcript_is_answered_without_the_model(tiny):
    from engine.speech.samples import sample_clips
    from engine.speech.audio import load_audio

    desk = TranscriptionDesk()
    clip = next(c for c in sample_clips() if c.group == "demo")
    audio = load_audio(clip.path)
    first = desk.transcribe(tiny, "tiny.en", audio)
    again = desk.transcribe(tiny, "tiny.en", audio.copy())
    assert desk.model_calls == 1 and again.shared and not first.shared and again.text == first.text
    other = desk.transcribe(tiny, "tiny.en/abcdef012345", audio)  # another run never shares the answer
    assert desk.model_calls == 2 and not other.shared


@pytest.mark.slow
def test_requests_waiting_for_the_cpu_are_answered_in_one_batch(tiny):
    from engine.speech.audio import load_audio
    from engine.speech.samples import sample_clips

    audios = [load_audio(c.path) for c in sample_clips() if c.group == "demo"][:3]
    alone = [TranscriptionDesk(max_batch=1).transcribe(tiny, "tiny.en", a).text for a in audios]
    desk = TranscriptionDesk(max_batch=4)
    answers: dict[int, str] = {}
    with lanes_taken(desk):  # a transcription is running: the three requests (and a repeat) queue behind it
        threads = [threading.Thread(target=lambda i=i: answers.update({i: desk.transcribe(tiny, "tiny.en",
                                                                                          audios[i % 3]).text}))
                   for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(desk._waiting) == 3 and len(answers) == 0 and all(t.is_alive() for t in threads))
    for t in threads:
        t.join(timeout=120)
    assert desk.model_calls == 1 and desk.batch_sizes == [3]  # the repeat waited for the first one's answer
    assert [answers[i] for i in range(4)] == alone + alone[:1]  # batched greedy decoding: each clip its own text


def test_a_short_line_runs_in_every_lane_and_only_a_long_one_is_batched(monkeypatch):
    import serving.transcription as desk_module
    from engine.speech.transcribe import Decoded

    sizes: list[int] = []
    both = threading.Barrier(2)  # each call lasts until another runs beside it, as a second lane's real one would

    def call(loaded, batch, **options):
        sizes.append(len(batch))
        try:
            both.wait(timeout=5)
        except threading.BrokenBarrierError:  # a third call: nothing runs beside it any more
            both.reset()
        return [Decoded(f"heard {len(a)}") for a in batch]

    monkeypatch.setattr(desk_module, "transcribe_detailed", call)
    for waiting, calls in ((2, [1, 1]), (4, [2, 2]), (7, [4, 3])):  # a line of 2 in 2 lanes: no batch
        sizes.clear()
        desk = TranscriptionDesk(max_batch=4, lanes=2)
        with lanes_taken(desk):
            threads = [threading.Thread(target=desk.transcribe,
                                        args=("full", "tiny.en", np.full(1000 + i, 0.1, dtype=np.float32)))
                       for i in range(waiting)]
            for t in threads:
                t.start()
            wait_until(lambda: len(desk._waiting) == waiting)
        for t in threads:
            t.join(timeout=30)
        assert sorted(sizes, reverse=True) == calls, (waiting, sizes)


def test_waiting_requests_for_different_models_are_answered_in_arrival_order(tiny, monkeypatch):
    import serving.transcription as desk_module
    from engine.speech.audio import load_audio
    from engine.speech.samples import sample_clips

    audios = [load_audio(c.path) for c in sample_clips() if c.group == "demo"][:4]
    order: list[int] = []
    real = desk_module.transcribe_detailed

    def observed(loaded, batch, **options):  # the real model call, its order noted by each clip's length
        order.extend(len(a) for a in batch)
        return real(loaded, batch, **options)

    monkeypatch.setattr(desk_module, "transcribe_detailed", observed)
    desk = TranscriptionDesk(max_batch=4)
    threads = []
    with lanes_taken(desk):  # a transcription is running; four requests for four runs queue one after another
        for i, audio in enumerate(audios):
            threads.append(threading.Thread(target=desk.transcribe, args=(tiny, f"tiny.en/run{i}", audio)))
            threads[-1].start()
            wait_until(lambda: len(desk._waiting) == i + 1)
    for t in threads:
        t.join(timeout=120)
    assert order == [len(a) for a in audios] and desk.model_calls == 4


def test_two_lanes_answer_a_request_for_two_models_at_the_same_time(monkeypatch):
    import serving.transcription as desk_module
    from engine.speech.transcribe import Decoded

    both_running = threading.Barrier(2, timeout=30)  # passes only when two model calls run at once

    def call(loaded, batch, **options):
        both_running.wait()
        return [Decoded(f"{loaded} heard {len(a)} samples") for a in batch]

    monkeypatch.setattr(desk_module, "transcribe_detailed", call)
    audio = np.zeros(16000, dtype=np.float32)
    desk = TranscriptionDesk(lanes=2)
    answers = desk.transcribe_each([(lambda: "full", "tiny.en"), (lambda: "run", "tiny.en/0123456789ab")], audio)
    assert [a.text for a in answers] == ["full heard 16000 samples", "run heard 16000 samples"]
    assert desk.model_calls == 2 and not both_running.broken
    wait_until(lambda: desk._runners == 0)
    assert desk._runners == 0  # the runners left with the line empty

    full_running = threading.Event()

    def heard(loaded, batch, **options):
        full_running.set()
        return [Decoded(f"{loaded} heard") for _ in batch]

    def load_run():  # a run loading from disk: only returns once full precision's call is running
        assert full_running.wait(timeout=30)
        return "run"

    monkeypatch.setattr(desk_module, "transcribe_detailed", heard)
    desk = TranscriptionDesk(lanes=1)
    answers = desk.transcribe_each([(lambda: "full", "tiny.en"), (load_run, "tiny.en/0123456789ab")], audio)
    assert [a.text for a in answers] == ["full heard", "run heard"]

    def pruned():
        raise OSError("the run's save is gone")

    other = np.ones(8000, dtype=np.float32)
    with pytest.raises(OSError, match="gone"):  # the load's failure reaches the visitor ...
        desk.transcribe_each([(lambda: "full", "tiny.en"), (pruned, "tiny.en/0123456789ab")], other)
    wait_until(lambda: desk.shared("tiny.en", audio_key(other)) is not None)
    assert desk.shared("tiny.en", audio_key(other)).text == "full heard"  # ... full precision's answer is kept

    def broken(loaded, batch, **options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(desk_module, "transcribe_detailed", broken)
    with pytest.raises(RuntimeError, match="out of memory"):  # the failure reaches the visitor, nobody hangs
        desk.transcribe(("full"), "tiny.en", np.ones(16000, dtype=np.float32))
    with pytest.raises(ValueError, match="lanes"):
        TranscriptionDesk(lanes=0)


@pytest.mark.slow
def test_a_request_for_two_models_waits_in_line_once(tiny):
    from engine.speech.audio import load_audio
    from engine.speech.samples import sample_clips

    audio = load_audio(next(c.path for c in sample_clips() if c.group == "demo"))
    models = [(lambda: tiny, "tiny.en"), (lambda: tiny, "tiny.en/0123456789ab")]
    desk = TranscriptionDesk()
    answers: list = []
    with lanes_taken(desk):  # a transcription is running: the request queues both its models behind it at once
        thread = threading.Thread(target=lambda: answers.extend(desk.transcribe_each(models, audio)))
        thread.start()
        wait_until(lambda: len(desk._waiting) == 2)
        assert len(desk._waiting) == 2
    thread.join(timeout=120)
    assert desk.model_calls == 2 and [a.text for a in answers] == [answers[0].text] * 2  # same weights here
    again = desk.transcribe_each(models, audio)
    assert all(a.shared for a in again) and desk.model_calls == 2


@pytest.mark.slow
def test_answers_made_ahead_are_kept_for_whoever_asks(tiny):
    from engine.errors import UserError
    from engine.speech.audio import load_audio
    from engine.speech.samples import sample_clips

    audios = [load_audio(c.path) for c in sample_clips() if c.group == "demo"][:2]
    desk = TranscriptionDesk()
    desk.answer_ahead(lambda: tiny, "tiny.en/0123456789ab", lambda: audios).join(timeout=120)
    calls = desk.model_calls
    assert calls >= 1 and all(desk.shared("tiny.en/0123456789ab", audio_key(a)) is not None for a in audios)
    assert desk.transcribe(tiny, "tiny.en/0123456789ab", audios[0]).shared and desk.model_calls == calls

    def pruned():
        raise UserError("That quantized model is not here (any more); press Quantize again.")

    ahead = desk.answer_ahead(pruned, "tiny.en/ffffffffffff", lambda: audios)  # nobody waits on it: logged, not raised
    ahead.join(timeout=30)
    assert not ahead.is_alive() and desk.shared("tiny.en/ffffffffffff", audio_key(audios[0])) is None


def test_answers_kept_from_the_worker_are_shared_without_loading_the_model():
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(3)]
    desk = TranscriptionDesk()
    made = {audio_key(a): {"text": f"clip {i}", "seconds": 0.25} for i, a in enumerate(audios[:2])}
    assert desk.keep("tiny.en/0123456789ab", made) == 2 and desk.keep("tiny.en/0123456789ab", made) == 0
    found = desk.shared("tiny.en/0123456789ab", audio_key(audios[1]))
    assert found.text == "clip 1" and found.shared and found.seconds == 0.25
    assert desk.shared("tiny.en", audio_key(audios[1])) is None  # another model never shares it
    loads = []

    def load():
        loads.append(1)
        raise RuntimeError("a model that cannot load")

    desk.answer_ahead(load, "tiny.en/0123456789ab", lambda: audios[:2]).join(timeout=30)
    assert loads == [] and desk.model_calls == 0  # every answer kept: nothing loaded, nothing run
    desk.answer_ahead(load, "tiny.en/0123456789ab", lambda: audios).join(timeout=30)
    assert loads == [1]  # a clip without an answer: the model is needed (here it fails: logged, not raised)


@pytest.mark.slow
def test_a_shared_answer_needs_no_place_in_a_full_transcription_room(tiny, tmp_path, monkeypatch):
    import gradio as gr

    from engine.run_history import RunHistory
    from engine.speech.samples import sample_clips
    from ui.handlers import Explorer

    monkeypatch.setenv("ASRQ_DATA_DIR", str(tmp_path))
    explorer = Explorer(models=ModelCache(loader=lambda name: tiny), history=RunHistory(tmp_path / "h.sqlite"),
                        artifact_root=tmp_path / "results", transcriptions=TranscriptionDesk(capacity=1))
    try:
        first, second = [c for c in sample_clips() if c.group == "demo"][:2]
        text = explorer.transcribe_audio(str(first.path), "tiny.en", first.name)[0]
        calls = explorer.transcriptions.model_calls
        with explorer.transcriptions.entered("another visitor"):  # the one place is taken: the room is full
            assert explorer.transcribe_audio(str(first.path), "tiny.en", first.name)[0] == text
            assert explorer.transcriptions.model_calls == calls  # answered from the kept transcript
            with pytest.raises(gr.Error, match="busy"):  # a clip the model must hear waits for a place
                explorer.transcribe_audio(str(second.path), "tiny.en", second.name)
    finally:
        explorer.close()


def test_equal_parameters_of_loaded_runs_are_held_once():
    import torch
    from torch import nn

    from serving.results import TensorPool

    def run(seed: int) -> nn.Module:
        model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 50, bias=False))
        model[2].weight = model[0].weight  # tied, as Whisper's output layer and token embedding
        with torch.no_grad():
            model[0].weight.copy_(torch.arange(400.0).reshape(50, 8))  # equal in every run
            model[1].weight.copy_(torch.randn(8, 8, generator=torch.Generator().manual_seed(seed)))
        return model

    pool = TensorPool()
    first, second = run(0), run(1)
    x = torch.tensor([[1, 2, 3]])
    before = second(x)
    assert pool.share(first) == 0
    assert pool.share(second) == 50 * 8 * 4  # the embedding only: the linear weights differ
    assert second[0].weight.data_ptr() == first[0].weight.data_ptr() == second[2].weight.data_ptr()
    assert second[1].weight.data_ptr() != first[1].weight.data_ptr()
    assert torch.equal(second(x), before)
    del first
    third = run(2)
    assert pool.share(third) == 50 * 8 * 4  # the second run still holds the embedding


def test_a_loaded_run_shares_what_it_left_unquantized_with_the_full_precision_model(tiny, tmp_path):
    import torch

    from engine.quant.artifacts import save_quantized
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.whisper.decoding_layout import laid_out_for_decoding
    from serving.results import ResultStore

    run_id = "0123456789ab"
    save_quantized(quantize(tiny, make_config("rtn", bits=4, group_size=64), None), tmp_path / run_id)
    store = ResultStore(tmp_path, kept_loaded=2, base_model={"tiny.en": tiny}.get)
    loaded = store.model(run_id)
    run = loaded.model
    fp_embedding = tiny.model.model.decoder.embed_tokens.weight
    assert run.model.decoder.embed_tokens.weight.data_ptr() == fp_embedding.data_ptr()
    assert run.model.encoder.layers[0].fc1.weight.numel() == 0  # held as codes between transcriptions
    with loaded.in_use():
        fc1 = run.model.encoder.layers[0].fc1.weight
        assert fc1.shape == tiny.model.model.encoder.layers[0].fc1.weight.shape
        assert not torch.equal(fc1, tiny.model.model.encoder.layers[0].fc1.weight)
    # without a base model in memory the run's own output layer is laid out for decoding
    assert laid_out_for_decoding(ResultStore(tmp_path, kept_loaded=1).model(run_id).model)


def test_a_finished_run_is_remembered_without_loading_its_model(tmp_path):
    from engine.errors import UserError
    from engine.quant.artifacts import ArtifactError
    from serving.results import ResultStore

    store = ResultStore(tmp_path, kept_loaded=2, kept_saved=8)
    runs = [f"{i:012x}" for i in range(3)]
    for run_id in runs:  # folders without a model in them: remembering must not open them
        (tmp_path / run_id).mkdir()
        store.add_finished({"run_id": run_id, "method": "rtn", "bits": 4})
    assert [s["run_id"] for s in store.summaries()] == runs[::-1][:2]  # the latest first, as many as kept loaded
    assert [s["run_id"] for s in store.summaries(except_run=runs[2])] == [runs[1], runs[0]]
    assert store.finished_summary(runs[0])["bits"] == 4
    store.check(runs[0])  # known: no error, nothing loaded
    with pytest.raises(UserError, match="not a quantized model id"):
        store.check("../etc")
    with pytest.raises(UserError, match="not here"):
        store.check("ffffffffffff")
    with pytest.raises(ArtifactError):  # the model is opened only when asked for
        store.model(runs[0])
    (tmp_path / runs[0]).rmdir()
    assert store.finished_summary(runs[0]) is None  # its folder was pruned: asking again needs a job


def test_the_load_test_reads_the_servers_timing_line(caplog):
    import logging

    from bench.load import TIMING_LINE
    from serving.transcription import Transcript
    from ui.handlers import _log_timing

    audio = np.zeros(48000, dtype=np.float32)
    times = {"start": 0.0, "read": 0.01, "entered": 0.02, "load": 0.5}
    with caplog.at_level(logging.INFO, logger="ui.handlers"):
        _log_timing(audio_key(audio), audio, [Transcript("a", 1.25, shared=True), Transcript("b", 2.0)], times)
    found = TIMING_LINE.search(caplog.text)
    assert found is not None and found["audio"] == audio_key(audio)[:12]
    assert (found["shared"], found["asked"], found["load"], found["model"]) == ("1", "2", "0.500", "2.000")
    assert found["seconds"] == "3.0"


def test_the_page_says_when_the_loop_guard_stopped_a_transcript():
    from serving.transcription import Transcript
    from ui.handlers import _timing

    assert "repeating itself" not in _timing(Transcript("a b c", 1.0), 10.0)
    looped = _timing(Transcript(". . .", 3.0, cut=True), 10.0)
    assert "stopped after 96 tokens: the model was repeating itself" in looped


@pytest.mark.slow
def test_the_run_a_visitor_quantized_is_loaded_before_their_upload_needs_it(tiny, tmp_path, monkeypatch, caplog):
    import logging

    from engine.quant.artifacts import save_quantized
    from engine.quant.quantize import quantize
    from engine.quant.registry import make_config
    from engine.run_history import RunHistory
    from ui.handlers import Explorer

    monkeypatch.setenv("ASRQ_DATA_DIR", str(tmp_path))
    run_id = "0123456789ab"
    save_quantized(quantize(tiny, make_config("rtn", bits=4, group_size=64), None), tmp_path / "results" / run_id)
    explorer = Explorer(models=ModelCache(loader=lambda name: tiny), history=RunHistory(tmp_path / "h.sqlite"),
                        artifact_root=tmp_path / "results")
    try:
        assert explorer.results._loaded.peek(run_id) is None
        explorer._load_for_uploads(run_id)  # what the quantize answer does before it returns
        assert explorer.results._loaded.peek(run_id) is not None
        with caplog.at_level(logging.WARNING, logger="ui.handlers"):
            explorer._load_for_uploads("ffffffffffff")  # a save pruned meanwhile: logged, the answer still comes
        assert "not loaded ahead of uploads" in caplog.text
    finally:
        explorer.close()
