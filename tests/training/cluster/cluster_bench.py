"""The cluster scaler's test bench (the fixtures are in conftest.py): objects for the Kubernetes/
Kueue stand-in, the controller's config, the enforcer's spend entry, S3 checkpoints, and the RBAC
check every scenario ends with. A module of its own: tests import it by name, which a conftest
is not safely (tests/training/conftest.py shares the name)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kube_standin import FakeClock, KubeStandIn  # noqa: E402

NAMESPACE, TEAM, QUEUE, CLUSTER_QUEUE = "team-vision", "vision", "team-vision", "team-vision"
RBAC = Path(__file__).resolve().parents[3] / "training" / "tensile" / "cluster" / "rbac.json"
SPEND_NAMESPACE, SPEND_CONFIGMAP = "tensile-system", "team-spend"


def elastic_job(name: str, *, parallelism: int, max_nodes: int, gpus: int = 8, priority_class: str | None = None,
                annotations: dict | None = None, scaled: bool = True) -> dict:
    labels = {"kueue.x-k8s.io/queue-name": QUEUE, **({"tensile.dev/scaled": "true"} if scaled else {})}
    if priority_class:
        labels["kueue.x-k8s.io/priority-class"] = priority_class
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"kueue.x-k8s.io/elastic-job": "true"} if annotations is None else annotations},
            "spec": {"completionMode": "Indexed", "parallelism": parallelism, "completions": max_nodes,
                     "successPolicy": {"rules": [{"succeededCount": 1}]},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "trainer", "image": "tensile:test",
                                         "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]}}}}


def controller_config(checkpoints: str, **job_overrides) -> dict:
    job = {"namespace": NAMESPACE, "name": "llm", "team": TEAM, "pool": "h100-spot", "gpus_per_node": 8,
           "min_nodes": 1, "max_nodes": 3, "priority": 0, "steps": 100_000, "global_batch_size": 64,
           "ledger": checkpoints,
           "scaler": {"cooldown_min_s": 60, "cooldown_recovery_multiple": 1, "suspend_after_s": 120,
                      "grow_ready_deadline_s": 300}}
    for key, value in job_overrides.items():
        if key == "scaler":
            job["scaler"] = {**job["scaler"], **value}
        else:
            job[key] = value
    return {"version": 1, "region": "us-east-1", "decide_every_s": 30, "metrics_port": 0, "jobs": [job],
            "teams": {TEAM: {"namespace": NAMESPACE, "quota_gpus": 32, "borrowing_gpus": 0,
                             "monthly_budget_usd": 10_000.0, "cluster_queue": CLUSTER_QUEUE}},
            "pools": {"h100-spot": {"capacity_type": "spot", "instance_types": ["p5.48xlarge"],
                                    "on_demand_usd_per_hour": 98.32}},
            "spend": {"namespace": SPEND_NAMESPACE, "configmap": SPEND_CONFIGMAP}}


def set_spend(standin, clock, usd: float) -> None:
    now = dt.datetime.fromtimestamp(clock(), dt.timezone.utc)
    entry = json.dumps({"month": now.strftime("%Y-%m"), "spend_usd": usd, "last_seen": now.isoformat()})
    standin.put("configmaps", {"metadata": {"name": SPEND_CONFIGMAP, "namespace": SPEND_NAMESPACE},
                               "data": {TEAM: entry}})


def write_checkpoints(url: str, points: list[tuple[int, int, float, str]]) -> None:
    """Published checkpoints (step, world size, created_at, reason) on the run's S3 tier."""
    from tensile.checkpoint.api import CommitRecord, Manifest
    from tensile.checkpoint.s3_tier import S3Tier

    tier = S3Tier(url)
    head = max(tier.commit_log.sequence_numbers(), default=0)
    for offset, (step, world_size, created_at, reason) in enumerate(points, start=1):
        checkpoint_id = f"step-{step:08d}-g{world_size}"
        tier.write_manifest(Manifest(checkpoint_id=checkpoint_id, parent_id=None, step=step, world_size=world_size,
                                     zero_stage=1, files=(), config_hash="c", data_version="d",
                                     created_at=created_at, reason=reason))
        tier.commit_log.publish(CommitRecord(seq=head + offset, checkpoint_id=checkpoint_id, step=step,
                                             group_token=f"g{world_size}", epoch=1))


def rbac_allows(request, rules: dict, *, team_namespaces: set[str]) -> bool:
    """Whether a recorded request is allowed by the rules, as the API server's RBAC decides."""
    if request.namespace in team_namespaces:
        scoped = rules["team_namespaces"]
    elif request.namespace == SPEND_NAMESPACE:
        scoped = [{**r, "resourceNames": [n.replace("{spend.configmap}", SPEND_CONFIGMAP) for n in r["resourceNames"]]}
                  if "resourceNames" in r else r for r in rules["spend_namespace"]]
    elif request.namespace == "":
        scoped = rules["cluster"]
    else:
        return False
    return any(request.group in r["apiGroups"] and request.resource in r["resources"] and request.verb in r["verbs"]
               and ("resourceNames" not in r or request.name in r["resourceNames"]) for r in scoped)


def assert_only_allowed_requests(standin: KubeStandIn) -> None:
    """Every request is allowed by the contract's RBAC and writes only spec.parallelism of a Job,
    spec.active of a Workload, or a new Event."""
    rules = json.loads(RBAC.read_text())
    assert standin.requests
    for request in standin.requests:
        assert rbac_allows(request, rules, team_namespaces={NAMESPACE}), request
        if request.verb == "patch":
            assert request.content_type == "application/merge-patch+json", request
            if request.resource == "jobs":
                assert set(request.body) == {"spec"} and set(request.body["spec"]) == {"parallelism"}, request
            else:
                assert request.resource == "workloads", request
                assert set(request.body) == {"spec"} and set(request.body["spec"]) == {"active"}, request
        elif request.verb == "create":
            assert request.resource == "events", request
        else:
            assert request.verb in ("get", "list", "watch"), request
