"""Run history in SQLite: every finished quantization is one row (what the page's history and Pareto plots show).

The page's jobs and `asrq sweep` write the same table (the `source` column says which: "page" or
"sweep:NAME"), so a sweep's grid appears in the page's history and Pareto.

Each write is one short transaction, so a crash or a cancelled job leaves either the whole row or nothing;
WAL journaling lets several processes read while one writes, and a busy timeout makes concurrent writers
wait instead of failing. The run id is the primary key: the same settings finished twice stay one row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from engine.paths import data_dir

SCHEMA_VERSION = 2  # 2: the source column
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    finished REAL NOT NULL,
    session TEXT,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    bits INTEGER NOT NULL,
    group_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    layers_key TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    fp32_size_bytes INTEGER NOT NULL,
    demo_wer REAL,
    demo_wer_fp32 REAL,
    demo_rtf REAL,
    seconds REAL,
    summary TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'page'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = ("run_id", "finished", "session", "model", "method", "bits", "group_size", "seed", "layers_key", "size_bytes",
           "fp32_size_bytes", "demo_wer", "demo_wer_fp32", "demo_rtf", "seconds", "source")
FILTERS = ("model", "method", "source")  # columns runs() can filter on


def default_history_path() -> Path:
    return data_dir() / "history.sqlite"


# Kept in the run's artifact folder, not in its history row: an edited layer table can be a thousand rows
# (the row keeps its short layers_key), and the per-layer records are for the page's plots.
ARTIFACT_ONLY = ("overrides", "per_layer", "per_block", "transcripts")


class RunHistory:
    """The runs table at ``path`` (created on first use)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_history_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "source" not in columns:  # a version 1 history: its rows all came from the page
                db.execute("ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT 'page'")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def add(self, summary: dict, session: str | None = None, source: str = "page") -> None:
        """Record a finished run (a summary from the quantize task or a sweep point); the same run id is written once."""
        row = (summary["run_id"], time.time(), session, summary["model"], summary["method"], summary["bits"],
               summary["group_size"], summary["seed"], summary.get("layers_key", ""), summary["size_bytes"],
               summary["fp32_size_bytes"], summary.get("demo_wer"), summary.get("demo_wer_fp32"),
               summary.get("demo_rtf"), summary.get("quantization_seconds"), source,
               json.dumps({k: v for k, v in summary.items() if k not in ARTIFACT_ONLY}))
        with closing(self._connect()) as db, db:
            db.execute(f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}, summary) VALUES "
                       f"({', '.join('?' * (len(COLUMNS) + 1))})", row)

    def runs(self, limit: int = 500, **where: str | None) -> list[dict]:
        """Most recent first, without the full summaries (but with the evaluation set's name and the real runtime's
        time). where: model=, method=, source= keep only the rows equal to it (None or "" keeps every row)."""
        unknown = set(where) - set(FILTERS)
        if unknown:
            raise ValueError(f"runs() filters on {', '.join(FILTERS)}, not {', '.join(sorted(unknown))}")
        chosen = {k: v for k, v in where.items() if v}
        clause = f"WHERE {' AND '.join(f'{k} = ?' for k in chosen)} " if chosen else ""
        with closing(self._connect()) as db:
            cursor = db.execute(f"SELECT {', '.join(COLUMNS)}, json_extract(summary, '$.eval_set'), "
                                "json_extract(summary, '$.real_latency.rtf'), "
                                "json_extract(summary, '$.real_latency.runtime') FROM runs "
                                f"{clause}ORDER BY finished DESC LIMIT ?", (*chosen.values(), limit))
            names = (*COLUMNS, "eval_set", "real_rtf", "real_runtime")
            return [dict(zip(names, values)) for values in cursor.fetchall()]

    def summary(self, run_id: str) -> dict | None:
        with closing(self._connect()) as db:
            found = db.execute("SELECT summary FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return json.loads(found[0]) if found else None

    def distinct(self, column: str) -> list[str]:
        """The values of a filter column present in the history (the page's filter choices)."""
        if column not in FILTERS:
            raise ValueError(f"{column!r} is not one of {FILTERS}")
        with closing(self._connect()) as db:
            return [v for (v,) in db.execute(f"SELECT DISTINCT {column} FROM runs ORDER BY {column}")]

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
