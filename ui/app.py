"""Builds the explorer page from its sections and launches it."""

from __future__ import annotations

import os

import gradio as gr

from engine.models import DEFAULT_MODEL, available_models
from ui.handlers import Explorer

INTRO = """# ASR Quantization Explorer
Pick a clip, or record your own voice, and see how Whisper transcribes it.
Quantization (fewer bits per weight) comes next: this page grows into a side-by-side comparison."""


def build_app(explorer: Explorer | None = None) -> gr.Blocks:
    explorer = explorer or Explorer()
    installed = [m["name"] for m in available_models() if m["installed"]]
    with gr.Blocks(title="ASR Quantization Explorer") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(installed, value=DEFAULT_MODEL, label="Model", elem_id="model")
            sample = gr.Dropdown(explorer.sample_choices(), value=None, label="Sample clip", elem_id="sample")
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
        run = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        text = gr.Textbox(label="Full-precision transcript", lines=3, elem_id="fp-text")
        details = gr.Markdown(elem_id="details")

        sample.change(explorer.sample_path, inputs=sample, outputs=audio, api_visibility="private")
        run.click(explorer.transcribe_audio, inputs=[audio, model, sample], outputs=[text, details],
                  api_name="transcribe", concurrency_id="cpu")
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def launch(host: str | None = None, port: int | None = None) -> None:
    demo = build_app()
    demo.launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        ssr_mode=False,
        footer_links=["api", "gradio"],
    )
