"""Emergency checkpoints at real sizes: a job's checkpoint bytes (from its model) against the node's
staging disk and its S3 upload rate inside the spot notice and the grace period; GPU node classes
stage on RAID0 instance store where the types have it, on a faster gp3 root where not."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from infra.config.stack import REPO_ROOT
from infra.config.types import GpuPoolConfig, JobConfig, KarpenterConfig
from infra.plan import checkpoint_window as window
from infra.plan import job as job_plan
from infra.plan import pools as pool_plan


def _pool(name, model, types, max_gpus=16, efa=False):
    return GpuPoolConfig(name=name, gpu_model=model, instance_types=tuple(types), max_gpus=max_gpus, spot=True,
                         capacity_reservation_ids=(), zones=("us-east-1a",), root_volume_gib=500, efa=efa)


H100 = _pool("h100", "h100", ["p5.48xlarge"], efa=True)
L4 = _pool("l4", "l4", ["g6.xlarge", "g6.2xlarge"], max_gpus=4)
JOB = JobConfig(name="big", team="llm", training_config="big.yaml", image="x:1", gpu_model="h100", gpus_per_worker=8,
                emergency_checkpoint_seconds=90)
# About 64.5 B parameters: d 8192, 80 layers, a 32 k vocabulary.
BIG_MODEL = {"vocab_size": 32000, "seq_len": 4096, "d_model": 8192, "n_layers": 80, "n_heads": 64}
KARPENTER = KarpenterConfig(chart_version="1.14.1", ami_alias="al2023@v20261110", imds_hop_limit=2,
                            termination_grace_period="2h", expire_after="720h")


def _config(model, *, min_nodes=1, max_nodes=4, precision="bf16"):
    return {"model": model, "precision": precision, "batch": {"global_batch_size": 128},
            "elastic": {"min_nodes": min_nodes, "max_nodes": max_nodes}}


@pytest.mark.parametrize("config", ["training/tensile/configs/demo.yaml", "training/tensile/configs/gpu-nodes.yaml",
                                    None])
def test_causal_lm_parameters_counts_the_trainers_model(config):
    torch = pytest.importorskip("torch")
    from tensile.config import ModelConfig
    from tensile.model import CausalLM

    model = yaml.safe_load((REPO_ROOT / config).read_text())["model"] if config else {}
    torch.manual_seed(0)
    real = sum(p.numel() for p in CausalLM(ModelConfig(**model)).parameters())
    assert window.causal_lm_parameters(model) == real
    untied = {**model, "tie_embeddings": False}
    assert window.causal_lm_parameters(untied) == sum(
        p.numel() for p in CausalLM(ModelConfig(**untied)).parameters())


def test_the_estimate_uses_the_trainers_defaults():
    from tensile.config import ModelConfig
    from tensile.s3.objects import S3Settings

    defaults = ModelConfig()
    assert window.MODEL_DEFAULTS == {k: getattr(defaults, k) for k in window.MODEL_DEFAULTS}
    assert window.S3_PARTS_IN_FLIGHT_PER_PROCESS == S3Settings().max_concurrency


@pytest.mark.parametrize("parameters, precision, min_nodes, raid0, fits", [
    (7_000_000_000, "bf16", 1, True, False),    # 98 GB: ~6 s to the RAID0 array, ~37 s to S3: past 30 s
    (7_000_000_000, "bf16", 2, True, True),     # 49 GB a node: ~21 s
    (7_000_000_000, "bf16", 2, False, False),   # the same on a 500 MiB/s gp3 root: ~94 s staging alone
    (64_500_000_000, "bf16", 1, True, False),   # 900 GB on one node: ~6 min to S3
    (64_500_000_000, "bf16", 16, True, True),   # 56 GB a node over sixteen
    (7_000_000_000, "fp32", 2, True, True),
])
def test_estimate_saves_on_p5(parameters, precision, min_nodes, raid0, fits):
    (estimate,) = window.estimate_saves(parameters=parameters, precision=precision, min_nodes=min_nodes, processes=8,
                                        instance_types=["p5.48xlarge"], raid0={"p5.48xlarge": raid0},
                                        emergency_checkpoint_seconds=90)
    assert estimate.fits is fits
    assert estimate.bytes_per_parameter == (12 if precision == "fp32" else 14)


def test_the_window_is_the_least_of_the_notice_the_jobs_budget_and_torchruns_stop_timeout():
    assert window.save_window_seconds(20) == 20
    assert window.save_window_seconds(90) == window.TORCHRUN_STOP_SECONDS == 30
    assert window.SPOT_NOTICE_SECONDS - window.NOTICE_TO_SIGTERM_SECONDS > window.TORCHRUN_STOP_SECONDS


def test_a_job_that_cannot_save_in_time_is_refused_with_the_numbers_and_the_fix():
    with pytest.raises(job_plan.JobPlanError) as refused:
        job_plan.job_objects(JOB, training_config=_config(BIG_MODEL), team_models=("h100",), pools=(H100,), bucket="b")
    message = str(refused.value)
    assert "job big" in message and "p5.48xlarge" in message
    assert "× 14 bytes" in message and "GB per node" in message and "the window is 30 s" in message
    assert "raise elastic.min_nodes (and max_nodes) to 14" in message
    # With the checkpoint spread over enough nodes it fits.
    job_plan.job_objects(JOB, training_config=_config(BIG_MODEL, min_nodes=16, max_nodes=16), team_models=("h100",),
                         pools=(H100,), bucket="b")


def test_a_factory_model_needs_its_parameter_count():
    config = _config({"factory": "mypkg.models:build"})
    with pytest.raises(job_plan.JobPlanError, match="modelParameters"):
        job_plan.job_objects(JOB, training_config=config, team_models=("h100",), pools=(H100,), bucket="b")
    sized = dataclasses.replace(JOB, model_parameters=2_000_000_000)
    job_plan.job_objects(sized, training_config=config, team_models=("h100",), pools=(H100,), bucket="b")
    with pytest.raises(job_plan.JobPlanError, match="cannot be saved in time"):
        job_plan.job_objects(dataclasses.replace(JOB, model_parameters=200_000_000_000), training_config=config,
                             team_models=("h100",), pools=(H100,), bucket="b")


def test_every_gpu_node_class_stages_on_raid0_instance_store_where_its_types_have_it():
    classes, _ = pool_plan.plan_gpu_pools([L4, H100], cluster_name="c", node_role="r", karpenter=KARPENTER, tags={})
    assert classes and all(c.spec["instanceStorePolicy"] == "RAID0" for c in classes)
    assert all("throughput" not in c.spec["blockDeviceMappings"][0]["ebs"] for c in classes)


def test_a_node_class_without_instance_store_gets_a_faster_gp3_root():
    spec = pool_plan.node_class_spec(cluster_name="c", node_role="r", karpenter=KARPENTER, root_volume_gib=200, tags={},
                                     efa=False, placement_group=None, capacity_reservation_ids=(), instance_store=False)
    assert "instanceStorePolicy" not in spec
    assert spec["blockDeviceMappings"][0]["ebs"]["throughput"] == window.GP3_STAGING_MIB_PER_S
    assert not window.uses_instance_store(["m7i.large"]) and not window.uses_instance_store([])


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_shipped_stacks_node_classes_use_raid0(stack, example_runs):
    classes = [r for r in example_runs[stack].resources if r["type"].endswith(":EC2NodeClass")]
    assert classes and all(c["inputs"]["spec"]["instanceStorePolicy"] == "RAID0" for c in classes)
