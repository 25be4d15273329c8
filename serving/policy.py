"""What a server lets its visitors do: the public/private switch and the limits that keep a shared server up.

Public mode is for strangers (a Hugging Face Space, a workshop server): models only from the registry and an
allow-list of hub ids, never a path a visitor typed; hub checkpoints only as safetensors, never pickle, and
never remote code; tighter caps on uploads, audio length and job time. Private mode (the default on your own
machine) keeps the full freedom of the CLI. The threat model behind each limit is docs/threat-model.md.

    ASRQ_PUBLIC=1 / 0           force public / private (default: public when SPACE_ID is set, as on Spaces)
    ASRQ_ALLOWED_MODELS=a/b,c/d extra hub ids a public server may load
    ASRQ_EVAL_DIR=/path         score the page's WER on this folder of real clips (refs.tsv or LibriSpeech
                                layout) instead of the synthetic demo clips; private mode may also type one
    ASRQ_WARM_UP=fade:4,rtn:4   settings (method:bits, the page's other defaults) the worker quantizes on the
                                default model while no job waits; "none" for none (default: none in private
                                mode, PUBLIC_WARM_UP in public mode)
    ASRQ_THREADS=1:1            torch threads of the job worker : of the server's transcriptions; "split": the
                                cores in two, the worker getting the smaller half; "priority" (the public
                                default): both use every core and the worker runs at the lowest CPU priority,
                                so a transcription takes the cores from a job whenever it runs; "shared": both use
                                every core at the same priority, as torch does (the private default: one person
                                rarely transcribes while a job runs). Measured in bench/results/load*.md.
    ASRQ_TRANSCRIPTION_LANES=2  model calls the server runs at once, each on its share of the transcription
                                threads (default: 2 in priority mode on 2 or more cores, else 1); two lanes
                                answer an upload's full-precision and quantized transcripts side by side
    ASRQ_TRANSCRIPTION_BATCH=1  waiting requests for one model a lane answers in one call (default 1: one by
                                one; since the output layer is laid out for decoding a batch of 4 saves 6%,
                                bench/results/batching.md, and makes each of its requests wait for the whole call;
                                the load test's upload p95 fell with one by one, load-one-by-one.md)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import ModelUnavailableError, UserError
from engine.whisper.decoding_layout import lay_out_for_decoding
from engine.whisper.models import REGISTRY, LoadedModel, load_model


def available_cores() -> int:
    """CPUs this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split_threads(cores: int) -> tuple[int, int]:
    """(worker, transcription) threads: the cores in two parts that never overlap, transcription the larger."""
    worker = max(1, cores // 2)
    return worker, max(1, cores - worker)


LOWEST_PRIORITY = 19  # the largest niceness Linux gives: a job gets about 1.5% of a core a transcription wants
PUBLIC_WARM_UP = ("fade:4", "gptq:4", "rtn:4", "nf4:4")  # the page's default first, then the other popular ones


class PolicyError(UserError):
    """A serving limit is set to an impossible value."""


class BusyError(UserError):
    """The server has no room for another job right now."""


@dataclass(frozen=True)
class ServingPolicy:
    """Limits of one server; every cap is checked before the expensive work it protects."""

    public: bool = False
    allowed_hub_ids: tuple[str, ...] = ()  # hub checkpoints a public server may load besides the registry
    max_upload_bytes: int = 50 * 2**20  # checked by gradio on upload and again before decoding
    max_audio_seconds: float = 10 * 60  # from the file header, before decoding
    job_seconds: float = 15 * 60  # a quantize or personalise job is stopped after this
    max_waiting_jobs: int = 4  # heavy jobs running or queued; one more gets "busy, try again"
    kept_models: int = 2  # loaded full-precision models in the server's memory (least recently used out)
    kept_results: int = 4  # loaded quantized models in the server's memory
    kept_artifacts: int = 64  # saved quantized models on disk; older ones are deleted
    eval_dir: str | None = None  # the server owner's folder of real clips for the page's WER (None: demo clips)
    warm_up: tuple[str, ...] = ()  # "method:bits" quantized on the default model while the worker is idle
    # torch threads of the worker process and of the server's transcriptions; None: torch's default (all cores,
    # so the two compete). A heavy job and a visitor's transcription then never wait on each other's threads.
    worker_threads: int | None = None
    transcribe_threads: int | None = None  # per model call
    transcription_lanes: int = 1  # model calls at once in the server
    transcription_batch: int = 1  # waiting requests for one model answered in one call (see ASRQ_TRANSCRIPTION_BATCH)
    # niceness of the worker process (0-19): above 0 the kernel's scheduler gives a transcription the cores a
    # running job also wants, and the job gets them back the moment transcriptions stop
    worker_nice: int = 0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_audio_seconds", "job_seconds", "max_waiting_jobs", "kept_models",
                     "kept_results", "kept_artifacts", "transcription_lanes", "transcription_batch"):
            if not getattr(self, name) > 0:
                raise PolicyError(f"{name} must be positive, not {getattr(self, name)}.")
        for name in ("worker_threads", "transcribe_threads"):
            if getattr(self, name) is not None and not getattr(self, name) >= 1:
                raise PolicyError(f"{name} must be 1 or more, not {getattr(self, name)}.")
        if not 0 <= self.worker_nice <= LOWEST_PRIORITY:
            raise PolicyError(f"worker_nice must be between 0 and {LOWEST_PRIORITY}, not {self.worker_nice}.")
        for item in self.warm_up:
            method, _, bits = item.partition(":")
            if not method or not bits.isdigit():
                raise PolicyError(f"Warm-up setting {item!r} is not of the form method:bits (for example fade:4).")
        for hub_id in self.allowed_hub_ids:
            if hub_id.count("/") != 1 or hub_id.startswith(("/", ".", "~")):
                raise PolicyError(f"Allowed model {hub_id!r} is not a hub id of the form owner/name.")

    @classmethod
    def public_defaults(cls, **changes) -> ServingPolicy:
        """The caps of a public Space on free CPU hardware: two-minute clips, ten-minute jobs, 20 MB uploads."""
        values = {"public": True, "max_upload_bytes": 20 * 2**20, "max_audio_seconds": 120.0, "job_seconds": 600.0,
                  # a waiting job holds no memory (one runs at a time): a visitor is better told "5 jobs ahead of
                  # yours, about 200 s" than "busy"; each visitor has one job at most
                  "max_waiting_jobs": 8, "kept_artifacts": 32, "warm_up": PUBLIC_WARM_UP,
                  # a room's visitors transcribe with many runs (14 in the load test); runs share their unquantized
                  # half (TensorPool) and keep their codes packed: about 25 MB more each in memory (one-off probe)
                  "kept_results": 16}
        return cls(**(values | changes))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingPolicy:
        env = os.environ if env is None else env
        switch = env.get("ASRQ_PUBLIC", "").strip().lower()
        if switch not in ("", "0", "1", "true", "false", "yes", "no"):
            raise PolicyError(f"ASRQ_PUBLIC must be 1 or 0, not {switch!r}.")
        public = switch in ("1", "true", "yes") if switch else bool(env.get("SPACE_ID"))
        allowed = tuple(h.strip() for h in env.get("ASRQ_ALLOWED_MODELS", "").split(",") if h.strip())
        eval_dir = env.get("ASRQ_EVAL_DIR", "").strip() or None
        if eval_dir is not None and not os.path.isdir(eval_dir):
            raise PolicyError(f"ASRQ_EVAL_DIR={eval_dir!r} is not a folder.")
        warm_up = _threads_from(env.get("ASRQ_THREADS", "") or ("priority" if public else "shared"))
        if env.get("ASRQ_WARM_UP", "").strip():
            text = env["ASRQ_WARM_UP"].strip()
            warm_up["warm_up"] = () if text.lower() == "none" else tuple(i.strip() for i in text.split(",") if i.strip())
        if env.get("ASRQ_TRANSCRIPTION_LANES", "").strip():
            total = warm_up.get("transcribe_threads", available_cores()) * warm_up.get("transcription_lanes", 1)
            warm_up.update(_lanes_from(env["ASRQ_TRANSCRIPTION_LANES"], total))
        if env.get("ASRQ_TRANSCRIPTION_BATCH", "").strip():
            warm_up["transcription_batch"] = _count_from("ASRQ_TRANSCRIPTION_BATCH", env["ASRQ_TRANSCRIPTION_BATCH"])
        if public:
            return cls.public_defaults(allowed_hub_ids=allowed, eval_dir=eval_dir, **warm_up)
        return cls(allowed_hub_ids=allowed, eval_dir=eval_dir, **warm_up)

    @property
    def thread_split(self) -> str:
        """In words, for the log and the load test's table."""
        transcription = f"transcription {self.transcribe_threads or 'all'} threads"
        if self.transcription_lanes > 1:
            transcription = (f"transcription {self.transcription_lanes} calls at once, {self.transcribe_threads or 'all'} "
                             f"thread{'s' if self.transcribe_threads != 1 else ''} each")
        if self.worker_nice:
            return f"priority (worker {self.worker_threads or 'all'} threads at niceness {self.worker_nice} : {transcription})"
        if self.worker_threads is None and self.transcribe_threads is None and self.transcription_lanes == 1:
            return "shared (every core to both)"
        return f"worker {self.worker_threads or 'all'} : {transcription}"

    def apply_transcription_threads(self) -> None:
        """Give this process (the server: its transcriptions) its share of the cores; the worker sets its own.
        torch's thread count is per process, so the server's entry point calls this once at start."""
        if self.transcribe_threads is not None:
            import torch

            torch.set_num_threads(self.transcribe_threads)

    @property
    def mode(self) -> str:
        return "public" if self.public else "private"

    def check_model(self, name: str) -> str:
        """Return ``name`` if this server may load it, else raise ModelUnavailableError in one sentence."""
        if not isinstance(name, str) or not name.strip():
            raise ModelUnavailableError("Choose a model.")
        if name in REGISTRY or not self.public or name in self.allowed_hub_ids:
            return name
        allowed = ", ".join([*REGISTRY, *self.allowed_hub_ids])
        raise ModelUnavailableError(f"This public server only loads its listed models ({allowed}), not {name!r}.")

    def load_model(self, name: str) -> LoadedModel:
        """The model loader under this policy: public servers read safetensors only, never pickle or local paths.
        The server's models only transcribe (and show their layers' shapes), so their output layer is laid out for
        decoding (engine/whisper/decoding_layout.py)."""
        loaded = load_model(self.check_model(name), safe_only=self.public)
        lay_out_for_decoding(loaded.model)
        return loaded


