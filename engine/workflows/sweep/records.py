"""Where a sweep's records go: an append-only points.jsonl (what makes a sweep resumable), the run history
the page reads, and the JSON/CSV export written when the sweep ends."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

from engine.quant.size import SizeReport
from engine.run_history import RunHistory
from engine.speech.intervals import paired_delta

log = logging.getLogger(__name__)

POINTS_FILE = "points.jsonl"
# Per-clip lists stay in points.jsonl (the deltas need them); the export and --json leave them out.
PER_CLIP = ("utterance_ids", "errors", "words", "hypotheses")
CSV_COLUMNS = ("model", "method", "bits", "group_size", "seed", "status", "wer", "wer_ci95_low", "wer_ci95_high",
               "delta_wer", "delta_ci95_low", "delta_ci95_high", "size_bytes", "quant_seconds", "eval_seconds",
               "n_utterances", "preset", "layers", "error", "key")


class PointLog:
    """points.jsonl in a sweep's folder: one JSON line per finished point (ok or failed), flushed to disk
    before the next point is recorded, so a killed sweep loses at most the points that were running."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / POINTS_FILE

    def records(self) -> dict[str, dict]:
        """The latest record of each point key (a failed point run again later is replaced by its new record)."""
        latest: dict[str, dict] = {}
        if not self.path.exists():
            return latest
        for number, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a killed sweep was writing
                log.warning("%s line %d is incomplete; that point will run again", self.path, number)
                continue
            latest[record["key"]] = record
        return latest

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def finished_keys(records: dict[str, dict]) -> set[str]:
    """The points (of PointLog.records()) that finished ok: a resumed sweep skips them."""
    return {key for key, record in records.items() if record["status"] == "ok"}


def with_delta(record: dict, baseline: dict | None) -> dict:
    """The record with its paired difference to full precision on the same clips (bootstrap over clips)."""
    if record["status"] != "ok" or baseline is None or baseline["status"] != "ok" or "delta_wer" in record:
        return record  # nothing to pair, or paired already (the bootstrap is not repeated)
    if record["utterance_ids"] != baseline["utterance_ids"]:
        raise ValueError(f"{record['label']} and its baseline were scored on different clips")
    delta, interval = paired_delta([record["errors"]], baseline["errors"], record["words"], record["seed"])
    return {**record, "wer_fp32": baseline["wer"], "delta_wer": delta, "delta_ci95": interval.to_list()}


def layers_key(record: dict) -> str:
    parts = [record["preset"] or ""] + ([f"{record['layers']} rows"] if record["layers"] else [])
    return " + ".join(p for p in parts if p)


def history_summary(record: dict, sweep: str) -> dict:
    """The record in the shape of the page's run summaries (the history's columns and the page's result line)."""
    return {
        "run_id": f"sweep-{record['key']}", "model": record["model"], "method": record["method"],
        "bits": record["bits"], "group_size": record["group_size"], "seed": record["seed"],
        "config": record.get("config"), "layers_key": layers_key(record), "sweep": sweep,
        "calibration_clips": (record.get("calibration") or {}).get("clips", 0), "calibration": record.get("calibration"),
        **SizeReport(**record["size"]).to_dict(), "quantization_seconds": record["quant_seconds"],
        "eval_set": f"{record['n_utterances']} clips from {record['data']}", "eval_clips": record["n_utterances"],
        "wer_ci95": record["wer_ci95"], "delta_wer": record.get("delta_wer"), "delta_ci95": record.get("delta_ci95"),
        "demo_wer": record["wer"], "demo_wer_fp32": record.get("wer_fp32"), "demo_rtf": record["rtf"],
        "real_latency": None,  # a sweep times no real runtime: the page shows "fake quant" for its rows
    }


def record_in_history(history: RunHistory, record: dict, sweep: str) -> None:
    history.add(history_summary(record, sweep), source=f"sweep:{sweep}")


def public_record(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in PER_CLIP}


def write_exports(folder: Path, result: dict) -> None:
    """results.json (result: the object `asrq sweep --json` prints) and results.csv, one row per point."""
    (folder / "results.json").write_text(json.dumps(result, indent=1))
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in [*result["baselines"], *result["runs"]]:
            low_high = {f"{k}_low": (r.get(k) or [None, None])[0] for k in ("wer_ci95", "delta_ci95")}
            low_high |= {f"{k}_high": (r.get(k) or [None, None])[1] for k in ("wer_ci95", "delta_ci95")}
            writer.writerow({**r, **low_high})
    return result
