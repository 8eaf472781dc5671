"""Checkpoints written by an earlier Tensile (tests/fixtures/format-v2 and format-v3, made by
make_format_fixtures.py at the commit each expected.json names) still load: they verify, export,
and a job resumes from them at step 6 and logs the losses the writing code logged after it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from harness import run_nodes, step_losses, write_job

from tensile.checkpoint import Catalog, open_tier
from tensile.data import generate_corpus
from tensile.elastic.ledger import RunLedger

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
VERSIONS = ["format-v2", "format-v3"]
CASES = [f"{version}/{p.name}" for version in VERSIONS for p in sorted((ROOT / version).iterdir()) if p.is_dir()]
"""`format-v<N>/<fixture>` for every fixture of every format version."""


def _expected(name: str) -> dict:
    return json.loads((ROOT / name / "expected.json").read_text())


@pytest.fixture(scope="module")
def fixture_dataset(tmp_path_factory) -> str:
    """The corpus the fixtures were trained on: generation is deterministic in its seed."""
    specs = {json.dumps(_expected(name)["dataset"], sort_keys=True) for name in CASES}
    assert len(specs) == 1, specs
    url = str(tmp_path_factory.mktemp("fixture-data") / "corpus")
    generate_corpus(url, **json.loads(specs.pop()))
    return url


def _copy_shared(name: str, run_dir: Path) -> Path:
    shared = run_dir / "shared"
    shutil.copytree(ROOT / name / "shared", shared)
    return shared


def test_there_are_fixtures_of_both_layouts_in_every_format_version():
    assert CASES == [f"{version}/{name}" for version in VERSIONS
                     for name in ("zero0-deepspeed-1worker", "zero2-sharded-2workers")]
    for name in CASES:
        manifest = json.loads(next((ROOT / name / "shared" / "checkpoints").glob("*/manifest.json")).read_text())
        assert f"format-v{manifest['format_version']}" == name.split("/")[0], name


@pytest.mark.parametrize("name", CASES)
def test_an_old_checkpoint_verifies_and_exports(tmp_path, name, fixture_dataset):
    from tensile.checkpoint.tools import export_weights

    shared = _copy_shared(name, tmp_path)
    point = Catalog(open_tier(shared)).find_resume_point()
    assert point.manifest is not None and point.manifest.step == 6 and not point.skipped
    open_tier(shared).verify(point.manifest)  # every byte, whatever the round start checks
    manifest, count = export_weights(shared, None, tmp_path / "weights.safetensors")
    assert manifest.checkpoint_id == point.manifest.checkpoint_id
    assert count > 0 and (tmp_path / "weights.safetensors").stat().st_size > 0


# Version 3's ZeRO-0 checkpoint loads as version 2's does (DeepSpeed's files, hashed whole at
# round start); only its manifest differs, which the verify-and-export test reads in `make test`.
RESUMED = [pytest.param(name, marks=pytest.mark.full) if name == "format-v3/zero0-deepspeed-1worker" else name
           for name in CASES]


@pytest.mark.parametrize("name", RESUMED)
def test_a_job_resumes_an_old_checkpoint_and_follows_the_old_trajectory(tmp_path, name, fixture_dataset):
    expected = _expected(name)
    _copy_shared(name, tmp_path)
    config = write_job(tmp_path, fixture_dataset, **expected["job"])
    codes = run_nodes(tmp_path, config, ["node-a"], timeout_s=240)
    assert codes == {"node-a": 0}
    starts = [e for e in RunLedger(tmp_path / "shared").events() if e["event"] == "round-start"]
    assert [e["resumed_step"] for e in starts] == [expected["resume_step"]]
    losses = step_losses(tmp_path / "shared")
    assert sorted(losses) == sorted(int(s) for s in expected["losses"])
    for step, loss in expected["losses"].items():
        # A resize (2 → 1 workers) sums in another order: rounding, not drift.
        assert math.isclose(losses[int(step)], loss, rel_tol=1e-6), (step, losses[int(step)], loss)


def test_parameters_that_differ_found_only_while_loading_end_the_run_with_the_reason(tmp_path, fixture_dataset):
    # A manifest without a model hash (as one from a factory model whose internals the hash
    # cannot see) lets the round start through; the loader then finds other parameters. That is
    # as final as a refusal at round start: before, it spent the budget round after round and
    # ended on "failure budget spent" instead of the reason.
    name = "format-v2/zero2-sharded-2workers"
    expected = _expected(name)
    shared = _copy_shared(name, tmp_path)
    manifest_path = next((shared / "checkpoints").glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["model_hash"] = ""
    manifest_path.write_text(json.dumps(manifest))
    job = {**expected["job"], "model": {"d_model": 48}}
    config = write_job(tmp_path, fixture_dataset, **job)
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 3}
    ledger = RunLedger(shared)
    status = ledger.status()
    assert status["state"] == "failed" and "other parameters than this model" in status["reason"], status
    assert ledger.failures_spent() == 0
    assert [e["event"] for e in ledger.events() if e["event"] in ("incompatible", "failure")] == ["incompatible"]


def test_an_fp32_checkpoint_from_before_precision_resumes_in_bf16(tmp_path, fixture_dataset):
    # Its manifest and meta file have no precision field: they read as fp32. Tensile's sharded
    # layout holds fp32 masters and moments, which a bf16 engine takes as they are.
    name = "format-v2/zero2-sharded-2workers"
    expected = _expected(name)
    _copy_shared(name, tmp_path)
    config = write_job(tmp_path, fixture_dataset, **expected["job"], precision={"dtype": "bf16"})
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 0}
    starts = [e for e in RunLedger(tmp_path / "shared").events() if e["event"] == "round-start"]
    assert [e["resumed_step"] for e in starts] == [expected["resume_step"]]
    losses = step_losses(tmp_path / "shared")
    worst = max(abs(losses[int(step)] - loss) / loss for step, loss in expected["losses"].items())
    print(f"fp32 checkpoint resumed in bf16: max relative loss difference from the fp32 losses {worst:.2e}")
    assert worst <= 2e-2, "the fp32 state was taken, not retrained from scratch (bf16 rounding only)"
    assert Catalog(open_tier(tmp_path / "shared")).find_resume_point().manifest.precision == "bf16"


def test_an_fp32_zero0_checkpoint_is_refused_in_bf16_naming_both(tmp_path, fixture_dataset):
    name = "format-v2/zero0-deepspeed-1worker"
    _copy_shared(name, tmp_path)
    config = write_job(tmp_path, fixture_dataset, **_expected(name)["job"], precision={"dtype": "bf16"})
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 3}
    ledger = RunLedger(tmp_path / "shared")
    status = ledger.status()
    assert status["state"] == "failed" and "was saved in fp32 and this config trains in bf16" in status["reason"]
    assert ledger.failures_spent() == 0


def test_a_ledger_from_before_eval_events_still_reports(tmp_path):
    # tests/fixtures/ledger-v1: `tensile demo`'s ledger at fd38dd6, before the `eval` event kind.
    from tensile.metrics import run_history
    from tensile.report import load_run, run_figures, write_report

    ledger = ROOT / "ledger-v1" / "demo"
    events = RunLedger(ledger).events()
    assert run_history(events) == {"restarts": 2, "preemptions": 1, "steps_lost": 10}
    figures = run_figures(load_run(str(ledger)).events, label="old")
    assert figures.eval_loss.steps == [] and len(figures.loss.steps) == 200
    assert [(d.kind, d.at_step, d.steps_replayed) for d in figures.disruptions] == [("lost node", 40, 10), ("join", 113, 0)]
    out = write_report(str(ledger), reference=str(ROOT / "ledger-v1" / "reference"), out=tmp_path / "report.html")
    assert out.stat().st_size > 1_000_000  # the page, with plotly.js inside
