"""`asrq sweep`: the grid file, resumable records, in-process and local Ray giving the same records, the history."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.run_history import RunHistory
from engine.workflows.sweep.grid import GridError, parse_grid
from engine.workflows.sweep.records import PointLog, finished_keys
from engine.workflows.sweep.runner import InProcess, SweepState, run_sweep

ISSUE_FORM = """
models = ["tiny.en"]
data = "{data}"
calib = "sample_audio"
seeds = [0, 1]
limit = {limit}
[[methods]]
method = "rtn"
bits = [4, 8]
group_size = 64
"""
# Refused when the point runs (a 1-bit row in an integer grid), not when the grid is read.
FAILING_ENTRY = """
[[methods]]
method = "rtn"
bits = 4
layers = "one-bit.json"
"""


def grid_file(folder: Path, data: Path, limit: int = 2, failing: bool = False) -> Path:
    (folder / "one-bit.json").write_text(json.dumps([{"name": "model.encoder.layers.0.fc1", "bits": 1}]))
    path = folder / "grid.toml"
    path.write_text(ISSUE_FORM.format(data=data, limit=limit) + (FAILING_ENTRY if failing else ""))
    return path


def test_the_issue_form_gives_four_points_one_baseline_and_stable_keys(tmp_path):
    grid = parse_grid(ISSUE_FORM.format(data=tmp_path, limit=0), base=tmp_path)
    assert [(p.method, p.bits, p.group_size, p.seed) for p in grid.points] == [
        ("rtn", 4, 64, 0), ("rtn", 4, 64, 1), ("rtn", 8, 64, 0), ("rtn", 8, 64, 1)]
    assert [b.method for b in grid.baselines] == ["fp32"]
    again = parse_grid(ISSUE_FORM.format(data=tmp_path, limit=0), base=tmp_path)
    assert [p.key for p in grid.points] == [p.key for p in again.points]
    assert len({p.key for p in grid.points}) == 4
    more_threads = parse_grid("cpus_per_point = 2\n" + ISSUE_FORM.format(data=tmp_path, limit=0), base=tmp_path)
    assert [p.key for p in more_threads.points] == [p.key for p in grid.points]  # threads do not change a result


@pytest.mark.parametrize("edit, words", [
    (lambda t: 'colour = "blue"\n' + t, "Unknown grid key"),
    (lambda t: t.replace('method = "rtn"', 'method = "magic"'), "Unknown method"),
    (lambda t: t.replace('models = ["tiny.en"]', 'models = ["huge"]'), "Unknown model"),
    (lambda t: t.replace("bits = [4, 8]", "bits = [4, 1]"), "bits must be one of"),
    (lambda t: t.replace("group_size = 64", "group_size = 64\nalpha = 0.5"), "has no setting"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = []"), "empty list"),
    (lambda t: t + "[[methods]]\nmethod = \"rtn\"\nbits = 4\n", "same point twice"),
    (lambda t: t.replace("[[methods]]", "[[methods"), "not valid TOML"),
    (lambda t: t.replace('calib = "sample_audio"', 'calib = "no-such-folder"'), "does not exist"),
])
def test_a_bad_grid_is_refused_in_one_sentence(tmp_path, edit, words):
    with pytest.raises(GridError, match=words):
        parse_grid(edit(ISSUE_FORM.format(data=tmp_path, limit=0)), base=tmp_path)


def test_the_point_log_keeps_the_latest_record_and_skips_a_torn_line(tmp_path):
    log = PointLog(tmp_path)
    log.append({"key": "a", "status": "failed", "error": "x"})
    log.append({"key": "b", "status": "ok"})
    log.append({"key": "a", "status": "ok"})
    with log.path.open("a") as f:
        f.write('{"key": "c", "sta')  # a sweep killed while writing
    assert finished_keys(log.records()) == {"a", "b"}
    assert set(log.records()) == {"a", "b"}


def test_progress_state_counts_and_estimates():
    state = SweepState(total=10, done=3, skipped=2, failed=1, running=2, started=time.monotonic() - 20)
    assert state.left == 4
    assert state.eta_seconds == pytest.approx(10 * 6, rel=0.05)  # 20 s for 2 points here; 6 still to finish
    assert SweepState(total=3).eta_seconds is None


def test_a_version_1_history_gains_the_source_column_and_filters(tmp_path):
    path = tmp_path / "h.sqlite"
    with sqlite3.connect(path) as db:  # the schema before sweeps
        db.executescript("""CREATE TABLE runs (run_id TEXT PRIMARY KEY, finished REAL NOT NULL, session TEXT,
            model TEXT NOT NULL, method TEXT NOT NULL, bits INTEGER NOT NULL, group_size INTEGER NOT NULL,
            seed INTEGER NOT NULL, layers_key TEXT NOT NULL, size_bytes INTEGER NOT NULL,
            fp32_size_bytes INTEGER NOT NULL, demo_wer REAL, demo_wer_fp32 REAL, demo_rtf REAL, seconds REAL,
            summary TEXT NOT NULL);
            INSERT INTO runs VALUES ('old', 1.0, NULL, 'tiny.en', 'fade', 4, 64, 0, '', 1, 2, 0.1, 0.1, 0.1, 1.0, '{}');""")
    history = RunHistory(path)
    summary = {"model": "base", "method": "rtn", "bits": 4, "group_size": 64, "seed": 0,
               "size_bytes": 1, "fp32_size_bytes": 2, "demo_wer": 0.2, "demo_wer_fp32": 0.1}
    history.add({**summary, "run_id": "new"}, source="sweep:grid")
    assert {r["run_id"]: r["source"] for r in history.runs()} == {"old": "page", "new": "sweep:grid"}
    assert [r["run_id"] for r in history.runs(method="rtn")] == ["new"]
    assert [r["run_id"] for r in history.runs(model="tiny.en", source="page")] == ["old"]
    assert history.runs(model="tiny.en", method="rtn") == []
    assert history.distinct("source") == ["page", "sweep:grid"]
    with pytest.raises(ValueError):
        history.runs(session="x")


def comparable(record: dict) -> tuple:
    return (record["key"], record["status"], record.get("wer"), record.get("errors"), record.get("size_bytes"),
            record.get("error"))


@pytest.mark.slow
def test_in_process_and_local_ray_give_identical_records_and_a_failure_does_not_stop_the_sweep(tmp_path, test_other, capsys):
    pytest.importorskip("ray")
    from engine.workflows.sweep.grid import load_grid
    from engine.workflows.sweep.runner import RayTasks

    grid_path = grid_file(tmp_path, test_other, failing=True)
    history_path = tmp_path / "history.sqlite"
    assert main(["sweep", str(grid_path), "--in-process", "--json", "--out", str(tmp_path / "here"),
                 "--history", str(history_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    runs = printed["runs"]
    assert [(r["method"], r["bits"], r["seed"], r["status"]) for r in runs] == [
        ("rtn", 4, 0, "ok"), ("rtn", 4, 1, "ok"), ("rtn", 8, 0, "ok"), ("rtn", 8, 1, "ok"),
        ("rtn", 4, 0, "failed"), ("rtn", 4, 1, "failed")]
    for r in runs:
        assert {"model", "method", "bits", "group_size", "seed", "wer", "size_bytes", "status"} <= set(r) or \
            r["status"] == "failed"
    assert all("1-bit layers need gq" in r["error"] for r in runs if r["status"] == "failed")
    ok = [r for r in runs if r["status"] == "ok"]
    assert ok[0]["size_bytes"] < ok[2]["size_bytes"] < printed["baselines"][0]["size_bytes"]
    assert all(r["wer_ci95"][0] <= r["wer"] <= r["wer_ci95"][1] and r["delta_ci95"] is not None for r in ok)

    grid = load_grid(grid_path)
    on_ray = run_sweep(grid, tmp_path / "ray", RayTasks(num_cpus=2, cpus_per_point=1), history=None)
    assert on_ray.executor == "ray"
    here = PointLog(tmp_path / "here").records()
    there = PointLog(tmp_path / "ray").records()
    assert sorted(map(comparable, here.values())) == sorted(map(comparable, there.values()))

    history = RunHistory(history_path)
    rows = history.runs(source=f"sweep:{grid.name}")
    assert len(rows) == 4 and all(r["demo_wer_fp32"] == printed["baselines"][0]["wer"] for r in rows)
    assert all(r["eval_set"] == f"2 clips from {test_other.resolve()}" for r in rows)
    assert (tmp_path / "here" / "results.csv").read_text().count("\n") == 1 + 1 + 6  # header, baseline, points

    # The page's history and Pareto show the sweep, filtered by model and method.
    from ui.handlers import ALL, Explorer

    explorer = Explorer(history=history)
    table, figure, models, methods, sources = explorer.history_view("tiny.en", "rtn", f"sweep:{grid.name}")
    assert len(table) == 4 and {row[-2] for row in table} == {f"sweep:{grid.name}"}
    assert sources["choices"] == [ALL, f"sweep:{grid.name}"] and methods["choices"] == [ALL, "rtn"]
    names = [trace.name for trace in figure.data]
    assert "tiny.en fp32" in names and sum(n.startswith("tiny.en rtn") for n in names) == 2  # 4 and 8 bits, 2 seeds each
    assert explorer.history_view(ALL, "gptq", ALL)[0] == []


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_redoing_finished_points(tmp_path, test_other, tiny):
    grid_path = grid_file(tmp_path, test_other, limit=1)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "sweep", str(grid_path), "--in-process",
                              "--out", str(out), "--no-history"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    points = out / "points.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if points.exists() and len(points.read_text().splitlines()) >= 2:  # the baseline and one point
            break
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = PointLog(out).records()
    assert 2 <= len(before) < 5, "the sweep should have been killed after its first point"

    from engine.workflows.sweep.grid import load_grid

    executor = InProcess()
    executor.models["tiny.en"] = tiny  # the same weights the child loaded, without a second load
    outcome = run_sweep(load_grid(grid_path), out, executor)
    assert outcome.skipped == len(before)
    lines = [json.loads(line) for line in points.read_text().splitlines()]
    assert len(lines) == 5 and len({line["key"] for line in lines}) == 5  # nothing ran twice
    after = PointLog(out).records()
    assert all(after[key]["finished"] == record["finished"] for key, record in before.items())
    assert [r["status"] for r in outcome.runs] == ["ok"] * 4


def test_ray_address_without_ray_or_with_in_process_is_one_sentence(tmp_path, test_other, capsys):
    grid_path = grid_file(tmp_path, test_other)
    assert main(["sweep", str(grid_path), "--in-process", "--address", "auto"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "Cannot read the grid file" in capsys.readouterr().err

