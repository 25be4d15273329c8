"""Where the user's data lives: adapters, run history, the app's saved results (ASRQ_DATA_DIR overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    if os.environ.get("ASRQ_DATA_DIR"):
        return Path(os.environ["ASRQ_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "asrq"
