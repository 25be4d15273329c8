"""Load test: a workshop's visitors on a public-mode server over loopback.

Starts `app.py` in a child process (public mode, its own data folder and port), runs USERS gradio_client
visitors for DURATION seconds (each waits THINK_SECONDS between requests, as a person at a workshop does).
The mix: most requests transcribe a demo clip (with the visitor's last quantized model when it has one),
UPLOAD_SHARE upload the visitor's own 5-20 s recording (a real clip from ../shared/speech with a little
noise of its own, so no two uploads share an answer), QUANTIZE_SHARE quantize: mostly one of 8 popular
settings, sometimes a rare one. Checks every request succeeded or got the busy answer, the server never
died, the history holds each finished run exactly once, and the worker started the visitors' jobs in the
order they arrived (from the server's log). Reports p50/p95 latency per kind of request, the share of busy
answers and the memory of the server and its worker, against the workshop targets.

    python -m bench.load [--users 30] [--seconds 600] [--threads priority|split|shared|W:T] [--lanes N]
                         [--client-nice 0] [--out load]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
from gradio_client import Client, handle_file

from bench.common import REPO, SHARED_SPEECH, write_results

log = logging.getLogger("bench.load")

# What visitors ask for: mostly transcriptions of the demo clips; quantizations mostly drawn from a few popular
# settings (the result cache answers repeats), some rare ones that always reach the worker.
QUANTIZE_SHARE = 0.15
UPLOAD_SHARE = 0.10
RARE_SHARE = 0.15  # of the quantizations
POPULAR_SETTINGS = (("fade", 4, 0), ("gptq", 4, 0), ("rtn", 4, 0), ("nf4", 4, 0), ("rtn", 8, 0), ("rtn", 3, 0),
                    ("qep", 4, 0), ("fade", 3, 0))  # (method, bits, calibration seed); the page's other defaults
RARE_SETTINGS = (("rtn", 5, 0), ("rtn", 6, 0), ("gptq", 3, 1), ("fade", 4, 2), ("gptq", 4, 3), ("rtn", 2, 0))
UPLOAD_SECONDS = (5.0, 20.0)
BUSY_WORDS = ("busy", "already have a")
THINK_SECONDS = (2.0, 6.0)  # between a visitor's requests (listening, reading, choosing the next setting)
# The workshop's targets (issue 17): p95 seconds per kind of transcription, busy answers, memory.
TARGET_P95_S = {"/transcribe demo": 3.0, "/transcribe upload": 6.0}
TARGET_BUSY_SHARE = 0.05
TARGET_PEAK_MB = 3 * 1024
# gradio_client opens a new httpx client for each upload, stream and answer, and httpx builds a TLS context for
# each, loading the system's CA certificates, even for http://: 90 ms of this process's CPU a request, against
# 8 ms with one context built here and handed to every visitor (timed once, one client's demo requests; their
# addresses are http on the loopback, so it is never used). Each result's CPU line shows the effect: the client
# took 264 of the 1200 CPU seconds before (load-decoding-layout.md), 88 after (load-shared-tls.md).
TLS_CONTEXT = ssl.create_default_context()


def client(url: str) -> Client:
    """A gradio_client for ``url`` sharing this process's one TLS context."""
    return Client(url, verbose=False, ssl_verify=TLS_CONTEXT)  # httpx takes a context where a bool may go


@dataclass
class Request:
    endpoint: str
    outcome: str  # ok, busy, error
    seconds: float
    message: str = ""
    run_id: str = ""
    audio: str = ""  # the first 12 hex digits of the audio's digest, as the server logs it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, threads: str, lanes: int | None = None) -> subprocess.Popen:
    env = os.environ | {"ASRQ_PUBLIC": "1", "ASRQ_DATA_DIR": str(data_dir), "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_TEMP_DIR": str(data_dir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
                        "ASRQ_THREADS": threads}
    env = env | ({"ASRQ_TRANSCRIPTION_LANES": str(lanes)} if lanes else {})
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(data_dir / "server.log", "w"))


