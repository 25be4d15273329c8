"""Plotly figures of a quantization result: error propagation per layer, alpha per layer, size gauge."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.quant.diagnostics import LayerRecord
from engine.quant.size import SizeReport

HEIGHT = 340


def _labels(records: list[LayerRecord]) -> list[str]:
    """The full name of each layer, for hover text: 'encoder block 0: self_attn.q_proj'."""
    return [f"{r.part} block {r.block}: {r.kind}" for r in records]


def _block_axis(fig: go.Figure, records: list[LayerRecord]) -> list[int]:
    """Layers at x = 0, 1, ... in execution order; one tick per block (E0, E1, ..., D0, ...) and every other
    block shaded, so the blocks read as groups; the layer names are on hover. Returns the x positions."""
    x = list(range(len(records)))
    starts = [i for i, r in enumerate(records)
              if i == 0 or (r.part, r.block) != (records[i - 1].part, records[i - 1].block)]
    ends = starts[1:] + [len(records)]
    names = [f"{'E' if records[i].part == 'encoder' else 'D'}{records[i].block}" for i in starts]
    for k, (a, b) in enumerate(zip(starts, ends)):
        if k % 2 == 0:
            fig.add_vrect(x0=a - 0.5, x1=b - 0.5, fillcolor="#888", opacity=0.08, line_width=0, layer="below")
    fig.update_xaxes(tickmode="array", tickvals=[(a + b - 1) / 2 for a, b in zip(starts, ends)], ticktext=names,
                     tickfont=dict(size=12), title_text="block (E: encoder, D: decoder); hover for the layer")
    return x


def error_propagation(records: list[LayerRecord], title: str,
                      others: list[tuple[str, list[LayerRecord]]] = ()) -> go.Figure:
    """Input drift, local and output error per layer, in execution order (encoder then decoder); the output
    error of other recent runs (other methods or settings) overlaid as dotted lines."""
    fig = go.Figure()
    x, names = _block_axis(fig, records), _labels(records)
    hover = dict(hovertext=names, hovertemplate="%{hovertext}<br>%{y:.2f}%<extra>%{fullData.name}</extra>")
    for label, other in others:
        values = [r.output_error for r in other]
        if len(other) == len(records) and any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=x, y=[None if v is None else 100 * v for v in values], mode="lines",
                                     name=f"output error: {label}", line=dict(dash="dot", width=1.5), opacity=0.7,
                                     **hover))
    series = [("output error", "output_error"), ("input drift (from upstream)", "input_drift"),
              ("local error (this layer)", "local_error"), ("output error without correction", "output_error_uncorrected")]
    for name, field in series:
        values = [getattr(r, field) for r in records]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=x, y=[None if v is None else 100 * v for v in values], mode="lines+markers",
                                     name=name, **hover))
    if not fig.data:  # no calibration: only the weight error is known
        fig.add_trace(go.Bar(x=x, y=[100 * r.weight_error for r in records], name="weight error", **hover))
    fig.update_layout(title=title, height=HEIGHT, yaxis_title="relative error (%)", margin=dict(l=50, r=20, t=50, b=60),
                      legend=dict(orientation="h", y=-0.3), hovermode="closest")
    return fig


def alpha_and_bits(records: list[LayerRecord]) -> go.Figure:
    """Bits per layer as bars, alpha per layer (QEP/FADE) as a line on a second axis."""
    fig = go.Figure()
    x, names = _block_axis(fig, records), _labels(records)
    fig.add_trace(go.Bar(x=x, y=[r.bits for r in records], name="bits", marker_color="#9ab", hovertext=names,
                         hovertemplate="%{hovertext}<br>%{y} bits<extra></extra>"))
    alphas = [r.alpha for r in records]
    if any(a is not None for a in alphas):
        fig.add_trace(go.Scatter(x=x, y=alphas, name="alpha", mode="lines+markers", yaxis="y2", line=dict(color="#c40"),
                                 hovertext=names, hovertemplate="%{hovertext}<br>alpha %{y:.2f}<extra></extra>"))
    fig.update_layout(height=HEIGHT, title="Bits and alpha per layer", margin=dict(l=50, r=50, t=50, b=60),
                      yaxis=dict(title="bits", range=[0, 17]),
                      yaxis2=dict(title="alpha", overlaying="y", side="right", range=[0, 1.05]),
                      legend=dict(orientation="h", y=-0.3))
    return fig


def size_gauge(size: SizeReport) -> go.Figure:
    mb = size.size_bytes / 1e6
    fig = go.Figure(go.Indicator(
        mode="gauge+number+delta", value=mb, number={"suffix": " MB", "valueformat": ".1f"},
        delta={"reference": size.fp32_size_bytes / 1e6, "valueformat": ".1f", "suffix": " MB vs fp32",
               "decreasing": {"color": "green"}, "increasing": {"color": "red"}},
        title={"text": f"{size.compression_vs_fp32:.2f}x smaller than fp32<br>"
                       f"<span style='font-size:0.8em'>{size.bits_per_parameter:.1f} bits per parameter; "
                       f"red line: fp16</span>"},
        gauge={"axis": {"range": [0, size.fp32_size_bytes / 1e6]},
               "steps": [{"range": [0, size.fp16_size_bytes / 1e6], "color": "#e8f0e8"}],
               "threshold": {"line": {"color": "red", "width": 3}, "value": size.fp16_size_bytes / 1e6}},
    ))
    fig.update_layout(height=HEIGHT - 40, margin=dict(l=30, r=30, t=70, b=10))
    return fig


def latency_gauge(real: dict | None, real_fp32: dict | None) -> go.Figure:
    """Real-time factor on the fastest real runtime against full precision's, or "fake quant" when none runs it."""
    if real is None:
        fig = go.Figure()
        fig.add_annotation(text="fake quant<br><span style='font-size:0.7em'>no real runtime runs this format "
                                "(NF4, codebooks, or groups that are not a multiple of 32); its torch time would "
                                "be full-precision time</span>", showarrow=False, x=0.5, y=0.5, xref="paper",
                           yref="paper", font=dict(size=18))
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    else:
        base = real_fp32["rtf"] if real_fp32 else real["rtf"]
        speedup = base / real["rtf"] if real["rtf"] > 0 else 0.0
        base_name = f"full precision on {real_fp32['runtime']}" if real_fp32 else "full precision"
        fig = go.Figure(go.Indicator(
            mode="gauge+number", value=real["rtf"], number={"valueformat": ".3f"},
            title={"text": f"Real-time factor on {real['runtime']} (lower is faster)<br><span style='font-size:0.8em'>"
                           f"{speedup:.2f}x the speed of {base_name} (black line)</span>"},
            gauge={"axis": {"range": [0, max(real["rtf"], base) * 1.5]},
                   "threshold": {"line": {"color": "black", "width": 3}, "value": base}},
        ))
    fig.update_layout(height=HEIGHT - 40, margin=dict(l=30, r=30, t=90, b=10))
    return fig


