"""The scaler controller's deployment as pure data: its config file (schema v1, which
`tensile.cluster.config` parses: the scaled jobs, their teams and pools), its RBAC (the
controller's own rules, `tensile/cluster/rbac.json`, in the namespaces of scaled jobs only), its
IAM policy, and its Deployment on the system nodes. The controller is `tensile scaler run` in the
training image (docs/design/scaler.md)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Mapping

from infra import cost, enforcer
from infra.config.types import GpuPoolConfig, JobConfig, TeamConfig
from infra.plan.pools import SYSTEM_NODE_LABEL
from infra.plan.system_capacity import SYSTEM_TOLERATION
from infra.plan.teams import TeamQuota, team_prefix

NAME = "tensile-scaler"
NAMESPACE = enforcer.NAMESPACE
CONFIG_KEY = "config.json"
CONFIG_DIR = "/etc/tensile-scaler"
METRICS_PORT = 9464
CONFIG_VERSION = 1
DEFAULT_DECIDE_EVERY_S = 30
COMMAND = ("tensile", "scaler", "run", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}")
KUEUE = "kueue.x-k8s.io"
CONFIG_HASH = "tensile.dev/config-sha256"
RUN_AS = 10001
"""The training image's user (training/Dockerfile)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaledJob:
    """A scaled job with what its config entry needs beyond the stack's job entry."""
    job: JobConfig
    min_nodes: int
    max_nodes: int
    steps: int
    """The run's `run.steps`: with the newest checkpoint's step, how much is left to train."""
    global_batch_size: int
    """Its `batch.global_batch_size`: the controller turns steps/s on the tier into samples/s."""


def scaled_job(job: JobConfig, training_config: dict, *, min_nodes: int, max_nodes: int) -> ScaledJob:
    """A scaled job's entry from the stack's job and its training config (as the trainer reads it)."""
    return ScaledJob(job=job, min_nodes=min_nodes, max_nodes=max_nodes,
                     steps=int(training_config["run"]["steps"]),
                     global_batch_size=int(training_config["batch"]["global_batch_size"]))


def ledger_url(bucket: str, job: JobConfig) -> str:
    """The run's shared checkpoint tier (infra/plan/job.checkpoint_url), read by the controller."""
    return f"s3://{bucket}/{ledger_prefix(job)}"


def ledger_prefix(job: JobConfig) -> str:
    return f"{team_prefix(job.team)}runs/{job.name}"


def capacity_type(pool: GpuPoolConfig) -> str:
    """The first capacity type Karpenter tries in the pool (reserved, then spot, then on-demand)."""
    if pool.reserved:
        return "reserved"
    return "spot" if pool.spot else "on-demand"


def scaler_config(scaled: Iterable[ScaledJob], *, teams: Iterable[TeamConfig], quotas: Mapping[str, TeamQuota],
                  pools: Iterable[GpuPoolConfig], prices: cost.PriceBook, region: str, bucket: str,
                  decide_every_s: int = DEFAULT_DECIDE_EVERY_S) -> dict:
    """The controller's config.json (schema version 1): one entry per scaled job, its team and its
    pool; the pool's on-demand price per node is its dearest instance type's (the conservative
    figure for a grow's cost)."""
    scaled = list(scaled)
    by_team = {t.name: t for t in teams}
    by_pool = {p.name: p for p in pools}
    used_teams = sorted({s.job.team for s in scaled})
    used_pools = sorted({s.job.scaler_pool for s in scaled if s.job.scaler_pool})
    return {
        "version": CONFIG_VERSION,
        "region": region,
        "decide_every_s": decide_every_s,
        "metrics_port": METRICS_PORT,
        "jobs": [{"namespace": s.job.team, "name": s.job.name, "team": s.job.team, "pool": s.job.scaler_pool,
                  "gpus_per_node": s.job.gpus_per_worker, "min_nodes": s.min_nodes, "max_nodes": s.max_nodes,
                  "priority": 0, "steps": s.steps, "global_batch_size": s.global_batch_size,
                  "ledger": ledger_url(bucket, s.job), "scaler": dict(s.job.scaler or {}),
                  # A scheduled job's name is its CronJob's; the controller sizes the run it has going.
                  "scheduled": bool(s.job.schedule)}
                 for s in scaled],
        "teams": {t: {"namespace": t, "quota_gpus": quotas[t].nominal_gpus, "borrowing_gpus": quotas[t].borrowing_gpus,
                      "monthly_budget_usd": float(by_team[t].monthly_budget_usd), "cluster_queue": t}
                  for t in used_teams},
        "pools": {p: {"capacity_type": capacity_type(by_pool[p]), "instance_types": list(by_pool[p].instance_types),
                      "on_demand_usd_per_hour": max(prices.on_demand_per_hour(t) for t in by_pool[p].instance_types),
                      "gpu_limit": by_pool[p].max_gpus}
                  for p in used_pools},
        "spend": {"namespace": NAMESPACE, "configmap": enforcer.SPEND_CONFIGMAP},
    }


def controller_rules() -> dict:
    """The controller's RBAC rules as it ships them (tensile/cluster/rbac.json): the requests its
    tests make are checked against this same file, so what is deployed is what was tested.
    RBAC cannot narrow `patch` to one field: the controller patches only `spec.parallelism` of
    Jobs and `spec.active` of Workloads, which its tests check."""
    return json.loads(resources.files("tensile.cluster").joinpath("rbac.json").read_text())


