"""Builds the explorer page from its sections and launches it. Layout and event wiring only."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import gradio as gr

from engine.quant.layer_table import PRESETS
from engine.quant.registry import all_methods
from engine.whisper.models import DEFAULT_MODEL, available_models
from serving.memory import limit_malloc_arenas
from ui.handlers import ALL, HISTORY_COLUMNS, TABLE_COLUMNS, Explorer

INTRO = """# ASR Quantization Explorer
Squeeze Whisper into fewer bits and hear what it costs. **1.** Pick a method and bits, press **Quantize**.
**2.** Pick a clip, upload one or record yourself, press **Transcribe**: the full-precision and the quantized
model answer side by side, with the words that changed highlighted."""

# docs/methods.md, through a link that makes it package data (so an installed ui finds it too).
METHOD_NOTES = Path(__file__).resolve().parent / "methods.md"
BITS = [8, 6, 5, 4, 3, 2]
GROUP_SIZES = [32, 64, 128, -1]


def _method_notes() -> str:
    return METHOD_NOTES.read_text() if METHOD_NOTES.exists() else ""


def build_app(explorer: Explorer | None = None) -> gr.Blocks:
    explorer = explorer or Explorer()
    installed = [m["name"] for m in available_models() if m["installed"]]
    # Uploaded and recorded files are deleted after an hour, so a long workshop does not fill the disk.
    with gr.Blocks(title="ASR Quantization Explorer", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(installed, value=DEFAULT_MODEL, label="Model", elem_id="model", scale=1)
            method = gr.Dropdown([(f"{m.name}: {m.summary}", m.name) for m in all_methods().values()], value="fade",
                                 label="Method", elem_id="method", scale=3)
            bits = gr.Dropdown(BITS, value=4, label="Bits", elem_id="bits", scale=1)
            group_size = gr.Dropdown(GROUP_SIZES, value=64, label="Group size (-1: per channel)", elem_id="group", scale=1)
            alpha = gr.Slider(0, 1, value=0.75, step=0.05, label="Alpha (QEP; FADE sets its own per layer)", elem_id="alpha", scale=2)
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
        with gr.Accordion("History: every finished run (this page's and `asrq sweep`'s), and the size / latency / "
                          "WER trade-off", open=True):
            with gr.Row():
                filters = [gr.Dropdown([ALL], value=ALL, label=label, elem_id=f"history-{name}", scale=1)
                           for name, label in (("model", "Model"), ("method", "Method"), ("source", "From (page or a sweep)"))]
            pareto_plot = gr.Plot(label="Pareto", elem_id="pareto-plot")
            history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="history", max_height=260)

        gr.Markdown("## Listen and compare")
        with gr.Row():
            sample = gr.Dropdown(explorer.sample_choices(), value=None, label="Sample clip", elem_id="sample")
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
        run = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
        with gr.Row():
            fp_text = gr.Textbox(label="Full precision", lines=3, elem_id="fp-text")
            q_text = gr.HighlightedText(label="Quantized (changed words highlighted)", elem_id="q-text",
                                        color_map={"changed": "orange", "extra": "red", "missing": "gray"})
        details = gr.Markdown(elem_id="details")
        gr.Markdown("## Personalise (PQM): teach the 4-bit model your voice")
        gr.Markdown("Read the sentences aloud (or upload recordings), then train: a small LoRA adapter (about 1% "
                    "extra parameters) learns your voice on top of the frozen NF4 model. Most recordings train it "
                    "(the last of them checks every epoch: the best one is kept, and no adapter at all if none "
                    "helps), the last third test it.")
        speaker = gr.Textbox("my-voice", label="Adapter name", elem_id="speaker", max_lines=1)
        prompt_audio = [gr.Audio(sources=["microphone", "upload"], type="filepath", elem_id=f"prompt-{i}",
                                 label=f"{i + 1}. Read aloud: \u201c{text}\u201d")
                        for i, text in enumerate(explorer.prompts())]
        train_btn = gr.Button("Train my adapter", variant="primary", elem_id="personalize")
        personal_result = gr.Markdown(elem_id="personal-result")
        with gr.Accordion("How the methods work", open=False):
            gr.Markdown(_method_notes())

        table_inputs = [model, bits, group_size, preset]
        demo.load(explorer.layer_rows, inputs=table_inputs, outputs=table, api_visibility="private")
        for trigger in (reset.click, bits.change, group_size.change, model.change, preset.change):
            trigger(explorer.layer_rows, inputs=table_inputs, outputs=table, api_visibility="private")
        history_outputs = [history, pareto_plot, *filters]
        demo.load(explorer.history_view, inputs=filters, outputs=history_outputs, api_visibility="private")
        for dropdown in filters:
            dropdown.input(explorer.history_view, inputs=filters, outputs=history_outputs, api_visibility="private")
        quantize_btn.click(explorer.quantize_model, inputs=[model, method, bits, group_size, alpha, seed, table, eval_dir],
                           outputs=[run_id, status, error_plot, alpha_plot, size_plot, latency_plot, download],
                           api_visibility="private", concurrency_id="quantize", concurrency_limit=None
                           ).then(explorer.history_view, inputs=filters, outputs=history_outputs, api_visibility="private")
        # Cancel must never wait behind the job it cancels: its own unlimited concurrency group.
        cancel_btn.click(explorer.cancel, outputs=status, api_visibility="private", concurrency_id="cancel",
                         concurrency_limit=None)
        gr.api(explorer.api_quantize, api_name="quantize", concurrency_id="quantize", concurrency_limit=None)
        train_btn.click(explorer.personalize, inputs=[model, speaker, *prompt_audio], outputs=personal_result,
                        api_visibility="private", concurrency_id="quantize", concurrency_limit=None)
        sample.change(explorer.sample_path, inputs=sample, outputs=audio, api_visibility="private")
        run.click(explorer.transcribe_audio, inputs=[audio, model, sample, run_id], outputs=[fp_text, q_text, details],
                  api_name="transcribe", concurrency_id="cpu", concurrency_limit=None)
    # Heavy jobs and transcriptions start at once and wait in the explorer's bounded waiting rooms (a full room
    # answers "busy, try again"); the quick table and sample events queue in gradio, one at a time.
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch_options(explorer: Explorer) -> dict:
    """gradio launch() settings that follow the serving policy (uploads are capped before they reach a handler)."""
    # allowed_paths: the saved results, so the page can hand out a run's whisper.cpp file (nothing secret there).
    return {"max_file_size": explorer.policy.max_upload_bytes, "ssr_mode": False, "footer_links": ["api", "gradio"],
            "allowed_paths": [str(explorer.artifact_root)]}


def launch(host: str | None = None, port: int | None = None) -> None:
    limit_malloc_arenas()  # before gradio starts its threads: memory stays flat over a long workshop
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    explorer = Explorer()
    explorer.policy.apply_transcription_threads()
    logging.getLogger(__name__).info("serving in %s mode; threads: %s", explorer.policy.mode,
                                     explorer.policy.thread_split)
    threading.Thread(target=explorer.warm_up_transcripts, name="asrq-warm-up", daemon=True).start()
    explorer.start_warm_up()  # idle-time quantizations in the worker (public mode by default; ASRQ_WARM_UP)
    build_app(explorer).launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port or int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        **launch_options(explorer),
    )
