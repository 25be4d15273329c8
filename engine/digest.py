"""SHA-256 of files read in chunks: the conversion cache's key, a saved artifact's weights check."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

CHUNK = 1 << 22


def files_sha256(paths: Sequence[Path], salt: str = "") -> str:
    """Hex digest of salt followed by the files' bytes in order."""
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        with Path(path).open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()
