"""Load test: simulated visitors on a public-mode server over loopback, mixing transcribe and quantize.

Starts `app.py` in a child process (public mode, its own data folder and port), runs USERS gradio_client
visitors for DURATION seconds (each waits THINK_SECONDS between requests, as a person at a workshop does), and checks that every request either
succeeded or got the busy answer, that the server never died, and that the history holds each finished run
exactly once. Reports p50/p95 latency per endpoint and the peak memory of the server and its worker.

    python -m bench.load [--users 20] [--seconds 180]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from gradio_client import Client, handle_file

from bench.common import REPO, write_results

log = logging.getLogger("bench.load")

# What visitors ask for: mostly transcriptions; quantizations drawn from a few settings, so the result cache
# answers repeats while new settings still reach the worker.
QUANTIZE_SHARE = 0.2
QUANTIZE_SETTINGS = (("rtn", 4, 0), ("rtn", 8, 0), ("nf4", 4, 0), ("fade", 4, 0), ("rtn", 3, 0), ("gptq", 4, 1))
BUSY_WORDS = ("busy", "already have a job")
THINK_SECONDS = (2.0, 6.0)  # between a visitor's requests (listening, reading, choosing the next setting)


@dataclass
class Request:
    endpoint: str
    outcome: str  # ok, busy, error
    seconds: float
    message: str = ""
    run_id: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = os.environ | {"ASRQ_PUBLIC": "1", "ASRQ_DATA_DIR": str(data_dir), "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_TEMP_DIR": str(data_dir / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(data_dir / "server.log", "w"))


def wait_for(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before answering")
        try:
            Client(url, verbose=False).close()
            return
        except Exception:  # not up yet: connection refused or config not served
            time.sleep(1)
    raise SystemExit(f"the server did not answer within {seconds:.0f} s")


class MemoryWatch(threading.Thread):
    """Samples the resident memory of the server and all its children twice a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(0.5):
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                rss = 0
                for p in processes:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            self.samples.append((time.monotonic() - start, rss / 2**20))


