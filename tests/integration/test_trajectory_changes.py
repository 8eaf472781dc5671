"""A resume that would bend the run's trajectory ends the run as incompatible, with the reason,
spending nothing: another seed or global batch than the checkpoint's, or another run.steps (the
cosine schedule's length) — unless the job asks to train longer (run.extend_from_steps), which
is accepted and recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from harness import rounds, run_nodes, step_losses, write_job

from tensile.data import generate_corpus
from tensile.elastic.ledger import RunLedger

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "format-v2" / "zero0-deepspeed-1worker"


@pytest.fixture(scope="module")
def fixture_corpus(tmp_path_factory) -> str:
    spec = json.loads((FIXTURE / "expected.json").read_text())["dataset"]
    url = str(tmp_path_factory.mktemp("trajectory-data") / "corpus")
    generate_corpus(url, **spec)
    return url


def assert_refused(run_dir: Path, codes: dict[str, int], named: str) -> None:
    assert codes == {"node-a": 3}, codes
    ledger = RunLedger(run_dir / "shared")
    status = ledger.status()
    assert status["state"] == "failed" and named in status["reason"], status
    assert ledger.failures_spent() == 0
    assert [e["event"] for e in ledger.events() if e["event"] in ("incompatible", "failure")] == ["incompatible"]


@pytest.mark.parametrize("change, named", [
    ({"run": {"name": "itest", "seed": 12}}, "run.seed 11"),
    pytest.param({"batch": {"global_batch_size": 6}}, "batch.global_batch_size 12", marks=pytest.mark.full),
])
def test_a_changed_seed_or_batch_ends_the_run_as_incompatible(tmp_path, fixture_corpus, change, named):
    # Before, the sampler's ValueError spent the failure budget round after round and the run
    # ended on "failure budget spent". The fixture predates saved trajectories: its sampler
    # state still names its seed and batch.
    expected = json.loads((FIXTURE / "expected.json").read_text())
    shutil.copytree(FIXTURE / "shared", tmp_path / "shared")
    config = write_job(tmp_path, fixture_corpus, **{**expected["job"], **change})
    assert_refused(tmp_path, run_nodes(tmp_path, config, ["node-a"], timeout_s=240), named)


@pytest.mark.full  # make test refuses a changed seed above; tests/training/checkpoint/test_trajectory.py the rest
def test_a_changed_run_steps_is_refused_and_train_longer_is_recorded(tmp_path, dataset):
    short = {"run": {"name": "itest", "seed": 11, "steps": 6, "log_every": 3}}
    config = write_job(tmp_path, dataset, **short)
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 0}
    # run.steps 6 -> 9 silently would stretch the cosine schedule under the saved state.
    longer = {"run": {**short["run"], "steps": 9}}
    config = write_job(tmp_path, dataset, **longer)
    assert_refused(tmp_path, run_nodes(tmp_path, config, ["node-a"], timeout_s=240), "run.extend_from_steps: 6")
    # The explicit path: accepted, trained to 9, recorded in the ledger.
    config = write_job(tmp_path, dataset, run={**longer["run"], "extend_from_steps": 6})
    assert run_nodes(tmp_path, config, ["node-a"], timeout_s=240) == {"node-a": 0}
    ledger = RunLedger(tmp_path / "shared")
    assert ledger.status()["state"] == "completed" and ledger.status()["step"] == 9
    extended = [e for e in ledger.events() if e["event"] == "train-longer"]
    assert [(e["from_steps"], e["to_steps"], e["at_step"]) for e in extended] == [(6, 9, 6)]
    assert rounds(tmp_path / "shared")[-1]["resumed_step"] == 6
    assert sorted(step_losses(tmp_path / "shared")) == list(range(1, 10))
    assert ledger.failures_spent() == 0
