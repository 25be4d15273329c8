"""`asrq sweep GRID.toml`: choose the executor, show a progress bar, print or summarise the outcome."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys

from engine.errors import UserError
from engine.paths import data_dir
from engine.run_history import RunHistory
from engine.workflows.sweep.grid import load_grid
from engine.workflows.sweep.runner import InProcess, RayTasks, SweepState, run_sweep

log = logging.getLogger(__name__)


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="quantize and evaluate a grid of models x methods x bits x seeds (Ray optional)")
    p.add_argument("grid", help="the grid's TOML file (see docs/sweeps.md)")
    p.add_argument("--address", help="a running Ray cluster: 'auto' or ray://HOST:10001 (default: a local Ray when "
                                     "the sweep extra is installed, else this process)")
    p.add_argument("--max-parallel", type=int, help="points running at once on Ray (default: CPUs / cpus_per_point)")
    p.add_argument("--in-process", action="store_true", help="run here one point at a time even if Ray is installed")
    p.add_argument("--out", help="the sweep's folder: points.jsonl, results.json, results.csv "
                                 "(default: the data folder's sweeps/NAME)")
    p.add_argument("--history", help="run history to record into (default: the page's own history.sqlite)")
    p.add_argument("--no-history", action="store_true", help="do not record into the run history")
    p.add_argument("--json", action="store_true", help="print one JSON object with a runs list at the end")
    p.set_defaults(func=sweep_command)


def choose_executor(args: argparse.Namespace, grid) -> InProcess | RayTasks:
    if args.in_process:
        if args.address:
            raise UserError("--in-process and --address contradict each other: choose one.")
        return InProcess()
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, not {args.max_parallel}.")
    if importlib.util.find_spec("ray") is None:
        if args.address:
            raise UserError("--address needs Ray: pip install '.[sweep]'.")
        log.info("Ray is not installed: running the points here, one at a time")
        return InProcess()
    return RayTasks(args.address, args.max_parallel, cpus_per_point=grid.cpus_per_point, memory_gb=grid.memory_gb)


class ProgressBar:
    """done / running / failed / left with an ETA, on stderr (tqdm; silent when stderr is not a terminal)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="point", file=sys.stderr, disable=None, dynamic_ncols=True)

    def __call__(self, state: SweepState) -> None:
        self.bar.n = state.done + state.failed
        eta = "?" if state.eta_seconds is None else f"{state.eta_seconds / 60:.0f} min"
        self.bar.set_postfix_str(f"done {state.done}, running {state.running}, failed {state.failed}, "
                                 f"left {state.left}, ETA {eta}", refresh=True)

    def close(self) -> None:
        self.bar.close()


def sweep_command(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid)
    folder = args.out or data_dir() / "sweeps" / grid.name
    history = None if args.no_history else RunHistory(args.history)
    executor = choose_executor(args, grid)
    bar = ProgressBar(len(grid.points) + len(grid.baselines))
    try:
        outcome = run_sweep(grid, folder, executor, history, progress=bar)
    finally:
        bar.close()
    failed = [r for r in outcome.runs if r["status"] != "ok"]
    if args.json:
        print(json.dumps(outcome.to_json(), indent=1))
    else:
        for r in [*outcome.baselines, *outcome.runs]:
            wer = f"WER {100 * r['wer']:6.2f}%" if r["status"] == "ok" else f"failed: {r['error']}"
            delta = f"  {100 * r['delta_wer']:+.2f} vs fp32" if r.get("delta_wer") is not None else ""
            print(f"{r['label']:48s} {wer}{delta}")
        print(f"{len(outcome.runs) - len(failed)} of {len(outcome.runs)} points ok ({outcome.skipped} already "
              f"finished) in {outcome.seconds:.0f} s on {outcome.executor}; results in {outcome.folder}")
    return 0
