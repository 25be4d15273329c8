"""How the methods work: docs/methods.md (shipped as ui/methods.md, a link, so an installed ui has it)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

METHOD_NOTES = Path(__file__).resolve().parent.parent / "methods.md"


def method_notes() -> str:
    return METHOD_NOTES.read_text() if METHOD_NOTES.exists() else ""


def build() -> None:
    with gr.Accordion("How the methods work", open=False):
        gr.Markdown(method_notes())
