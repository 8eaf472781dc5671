"""Where the report reads a run from, the prices file, and the files it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tensile.cli import app
from tensile.report import ReportSourceError, load_prices, load_run, write_report
from tensile.report.figures import Prices

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
LEDGER = FIXTURES / "ledger-v1" / "demo"


def test_a_run_is_read_from_its_ledger_its_run_directory_or_its_config(tmp_path):
    direct = load_run(str(LEDGER))
    assert len([e for e in direct.events if e["event"] == "step"]) == 210 and direct.notes == []
    run_dir = tmp_path / "run"
    shutil.copytree(LEDGER, run_dir / "shared")
    assert load_run(str(run_dir)).events == direct.events  # RUN/shared
    elsewhere = tmp_path / "job"
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text(f"checkpoint: {{shared_dir: {run_dir / 'shared'}}}\n")
    assert load_run(str(elsewhere)).events == direct.events  # the ledger its config names


def test_a_shared_tier_without_a_ledger_is_read_from_its_commit_log_and_says_so():
    source = load_run(str(FIXTURES / "format-v2" / "zero2-sharded-2workers" / "shared"))
    kinds = [e["event"] for e in source.events]
    assert kinds == ["round-start", "checkpoint"]
    assert source.events[1]["step"] == 6 and source.events[0]["world_size"] == 2
    assert "commit log" in source.notes[0] and "ledger_dir" in source.notes[0]


def test_a_directory_with_nothing_to_report_is_refused_naming_what_to_pass(tmp_path):
    with pytest.raises(ReportSourceError, match="ledger_dir"):
        load_run(str(tmp_path))
    with pytest.raises(ReportSourceError, match="not a directory"):
        load_run(str(tmp_path / "missing"))


@pytest.mark.parametrize("text, expected", [
    ("usd_per_node_hour: 1.5\n", Prices(1.5, 1, "1.5 USD per node-hour")),
    ('{"usd_per_node_hour": 2, "processes_per_node": 8}', Prices(2.0, 8, "2 USD per node-hour")),
    ("pools: {spot-g5: 0.45, on-demand-g5: 1.21}\npool: spot-g5\n", Prices(0.45, 1, "spot-g5")),
])
def test_prices_are_a_node_hour_price_or_a_pools_price(tmp_path, text, expected):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    assert load_prices(path) == expected


@pytest.mark.parametrize("text, fields", [
    ("usd_per_node_hour: -1\n", ["usd_per_node_hour"]),
    ("pools: {a: 1}\npool: b\nprocesses_per_node: 0\n", ["pool:", "processes_per_node"]),
    ("usd: 1\n", ["usd: unknown key", "usd_per_node_hour"]),
    ("[1, 2]\n", ["must be a mapping"]),
])
def test_a_bad_prices_file_names_every_field_at_fault(tmp_path, text, fields):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(ReportSourceError) as error:
        load_prices(path)
    assert all(field in str(error.value) for field in fields), str(error.value)


def test_the_html_report_is_one_self_contained_page(tmp_path):
    out = write_report(str(LEDGER), reference=str(LEDGER.parent / "reference"), out=tmp_path / "r.html")
    page = out.read_text()
    assert page.count('class="figure"') == 6  # no cost figure without prices
    assert "<script src" not in page and "<link" not in page  # plotly.js is inline
    assert "lost node" in page and "join" in page


def test_the_png_report_is_drawn_by_matplotlib(tmp_path):
    out = write_report(str(LEDGER), prices=Prices(1.0), fmt="png", out=tmp_path / "r.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_the_report_command_writes_beside_the_run_by_default_and_exits_2_on_a_bad_source(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(LEDGER, run_dir / "shared")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"usd_per_node_hour": 3.0}))
    result = CliRunner().invoke(app, ["report", str(run_dir), "--prices", str(prices)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file() and "report.html" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "cannot report" in bad.output
    wrong = CliRunner().invoke(app, ["report", str(run_dir), "--format", "pdf"])
    assert wrong.exit_code == 2 and "--format" in wrong.output


def test_an_s3_shared_tier_is_reported_from_its_commit_log(bucket, moto_url, monkeypatch, tmp_path):
    import boto3

    shared = FIXTURES / "format-v2" / "zero2-sharded-2workers" / "shared"
    s3 = boto3.client("s3", endpoint_url=moto_url)
    for path in shared.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"runs/r1/{path.relative_to(shared).as_posix()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    source = load_run(f"s3://{bucket}/runs/r1")
    assert [(e["event"], e.get("step")) for e in source.events] == [("round-start", None), ("checkpoint", 6)]
    assert source.notes and "commit log" in source.notes[0]
    out = write_report(f"s3://{bucket}/runs/r1", out=tmp_path / "s3.html")
    assert "commit log" in out.read_text()
