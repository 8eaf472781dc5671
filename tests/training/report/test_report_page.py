"""The report page in a real browser: headless Chromium (Debian's package, `make install-browser`)
opens it offline, logs no console error, and every figure is drawn (plotly's SVG, with traces)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser import Chromium, find_chromium
from tensile.report import Prices, write_report

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "ledger-v1"
FIGURES = ["loss", "world", "replayed", "recovery", "saves", "goodput", "cost"]

RENDERED = """(async () => {
  const deadline = Date.now() + 15000;
  const figures = () => [...document.querySelectorAll('div.figure[data-figure]')];
  while (Date.now() < deadline && !figures().every(f => f.querySelector('.js-plotly-plot .main-svg'))) {
    await new Promise(r => setTimeout(r, 100));
  }
  return figures().map(f => {
    const plot = f.querySelector('.js-plotly-plot');
    const paths = plot ? [...plot.querySelectorAll('.scatterlayer .trace path, .barlayer .trace path')] : [];
    return {name: f.dataset.figure, svgs: plot ? plot.querySelectorAll('.main-svg').length : 0,
            traces: plot ? plot.querySelectorAll('.scatterlayer .trace, .barlayer .trace').length : 0,
            drawn: paths.filter(p => (p.getAttribute('d') || '').length > 8).length,
            width: plot ? Math.round(plot.getBoundingClientRect().width) : 0,
            title: plot && plot.querySelector('.gtitle') ? plot.querySelector('.gtitle').textContent : ''};
  });
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "headless Chromium is not installed: run `make install-browser` (Debian's chromium package)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI installs it: a missing browser is a broken setup, not a skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    prices = Prices(usd_per_node_hour=1.2)
    return write_report(str(FIXTURE / "demo"), reference=str(FIXTURE / "reference"), prices=prices, out=out)


def test_the_report_opens_offline_without_console_errors_and_every_figure_is_drawn(chromium, page):
    with Chromium(chromium) as browser:
        browser.open(page.as_uri())
        figures = browser.evaluate(RENDERED)
        assert browser.console_errors == []
    assert [f["name"] for f in figures] == FIGURES
    for figure in figures:
        assert figure["svgs"] >= 1 and figure["width"] > 200, figure
        assert figure["traces"] >= 1 and figure["drawn"] >= 1, figure
        assert figure["title"], figure
    by_name = {f["name"]: f for f in figures}
    assert by_name["loss"]["traces"] == 2  # the run and its reference (a ledger without eval events)
    assert by_name["world"]["traces"] >= 3  # the world size and at least two kinds of marker
    # Nothing but the page itself (plotly.js is embedded in it): it opens with no network.
    assert [url for url in browser.requested if not url.startswith(("file:", "data:", "about:"))] == []