def team_role_rules() -> list[dict]:
    """What the controller does in a team namespace with a scaled job."""
    return controller_rules()["team_namespaces"]


def spend_role_rules(configmap: str) -> list[dict]:
    """Its read of the enforcer's spend ConfigMap, by name, in the enforcer's namespace."""
    return [{**rule, "resourceNames": [configmap if n == "{spend.configmap}" else n for n in rule["resourceNames"]]}
            if "resourceNames" in rule else rule for rule in controller_rules()["spend_namespace"]]


def cluster_role_rules() -> list[dict]:
    """Cluster-scoped reads (ClusterQueues)."""
    return controller_rules()["cluster"]


def scaler_iam_policy(*, bucket_arn: str, kms_key_arn: str, jobs: Iterable[JobConfig]) -> str:
    """Spot prices (DescribeSpotPriceHistory has no resource-level permissions: `*`) and read of
    each scaled run's checkpoint prefix; nothing else."""
    prefixes = sorted(ledger_prefix(j) for j in jobs)
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "SpotPrices", "Effect": "Allow", "Action": "ec2:DescribeSpotPriceHistory", "Resource": "*"},
        {"Sid": "ListScaledRuns", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn,
         "Condition": {"StringLike": {"s3:prefix": [f"{p}/*" for p in prefixes] + prefixes}}},
        {"Sid": "ReadScaledRuns", "Effect": "Allow", "Action": "s3:GetObject",
         "Resource": [f"{bucket_arn}/{p}/*" for p in prefixes]},
        # The bucket's objects are encrypted with its key (SSE-KMS): reading needs Decrypt.
        {"Sid": "BucketKeyDecrypt", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": kms_key_arn},
    ]})


def scaler_objects(*, config: dict, image: str, team_namespaces: Iterable[str]) -> list[dict]:
    """Every Kubernetes object of the controller, in apply order."""
    labels = {"app.kubernetes.io/name": NAME}
    meta = {"namespace": NAMESPACE, "labels": labels}
    config_text = json.dumps(config, indent=1, sort_keys=True) + "\n"
    binding_subject = [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    objects: list[dict] = [
        # Its AWS identity comes from EKS Pod Identity (by this account's name), its API token
        # from an explicit projected volume below.
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, **meta},
         "automountServiceAccountToken": False},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": NAME, **meta},
         "data": {CONFIG_KEY: config_text}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME, "labels": labels},
         "rules": cluster_role_rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": binding_subject},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": NAME, **meta},
         "rules": spend_role_rules(config["spend"]["configmap"])},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": NAME, **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": binding_subject},
    ]
    for namespace in sorted(set(team_namespaces)):
        in_team = {"name": NAME, "namespace": namespace, "labels": labels}
        objects += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": in_team,
             "rules": team_role_rules()},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(in_team),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
             "subjects": binding_subject},
        ]
    objects += [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, **meta},
         # One replica: two would both act on every job (no leader election); Recreate keeps it so
         # through a rollout. If it is down, jobs stay at their size.
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                      # A new config (a job scaled or dropped) restarts the controller on it.
                      CONFIG_HASH: hashlib.sha256(config_text.encode()).hexdigest()[:16]}}, "spec": {
                      "serviceAccountName": NAME, "nodeSelector": dict(SYSTEM_NODE_LABEL),
                      "tolerations": [dict(SYSTEM_TOLERATION)],
                      "automountServiceAccountToken": False,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "scaler", "image": image, "imagePullPolicy": "IfNotPresent",
                          "command": list(COMMAND),
                          "env": [{"name": "HOME", "value": "/tmp"}],
                          "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                          # One decision pass every decide_every_s over a few jobs: mostly idle.
                          "resources": {"requests": {"cpu": "50m", "memory": "192Mi"},
                                        "limits": {"cpu": "500m", "memory": "512Mi"}},
                          "readinessProbe": {"httpGet": {"path": "/metrics", "port": METRICS_PORT},
                                             "periodSeconds": 30},
                          "livenessProbe": {"httpGet": {"path": "/metrics", "port": METRICS_PORT},
                                            "initialDelaySeconds": 30, "periodSeconds": 60, "failureThreshold": 3},
                          "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                           {"name": "tmp", "mountPath": "/tmp"},
                                           {"name": "api-token", "mountPath": enforcer.SERVICE_ACCOUNT_DIR,
                                            "readOnly": True}],
                          "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                              "runAsNonRoot": True, "runAsUser": RUN_AS,
                                              "capabilities": {"drop": ["ALL"]},
                                              "seccompProfile": {"type": "RuntimeDefault"}},
                      }],
                      "volumes": [{"name": "config", "configMap": {"name": NAME}},
                                  {"name": "tmp", "emptyDir": {}},
                                  {"name": "api-token", "projected": {"sources": [
                                      {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                                      {"configMap": {"name": "kube-root-ca.crt",
                                                     "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                  }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NAME, **meta},
         "spec": {"type": "ClusterIP", "selector": labels,
                  "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"}]}},
    ]
    return objects
