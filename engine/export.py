"""Export a saved quantized model (a folder from `asrq quantize` or the page) to a runtime's own format.

A registry maps the format name to its writer; each returns a report that says what was carried exactly
and what was not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from safetensors.numpy import load_file

from engine.artifacts import WEIGHTS_FILE, load_quantized, weights_from
from engine.ct2_export import export_ctranslate2
from engine.errors import UserError
from engine.whisper_cpp_export import ExportReport, export_whisper_cpp


def _whisper_cpp(folder: Path, out: Path) -> ExportReport:
    loaded, meta = load_quantized(folder)
    weights = weights_from(meta, load_file(str(folder / WEIGHTS_FILE)), loaded.model)
    dropped = frozenset(meta["dropped"])
    full = frozenset(row["name"] for row in meta["layers"]
                     if row["bits"] >= 16 and row["name"] not in dropped and row["name"] not in weights)
    report = export_whisper_cpp(loaded, weights, out, full_precision=full, dropped=dropped)
    ideal = meta.get("size", {}).get("size_bytes")
    notes = [f"the table's own packing would take {ideal / 1e6:.1f} MB"] if ideal else []
    if meta.get("activations"):
        notes.append("activation quantization is not carried: whisper.cpp rounds activations its own way")
    return ExportReport(report.path, report.container, report.file_bytes, report.exact_layers,
                        report.ggml_rounded, report.notes + notes)


def _ctranslate2(folder: Path, out: Path) -> ExportReport:
    loaded, meta = load_quantized(folder)
    weights = weights_from(meta, load_file(str(folder / WEIGHTS_FILE)), loaded.model)
    written = export_ctranslate2(meta["model"]["name"], weights, out, frozenset(meta["dropped"]))
    size = (written / "model.bin").stat().st_size
    return ExportReport(written, "int8" if weights else "float16", size, len(weights),
                        notes=["layers left in float are rounded to int8 by CTranslate2 itself when loaded as int8"],
                        runtime="CTranslate2")


EXPORTERS: dict[str, Callable[[Path, Path], ExportReport]] = {"whisper.cpp": _whisper_cpp, "ctranslate2": _ctranslate2}


def export_quantized(folder: str | Path, fmt: str, out: str | Path) -> ExportReport:
    """Write the quantized model saved in folder as fmt at out."""
    if fmt not in EXPORTERS:
        raise UserError(f"Unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}.")
    return EXPORTERS[fmt](Path(folder), Path(out))
