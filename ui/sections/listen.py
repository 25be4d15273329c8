"""Step 2: a sample clip, an upload or a recording, transcribed by full precision and the quantized model."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.handlers import Explorer


@dataclass
class ListenSection:
    sample: gr.Dropdown
    audio: gr.Audio
    run: gr.Button
    fp_text: gr.Textbox
    q_text: gr.HighlightedText
    details: gr.Markdown


def build(explorer: Explorer) -> ListenSection:
    gr.Markdown("## 2 · Listen and compare")
    with gr.Row():
        sample = gr.Dropdown(explorer.sample_choices(), value=None, label="Sample clip", elem_id="sample")
        audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
    run = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
    with gr.Row():
        fp_text = gr.Textbox(label="Full precision", lines=3, elem_id="fp-text")
        q_text = gr.HighlightedText(label="Quantized (changed words highlighted)", elem_id="q-text",
                                    color_map={"changed": "orange", "extra": "red", "missing": "gray"})
    details = gr.Markdown(elem_id="details")
    return ListenSection(sample, audio, run, fp_text, q_text, details)


def wire(listen: ListenSection, model: gr.Dropdown, run_id: gr.Textbox, explorer: Explorer) -> None:
    listen.sample.change(explorer.sample_path, inputs=listen.sample, outputs=listen.audio, api_visibility="private")
    listen.run.click(explorer.transcribe_audio, inputs=[listen.audio, model, listen.sample, run_id],
                     outputs=[listen.fp_text, listen.q_text, listen.details], api_name="transcribe",
                     concurrency_id="cpu", concurrency_limit=None)