def wait_for(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before answering")
        try:
            client(url).close()
            return
        except Exception:  # not up yet: connection refused or config not served
            time.sleep(1)
    raise SystemExit(f"the server did not answer within {seconds:.0f} s")


class MemoryWatch(threading.Thread):
    """Samples the memory of the server and all its children twice a second: the sum of their proportional set
    sizes (PSS: a page the processes share, like torch's libraries mapped by server and worker alike, counted
    once in all, as the machine holds it) and, beside it, the sum of resident sizes (each shared page counted
    in every process that maps it)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []  # (seconds since start, PSS MB)
        self.rss_samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB)
        self.peak_pss_by_process: dict[str, float] = {}  # "server" / the child's name -> its highest PSS, MB
        self._cpu_by_pid: dict[int, tuple[str, float]] = {}  # pid -> (name, CPU seconds so far)
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(0.5):
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                rss = pss = 0
                for p in processes:
                    try:
                        info = p.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                        name = "server" if p.pid == self.process.pid else _child_name(p)
                        times = p.cpu_times()
                        self._cpu_by_pid[p.pid] = (name, times.user + times.system)
                        self.peak_pss_by_process[name] = max(self.peak_pss_by_process.get(name, 0.0), info.pss / 2**20)
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            now = time.monotonic() - start
            self.samples.append((now, pss / 2**20))
            self.rss_samples.append((now, rss / 2**20))


    def cpu_seconds_by_process(self) -> dict[str, float]:
        """CPU seconds each kind of process used (a worker restarted after a cancel counts with the others),
        as last sampled."""
        totals: dict[str, float] = {}
        for name, seconds in self._cpu_by_pid.values():
            totals[name] = totals.get(name, 0.0) + seconds
        return totals


def _child_name(process: psutil.Process) -> str:
    """A child's role from its command line: the job worker (a multiprocessing spawn) or its resource tracker."""
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "child"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    return "worker" if "multiprocessing" in command else "child"


def upload_pool(low: float, high: float) -> list[np.ndarray]:
    """Real recordings of low-high seconds from ../shared/speech (16 kHz mono), the visitors' own voices."""
    from engine.speech.audio import load_audio
    from engine.errors import DatasetError
    from engine.speech.evaluate import load_dataset

    pool = []
    for corpus in sorted(p for p in SHARED_SPEECH.iterdir() if p.is_dir()):
        try:
            utterances = load_dataset(corpus)
        except DatasetError:  # a folder without transcripts
            continue
        for u in utterances:
            if low <= sf.info(str(u.path)).duration <= high:
                pool.append(load_audio(u.path))
    return pool


def own_recording(pool: list[np.ndarray], rng: random.Random, folder: Path) -> Path:
    """A pool clip with a little noise of its own (about -70 dB): a recording no other visitor has."""
    audio = pool[rng.randrange(len(pool))]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 3e-4, audio.shape).astype(np.float32)
    path = folder / f"upload-{rng.getrandbits(48):012x}.wav"
    sf.write(path, audio + noise, 16000, subtype="PCM_16")
    return path


def visitor(url: str, clips: list[Path], pool: list[np.ndarray], folder: Path, deadline: float, seed: int,
            out: list[Request]) -> None:
    rng = random.Random(seed)
    visitor_client = client(url)
    run_id = ""
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(*THINK_SECONDS))
            draw = rng.random()
            if draw < QUANTIZE_SHARE:
                settings = RARE_SETTINGS if rng.random() < RARE_SHARE else POPULAR_SETTINGS
                method, bits, calib_seed = rng.choice(settings)
                args, endpoint = ("tiny.en", method, bits, 64, 0.75, calib_seed, ""), "/quantize"
            elif draw < QUANTIZE_SHARE + UPLOAD_SHARE:
                path, endpoint = own_recording(pool, rng, folder), "/transcribe upload"
                args = (handle_file(str(path)), "tiny.en", None, run_id)
            else:
                path, endpoint = rng.choice(clips), "/transcribe demo"
                args = (handle_file(str(path)), "tiny.en", None, run_id)
            digest = audio_digest(path) if endpoint == "/transcribe upload" else ""  # only uploads are matched
            start = time.monotonic()
            try:
                answer = visitor_client.predict(*args, api_name=endpoint.split()[0])
            except Exception as exc:  # the server's answer (gradio raises AppError) or a dropped connection
                text = str(exc).replace("\n", " ")[:200]
                outcome = "busy" if any(w in text for w in BUSY_WORDS) else "error"
                out.append(Request(endpoint, outcome, time.monotonic() - start, text, audio=digest))
                continue
            request = Request(endpoint, "ok", time.monotonic() - start, audio=digest)
            if endpoint == "/quantize":
                run_id = request.run_id = answer["run_id"]
            out.append(request)
    finally:
        visitor_client.close()