def _grouped(runs: list[dict]) -> dict[tuple, list[dict]]:
    """Runs that differ only in the calibration seed form one point (mean, with the seeds' spread)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["method"], r["bits"], r["group_size"], r.get("layers_key") or "",
                           r.get("eval_set") or ""), []).append(r)
    return groups


def pareto(runs: list[dict]) -> go.Figure:
    """Size vs WER and latency vs WER of every finished run (each on its evaluation set), seeds as error bars."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Size vs WER", "Latency vs WER"), horizontal_spacing=0.12)
    many_sets = len({r.get("eval_set") for r in runs}) > 1
    for (model, method, bits, group, layers, scored), rs in sorted(_grouped(runs).items(), key=lambda kv: str(kv[0])):
        wers = [100 * r["demo_wer"] for r in rs]
        mean = sum(wers) / len(wers)
        std = (sum((w - mean) ** 2 for w in wers) / (len(wers) - 1)) ** 0.5 if len(wers) > 1 else 0.0
        name = f"{model} {method} {bits}b g{group}{' ' + layers if layers else ''} ({len(rs)} seed{'s' * (len(rs) > 1)})"
        name += f" on {scored}" if many_sets else ""
        size = sum(r["size_bytes"] for r in rs) / len(rs) / 1e6
        timed = [r["real_rtf"] for r in rs if r.get("real_rtf") is not None]
        common = dict(mode="markers", name=name, error_y=dict(type="data", array=[std], visible=True),
                      marker=dict(size=11), legendgroup=name)
        fig.add_trace(go.Scatter(x=[size], y=[mean], **common), row=1, col=1)
        if timed:  # runs no real runtime can run have no latency to show (fake quant)
            runtime = rs[0].get("real_runtime") or ""
            fig.add_trace(go.Scatter(x=[sum(timed) / len(timed)], y=[mean], showlegend=False,
                                     hovertext=[runtime], **common), row=1, col=2)
    if not runs:
        fig.add_annotation(text="No finished runs yet: press Quantize", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=16))
    # Each model's full precision on each evaluation set (a sweep's clips and the page's differ).
    references = {(r["model"], r.get("eval_set")): r for r in runs if r.get("demo_wer_fp32") is not None}
    for (model, scored), r in sorted(references.items(), key=str):
        name = f"{model} fp32" + (f" on {scored}" if many_sets else "")
        fig.add_trace(go.Scatter(x=[r["fp32_size_bytes"] / 1e6], y=[100 * r["demo_wer_fp32"]], mode="markers",
                                 name=name, marker=dict(symbol="star", size=14)), row=1, col=1)
    fig.update_xaxes(title_text="size (MB)", row=1, col=1)
    fig.update_xaxes(title_text="real-time factor on a real runtime (hover: which)", row=1, col=2)
    fig.update_yaxes(title_text="WER on the run's evaluation set (%)", row=1, col=1)
    fig.update_layout(height=HEIGHT + 60, margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.25))
    return fig
