"""Export a saved quantized model (a folder from `asrq quantize` or the page) to a runtime's own format.

A registry maps the format name to its writer; each returns a report that says what was carried exactly
and what was not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.deploy.ct2_export import export_ctranslate2
from engine.deploy.runtimes import ModelToRun
from engine.deploy.whisper_cpp_export import ExportReport
from engine.errors import UserError


def _whisper_cpp(folder: Path, out: Path) -> ExportReport:
    model = ModelToRun.from_artifact(folder)
    report = model.write_whisper_cpp(out)
    ideal = model.meta.get("size", {}).get("size_bytes")
    notes = [f"the table's own packing would take {ideal / 1e6:.1f} MB"] if ideal else []
    if model.meta.get("activations"):
        notes.append("activation quantization is not carried: whisper.cpp rounds activations its own way")
    return replace(report, notes=report.notes + notes)


def _ctranslate2(folder: Path, out: Path) -> ExportReport:
    model = ModelToRun.from_artifact(folder)
    written = export_ctranslate2(model.base_model, model.weights, out, model.dropped)
    size = (written / "model.bin").stat().st_size
    return ExportReport(written, "int8" if model.weights else "float16", size, len(model.weights),
                        notes=["layers left in float are rounded to int8 by CTranslate2 itself when loaded as int8"],
                        runtime="CTranslate2")


EXPORTERS: dict[str, Callable[[Path, Path], ExportReport]] = {"whisper.cpp": _whisper_cpp, "ctranslate2": _ctranslate2}


def export_quantized(folder: str | Path, fmt: str, out: str | Path) -> ExportReport:
    """Write the quantized model saved in folder as fmt at out."""
    if fmt not in EXPORTERS:
        raise UserError(f"Unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}.")
    return EXPORTERS[fmt](Path(folder), Path(out))
