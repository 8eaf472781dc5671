"""`tensile simulate` on the stacks (infra/tools/simulation_inputs.py + tensile.simulate), and the
worst case of the autoscaling config with Karpenter's scale-out overrun (infra/plan/scale_out_overrun.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.config import stack as config
from infra.config.types import TeamConfig
from infra.plan import scale_out_overrun
from infra.tools.simulation_inputs import SimulationInputError, simulation_inputs
from tensile.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_FILE = REPO_ROOT / "infra" / "examples" / "llm-1b.job.yaml"


@pytest.fixture
def in_checkout(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def test_simulate_cli_on_the_prod_stack(in_checkout):
    result = CliRunner().invoke(app, ["simulate", "--stack", "prod", "--job", "llm-1b", "--job-file", str(JOB_FILE),
                                      "--seeds", "5"])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("spot, on-demand fallback", "all on-demand", "spot, no fallback", "Young/Daly",
                     "scale-out overrun", "eventually consistent", "V100", "p5.48xlarge"):
        assert expected in out, expected


def test_simulate_cli_json_on_the_prod_stacks_own_job(in_checkout):
    result = CliRunner().invoke(app, ["simulate", "--stack", "prod", "--job", "llm-pretrain", "--seeds", "3",
                                      "--band", ">20%", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    spot, on_demand = document["study"]["spot"], document["study"]["on_demand"]
    assert spot["runs"] == on_demand["runs"] == 3
    assert spot["cost_usd"]["median"] <= on_demand["cost_usd"]["median"]
    assert any("V100" in line for line in document["assumptions"])


def test_simulate_cli_names_an_unknown_job(in_checkout):
    result = CliRunner().invoke(app, ["simulate", "--stack", "prod", "--job", "nope"])
    assert result.exit_code == 2
    assert "no job 'nope'" in result.output and "llm-pretrain" in result.output


def test_simulation_inputs_cap_the_job_at_the_pools_node_limit():
    inputs = simulation_inputs("prod", job_name="llm-1b", job_file=JOB_FILE)
    assert inputs["pool"]["instance_type"] == "p5.48xlarge" and inputs["pool"]["node_limit"] == 2  # 16 GPUs / 8
    assert inputs["pool"]["spot_usd_per_node_hour"] == pytest.approx(55.04 * 0.55)


def test_simulation_inputs_refuse_a_job_file_naming_another_job(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB_FILE.read_text())
    with pytest.raises(SimulationInputError, match="holds job 'llm-1b'"):
        simulation_inputs("prod", job_name="other", job_file=path)


@pytest.mark.parametrize("launch_to_counted_s, h100_karpenter_only_gpus", [
    (5.0, 0),     # counted within one batch: no stale batch, no overrun
    (20.0, 16),   # one stale batch: 2 more p5 nodes (the pool's node limit) past the 16-GPU limit
    (30.0, 32),   # two stale batches
])
def test_scale_out_overrun_per_pool(launch_to_counted_s, h100_karpenter_only_gpus):
    cfg = config.parse_document(config.read_stack_document("prod")[2], "prod")
    worst = scale_out_overrun.worst_case(cfg, batch_nodes={"h100": 4}, launch_to_counted_s=launch_to_counted_s)
    by_pool = {p.pool: p for p in worst.pools}
    h100 = by_pool["h100"]
    assert h100.batch_nodes == 2, "a batch launches at most the pool's node limit"
    assert h100.karpenter_only_overrun_gpus == h100_karpenter_only_gpus
    # Kueue's h100 flavor quota for team llm (budget-capped, plan/teams.py) is below the pool's limit:
    # nothing can be pending past it, so with Kueue there is no overrun at all.
    assert h100.admissible_gpus <= h100.limit_gpus and h100.overrun_gpus == 0
    assert worst.with_overrun_monthly_usd == pytest.approx(worst.at_limits_monthly_usd)
    assert h100.karpenter_only_monthly_usd == pytest.approx(h100_karpenter_only_gpus * 55.04 / 8 * 730)
    assert "eventually consistent" in worst.basis


def test_scale_out_overrun_with_kueue_is_what_the_teams_quotas_exceed_the_limit_by():
    # A second team on H100: each team's flavor quota fits the pool, their sum does not.
    cfg = config.parse_document(config.read_stack_document("prod")[2], "prod")
    second = TeamConfig(name="speech", gpu_quota=12, borrowing_limit=0, monthly_budget_usd=1e6, gpu_models=("h100",))
    shared = dataclasses.replace(cfg, teams=cfg.teams + (second,))
    h100 = {p.pool: p for p in scale_out_overrun.worst_case(shared, batch_nodes={}).pools}["h100"]
    assert h100.admissible_gpus > h100.limit_gpus == 16
    assert h100.overrun_gpus == min(h100.karpenter_only_overrun_gpus, h100.admissible_gpus - 16) > 0


def test_simulate_cli_drives_the_scaler_from_a_job_files_section(in_checkout, tmp_path):
    document = yaml.safe_load(JOB_FILE.read_text())
    document["scaler"] = {"grow_on_demand": False, "cooldown_min_s": 120}
    path = tmp_path / "scaled.yaml"
    path.write_text(yaml.safe_dump(document))
    result = CliRunner().invoke(app, ["simulate", "--stack", "prod", "--job", "llm-1b", "--job-file", str(path),
                                      "--seeds", "3", "--band", ">20%"])
    assert result.exit_code == 0, result.output
    assert "the scaler's policy core decides the size" in result.output
    assert "scaler decisions (seed 0):" in result.output and "grow -> 2" in result.output


def test_simulate_cli_takes_time_costs_from_a_runs_ledger(in_checkout):
    ledger = REPO_ROOT / "tests" / "fixtures" / "demo-run" / "shared"
    result = CliRunner().invoke(app, ["simulate", "--stack", "dev", "--job", "demo", "--seeds", "2",
                                      "--costs", str(ledger), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert any(f"measured in {ledger}" in line for line in document["assumptions"])
    # the demo's nodes are one process each, as the dev job's: its step times are the ledger's, not the model's
    assert not any("throughput model" in line for line in document["assumptions"])
    assert any("measured in the ledger; at [3] scaled linearly" in line for line in document["assumptions"])


@pytest.mark.parametrize("startup, problem", [
    ({"nodeLaunchS": -1}, "startup.nodeLaunchS: must be seconds >= 0"),
    ({"bootS": 3}, "startup.bootS: unknown"),
    ({"imagePullS": True}, "startup.imagePullS: must be seconds"),
])
def test_simulation_inputs_check_a_job_files_startup(tmp_path, startup, problem):
    document = yaml.safe_load(JOB_FILE.read_text())
    document["startup"] = startup
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SimulationInputError, match=problem):
        simulation_inputs("prod", job_name="llm-1b", job_file=path)


def test_simulate_takes_startup_from_the_job_file(in_checkout, tmp_path):
    document = yaml.safe_load(JOB_FILE.read_text())
    document["startup"] = {"nodeLaunchS": 600, "imagePullS": 0, "tensileStartS": 0}
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(document))
    runs = {}
    for name, job_file in (("example", JOB_FILE), ("slow", path)):
        result = CliRunner().invoke(app, ["simulate", "--stack", "prod", "--job", "llm-1b", "--job-file", str(job_file),
                                          "--seeds", "2", "--json"])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.output)
    assert inputs_note(runs["slow"], "nodeLaunchS") is None and inputs_note(runs["slow"], "node_launch_s 600 s")
    slower = runs["slow"]["study"]["on_demand"]["completion_h"]["median"] - runs["example"]["study"]["on_demand"]["completion_h"]["median"]
    assert slower == pytest.approx((600 - 60 - 90 - 10.5) / 3600, abs=1e-3)


def inputs_note(document: dict, text: str) -> str | None:
    return next((line for line in document["assumptions"] if text in line), None)


DEMO_LEDGER = REPO_ROOT / "tests" / "fixtures" / "demo-run" / "shared"


def test_report_prices_a_run_from_its_stacks_pool(in_checkout, tmp_path):
    """`tensile report --stack dev --job demo`: the cost over time at the price the stack's price
    book gives the node type Karpenter picks for that job (what `tensile simulate` reads)."""
    pool = simulation_inputs("dev", job_name="demo")["pool"]
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(DEMO_LEDGER), "--stack", "dev", "--job", "demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Cost over time" in page
    assert f"pool {pool['name']}: {pool['instance_type']} spot (assumed discount) at {pool['spot_usd_per_node_hour']:.2f}" in page
    on_demand = CliRunner().invoke(app, ["report", str(DEMO_LEDGER), "--stack", "dev", "--job", "demo", "--capacity",
                                         "on-demand", "--out", str(tmp_path / "od.html")])
    assert on_demand.exit_code == 0, on_demand.output
    assert f"on-demand at {pool['on_demand_usd_per_node_hour']:.2f}" in (tmp_path / "od.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--stack", "dev"], "--stack and --job go together"),
    (["--stack", "dev", "--job", "nope"], "has no job 'nope'"),
    (["--stack", "dev", "--job", "demo", "--capacity", "reserved"], "capacity: must be one of spot, on-demand"),
    (["--stack", "dev", "--job", "demo", "--prices", "p.yaml"], "--prices and --stack both price the run"),
])
def test_report_refuses_a_stack_price_it_cannot_give_naming_why(in_checkout, tmp_path, args, message):
    result = CliRunner().invoke(app, ["report", str(DEMO_LEDGER), "--out", str(tmp_path / "r.html"), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
