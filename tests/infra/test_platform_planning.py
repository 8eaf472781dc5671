"""Pure platform planners: team quotas from budgets, per-flavor splits, the job's worker shape
and its training config as the pods see it, the stack-file edit of `tensile team add`."""

from __future__ import annotations

import re

import pytest
import yaml

from infra import cost
from infra.config.types import GpuPoolConfig, JobConfig, TeamConfig
from infra.plan import job as job_plan
from infra.plan import teams as team_plan
from infra.tools import team_add as cli

PRICES = cost.price_book()


def _pool(name, model, types, max_gpus, efa=False):
    return GpuPoolConfig(name=name, gpu_model=model, instance_types=tuple(types), max_gpus=max_gpus, spot=True,
                         capacity_reservation_ids=(), zones=("us-east-1a",), root_volume_gib=200, efa=efa)


L4 = _pool("l4", "l4", ["g6.xlarge", "g6.2xlarge", "g6.4xlarge", "g6.12xlarge"], 4)
A100 = _pool("a100", "a100", ["p4d.24xlarge"], 32, efa=True)
H100 = _pool("h100", "h100", ["p5.48xlarge"], 16, efa=True)


def _team(quota, borrow, budget, models=("l4",)):
    return TeamConfig(name="t", gpu_quota=quota, borrowing_limit=borrow, monthly_budget_usd=budget,
                      gpu_models=models, member_role_arn="arn:aws:iam::111122223333:role/t")


# One L4 GPU-month at the dearest size (g6.4xlarge, $1.3232/h) costs $965.94.
@pytest.mark.parametrize("quota, borrow, budget, nominal, borrowing, affordable", [
    (2, 1, 3000, 2, 1, 3),    # fits: config as written
    (2, 1, 2000, 2, 0, 2),    # borrowing trimmed so quota + borrowing fits the budget
    (4, 0, 1000, 1, 0, 1),    # the budget, not the config, sets the quota
    (1, 3, 100000, 1, 3, 103),
    (1, 0, 900, 0, 0, 0),     # not even one GPU-month: the queue admits no GPUs
])
def test_team_quota_comes_from_the_budget_at_on_demand_prices(quota, borrow, budget, nominal, borrowing, affordable):
    q = team_plan.team_quota(_team(quota, borrow, budget), (L4,), PRICES)
    assert (q.nominal_gpus, q.borrowing_gpus, q.gpus_within_budget) == (nominal, borrowing, affordable)
    assert team_plan.quota_worst_case_monthly(q, (L4,), PRICES) <= budget


def test_multi_model_quota_splits_by_pool_capacity_and_stays_within_budget():
    q = team_plan.team_quota(_team(24, 8, 165000, ("a100", "h100")), (A100, H100), PRICES)
    by = {f.flavor: (f.nominal_gpus, f.borrowing_gpus) for f in q.flavors}
    assert by == {"a100": (16, 5), "h100": (8, 3)}
    assert sum(n for n, _ in by.values()) == q.nominal_gpus == 24
    assert team_plan.quota_worst_case_monthly(q, (A100, H100), PRICES) <= 165000
    for f, pool in zip(q.flavors, (A100, H100)):
        assert f.nominal_gpus + f.borrowing_gpus <= pool.max_gpus


@pytest.mark.parametrize("total, weights, expected", [
    (24, {"a": 32, "b": 16}, {"a": 16, "b": 8}),
    (8, {"a": 16, "b": 8}, {"a": 5, "b": 3}),
    (5, {"a": 2, "b": 1}, {"a": 2, "b": 1}),   # never above a weight
    (0, {"a": 4}, {"a": 0}),
])
def test_split_is_proportional_whole_and_capped(total, weights, expected):
    assert team_plan._split(total, weights) == expected


def _job(**kw):
    base = dict(name="run", team="t", training_config="x.yaml",
                image="111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0", gpu_model=None,
                gpus_per_worker=1, emergency_checkpoint_seconds=60)
    base.update(kw)
    return JobConfig(**base)


def test_worker_shape_fits_the_smallest_node_of_the_model_and_asks_for_efa_on_efa_pools():
    small = job_plan.worker_shape(_job(gpu_model="l4"), ("l4",), (L4,))
    assert (small.gpus, small.cpu, small.memory_gib, small.efa_interfaces) == (1, 3, 12, 0)
    whole = job_plan.worker_shape(_job(gpu_model="h100", gpus_per_worker=8), ("a100", "h100"), (A100, H100))
    assert (whole.cpu, whole.memory_gib, whole.efa_interfaces) == (144, 1536, 32)
    with pytest.raises(job_plan.JobPlanError, match="has a node with 16 GPUs"):
        job_plan.worker_shape(_job(gpus_per_worker=16), ("l4",), (L4,))


