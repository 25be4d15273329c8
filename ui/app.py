"""Builds the explorer page from its sections and launches it. Layout and event wiring only."""

from __future__ import annotations

import logging
import os
import threading

import gradio as gr

from serving.memory import limit_malloc_arenas
from ui.handlers import Explorer
from ui.sections import history, how_it_works, listen, personalise, quantize

INTRO = """# ASR Quantization Explorer
Squeeze Whisper into fewer bits and hear what it costs. **1.** Pick a method and bits, press **Quantize**.
**2.** Pick a clip, upload one or record yourself, press **Transcribe**: the full-precision and the quantized
model answer side by side, with the words that changed highlighted. **3.** Compare every run so far.
**4.** Optionally teach the 4-bit model your own voice."""


def build_app(explorer: Explorer | None = None) -> gr.Blocks:
    """The page: its sections in the order a visitor uses them (ui/sections/), then their events."""
    explorer = explorer or Explorer()
    # Uploaded and recorded files are deleted after an hour, so a long workshop does not fill the disk.
    with gr.Blocks(title="ASR Quantization Explorer", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        quantizing = quantize.build(explorer)
        listening = listen.build(explorer)
        runs = history.build()
        personalising = personalise.build(explorer)
        how_it_works.build()

        quantize.wire(demo, quantizing, explorer, runs.outputs, runs.filters)
        listen.wire(listening, quantizing.model, quantizing.run_id, explorer)
        history.wire(demo, runs, explorer)
        personalise.wire(personalising, quantizing.model, explorer)
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
