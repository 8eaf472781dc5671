"""The report as one PNG (`--format png`, for CI artifacts): the page's figures drawn by matplotlib
on its Agg backend, with no browser."""

from __future__ import annotations

from pathlib import Path

from tensile.report.figures import GOODPUT_PARTS, RunFigures
from tensile.report.html import COLOURS, MARKER_COLOURS


def render_png(f: RunFigures, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display, no browser
    import matplotlib.pyplot as plt

    panels = 7 if f.cost is not None else 6
    fig, axes = plt.subplots((panels + 1) // 2, 2, figsize=(14, 3.2 * ((panels + 1) // 2)), squeeze=False)
    ax = iter(axes.flat)

    a = next(ax)
    if f.reference_loss is not None:  # underneath, wider: an elastic run that follows it covers it
        a.plot(f.reference_loss.steps, f.reference_loss.values, color=COLOURS["reference"], linewidth=4, alpha=0.4,
               label="reference training loss")
        if f.reference_eval_loss and f.reference_eval_loss.steps:
            a.plot(f.reference_eval_loss.steps, f.reference_eval_loss.values, "s", color=COLOURS["reference-eval"],
                   markersize=9, alpha=0.6, label="reference held-out loss")
    a.plot(f.loss.steps, f.loss.values, color=COLOURS["run"], label="training loss")
    if f.eval_loss.steps:
        a.plot(f.eval_loss.steps, f.eval_loss.values, "o-", color=COLOURS["eval"], label="held-out loss")
    a.set(title="Loss per step", xlabel="step", ylabel="loss")
    a.legend(fontsize=8)

    a = next(ax)
    a.step([t - f.start_t for t in f.world.t], f.world.world_size, where="post", color=COLOURS["run"])
    top = max(f.world.world_size, default=1) + 0.4
    for label in dict.fromkeys(m.label for m in f.markers):
        xs = [m.t - f.start_t for m in f.markers if m.label == label]
        a.scatter(xs, [top] * len(xs), marker="v", color=MARKER_COLOURS.get(label, "#333"), label=label)
    for d in f.disruptions:
        if d.recovery_s:
            a.axvspan(d.t - f.start_t, d.t - f.start_t + d.recovery_s, color="#d62728", alpha=0.08)
    a.set(title="World size, disruptions marked", xlabel="seconds since the first round", ylabel="processes")
    a.legend(fontsize=8)

    labels = [f"{i + 1}. {d.kind}" for i, d in enumerate(f.disruptions)]
    a = next(ax)
    a.bar(labels, [d.steps_replayed for d in f.disruptions], color="#ff7f0e")
    a.set(title="Steps replayed per disruption", ylabel="steps")
    a = next(ax)
    a.bar(labels, [d.recovery_s or 0.0 for d in f.disruptions], color="#9467bd")
    a.set(title="Recovery time per disruption", ylabel="seconds")

    a = next(ax)
    x = list(range(len(f.saves)))
    a.bar([i - 0.2 for i in x], [s.stall_s for s in f.saves], width=0.4, label="loop stall")
    a.bar([i + 0.2 for i in x], [s.durable_s or 0.0 for s in f.saves], width=0.4, label="time to durable")
    a.set_xticks(x, [str(s.step) for s in f.saves], fontsize=7, rotation=90)
    a.set(title="Checkpoints: stall and time to durable", xlabel="step", ylabel="seconds")
    a.legend(fontsize=8)

    a = next(ax)
    left = 0.0
    for part in GOODPUT_PARTS:
        a.barh(["wall time"], [f.goodput.seconds[part]], left=left, label=part)
        left += f.goodput.seconds[part]
    a.set(title=f"Goodput {f.goodput.goodput:.0%} of {f.goodput.wall_s:.0f} s", xlabel="seconds")
    a.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))

    if f.cost is not None:
        a = next(ax)
        a.plot([t - f.start_t for t in f.cost.t], f.cost.usd, "o-")
        a.set(title="Cost over time", xlabel="seconds since the first round", ylabel="USD")
    for rest in ax:
        rest.axis("off")
    fig.suptitle(f"Tensile run report: {f.label}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