def audio_digest(path: Path) -> str:
    """The audio's digest as the server computes and logs it (its decoded samples)."""
    from engine.speech.audio import load_audio
    from serving.transcription import audio_key

    return audio_key(load_audio(path))[:12]


TIMING_LINE = re.compile(r"transcription (?P<audio>[0-9a-f]{12}): (?P<seconds>[\d.]+) s audio, (?P<shared>\d+) of (?P<asked>\d+) "
                         r"answers shared; read (?P<read>[\d.]+) s, room (?P<room>[\d.]+) s, load (?P<load>[\d.]+) s, "
                         r"line\+model (?P<line>[\d.]+) s \(model (?P<model>[\d.]+) s\), total (?P<total>[\d.]+) s")
SPLIT_PARTS = ("read", "room", "load", "line", "model", "total")
SLOWEST = 10  # uploads listed one by one in the report: the p95 of ~200 is the 10th slowest


def server_split(requests: list[Request], server_log: str) -> dict:
    """Where the uploads' time went, from the server's timing lines matched to the visitors' answered uploads by
    audio digest (an upload is new audio, so each digest is one request): p50/p95 of each part, and of the rest
    of the visitor's time (sending the file, gradio's queue and answer), in seconds."""
    lines = {m["audio"]: m for m in TIMING_LINE.finditer(server_log)}
    matched = [(r, lines[r.audio]) for r in requests
               if r.endpoint == "/transcribe upload" and r.outcome == "ok" and r.audio in lines]
    parts = {part: [float(m[part]) for _, m in matched] for part in SPLIT_PARTS}
    parts["outside"] = [r.seconds - float(m["total"]) for r, m in matched]
    parts["shared answers"] = [float(m["shared"]) for _, m in matched]
    slowest = sorted(matched, key=lambda pair: pair[0].seconds, reverse=True)[:SLOWEST]
    return {"matched": len(matched),
            **{part: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "mean": statistics.fmean(v) if v else None}
               for part, v in parts.items()},
            # the tail itself: which of the slowest loaded a run, how long their own calls and audio were
            "slowest": [{"visitor": round(r.seconds, 2), "audio": float(m["seconds"]), "models": int(m["asked"]),
                         **{part: float(m[part]) for part in ("load", "line", "model")}} for r, m in slowest]}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--threads", default="priority",
                        help="the server's ASRQ_THREADS (priority, the public default; split, shared or W:T)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="the server's ASRQ_TRANSCRIPTION_LANES (model calls at once; default: the policy's)")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="niceness of this process (the visitors and the memory sampling) once the server runs: "
                             "on a Space the visitors' own machines carry their clients")
    parser.add_argument("--out", default="load")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 50 or not 10 <= args.seconds <= 900:
        raise SystemExit("--users must be 1-50 and --seconds 10-900 (the load test is bounded)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    from engine.speech.samples import sample_clips

    clips = [c.path for c in sample_clips() if c.group == "demo"]
    pool = upload_pool(*UPLOAD_SECONDS)
    with tempfile.TemporaryDirectory(prefix="asrq-load-") as tmp:
        data_dir = Path(tmp)
        uploads = data_dir / "uploads"
        uploads.mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = start_server(data_dir, port, args.threads, args.lanes)
        try:
            wait_for(url, server)
            log.info("server up at %s; %d visitors for %.0f s", url, args.users, args.seconds)
            # the server started before this: it (and its worker, which sets its own) keeps its niceness; on Linux
            # a thread's niceness passes to the threads it starts, so every visitor thread below takes this one
            os.nice(args.client_nice)
            watch = MemoryWatch(server.pid)
            watch.start()
            requests: list[Request] = []
            deadline = time.monotonic() + args.seconds
            client_cpu = time.process_time()
            threads = [threading.Thread(target=visitor, args=(url, clips, pool, uploads, deadline, i, requests))
                       for i in range(args.users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=args.seconds + 900)
            watch.stop.set()
            client_cpu = time.process_time() - client_cpu
            alive = server.poll() is None
            check = client(url).predict(handle_file(str(clips[0])), "tiny.en", None, "",
                                    api_name="/transcribe")[0] if alive else ""
            with sqlite3.connect(data_dir / "history.sqlite") as db:
                history_ids = [row[0] for row in db.execute("SELECT run_id FROM runs")]
                integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            server.terminate()
            server.wait(timeout=30)
            server_log = (data_dir / "server.log").read_text()
    report(args, requests, watch, alive, bool(check.strip()), history_ids, integrity, server_log, client_cpu)


MODEL_CALL_LINE = re.compile(r"model call \S+: (?P<clips>\d+) clip\(s\), (?P<audio>[\d.]+) s of audio, "
                             r"(?P<seconds>[\d.]+) s, (?P<cut>\d+) cut by the loop guard")


def model_calls(server_log: str) -> dict:
    """The transcription desk's model calls, from its log lines: how many, clips per call, p50/p95 seconds of a
    call and of audio in it, and how many transcripts the loop guard stopped."""
    calls = list(MODEL_CALL_LINE.finditer(server_log))
    seconds, audio = [float(m["seconds"]) for m in calls], [float(m["audio"]) for m in calls]
    clips = [int(m["clips"]) for m in calls]
    return {"calls": len(calls), "clips": sum(clips),
            "clips_per_call": {n: clips.count(n) for n in sorted(set(clips))},
            "seconds_p50": percentile(seconds, 0.5), "seconds_p95": percentile(seconds, 0.95),
            "audio_seconds_p50": percentile(audio, 0.5), "audio_seconds_p95": percentile(audio, 0.95),
            "cut_by_loop_guard": sum(int(m["cut"]) for m in calls)}


def started_in_arrival_order(server_log: str) -> tuple[bool, int]:
    """(the visitors' jobs started in the order they were queued, how many started), from the job queue's
    log lines: ids are numbered at submit, so arrival order is id order."""
    started = [int(m.group(1)) for m in re.finditer(r"\bjob-(\d+) started", server_log)]
    return started == sorted(started), len(started)


def report(args, requests, watch, alive, answers_after, history_ids, integrity, server_log, client_cpu) -> None:
    memory = watch.samples
    ok_runs = {r.run_id for r in requests if r.endpoint == "/quantize" and r.outcome == "ok"}
    endpoints = {}
    for name in ("/transcribe demo", "/transcribe upload", "/quantize"):
        rs = [r for r in requests if r.endpoint == name]
        ok = [r.seconds for r in rs if r.outcome == "ok"]
        endpoints[name] = {"requests": len(rs), "ok": len(ok), "busy": sum(r.outcome == "busy" for r in rs),
                           "error": sum(r.outcome == "error" for r in rs),
                           "p50_s": percentile(ok, 0.5), "p95_s": percentile(ok, 0.95),
                           "busy_p95_s": percentile([r.seconds for r in rs if r.outcome == "busy"], 0.95)}
    first_minute = [mb for t, mb in memory if t <= 60]
    last_minute = [mb for t, mb in memory if t >= memory[-1][0] - 60] if memory else []
    per_minute: dict[int, float] = {}
    for t, mb in memory:
        per_minute[int(t // 60)] = max(per_minute.get(int(t // 60), 0.0), mb)
    in_order, jobs_started = started_in_arrival_order(server_log)
    checks = {
        "server_alive": alive, "answers_after_the_load": answers_after,
        "every_request_ok_or_busy": all(r.outcome != "error" for r in requests),
        "history_has_every_finished_run_once": sorted(history_ids) == sorted(ok_runs),
        "history_integrity": integrity,
        "jobs_started_in_arrival_order": in_order,
    }
    busy_share = sum(r.outcome == "busy" for r in requests) / max(len(requests), 1)
    peak = max((mb for _, mb in memory), default=0.0)
    peak_rss = max((mb for _, mb in watch.rss_samples), default=0.0)
    targets = [(f"{name} p95", f"<= {limit:.0f} s", endpoints[name]["p95_s"],
                endpoints[name]["p95_s"] is not None and endpoints[name]["p95_s"] <= limit)
               for name, limit in TARGET_P95_S.items()]
    targets += [("busy answers, all requests", f"<= {100 * TARGET_BUSY_SHARE:.0f}%", busy_share,
                 busy_share <= TARGET_BUSY_SHARE),
                ("errors", "0", sum(e["error"] for e in endpoints.values()),
                 all(e["error"] == 0 for e in endpoints.values())),
                ("server + worker peak memory (PSS)", f"<= {TARGET_PEAK_MB} MB", peak, peak <= TARGET_PEAK_MB)]
    data = {"users": args.users, "seconds": args.seconds, "threads": args.threads, "lanes": args.lanes,
            "endpoints": endpoints,
            "checks": checks, "busy_share": busy_share, "jobs_started": jobs_started,
            "targets": [{"target": t, "limit": limit, "measured": v, "met": met} for t, limit, v, met in targets],
            "peak_pss_mb": peak, "peak_rss_sum_mb": peak_rss,
            "peak_pss_mb_by_process": {k: round(v) for k, v in watch.peak_pss_by_process.items()},
            "pss_first_minute_max_mb": max(first_minute, default=None),
            "pss_last_minute_max_mb": max(last_minute, default=None),
            "pss_max_mb_per_minute": [round(per_minute[m]) for m in sorted(per_minute)],
            "distinct_runs": len(ok_runs), "history_rows": len(history_ids),
            "errors": sorted({r.message for r in requests if r.outcome == "error"})[:20],
            "upload_split": server_split(requests, server_log),
            "model_calls": model_calls(server_log), "client_nice": args.client_nice,
            "cpu_seconds": {**{k: round(v, 1) for k, v in watch.cpu_seconds_by_process().items()},
                            "load client (this process: visitors, memory sampling)": round(client_cpu, 1)},
            "requests": [asdict(r) for r in requests]}
    if not all(v is True or v == "ok" for v in checks.values()):
        data["server_log_tail"] = server_log[-3000:]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Load test: {args.users} visitors for {args.seconds:.0f} s on a public-mode server (loopback)", "",
             f"Threads (ASRQ_THREADS={args.threads}): {thread_words(server_log)}. Each visitor waits "
             f"{THINK_SECONDS[0]:.0f}-{THINK_SECONDS[1]:.0f} s between requests; {100 * QUANTIZE_SHARE:.0f}% are "
             f"quantizations ({100 - 100 * RARE_SHARE:.0f}% of them one of {len(POPULAR_SETTINGS)} popular settings, "
             f"the rest one of {len(RARE_SETTINGS)} rare ones), {100 * UPLOAD_SHARE:.0f}% uploads of the visitor's "
             f"own {UPLOAD_SECONDS[0]:.0f}-{UPLOAD_SECONDS[1]:.0f} s recording (real speech, each one new), the rest "
             "transcriptions of the demo clips (with the visitor's last quantized model when it has one).", "",
             "| request | requests | ok | busy | error | p50 s | p95 s | busy answer p95 s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in endpoints.items():
        lines.append(f"| {name} | {e['requests']} | {e['ok']} | {e['busy']} | {e['error']} | {fmt(e['p50_s'])} | "
                     f"{fmt(e['p95_s'])} | {fmt(e['busy_p95_s'])} |")
    lines += ["", "| target | limit | measured | met |", "| --- | --- | ---: | --- |"]
    for target, limit, value, met in targets:
        shown = f"{100 * value:.1f}%" if "busy" in target else fmt(value) if isinstance(value, float) else str(value)
        lines.append(f"| {target} | {limit} | {shown} | {'yes' if met else 'no'} |")
    lines += ["", f"Peak memory, server and worker together: **{peak:.0f} MB** as the machine holds it (sum of "
              f"proportional set sizes: pages they share counted once; highest in the first minute "
              f"{data['pss_first_minute_max_mb']:.0f} MB, in the last minute {data['pss_last_minute_max_mb']:.0f} MB; "
              f"highest per minute: {', '.join(str(v) for v in data['pss_max_mb_per_minute'])} MB). The sum of their "
              f"resident sizes, which counts a shared page once per process, peaked at {peak_rss:.0f} MB "
              "(earlier runs reported that sum). Each process's own highest PSS: "
              + ", ".join(f"{k} {v:.0f} MB" for k, v in watch.peak_pss_by_process.items()) + ".", "",
              "| check | result |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in checks.items()],
              f"| finished runs / history rows | {len(ok_runs)} / {len(history_ids)} |",
              f"| visitors' jobs started by the worker | {jobs_started} |", "",
              "Latency is from the visitor's side: a quantization waits for the jobs ahead of it in the worker (one at "
              "a time); busy answers come at once."]
    split = data["upload_split"]
    lines += ["", f"Where the answered uploads' time went ({split['matched']} matched to the server's timing lines by "
              "audio digest): decoding and shared-answer lookup (read), waiting for a place in the transcription room "
              "(room), loading the run's model (load), the line for the CPU and the model calls (line+model, of it the "
              "calls that answered it: model), the server's total, and the rest of the visitor's time (outside: "
              "sending the file, gradio's queue and answer).", "",
              "| part | p50 s | p95 s | mean s |", "| --- | ---: | ---: | ---: |",
              *[f"| {part} | {fmt(split[part]['p50'])} | {fmt(split[part]['p95'])} | {fmt(split[part]['mean'])} |"
                for part in (*SPLIT_PARTS, "outside")]]
    lines += ["", f"The {len(split['slowest'])} slowest answered uploads (seconds; models: transcriptions the upload "
              "asked for, 2 with a quantized run):", "",
              "| at the visitor | audio | models | load | line+model | model |", "| ---: | ---: | ---: | ---: | ---: | ---: |",
              *[f"| {u['visitor']:.2f} | {u['audio']:.1f} | {u['models']} | {u['load']:.2f} | {u['line']:.2f} | "
                f"{u['model']:.2f} |" for u in split["slowest"]]]
    calls = data["model_calls"]
    lines += ["", f"The transcription desk's model calls: {calls['calls']} for {calls['clips']} clips (clips per call: "
              + ", ".join(f"{n}: {k}" for n, k in calls["clips_per_call"].items())
              + f"), a call's time p50 {fmt(calls['seconds_p50'])} s, p95 {fmt(calls['seconds_p95'])} s (audio in "
              f"it p50 {fmt(calls['audio_seconds_p50'])} s, p95 {fmt(calls['audio_seconds_p95'])} s); "
              f"{calls['cut_by_loop_guard']} transcripts stopped by the loop guard."]
    cores = len(os.sched_getaffinity(0))
    lines += ["", f"CPU seconds used (server and worker since they started, the load client during the visits; "
              f"{cores} cores x {args.seconds:.0f} s = {cores * args.seconds:.0f} available, and the load client "
              f"shares the machine with the server, at niceness {args.client_nice}): "
              + ", ".join(f"{k} {v:.0f}" for k, v in data["cpu_seconds"].items()) + "."]
    if data["errors"]:
        lines += ["", "Errors:", *[f"- {e}" for e in data["errors"]]]
    write_results(args.out, data, "\n".join(lines))
    log.info("\n".join(lines))


def thread_words(server_log: str) -> str:
    """The server's own statement of its thread split (logged at start)."""
    found = re.search(r"threads: (.+)", server_log)
    return found.group(1).strip() if found else "not stated by the server"


if __name__ == "__main__":
    main()
