"""The report as one self-contained HTML page: plotly figures with plotly.js embedded once, so it
opens offline (no network at view time); and a summary and the disruptions as tables."""

from __future__ import annotations

import html
from datetime import datetime, timezone

from tensile.report.figures import GOODPUT_PARTS, RunFigures

COLOURS = {"run": "#1f77b4", "eval": "#d62728", "reference": "#7f7f7f", "reference-eval": "#ff9896"}
MARKER_COLOURS = {"lost node": "#d62728", "failure": "#8c0000", "notice": "#ff7f0e", "rebalance": "#bcbd22",
                  "join": "#2ca02c", "shrink": "#9467bd", "leave": "#8c564b", "fence": "#e377c2",
                  "reshard": "#17becf", "corrupt checkpoint": "#7f7f7f", "incompatible": "#000000"}


def plotly_figures(f: RunFigures) -> list[tuple[str, object]]:
    """(title, plotly Figure) for every figure the page shows, in page order."""
    import plotly.graph_objects as go

    def layout(figure, title: str, x: str, y: str):
        figure.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white", height=340,
                             margin={"l": 60, "r": 20, "t": 50, "b": 45}, legend={"orientation": "h", "y": -0.25})
        return figure

    out = []
    loss = go.Figure()
    if f.reference_loss is not None:  # underneath, wider: an elastic run that follows it covers it
        loss.add_scatter(x=f.reference_loss.steps, y=f.reference_loss.values, mode="lines",
                         name=f"reference training loss ({f.reference_label})",
                         line={"color": COLOURS["reference"], "width": 6}, opacity=0.4)
        if f.reference_eval_loss and f.reference_eval_loss.steps:
            loss.add_scatter(x=f.reference_eval_loss.steps, y=f.reference_eval_loss.values, mode="markers",
                             name="reference held-out loss", opacity=0.6,
                             marker={"color": COLOURS["reference-eval"], "size": 11, "symbol": "square"})
    loss.add_scatter(x=f.loss.steps, y=f.loss.values, name=f"training loss ({f.label})", mode="lines",
                     line={"color": COLOURS["run"]})
    if f.eval_loss.steps:
        loss.add_scatter(x=f.eval_loss.steps, y=f.eval_loss.values, name="held-out loss", mode="lines+markers",
                         line={"color": COLOURS["eval"]})
    out.append(("loss", layout(loss, "Loss per step", "step", "loss")))

    world = go.Figure()
    world.add_scatter(x=[t - f.start_t for t in f.world.t], y=f.world.world_size, mode="lines", line_shape="hv",
                      name="world size (0: re-forming)", line={"color": COLOURS["run"]})
    top = max(f.world.world_size, default=1) + 0.5
    for label in dict.fromkeys(m.label for m in f.markers):
        chosen = [m for m in f.markers if m.label == label]
        world.add_scatter(x=[m.t - f.start_t for m in chosen], y=[top] * len(chosen), mode="markers", name=label,
                          marker={"symbol": "triangle-down", "size": 12, "color": MARKER_COLOURS.get(label, "#333")},
                          text=[m.detail for m in chosen], hovertemplate="%{text}<extra>" + label + "</extra>")
    for d in f.disruptions:
        if d.recovery_s:
            world.add_vrect(x0=d.t - f.start_t, x1=d.t - f.start_t + d.recovery_s, fillcolor="#d62728",
                            opacity=0.08, line_width=0)
    out.append(("world", layout(world, "World size over time (shaded: not training)",
                                "seconds since the first round", "processes")))

    labels = [f"{i + 1}. {d.kind} at step {d.at_step}" for i, d in enumerate(f.disruptions)]
    replayed = go.Figure()
    replayed.add_bar(x=labels, y=[d.steps_replayed for d in f.disruptions], name="steps replayed",
                     marker_color="#ff7f0e")
    out.append(("replayed", layout(replayed, "Steps replayed per disruption", "disruption", "steps")))
    recovery = go.Figure()
    recovery.add_bar(x=labels, y=[d.recovery_s or 0.0 for d in f.disruptions], name="recovery", marker_color="#9467bd")
    out.append(("recovery", layout(recovery, "Recovery time per disruption",
                                   "disruption", "seconds")))

    saves = go.Figure()
    steps = [f"{s.step}" + (" ✗" if s.failed else "") for s in f.saves]  # ✗: failed, never durable
    saves.add_bar(x=steps, y=[s.stall_s for s in f.saves], name="loop stall")
    saves.add_bar(x=steps, y=[s.durable_s or 0.0 for s in f.saves], name="time to durable")
    saves.update_layout(barmode="group")
    saves.update_xaxes(type="category")
    out.append(("saves", layout(saves, "Checkpoint stall and time to durable, per save (✗: failed)",
                                "step saved", "seconds")))

    goodput = go.Figure()
    for part in GOODPUT_PARTS:
        goodput.add_bar(y=["wall time"], x=[f.goodput.seconds[part]], name=part, orientation="h")
    goodput.update_layout(barmode="stack", legend_traceorder="normal")
    out.append(("goodput", layout(goodput, f"Goodput {f.goodput.goodput:.0%}: where {f.goodput.wall_s:.0f} s went",
                                  "seconds", "")))

    if f.cost is not None:
        cost = go.Figure()
        cost.add_scatter(x=[t - f.start_t for t in f.cost.t], y=f.cost.usd, mode="lines+markers", name="cumulative cost")
        out.append(("cost", layout(cost, "Cost over time", "seconds since the first round", "USD")))
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_rows(f: RunFigures) -> list[list[str]]:
    rows = [["steps done", str(max(f.loss.steps, default=0))],
            ["wall time", f"{f.goodput.wall_s:.1f} s"],
            ["goodput (useful step time / wall time)", f"{f.goodput.goodput:.1%}"],
            ["disruptions", str(len(f.disruptions))],
            ["steps replayed", str(sum(d.steps_replayed for d in f.disruptions))],
            ["checkpoints", f"{len(f.saves)} ({sum(s.failed for s in f.saves)} failed)"]]
    if f.loss.values:
        rows.append(["final training loss", f"{f.loss.values[-1]:.4f}"])
    if f.eval_loss.values:
        rows.append(["final held-out loss", f"{f.eval_loss.values[-1]:.4f} (step {f.eval_loss.steps[-1]})"])
    if f.reference_loss is not None and f.reference_loss.values:
        rows.append([f"reference final training loss ({f.reference_label})", f"{f.reference_loss.values[-1]:.4f}"])
    if f.cost is not None:
        rows.append(["cost", f"{f.cost.usd[-1]:.4f} USD" + (f" ({f.cost.label})" if f.cost.label else "")])
    return rows


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:22px;margin-bottom:4px} .sub{color:#666;margin-top:0}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px} .figure{border:1px solid #eee;border-radius:6px}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #ddd;padding:3px 10px;text-align:left;font-size:13px}
th{background:#f6f6f6} .note{background:#fff8e1;padding:6px 10px;border-left:3px solid #ffb300;font-size:13px}"""


def render_html(f: RunFigures) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    divs = []
    for name, figure in plotly_figures(f):
        div = pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=f"figure-{name}",
                          config={"displaylogo": False, "displayModeBar": False, "responsive": True})
        divs.append(f'<div class="figure" data-figure="{name}">{div}</div>')
    disruption_rows = [[str(i + 1), d.kind, str(d.at_step), str(d.resumed_step), str(d.steps_replayed),
                        "-" if d.recovery_s is None else f"{d.recovery_s:.1f}", f"{d.world_before} → {d.world_after}"]
                       for i, d in enumerate(f.disruptions)]
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in f.notes)
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Tensile report: {html.escape(f.label)}</title>
<style>{STYLE}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>Tensile run report</h1><p class="sub">{html.escape(f.label)} · made {made}</p>
{notes}
{_table(["", ""], summary_rows(f))}
{_table(["#", "disruption", "at step", "resumed at", "steps replayed", "recovery (s)", "world size"], disruption_rows)}
<div class="grid">{"".join(divs)}</div>
</body></html>
"""
