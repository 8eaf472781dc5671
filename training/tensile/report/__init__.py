"""`tensile report`: a run as one page of plots (loss, world size and disruptions, replays,
recovery, checkpoint times, goodput, cost), computed from its ledger (figures.py) and drawn
by plotly as self-contained HTML (html.py) or by matplotlib as a PNG (png.py)."""

from __future__ import annotations

from pathlib import Path

from tensile.report.figures import Prices, RunFigures, run_figures
from tensile.report.sources import ReportSourceError, RunEvents, load_prices, load_run, stack_prices

FORMATS = ("html", "png")

__all__ = ["FORMATS", "Prices", "ReportSourceError", "RunEvents", "RunFigures", "default_output", "load_prices", "stack_prices",
           "load_run", "run_figures", "write_report"]


def default_output(run: str, fmt: str) -> Path:
    """RUN/report.<fmt> for a run directory; ./report.<fmt> for an s3:// tier."""
    return Path(f"report.{fmt}") if run.startswith("s3://") else Path(run) / f"report.{fmt}"


def write_report(run: str, *, reference: str | None = None, prices: Prices | None = None, fmt: str = "html",
                 out: Path | None = None) -> Path:
    """Reads the run (and its reference), draws the report and writes it; returns its path."""
    if fmt not in FORMATS:
        raise ReportSourceError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source = load_run(run)
    baseline = load_run(reference) if reference else None
    figures = run_figures(source.events, label=source.label, prices=prices,
                          reference=baseline.events if baseline else None,
                          reference_label=baseline.label if baseline else None,
                          notes=source.notes + (baseline.notes if baseline else []))
    out = out or default_output(run, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        from tensile.report.png import render_png

        render_png(figures, out)
    else:
        from tensile.report.html import render_html

        out.write_text(render_html(figures), encoding="utf-8")
    return out
