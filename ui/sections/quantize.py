"""Step 1: choose a model, method, bits and per-layer settings; quantize; see errors, size and latency."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from engine.quant.layer_table import PRESETS
from engine.quant.registry import all_methods
from engine.whisper.models import DEFAULT_MODEL, available_models
from ui.handlers import TABLE_COLUMNS, Explorer

BITS = [8, 6, 5, 4, 3, 2]
GROUP_SIZES = [32, 64, 128, -1]


@dataclass
class QuantizeSection:
    model: gr.Dropdown
    method: gr.Dropdown
    bits: gr.Dropdown
    group_size: gr.Dropdown
    alpha: gr.Slider
    seed: gr.Number
    preset: gr.Dropdown
    eval_dir: gr.Textbox
    table: gr.Dataframe
    reset: gr.Button
    quantize_btn: gr.Button
    cancel_btn: gr.Button
    run_id: gr.Textbox
    download: gr.DownloadButton
    status: gr.Markdown
    error_plot: gr.Plot
    alpha_plot: gr.Plot
    size_plot: gr.Plot
    latency_plot: gr.Plot


def build(explorer: Explorer) -> QuantizeSection:
    installed = [m["name"] for m in available_models() if m["installed"]]
    gr.Markdown("## 1 · Quantize")
    with gr.Row():
        model = gr.Dropdown(installed, value=DEFAULT_MODEL, label="Model", elem_id="model", scale=1)
        method = gr.Dropdown([(f"{m.name}: {m.summary}", m.name) for m in all_methods().values()], value="fade",
                             label="Method", elem_id="method", scale=3)
        bits = gr.Dropdown(BITS, value=4, label="Bits", elem_id="bits", scale=1)
        group_size = gr.Dropdown(GROUP_SIZES, value=64, label="Group size (-1: per channel)", elem_id="group", scale=1)
        alpha = gr.Slider(0, 1, value=0.75, step=0.05, label="Alpha (QEP; FADE sets its own per layer)",
                          elem_id="alpha", scale=2)
        seed = gr.Number(0, precision=0, label="Calibration seed", elem_id="seed", scale=1)
        preset = gr.Dropdown([(f"{name}: {text}", name) for name, (text, _) in PRESETS.items()], value="uniform",
                             label="Preset (fills the per-layer table)", elem_id="preset", scale=2)
    # Private servers may score on any folder of real recordings; a public one uses its owner's ASRQ_EVAL_DIR.
    eval_dir = gr.Textbox(explorer.policy.eval_dir or "", label="Score WER on (folder of real clips with "
                          "refs.tsv or LibriSpeech layout; empty: the synthetic demo clips)", elem_id="eval-dir",
                          max_lines=1, visible=not explorer.policy.public)
    with gr.Accordion("Per-layer settings (edit bits, group size, alpha, action)", open=False):
        table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=True, elem_id="layers", max_height=360,
                             static_columns=[0, 1, 2, 3])
        reset = gr.Button("Reset table to the settings above", size="sm")
    with gr.Row():
        quantize_btn = gr.Button("Quantize", variant="primary", elem_id="quantize")
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
        run_id = gr.Textbox(label="Quantized model id", interactive=False, elem_id="run-id", max_lines=1)
        download = gr.DownloadButton("Download for whisper.cpp", visible=False, elem_id="download-whisper-cpp")
    status = gr.Markdown(elem_id="status")
    with gr.Row():
        error_plot = gr.Plot(label="Error propagation", elem_id="error-plot")
        alpha_plot = gr.Plot(label="Bits and alpha", elem_id="alpha-plot")
    with gr.Row():
        size_plot = gr.Plot(label="Size", elem_id="size-plot")
        latency_plot = gr.Plot(label="Latency", elem_id="latency-plot")
    return QuantizeSection(model, method, bits, group_size, alpha, seed, preset, eval_dir, table, reset, quantize_btn,
                           cancel_btn, run_id, download, status, error_plot, alpha_plot, size_plot, latency_plot)


def wire(demo: gr.Blocks, q: QuantizeSection, explorer: Explorer, history_outputs: list, filters: list):
    """The table follows the settings; Quantize runs the job, then the history refreshes with its filters."""
    table_inputs = [q.model, q.bits, q.group_size, q.preset]
    demo.load(explorer.layer_rows, inputs=table_inputs, outputs=q.table, api_visibility="private")
    for trigger in (q.reset.click, q.bits.change, q.group_size.change, q.model.change, q.preset.change):
        trigger(explorer.layer_rows, inputs=table_inputs, outputs=q.table, api_visibility="private")
    q.quantize_btn.click(
        explorer.quantize_model, inputs=[q.model, q.method, q.bits, q.group_size, q.alpha, q.seed, q.table, q.eval_dir],
        outputs=[q.run_id, q.status, q.error_plot, q.alpha_plot, q.size_plot, q.latency_plot, q.download],
        api_visibility="private", concurrency_id="quantize", concurrency_limit=None,
    ).then(explorer.history_view, inputs=filters, outputs=history_outputs, api_visibility="private")
    # Cancel must never wait behind the job it cancels: its own unlimited concurrency group.
    q.cancel_btn.click(explorer.cancel, outputs=q.status, api_visibility="private", concurrency_id="cancel",
                       concurrency_limit=None)
    gr.api(explorer.api_quantize, api_name="quantize", concurrency_id="quantize", concurrency_limit=None)