def test_training_config_points_checkpoints_at_the_team_prefix():
    raw = {"run": {"name": "x"}, "data": {"url": "data"}, "elastic": {"min_workers": 2, "max_workers": 4},
           "checkpoint": {"shared_dir": "shared", "every_steps": 10}}
    text, low, high = job_plan.training_config_document(raw, job=_job(), bucket="bkt")
    doc = yaml.safe_load(text)
    assert (low, high) == (2, 4)
    assert doc["checkpoint"] == {"shared_dir": "s3://bkt/teams/t/runs/run", "every_steps": 10,
                                 "local_dir": "/var/lib/tensile/local", "ledger_dir": "/mnt/shared/runs/run"}
    assert doc["data"]["url"] == "/var/lib/tensile/work/data" and doc["run"]["name"] == "run"
    assert raw["checkpoint"]["shared_dir"] == "shared"  # the caller's mapping is not modified


@pytest.mark.parametrize("elastic, message", [
    ({"min_workers": 3, "max_workers": 2}, "1 <= elastic.min_workers <= elastic.max_workers"),
    ({"min_nodes": 3, "max_nodes": 2}, "1 <= elastic.min_nodes <= elastic.max_nodes"),
    ({"min_workers": "two"}, "elastic.min_workers must be an integer, got 'two'"),
    ({"max_workers": 4, "max_nodes": 2}, "elastic.max_workers is the old name of elastic.max_nodes"),
    ({"processes_per_node": 2}, "processes_per_node is 2, but the job gives each pod 1 GPU"),
])
def test_training_config_with_bad_elastic_bounds_is_refused(elastic, message):
    with pytest.raises(job_plan.JobPlanError, match=message) as caught:
        job_plan.training_config_document({"elastic": elastic}, job=_job(), bucket="b")
    assert "training config x.yaml of job run" in str(caught.value)


def test_training_config_counts_nodes_and_runs_one_process_per_gpu():
    raw = {"batch": {"global_batch_size": 64}, "elastic": {"min_workers": 1, "max_workers": 4}}
    text, low, high = job_plan.training_config_document(raw, job=_job(gpus_per_worker=8), bucket="b")
    assert (low, high) == (1, 4)
    assert yaml.safe_load(text)["elastic"] == {"min_nodes": 1, "max_nodes": 4, "processes_per_node": 8}


@pytest.mark.parametrize("raw, gpus, fix", [
    # The case: 16 samples over 4 nodes × 8 GPUs; the trainer refuses world size 32 each round.
    ({"batch": {"global_batch_size": 16}, "elastic": {"min_nodes": 1, "max_nodes": 4}}, 8,
     re.escape("batch.global_batch_size (16) cannot be split over elastic.max_nodes (4) × 8 GPU(s) per node = "
               "world size 32: every process needs at least one sample; raise batch.global_batch_size to 32 or "
               "lower elastic.max_nodes to 2")),
    ({"elastic": {"max_workers": 3}}, 8, r"\(16\) cannot be split over elastic.max_workers \(3\) × 8"),
    ({"batch": {"global_batch_size": 4}, "elastic": {"min_nodes": 2, "max_nodes": 2}}, 4,
     "world size 8: every process needs at least one sample; raise batch.global_batch_size to 8$"),
])
def test_training_config_whose_batch_cannot_split_over_max_nodes_times_gpus_is_refused(raw, gpus, fix):
    with pytest.raises(job_plan.JobPlanError, match=fix) as caught:
        job_plan.training_config_document(raw, job=_job(gpus_per_worker=gpus), bucket="b")
    assert str(caught.value).startswith("training config x.yaml of job run: ")


def test_grace_period_covers_the_measured_checkpoint_with_a_margin():
    assert job_plan.termination_grace_seconds(_job(emergency_checkpoint_seconds=75)) == 105


def test_insert_team_appends_to_the_list_and_keeps_comments():
    text = ("config:\n  tensile:teams:\n    # first team\n    - name: a\n      gpuQuota: 1\n"
            "  # budgets below\n  tensile:budget:\n    monthlyUsd: 5\n")
    out = cli.insert_team(text, lambda indent: f"{indent}- name: b\n")
    assert out == ("config:\n  tensile:teams:\n    # first team\n    - name: a\n      gpuQuota: 1\n"
                   "    - name: b\n  # budgets below\n  tensile:budget:\n    monthlyUsd: 5\n")


def test_gpu_families_accept_models_and_instance_families():
    assert cli.gpu_models_for(["p5", "l4", "g6", "tpu"]) == (["h100", "l4"], ["tpu"])
