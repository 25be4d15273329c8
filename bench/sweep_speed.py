"""The same 8-point grid in-process (one point at a time on every core, then on one core) and on local Ray
(one point per core), in one run: wall times, their ratio, and whether runs on the same number of threads per
point gave the same records.

    python -m bench.sweep_speed [--limit 10] [--n-calib 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import speech, write_results
from engine.workflows.sweep.grid import parse_grid
from engine.workflows.sweep.records import PointLog
from engine.workflows.sweep.runner import InProcess, RayTasks, run_sweep

GRID = """
name = "sweep-speed"
models = ["tiny.en"]
data = "{data}"
calib = "sample_audio"
seeds = [0, 1]
limit = {limit}
n_calib = {n_calib}
cpus_per_point = {cpus}
[[methods]]
method = "rtn"
bits = [3, 4]
[[methods]]
method = "gptq"
bits = 4
[[methods]]
method = "nf4"
bits = 4
"""


def _same(a: dict, b: dict) -> tuple[int, int]:
    """(points whose transcripts' error counts agree, points compared)."""
    keys = sorted(set(a) & set(b))
    return sum(a[k].get("errors") == b[k].get("errors") and a[k]["status"] == b[k]["status"] for k in keys), len(keys)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=10, help="test-other clips each point scores")
    parser.add_argument("--n-calib", type=int, default=16)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    data = speech("librispeech-test-other")
    rows, records = [], {}
    with tempfile.TemporaryDirectory(prefix="asrq-sweep-speed-") as tmp:
        for name, cpus in (("in-process", cores), ("in-process, 1 thread", 1), ("local Ray", 1)):
            grid = parse_grid(GRID.format(data=data, limit=args.limit, n_calib=args.n_calib, cpus=cpus))
            executor = InProcess() if name.startswith("in-process") else RayTasks(num_cpus=cores, cpus_per_point=1)
            folder = Path(tmp) / name.replace(" ", "-").replace(",", "")
            start = time.perf_counter()
            outcome = run_sweep(grid, folder, executor)
            wall = time.perf_counter() - start
            records[name] = PointLog(folder).records()
            rows.append({"executor": name, "workers": 1 if name.startswith("in-process") else cores,
                         "threads_per_point": cpus,
                         "points": len(outcome.runs), "ok": sum(r["status"] == "ok" for r in outcome.runs),
                         "wall_seconds": wall})
    base = rows[0]["wall_seconds"]
    for row in rows:
        row["time_ratio"] = row["wall_seconds"] / base
    agree, compared = _same(records["in-process, 1 thread"], records["local Ray"])
    result = {"rows": rows, "records_agree": agree, "records_compared": compared, "limit": args.limit,
              "n_calib": args.n_calib}
    lines = [f"# Sweep speed: the same {rows[0]['points']}-point grid (+ its fp32 baseline) in-process and on local Ray",
             "", f"tiny.en; rtn 3/4-bit, gptq 4-bit, nf4 x 2 calibration seeds; {args.limit} test-other clips per point, "
             f"{args.n_calib} sample_audio calibration clips; {cores} cores, one run.", "",
             "| executor | workers | threads per point | points ok | wall s | time / in-process |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['executor']} | {r['workers']} | {r['threads_per_point']} | {r['ok']}/{r['points']} | "
              f"{r['wall_seconds']:.0f} | {r['time_ratio']:.2f} |" for r in rows]
    lines += ["", f"Per-clip error counts equal in-process on 1 thread and on Ray (1 thread per point) for {agree} "
              f"of {compared} points (baseline included). Ray's time includes starting Ray and its actors, which "
              "load the model once each."]
    write_results("sweep_speed", result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
