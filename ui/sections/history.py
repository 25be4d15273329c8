"""Step 3: every finished run (the page's and `asrq sweep`'s) as a table and a size / latency / WER Pareto,
filtered by model, method and source."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.handlers import ALL, HISTORY_COLUMNS, Explorer


@dataclass
class HistorySection:
    filters: list[gr.Dropdown]  # model, method, source
    pareto_plot: gr.Plot
    table: gr.Dataframe

    @property
    def outputs(self) -> list:
        """What Explorer.history_view fills: the table, the Pareto and the filters' choices."""
        return [self.table, self.pareto_plot, *self.filters]


def build() -> HistorySection:
    gr.Markdown("## 3 · History: every finished run, and the size / latency / WER trade-off")
    with gr.Row():
        filters = [gr.Dropdown([ALL], value=ALL, label=label, elem_id=f"history-{name}", scale=1)
                   for name, label in (("model", "Model"), ("method", "Method"), ("source", "From (the page or a sweep)"))]
    pareto_plot = gr.Plot(label="Pareto", elem_id="pareto-plot")
    table = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="history", max_height=260)
    return HistorySection(filters, pareto_plot, table)


def wire(demo: gr.Blocks, history: HistorySection, explorer: Explorer) -> None:
    demo.load(explorer.history_view, inputs=history.filters, outputs=history.outputs, api_visibility="private")
    for dropdown in history.filters:
        dropdown.input(explorer.history_view, inputs=history.filters, outputs=history.outputs, api_visibility="private")
