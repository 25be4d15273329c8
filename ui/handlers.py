"""Plain functions behind the page's events: UI values in, display values out.

The only place where gradio meets the engine: engine errors become gr.Error with the engine's sentence,
and gradio's progress bar is handed to the engine as a plain callback.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.paths import data_dir
from engine.quant.artifacts import prune_artifacts
from engine.quant.diagnostics import LayerRecord
from engine.quant.layer_table import apply_overrides, build_table, parse_overrides, preset_table
from engine.quant.registry import get_method, make_config
from engine.quant.size import SizeReport
from engine.run_history import RunHistory
from engine.speech.audio import SAMPLE_RATE, load_audio
from engine.speech.evaluate import TextScorer
from engine.speech.samples import SampleClip, sample_clips
from engine.speech.textdiff import word_diff
from engine.speech.transcribe import token_budget
from engine.whisper.models import DEFAULT_MODEL, available_models
from serving.job_queue import JobQueue
from serving.model_cache import ModelCache
from serving.policy import ServingPolicy
from serving.results import ResultStore
from serving.tasks import run_id_of
from serving.transcription import TranscriptionDesk, audio_key
from serving.worker import JobCancelled, Worker
from ui import plots

log = logging.getLogger(__name__)
PROMPTS = 6  # sentences offered for personalisation
TABLE_COLUMNS = ["name", "part", "kind", "shape", "bits", "group_size", "alpha", "action"]
HISTORY_COLUMNS = ["finished", "model", "method", "bits", "group", "layers", "seed", "size MB", "WER %", "scored on",
                   "RTF (real runtime)", "from", "run id"]
ALL = "all"  # the history filters' choice that keeps every row
WAITING_TRANSCRIPTIONS = 8  # transcriptions running or waiting before "busy" (each takes a second or two)


def _integer(value) -> int:
    """int() that refuses 3.7 and "x" instead of truncating or crashing later."""
    number = float(value)
    if not number.is_integer() or abs(number) > 2**31:
        raise ValueError(f"{str(value)[:20]!r} is not a whole number in range")
    return int(number)


@dataclass
class Explorer:
    """What the page's handlers share, all of it from the serving package: the model cache, the job queue
    and its worker, the quantized results, the shared transcriptions, the history, and the serving policy
    (public or private mode, limits; serving/policy.py); plus the sample clips and the scorer."""

    policy: ServingPolicy = field(default_factory=ServingPolicy.from_env)
    models: ModelCache | None = None  # built from the policy when not given
    samples: dict[str, SampleClip] = field(default_factory=lambda: {c.name: c for c in sample_clips()})
    scorer: TextScorer = field(default_factory=TextScorer)
    history: RunHistory = field(default_factory=RunHistory)
    artifact_root: Path = field(default_factory=lambda: data_dir() / "results")  # saved results by run id
    jobs: JobQueue | None = None  # heavy jobs, in arrival order on one worker process (bounded, one per session)
    results: ResultStore | None = None
    transcriptions: TranscriptionDesk | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = ModelCache(capacity=self.policy.kept_models, loader=self.policy.load_model)
        self.jobs = self.jobs or JobQueue(self.policy.max_waiting_jobs, Worker(threads=self.policy.worker_threads,
                                                                             nice=self.policy.worker_nice))
        self.results = self.results or ResultStore(self.artifact_root, self.policy.kept_results,
                                                   self.policy.kept_artifacts, base_model=self.models.peek)
        self.transcriptions = self.transcriptions or TranscriptionDesk(WAITING_TRANSCRIPTIONS,
                                                                          max_batch=self.policy.transcription_batch,
                                                                          lanes=self.policy.transcription_lanes)
        self.jobs.on_idle_result = self._answer_demos_ahead

    def close(self) -> None:
        self.jobs.close()

    def start_warm_up(self, model_name: str = DEFAULT_MODEL) -> int:
        """Queue the policy's warm-up settings as idle-time work for the worker (a visitor's job goes first);
        each is the request the page's first click with those settings sends, so it is answered from the save."""
        queued = 0
        for item in self.policy.warm_up:
            method, _, bits = item.partition(":")
            try:
                self.jobs.add_idle_work("quantize", self._request(model_name, method, int(bits), 64, 0.75, 0, None))
                queued += 1
            except UserError as exc:
                log.warning("warm-up %s skipped: %s", item, exc)
        return queued

    def _answer_demos_ahead(self, summary: dict) -> None:
        """A warm-up run finished: share its transcripts of the scored clips, and transcribe the demo clips with
        it now if those were not among them (a server scoring on real recordings), for the room's clicks."""
        key = f"{summary['model']}/{summary['run_id']}"
        self.transcriptions.keep(key, summary.get("transcripts") or {})
        self.transcriptions.answer_ahead(lambda: self.results.model(summary["run_id"]), key, self._demo_audios)

    def warm_up_transcripts(self, model_name: str = DEFAULT_MODEL) -> int:
        """Transcribe the demo clips at full precision once (at start), so a room's first clicks share them."""
        loaded = self.models.get(model_name)
        demos = self._demo_audios()
        for audio in demos:
            self.transcriptions.transcribe(loaded, model_name, audio)
        return len(demos)

    def _demo_audios(self) -> list:
        return [load_audio(c.path) for c in self.samples.values() if c.group == "demo"]

    # ---------------------------------------------------------------- samples and audio
    def sample_path(self, name: str | None) -> str | None:
        clip = self.samples.get(name or "")
        return str(clip.path) if clip else None

    def sample_choices(self) -> list[tuple[str, str]]:
        return [(f"{c.name}: {c.transcript[:60]}", c.name) for c in self.samples.values() if c.group == "demo"]

    def _audio(self, audio_path: str | None):
        if not audio_path:
            raise gr.Error("Choose a sample clip, upload a file or record something first.")
        return load_audio(audio_path, max_seconds=self.policy.max_audio_seconds, max_bytes=self.policy.max_upload_bytes)

    def _reference(self, audio_path: str, sample_name: str | None) -> str | None:
        clip = self.samples.get(sample_name or "")
        # gradio hands over a cached copy of the sample, which keeps the file name.
        return clip.transcript if clip is not None and Path(audio_path).name == clip.path.name else None

    # ---------------------------------------------------------------- layer table
    def layer_rows(self, model_name: str, bits: int, group_size: int, preset: str = "uniform") -> list[list]:
        try:
            table = preset_table(self.models.get(model_name).model, preset or "uniform", int(bits), int(group_size))
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return [[r.name, r.part, r.kind, f"{r.out_features}x{r.in_features}", r.bits, r.group_size,
                 "" if r.alpha is None else r.alpha, r.action] for r in table]

    @staticmethod
    def _overrides(rows) -> list[dict]:
        """Dataframe rows -> override dicts; blank alpha means "the method decides"."""
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else [dict(zip(TABLE_COLUMNS, r)) for r in rows]
        out = []
        for row in records:
            alpha = row.get("alpha")
            try:
                out.append({"name": row["name"], "bits": int(row["bits"]), "group_size": int(row["group_size"]),
                            "alpha": None if alpha in ("", None) or alpha != alpha else float(alpha),
                            "action": str(row["action"]).strip()})
            except (TypeError, ValueError) as exc:
                raise gr.Error(f"Layer {row.get('name')}: bits, group size and alpha must be numbers ({exc}).") from exc
        return out

    def _changed_rows(self, model_name: str, bits: int, group_size: int, rows) -> list[dict] | None:
        """Only the rows the user edited (None when the table is the preset): the run id and history say so."""
        if rows is None or not len(rows):
            return None
        preset = {r.name: r for r in build_table(self.models.get(model_name).model, int(bits), int(group_size))}
        changed = []
        for row in self._overrides(rows):
            base = preset.get(row["name"])
            if base is None or (base.bits, base.group_size, base.alpha, base.action) != (
                    row["bits"], row["group_size"], row["alpha"], row["action"]):
                changed.append(row)
        return changed or None

    # ---------------------------------------------------------------- quantize (in the worker process)
    def eval_dir(self, typed: str | None = None) -> str | None:
        """The folder the page scores on: a private server's typed folder, else the owner's ASRQ_EVAL_DIR, else
        None (the demo clips). A public server never reads a folder a visitor typed."""
        typed = (typed or "").strip() if not self.policy.public else ""
        if typed and not Path(typed).is_dir():
            raise UserError(f"The evaluation folder {typed[:200]!r} does not exist on this server.")
        return typed or self.policy.eval_dir

    def _request(self, model_name: str, method: str, bits: int, group_size: int, alpha: float, seed: int,
                 overrides: list[dict] | None, eval_dir: str | None = None) -> dict:
        entry = get_method(method)
        try:
            settings = {"bits": _integer(bits), "group_size": _integer(group_size)}
            if "alpha" in entry.config_cls.setting_names():
                settings["alpha"] = float(alpha)
            seed = _integer(seed)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UserError(f"bits, group size and seed must be whole numbers and alpha a number ({exc}).") from exc
        config = make_config(method, **settings)  # a bad setting fails here, in one sentence, before any work
        self._check_model(model_name)
        # So is a bad layer row, or one the method cannot take (the worker applies them again).
        table = build_table(self.models.get(model_name).model, config.bits, config.group_size,
                            with_output=config.quantize_output)
        entry.check_table(apply_overrides(table, overrides) if overrides is not None else table, config)
        return {"model": model_name, "method": method, "settings": settings, "seed": int(seed),
                "overrides": overrides, "artifact_root": str(self.artifact_root), "safe_only": self.policy.public,
                "eval_dir": self.eval_dir(eval_dir)}

    def _check_model(self, model_name: str) -> None:
        self.policy.check_model(model_name)
        if not self.policy.public:
            return  # private: any model the loader can find (it answers in one sentence if it cannot)
        # Only public servers ask which packages are installed: it touches the file system on every request.
        installed = {m["name"] for m in available_models() if m["installed"]} | set(self.policy.allowed_hub_ids)
        if model_name not in installed:
            raise UserError(f"Model {model_name!r} is not installed on this server.")

    def _run_job(self, task: str, request: dict, session: str | None, progress) -> dict:
        """Run a worker task for a browser session: a place in the queue (or "busy" at once), started in arrival
        order, stopped at the policy's time limit; while it waits the progress line says how long."""
        def waiting(ahead: int, seconds: float | None) -> None:
            progress(0.0, _queue_words(ahead, seconds))

        return self.jobs.run(task, request, session, progress, waiting, timeout=self.policy.job_seconds)

    def _run_quantize(self, request: dict, session: str | None, progress) -> tuple[str, dict]:
        """Run (or reuse) a quantization in the worker; load the saved result for transcription."""
        # A run finished before is answered here at once, without a place in the queue.
        summary = (self.results.finished_summary(run_id_of(request))
                   or self._run_job("quantize", request, session, progress))
        self.results.add_finished(summary)
        self.transcriptions.keep(f"{summary['model']}/{summary['run_id']}", summary.get("transcripts") or {})
        self.history.add(summary, session)
        self._load_for_uploads(summary["run_id"])
        return summary["run_id"], summary

    def _load_for_uploads(self, run_id: str) -> None:
        """Load the run the visitor just asked for while they wait for it anyway: their demo clicks are answered
        from its kept transcripts, but their next upload needs its model, and a load there (0.3 s alone, 1.4-1.5 s
        beside two busy lanes) was most of the slowest uploads' extra time (bench/results/load-one-by-one.md)."""
        try:
            self.results.model(run_id)
        except (UserError, OSError, RuntimeError) as exc:  # a pruned or damaged save: the upload will say so
            log.warning("run %s not loaded ahead of uploads: %s", run_id, exc)

    def quantize_model(self, model_name: str, method: str, bits: int, group_size: int, alpha: float, seed: int,
                       rows=None, eval_dir: str | None = None, request: gr.Request = None, progress=gr.Progress()):
        """The Quantize button: run id, status, the three figures, the latency gauge and the download (the
        history and Pareto refresh after it, with the page's filters)."""
        session = getattr(request, "session_hash", None)
        try:
            overrides = self._changed_rows(model_name, bits, group_size, rows)
            job = self._request(model_name, method, bits, group_size, alpha, seed, overrides, eval_dir)
            progress(0.0, desc="starting")
            run_id, summary = self._run_quantize(job, session, lambda f, msg: progress(f, desc=msg))
        except JobCancelled:
            return (gr.update(), "**Cancelled.** Press Quantize to start again.", *[gr.update()] * 5)
        except UserError as exc:
            # One sentence in the status line and a toast; the previous result stays on the page.
            gr.Warning(str(exc))
            return (gr.update(), f"**Not done:** {exc}", *[gr.update()] * 5)
        records = [LayerRecord(**r) for r in summary["per_layer"]]
        title = f"{method} {bits}-bit: error per layer (encoder E, decoder D)"
        # The other runs still in memory, most recent first, overlaid for comparison.
        others = [(f"{s['method']} {s['bits']}b {s.get('layers_key') or ''}".strip(),
                   [LayerRecord(**r) for r in s["per_layer"]])
                  for s in self.results.summaries(except_run=run_id) if s.get("per_layer")]
        return (run_id, self._status(summary), plots.error_propagation(records, title, others[:3]),
                plots.alpha_and_bits(records),
                plots.size_gauge(self._size(summary)),
                plots.latency_gauge(summary.get("real_latency"), summary.get("real_latency_fp32")),
                self._download(summary))

    @staticmethod
    def _download(summary: dict):
        """The run's whisper.cpp file (written by the worker next to the artifact), or a hidden button."""
        name = summary.get("whisper_cpp_file")
        path = Path(summary["artifact"]) / name if name else None
        if path is None or not path.is_file():
            return gr.update(value=None, visible=False)
        container = (summary.get("real_latency") or {}).get("runtime", "whisper.cpp").split(",")[0]
        return gr.update(value=str(path), visible=True, label=f"Download for {container} ({path.stat().st_size / 1e6:.0f} MB)")

    def cancel(self, request: gr.Request = None) -> str:
        """The Cancel button: stops this browser session's running job (never another user's)."""
        session = getattr(request, "session_hash", None)
        job = self.jobs.job_of(session) if session is not None else None
        if job is not None and self.jobs.cancel(job.id, owner=session):
            if job.state == "cancelled":
                return "Cancelled: your job left the queue before it started."
            return "Cancelling: the worker process is stopped and the next job starts a fresh one."
        return "Nothing of yours is running or waiting."

    def history_view(self, model: str = ALL, method: str = ALL, source: str = ALL) -> tuple:
        """The history table and Pareto of the runs that pass the filters (the page's and `asrq sweep`'s), and the
        filters' choices: every model, method and source in the history."""
        where = {k: None if v in (ALL, None, "") else v for k, v in
                 (("model", model), ("method", method), ("source", source))}
        runs = self.history.runs(limit=500, **where)
        rows = [[time.strftime("%H:%M:%S", time.localtime(r["finished"])), r["model"], r["method"], r["bits"],
                 r["group_size"], r["layers_key"] or "preset", r["seed"], round(r["size_bytes"] / 1e6, 2),
                 None if r["demo_wer"] is None else round(100 * r["demo_wer"], 1),
                 r["eval_set"] or "10 synthetic demo clips, 1 voice",
                 "fake quant" if r.get("real_rtf") is None else round(r["real_rtf"], 3), r["source"], r["run_id"]]
                for r in runs]
        choices = [gr.update(choices=[ALL, *self.history.distinct(column)], value=value or ALL)
                   for column, value in (("model", model), ("method", method), ("source", source))]
        return rows, plots.pareto(runs), *choices

    def api_quantize(self, model: str = "tiny.en", method: str = "fade", bits: int = 4, group_size: int = 64,
                     alpha: float = 0.75, seed: int = 0, layers_json: str = "", eval_dir: str = "",
                     request: gr.Request = None) -> dict:
        """Quantize a model; pass the returned run_id to /transcribe. layers_json: optional list of
        {"name", "bits", "group_size", "alpha", "action"} rows overriding single layers. eval_dir (private
        servers only): a folder of real clips to score on instead of the demo clips."""
        try:
            overrides = parse_overrides(layers_json)
            job = self._request(model, method, bits, group_size, alpha, seed, overrides, eval_dir)
            run_id, summary = self._run_quantize(job, getattr(request, "session_hash", None), lambda f, m: None)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return {"run_id": run_id, "status": self._status(summary), "size_bytes": summary["size_bytes"],
                "fp32_size_bytes": summary["fp32_size_bytes"], "seconds": summary["quantization_seconds"],
                "demo_wer": summary["demo_wer"], "eval_set": summary.get("eval_set"),
                "wer_ci95": summary.get("wer_ci95"), "delta_wer": summary.get("delta_wer"),
                "delta_ci95": summary.get("delta_ci95"), "per_layer": summary["per_layer"]}

    @staticmethod
    def _size(summary: dict) -> SizeReport:
        return SizeReport(**{k: summary[k] for k in
                             ("size_bytes", "fp32_size_bytes", "fp16_size_bytes", "quantized_weight_bytes")})

    def _status(self, summary: dict) -> str:
        c = summary["config"]
        calib = f", {summary['calibration_clips']} calibration clips" if summary["calibration_clips"] else ""
        size = self._size(summary)
        rest = size.size_bytes - size.quantized_weight_bytes
        return (f"**{c['method']} {c['bits']}-bit** (group {c['group_size']}) in {summary['quantization_seconds']:.1f} s{calib}: "
                f"{size.size_bytes / 1e6:.1f} MB, {size.compression_vs_fp32:.2f}x smaller than fp32 "
                f"(quantized layers {size.quantized_weight_bytes / 1e6:.1f} MB; embeddings, convolutions, norms and "
                f"kept layers at fp16 {rest / 1e6:.1f} MB). {self._accuracy(summary)} "
                f"Weights are dequantized for this demo (*fake quant*): same speed as fp32.")

    @staticmethod
    def _accuracy(summary: dict) -> str:
        """The WER sentence: which clips, the interval, and the difference to full precision in words."""
        where = summary.get("eval_set", "the demo clips")
        line = f"WER on {where}: **{100 * summary['demo_wer']:.1f}%**"
        if summary.get("wer_ci95"):
            low, high = summary["wer_ci95"]
            line += f" (95% interval {100 * low:.1f} to {100 * high:.1f})"
        line += f", full precision {100 * summary['demo_wer_fp32']:.1f}%."
        if summary.get("delta_words"):
            line += f" Against full precision: {summary['delta_words']}."
        return line

    # ---------------------------------------------------------------- personalise (PQM)
    def prompts(self) -> list[str]:
        """Sentences to read aloud: the sample set's calibration sentences (varied, ~5-10 s each)."""
        texts = dict.fromkeys(c.transcript for c in self.samples.values() if c.group != "demo")  # variants share text
        return list(texts)[:PROMPTS]

    def personalize(self, model_name: str, speaker: str, rec1=None, rec2=None, rec3=None, rec4=None, rec5=None,
                    rec6=None, request: gr.Request = None, progress=gr.Progress()) -> str:
        """Train a LoRA adapter on the NF4 model from the recorded prompts; before/after WER as markdown.
        (One parameter per prompt: gradio passes components positionally and injects request by name.)"""
        recordings = (rec1, rec2, rec3, rec4, rec5, rec6)
        prompts = self.prompts()
        pairs = [(path, text) for path, text in zip(recordings, prompts) if path]
        if len(pairs) < 3:
            message = "Record (or upload) at least 3 of the prompts: most train the adapter, the rest test it."
            gr.Warning(message)
            return f"**Not done:** {message}"
        n_test = max(1, len(pairs) // 3)
        job = {"model": model_name, "speaker": (speaker or "").strip(), "audio": [p for p, _ in pairs],
               "texts": [t for _, t in pairs], "n_train": len(pairs) - n_test,  # adapters: the default folder
               "safe_only": self.policy.public, "max_audio_seconds": self.policy.max_audio_seconds,
               "max_bytes": self.policy.max_upload_bytes}
        session = getattr(request, "session_hash", None)
        if self.policy.public:  # strangers must not overwrite each other's voices: one folder per visitor
            job["adapters_root"] = str(self._visitor_adapters(session))
        try:
            self._check_model(model_name)
            out = self._run_job("personalize", job, session, lambda f, m: progress(f, desc=m))
        except JobCancelled:
            return "**Cancelled.**"
        except UserError as exc:
            gr.Warning(str(exc))
            return f"**Not done:** {exc}"
        w = out["wer"]
        lines = [f"Adapter **{out['speaker']}**: {out['trainable_parameters']:,} parameters "
                 f"({100 * out['extra_fraction']:.2f}% of the model), trained on {out['train_clips']} recordings in "
                 f"{out['train_seconds']:.0f} s for {out['best_epoch']} epoch(s), the count chosen on "
                 f"{out['validation_clips']} of them held out first."]
        if not out["adapter_kept"]:
            lines = [f"**The adapter did not help**: on your validation recording(s) no training epoch beat the 4-bit "
                     f"model alone, so no adapter was kept for **{out['speaker']}**; the plain NF4 model is the better "
                     f"choice for your voice."]
        verdict = "better" if w["nf4+lora"] < w["nf4"] else "no better" if w["nf4+lora"] == w["nf4"] else "worse"
        lines += [f"On your {out['test_clips']} held-out recording(s):", "",
                  "| model | WER |", "| --- | ---: |",
                  f"| full precision | {100 * w['fp32']:.1f}% |", f"| NF4 (4-bit) | {100 * w['nf4']:.1f}% |",
                  f"| NF4 + your adapter | {100 * w['nf4+lora']:.1f}% |" if out["adapter_kept"] else
                  "| NF4 + your adapter | not kept |", ""]
        if out["adapter_kept"]:
            lines.append(f"After personalisation the 4-bit model is {verdict} on your voice than before.")
        return "\n".join(lines)

    def _visitor_adapters(self, session: str | None) -> Path:
        """A public visitor's adapter folder, named by a hash (the session id comes from the client: never a path)."""
        root = self.artifact_root.parent / "visitor-adapters"
        prune_artifacts(root, self.policy.kept_artifacts)
        return root / hashlib.sha256(str(session).encode()).hexdigest()[:16]

    # ---------------------------------------------------------------- transcribe
    def transcribe_audio(self, audio_path: str | None, model_name: str, sample_name: str | None = None,
                         run_id: str | None = None, request: gr.Request = None):
        """Full-precision and (if a run id is given) quantized transcripts side by side.

        Returns (fp text, quantized word diff, details markdown).
        """
        session, desk = getattr(request, "session_hash", None), self.transcriptions
        times = {"start": time.perf_counter()}
        try:
            with desk.reading(session):
                self._check_model(model_name)
                if run_id:
                    self.results.check(run_id)  # an unknown run id: refused before decoding
                audio = self._audio(audio_path)
                digest = audio_key(audio)
            times["read"] = time.perf_counter()
            # Models are loaded only for the answers not kept (a run evicted from memory is not reloaded for a
            # demo clip the worker already transcribed with it), full precision first: its call runs while the
            # run loads.
            wanted = [(_timed(lambda: self.models.get(model_name), times), model_name)]
            wanted += [(_timed(lambda: self.results.model(run_id), times), f"{model_name}/{run_id}")] if run_id else []
            answers = [desk.shared(key, digest) for _, key in wanted]
            if None in answers:  # only a request the model must answer takes a place in the transcription room
                with desk.entered(session):
                    times["entered"] = time.perf_counter()
                    answers = desk.transcribe_each(wanted, audio, digest)
            fp, quantized = answers[0], answers[1] if run_id else None
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        _log_timing(digest, audio, answers, times)
        fp_text, q_text = fp.text, quantized.text if quantized is not None else None
        seconds = len(audio) / SAMPLE_RATE
        reference = self._reference(audio_path, sample_name)
        lines = [f"**{seconds:.1f} s** of audio. Full precision: {_timing(fp, seconds)}"]
        if quantized is not None:
            lines.append(f"Quantized (fake quant): {_timing(quantized, seconds)}")
        if reference is not None:
            wer_fp, _ = self.scorer.score([reference], [fp_text])
            lines.append(f"Reference: *{reference}*  \nWER full precision: **{100 * wer_fp:.1f}%**")
            if q_text is not None:
                lines[-1] += f", quantized: **{100 * self.scorer.score([reference], [q_text])[0]:.1f}%**"
        # HighlightedText joins tokens as given: keep the spaces between words.
        diff = [(word + " ", tag) for word, tag in word_diff(fp_text, q_text)] if q_text is not None else []
        return fp_text, diff, "  \n".join(lines)


def _timed(load, times: dict[str, float]):
    """``load`` adding the seconds it takes to times["load"]."""
    def timed():
        start = time.perf_counter()
        try:
            return load()
        finally:
            times["load"] = times.get("load", 0.0) + time.perf_counter() - start
    return timed


def _log_timing(digest: str, audio, answers: list, times: dict[str, float]) -> None:
    """One line per answered transcription, where its time went (bench/load.py reads it): decoding the audio,
    waiting for a place, loading models (the run's load overlaps full precision's call), then the rest: the
    line for the CPU and the model calls; ``model`` is the model time of the calls that answered it (a call may
    answer others' requests in the same batch; two calls in two lanes overlap)."""
    end = time.perf_counter()
    made = [a for a in answers if not a.shared]
    entered, load = times.get("entered", times["read"]), times.get("load", 0.0)
    log.info("transcription %s: %.1f s audio, %d of %d answers shared; read %.3f s, room %.3f s, load %.3f s, "
             "line+model %.3f s (model %.3f s), total %.3f s", digest[:12], len(audio) / SAMPLE_RATE,
             len(answers) - len(made), len(answers), times["read"] - times["start"], entered - times["read"],
             load, end - entered - load, sum(a.seconds for a in made), end - times["start"])


def _timing(transcript, seconds: float) -> str:
    shared = " (a shared answer: this clip was transcribed with this model before)" if transcript.shared else ""
    cut = (f"; stopped after {token_budget(seconds)} tokens: the model was repeating itself" if transcript.cut
           else "")
    return f"{transcript.seconds:.2f} s (real-time factor {transcript.seconds / seconds:.3f}){shared}{cut}"


def _queue_words(ahead: int, seconds: float | None) -> str:
    """'2 jobs ahead of yours, about 80 s' while a job waits in the queue."""
    jobs = f"{ahead} job{'s' if ahead != 1 else ''} ahead of yours"
    return jobs + (f", about {seconds:.0f} s" if seconds is not None else "") if ahead else "starting"