def visitor(url: str, clips: list[Path], deadline: float, seed: int, out: list[Request]) -> None:
    rng = random.Random(seed)
    client = Client(url, verbose=False)
    run_id = ""
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(*THINK_SECONDS))
            if rng.random() < QUANTIZE_SHARE:
                method, bits, calib_seed = rng.choice(QUANTIZE_SETTINGS)
                args, endpoint = ("tiny.en", method, bits, 64, 0.5, calib_seed, ""), "/quantize"
            else:
                args, endpoint = (handle_file(str(rng.choice(clips))), "tiny.en", None, run_id), "/transcribe"
            start = time.monotonic()
            try:
                answer = client.predict(*args, api_name=endpoint)
            except Exception as exc:  # the server's answer (gradio raises AppError) or a dropped connection
                text = str(exc).replace("\n", " ")[:200]
                outcome = "busy" if any(w in text for w in BUSY_WORDS) else "error"
                out.append(Request(endpoint, outcome, time.monotonic() - start, text))
                continue
            request = Request(endpoint, "ok", time.monotonic() - start)
            if endpoint == "/quantize":
                run_id = request.run_id = answer["run_id"]
            out.append(request)
    finally:
        client.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--out", default="load")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 50 or not 10 <= args.seconds <= 900:
        raise SystemExit("--users must be 1-50 and --seconds 10-900 (the load test is bounded)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    from engine.samples import sample_clips

    clips = [c.path for c in sample_clips() if c.group == "demo"]
    with tempfile.TemporaryDirectory(prefix="asrq-load-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        server = start_server(data_dir, port)
        try:
            wait_for(url, server)
            log.info("server up at %s; %d visitors for %.0f s", url, args.users, args.seconds)
            watch = MemoryWatch(server.pid)
            watch.start()
            requests: list[Request] = []
            deadline = time.monotonic() + args.seconds
            threads = [threading.Thread(target=visitor, args=(url, clips, deadline, i, requests))
                       for i in range(args.users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=args.seconds + 900)
            watch.stop.set()
            alive = server.poll() is None
            check = Client(url, verbose=False).predict(handle_file(str(clips[0])), "tiny.en", None, "",
                                                       api_name="/transcribe")[0] if alive else ""
            with sqlite3.connect(data_dir / "history.sqlite") as db:
                history_ids = [row[0] for row in db.execute("SELECT run_id FROM runs")]
                integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            server.terminate()
            server.wait(timeout=30)
            server_log = (data_dir / "server.log").read_text()[-3000:]
    report(args, requests, watch.samples, alive, bool(check.strip()), history_ids, integrity, server_log)


def report(args, requests, memory, alive, answers_after, history_ids, integrity, server_log) -> None:
    ok_runs = {r.run_id for r in requests if r.endpoint == "/quantize" and r.outcome == "ok"}
    endpoints = {}
    for name in ("/transcribe", "/quantize"):
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
    checks = {
        "server_alive": alive, "answers_after_the_load": answers_after,
        "every_request_ok_or_busy": all(r.outcome != "error" for r in requests),
        "history_has_every_finished_run_once": sorted(history_ids) == sorted(ok_runs),
        "history_integrity": integrity,
    }
    data = {"users": args.users, "seconds": args.seconds, "endpoints": endpoints, "checks": checks,
            "peak_rss_mb": max((mb for _, mb in memory), default=None),
            "rss_first_minute_max_mb": max(first_minute, default=None),
            "rss_last_minute_max_mb": max(last_minute, default=None),
            "rss_max_mb_per_minute": [round(per_minute[m]) for m in sorted(per_minute)],
            "distinct_runs": len(ok_runs), "history_rows": len(history_ids),
            "errors": sorted({r.message for r in requests if r.outcome == "error"})[:20],
            "requests": [asdict(r) for r in requests]}
    if not all(v is True or v == "ok" for v in checks.values()):
        data["server_log_tail"] = server_log
    lines = [f"# Load test: {args.users} visitors for {args.seconds:.0f} s on a public-mode server (loopback)", "",
             f"Each visitor waits {THINK_SECONDS[0]:.0f}-{THINK_SECONDS[1]:.0f} s between requests; 20% are quantizations drawn from "
             f"{len(QUANTIZE_SETTINGS)} settings (repeats answered from the result cache), the rest transcriptions of "
             "demo clips (with the visitor's last quantized model when it has one).", "",
             "| endpoint | requests | ok | busy | error | p50 s | p95 s | busy answer p95 s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in endpoints.items():
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {name} | {e['requests']} | {e['ok']} | {e['busy']} | {e['error']} | {fmt(e['p50_s'])} | "
                     f"{fmt(e['p95_s'])} | {fmt(e['busy_p95_s'])} |")
    lines += ["", f"Peak memory, server and worker together: **{data['peak_rss_mb']:.0f} MB** "
              f"(highest in the first minute {data['rss_first_minute_max_mb']:.0f} MB, in the last minute "
              f"{data['rss_last_minute_max_mb']:.0f} MB; highest per minute: "
              f"{', '.join(str(v) for v in data['rss_max_mb_per_minute'])} MB). The caches behind it are bounded: "
              "2 full-precision models and 4 quantized results in the server, 2 models in the worker.", "",
              "| check | result |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in checks.items()],
              f"| finished runs / history rows | {len(ok_runs)} / {len(history_ids)} |", "",
              "Latency is from the visitor's side: a quantization waits for the jobs ahead of it in the worker (one at "
              "a time, on the same two cores as the transcriptions); busy answers come at once."]
    if data["errors"]:
        lines += ["", "Errors:", *[f"- {e}" for e in data["errors"]]]
    write_results(args.out, data, "\n".join(lines))
    log.info("\n".join(lines))


if __name__ == "__main__":
    main()