def _threads_from(text: str) -> dict:
    """ASRQ_THREADS: "split" (this machine's cores in two), "priority", "shared", or "WORKER:TRANSCRIPTION"."""
    text = text.strip().lower()
    if text == "shared":
        return {}
    if text == "priority":
        # two model calls at once on half the cores each: on 2 cores an upload's two transcripts came in 0.61x the
        # time of one 2-thread call after the other (bench/results/lanes.md), and a visitor's call waits less
        lanes = 2 if available_cores() >= 2 else 1
        return {"worker_nice": LOWEST_PRIORITY, "transcription_lanes": lanes,
                "transcribe_threads": available_cores() // lanes}
    if text == "split":
        worker, transcribe = split_threads(available_cores())
        return {"worker_threads": worker, "transcribe_threads": transcribe}
    worker, _, transcribe = text.partition(":")
    if not (worker.isdigit() and transcribe.isdigit()):
        raise PolicyError(f"ASRQ_THREADS must be 'split', 'priority', 'shared' or two thread counts like 1:1, not {text!r}.")
    return {"worker_threads": int(worker), "transcribe_threads": int(transcribe)}


def _lanes_from(text: str, total_threads: int) -> dict:
    """ASRQ_TRANSCRIPTION_LANES: model calls at once, sharing the transcription's ``total_threads``."""
    lanes = _count_from("ASRQ_TRANSCRIPTION_LANES", text)
    return {"transcription_lanes": lanes, "transcribe_threads": max(1, total_threads // lanes)}


def _count_from(variable: str, text: str) -> int:
    """A whole number of 1 or more set in ``variable``; PolicyError in one sentence otherwise."""
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise PolicyError(f"{variable} must be a whole number of 1 or more, not {text!r}.")
    return int(text)
