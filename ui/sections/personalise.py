"""Step 4: PQM, a LoRA adapter on the NF4 model trained on the visitor's own voice."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.handlers import Explorer


@dataclass
class PersonaliseSection:
    speaker: gr.Textbox
    prompts: list[gr.Audio]
    train: gr.Button
    result: gr.Markdown


def build(explorer: Explorer) -> PersonaliseSection:
    gr.Markdown("## 4 · Personalise (PQM): teach the 4-bit model your voice")
    gr.Markdown("Read the sentences aloud (or upload recordings), then train: a small LoRA adapter (about 1% "
                "extra parameters) learns your voice on top of the frozen NF4 model. Most recordings train it "
                "(the last of them checks every epoch: the best one is kept, and no adapter at all if none "
                "helps), the last third test it.")
    speaker = gr.Textbox("my-voice", label="Adapter name", elem_id="speaker", max_lines=1)
    prompts = [gr.Audio(sources=["microphone", "upload"], type="filepath", elem_id=f"prompt-{i}",
                        label=f"{i + 1}. Read aloud: \u201c{text}\u201d")
               for i, text in enumerate(explorer.prompts())]
    train = gr.Button("Train my adapter", variant="primary", elem_id="personalize")
    result = gr.Markdown(elem_id="personal-result")
    return PersonaliseSection(speaker, prompts, train, result)


def wire(personalise: PersonaliseSection, model: gr.Dropdown, explorer: Explorer) -> None:
    # In the job queue with the quantizations: one heavy job at a time on the worker.
    personalise.train.click(explorer.personalize, inputs=[model, personalise.speaker, *personalise.prompts],
                            outputs=personalise.result, api_visibility="private", concurrency_id="quantize",
                            concurrency_limit=None)
