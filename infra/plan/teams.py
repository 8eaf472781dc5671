"""Per-team platform objects as pure functions of the config: namespace, quota, limits, network
policies, RBAC, Kueue flavors and queues with quotas derived from the team's budget, and the
S3 policy of the team's pod identity. The Teams component only turns these into resources."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Iterable

from infra import cost
from infra.config.types import GpuPoolConfig, TeamConfig
from infra.plan.pools import GPU_TAINT

KUEUE_API = "kueue.x-k8s.io/v1beta2"
GPU = "nvidia.com/gpu"
GPU_NAME_LABEL = "karpenter.k8s.aws/instance-gpu-name"
"""Karpenter's well-known label on every node it launches; flavors key on it (not on capacity
type: a capacity-type flavor would pin pods and turn off Karpenter's spot→on-demand fallback)."""
COHORT = "tensile"
LOCAL_QUEUE = "training"
"""The LocalQueue Tensile's jobs name (plan/job.py)."""
DEFAULT_LOCAL_QUEUE = "default"
"""Kueue gives an unlabelled Job this LocalQueue of its namespace (Kueue's DefaultLocalQueueName):
with manageJobsWithoutQueueName every Job in a team namespace lands in the team's ClusterQueue."""
TRAINER_SERVICE_ACCOUNT = "trainer"
MEMBER_ROLE = "tensile-team-member"
RDZV_PORT = 29400
METRICS_PORT = 9400
POD_IDENTITY_AGENT = "169.254.170.23/32"
TEAM_LABEL = "tensile.io/team"
SHARED_PVC = "team-shared"
KUEUE_MANAGED_NAMESPACES = {"matchExpressions": [{"key": TEAM_LABEL, "operator": "Exists"}]}
"""Kueue's managedJobsNamespaceSelector, and where the GPU admission policy applies: team namespaces."""
# Room in the namespace's ResourceQuota for each job's rendezvous store and small helpers.
SUPPORT_CPU = 4
SUPPORT_MEMORY_GIB = 8
RDZV_STORE_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
"""What one job's rendezvous store requests on the system nodes (plan/job.py renders it)."""
MAX_TEAM_DEPLOYMENTS = 4
"""Deployments a team namespace may hold (its ResourceQuota): the rendezvous stores of its running
jobs. The system node group is sized with room for this many stores per team
(plan/system_capacity.py), so a team cannot crowd out the add-ons."""


def team_prefix(team: str) -> str:
    """Each team's checkpoints live under this key prefix of the shared bucket."""
    return f"teams/{team}/"


def member_group(team: str) -> str:
    """Kubernetes group the team's access entry maps its IAM role to."""
    return f"tensile:team:{team}"


# ---------------------------------------------------------------------------------------------
# Quotas from budgets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FlavorQuota:
    flavor: str
    """= GPU model (the enforcer prices a flavor's usage by this name)."""
    nominal_gpus: int
    borrowing_gpus: int
    cpu_per_gpu: int
    memory_gib_per_gpu: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamQuota:
    team: str
    nominal_gpus: int
    """What the cost model allows: min(configured quota, GPUs the budget buys at on-demand)."""
    borrowing_gpus: int
    """Capped so nominal + borrowing, at on-demand prices, never exceeds the budget."""
    gpus_within_budget: int
    flavors: tuple[FlavorQuota, ...]

    @property
    def ceiling_gpus(self) -> int:
        return self.nominal_gpus + self.borrowing_gpus


def _model_types(pools: Iterable[GpuPoolConfig], model: str) -> list[str]:
    return [t for p in pools if p.gpu_model == model for t in p.instance_types]


def _split(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to `weights` (largest remainder), never above a weight."""
    whole = sum(weights.values())
    if whole == 0 or total == 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: min(weights[k], math.floor(v)) for k, v in exact.items()}
    for k in sorted(weights, key=lambda k: (exact[k] - math.floor(exact[k]), weights[k]), reverse=True):
        if sum(out.values()) >= total:
            break
        if out[k] < weights[k]:
            out[k] += 1
    return out


def team_quota(team: TeamConfig, pools: Iterable[GpuPoolConfig], prices: cost.PriceBook) -> TeamQuota:
    """The team's queue quota from its budget through the cost model: every GPU priced on-demand
    at the dearest size of the team's models, so usage (borrowed included) cannot outspend it."""
    pools = list(pools)
    types = [t for m in team.gpu_models for t in _model_types(pools, m)]
    affordable = cost.max_gpus_within_budget(budget_monthly=team.monthly_budget_usd, instance_types=types,
                                             prices=prices)
    nominal = min(team.gpu_quota, affordable)
    borrowing = max(0, min(team.borrowing_limit, affordable - nominal))
    # Per-flavor quotas add up in Kueue, so the team's total is split across its models in
    # proportion to what their pools can hold (a flavor never gets more than its pools' limits).
    capacity = {m: sum(p.max_gpus for p in pools if p.gpu_model == m) for m in team.gpu_models}
    nominal_split = _split(nominal, capacity)
    room = {m: capacity[m] - nominal_split[m] for m in capacity}
    borrow_split = _split(borrowing, room)
    flavors = []
    for model in team.gpu_models:
        shapes = [cost.lookup(t) for t in _model_types(pools, model)]
        flavors.append(FlavorQuota(
            flavor=model, nominal_gpus=nominal_split[model], borrowing_gpus=borrow_split[model],
            cpu_per_gpu=math.ceil(max(s.vcpus / s.gpus for s in shapes)),
            memory_gib_per_gpu=math.ceil(max(s.memory_gib / s.gpus for s in shapes))))
    return TeamQuota(team=team.name, nominal_gpus=nominal, borrowing_gpus=borrowing, gpus_within_budget=affordable,
                     flavors=tuple(flavors))


def quota_worst_case_monthly(quota: TeamQuota, pools: Iterable[GpuPoolConfig], prices: cost.PriceBook) -> float:
    """What the queue's quota can cost in a month at most (each flavor at its dearest GPU-hour)."""
    pools = list(pools)
    return sum((f.nominal_gpus + f.borrowing_gpus) * cost.worst_per_gpu_hour(_model_types(pools, f.flavor), prices)
               * cost.HOURS_PER_MONTH for f in quota.flavors)


# ---------------------------------------------------------------------------------------------
# Kueue
# ---------------------------------------------------------------------------------------------


def resource_flavor(model: str) -> dict:
    return {
        "apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": model},
        "spec": {"nodeLabels": {GPU_NAME_LABEL: model},
                 "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}]},
    }


def cohort_shared_gpus(quotas: Iterable[TeamQuota], pools: Iterable[GpuPoolConfig]) -> dict[str, int]:
    """Per GPU model, the pools' GPUs no team holds as nominal quota: the cohort's own quota.

    Kueue lends a ClusterQueue, up to its borrowingLimit, only the unused quota of its cohort (other
    members' nominal quota and the cohort's own) of the same flavor. Flavors are GPU models and in
    prod no two teams share one, so with an empty cohort no borrowing could ever happen; the
    cohort holds the rest of each model's pools, which any team of that model may borrow."""
    pools = list(pools)
    held: dict[str, int] = {}
    for quota in quotas:
        for f in quota.flavors:
            held[f.flavor] = held.get(f.flavor, 0) + f.nominal_gpus
    return {model: max(0, sum(p.max_gpus for p in pools if p.gpu_model == model) - gpus)
            for model, gpus in sorted(held.items())}


def borrowable_gpus(team: str, flavor: str, quotas: Iterable[TeamQuota], shared: dict[str, int]) -> int:
    """What `team` can borrow of `flavor` when the rest of its cohort is idle (Kueue's rule above)."""
    quotas = list(quotas)
    own = next((f for q in quotas if q.team == team for f in q.flavors if f.flavor == flavor), None)
    if own is None:
        return 0
    lendable = shared.get(flavor, 0) + sum(f.nominal_gpus for q in quotas if q.team != team
                                           for f in q.flavors if f.flavor == flavor)
    return min(own.borrowing_gpus, lendable)


def cohort(quotas: Iterable[TeamQuota], pools: Iterable[GpuPoolConfig]) -> dict:
    """The teams' cohort, holding each GPU model's unassigned capacity (`cohort_shared_gpus`)
    with the CPU and memory that go with it, so borrowingLimit means what the config says."""
    quotas = list(quotas)
    shared = cohort_shared_gpus(quotas, pools)
    per_gpu = {f.flavor: f for q in quotas for f in q.flavors}
    flavors = [{"name": model, "resources": [
        {"name": "cpu", "nominalQuota": gpus * per_gpu[model].cpu_per_gpu},
        {"name": "memory", "nominalQuota": f"{gpus * per_gpu[model].memory_gib_per_gpu}Gi"},
        {"name": GPU, "nominalQuota": gpus},
    ]} for model, gpus in shared.items()]
    spec = {"resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": flavors}]} if flavors else {}
    return {"apiVersion": KUEUE_API, "kind": "Cohort", "metadata": {"name": COHORT}, "spec": spec}


def cluster_queue(quota: TeamQuota) -> dict:
    flavors = []
    for f in quota.flavors:
        flavors.append({"name": f.flavor, "resources": [
            {"name": "cpu", "nominalQuota": f.nominal_gpus * f.cpu_per_gpu,
             "borrowingLimit": f.borrowing_gpus * f.cpu_per_gpu},
            {"name": "memory", "nominalQuota": f"{f.nominal_gpus * f.memory_gib_per_gpu}Gi",
             "borrowingLimit": f"{f.borrowing_gpus * f.memory_gib_per_gpu}Gi"},
            {"name": GPU, "nominalQuota": f.nominal_gpus, "borrowingLimit": f.borrowing_gpus},
        ]})
    return {
        "apiVersion": KUEUE_API, "kind": "ClusterQueue",
        "metadata": {"name": quota.team, "labels": {TEAM_LABEL: quota.team}},
        "spec": {
            "cohortName": COHORT,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": quota.team}},
            "queueingStrategy": "BestEffortFIFO",
            # A job that does not fit one model tries the team's next model before borrowing.
            "flavorFungibility": {"whenCanBorrow": "TryNextFlavor", "whenCanPreempt": "TryNextFlavor"},
            "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": flavors}],
        },
    }


def local_queue(team: str, name: str = LOCAL_QUEUE) -> dict:
    """Both of a team's LocalQueues feed its one ClusterQueue: one quota, one budget, one hold."""
    return {"apiVersion": KUEUE_API, "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": team, "labels": {TEAM_LABEL: team}},
            "spec": {"clusterQueue": team}}


# ---------------------------------------------------------------------------------------------
# Namespace, quota, limits, RBAC
# ---------------------------------------------------------------------------------------------


def namespace(team: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": team, "labels": {TEAM_LABEL: team,
                                                  "pod-security.kubernetes.io/enforce": "baseline"}}}


def resource_quota(quota: TeamQuota) -> dict:
    """The namespace's hard ceiling matches the queue's (nominal + borrowing), plus room for the
    jobs' rendezvous stores, so nothing outside Kueue can run GPUs past the budget either."""
    gpus = quota.ceiling_gpus
    cpu = sum((f.nominal_gpus + f.borrowing_gpus) * f.cpu_per_gpu for f in quota.flavors) + SUPPORT_CPU
    memory = sum((f.nominal_gpus + f.borrowing_gpus) * f.memory_gib_per_gpu for f in quota.flavors) + SUPPORT_MEMORY_GIB
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "team-quota", "namespace": quota.team},
            # Extended resources are counted under `requests.` only; `limits.` would cap nothing.
            "spec": {"hard": {f"requests.{GPU}": str(gpus),
                              "requests.cpu": str(cpu), "limits.cpu": str(cpu),
                              "requests.memory": f"{memory}Gi", "limits.memory": f"{memory}Gi",
                              "pods": str(gpus + 20), "services.loadbalancers": "0", "services.nodeports": "0",
                              "count/deployments.apps": str(MAX_TEAM_DEPLOYMENTS)}}}


def limit_range(team: str) -> dict:
    """Defaults for containers that set nothing, so the quota can count them."""
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "defaults", "namespace": team},
            "spec": {"limits": [{"type": "Container",
                                 "default": {"cpu": "1", "memory": "1Gi"},
                                 "defaultRequest": {"cpu": "250m", "memory": "512Mi"}}]}}


def member_role(team: str) -> dict:
    """What the team's people may do in their namespace: run and watch jobs; never touch the
    quota, limits or network policies the platform owns."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": MEMBER_ROLE, "namespace": team},
            "rules": [
                {"apiGroups": ["batch"], "resources": ["jobs"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["configmaps", "services"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": ["apps"], "resources": ["deployments"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log", "events", "resourcequotas", "limitranges"],
                 "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
                {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads", "localqueues"],
                 "verbs": ["get", "list", "watch"]},
            ]}


def member_role_binding(team: str) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": MEMBER_ROLE, "namespace": team},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": MEMBER_ROLE},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": member_group(team)}]}


def trainer_service_account(team: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": TRAINER_SERVICE_ACCOUNT, "namespace": team, "labels": {TEAM_LABEL: team}},
            # The trainer never calls the Kubernetes API; its AWS identity comes from Pod Identity.
            "automountServiceAccountToken": False}


# ---------------------------------------------------------------------------------------------
# Network policies: default deny, then exactly what training needs
# ---------------------------------------------------------------------------------------------


def network_policies(team: str, *, monitoring_namespace: str) -> list[dict]:
    """Enforced only because the VPC CNI runs with network policy on (cluster add-on config)."""

    def policy(name: str, spec: dict) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": team}, "spec": {"podSelector": {}, **spec}}

    def ns(name: str) -> dict:
        return {"matchLabels": {"kubernetes.io/metadata.name": name}}

    return [
        policy("default-deny", {"policyTypes": ["Ingress", "Egress"]}),
        policy("allow-dns", {"policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": ns("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        # Workers, their rendezvous store (same namespace) and NCCL's TCP bootstrap.
        policy("allow-same-namespace", {"policyTypes": ["Ingress", "Egress"],
                                        "ingress": [{"from": [{"podSelector": {}}]}],
                                        "egress": [{"to": [{"podSelector": {}}]}]}),
        policy("allow-metrics-scrape", {"policyTypes": ["Ingress"], "ingress": [{
            "from": [{"namespaceSelector": ns(monitoring_namespace)}],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}]}),
        policy("allow-pod-identity-agent", {"policyTypes": ["Egress"], "egress": [{
            "to": [{"ipBlock": {"cidr": POD_IDENTITY_AGENT}}], "ports": [{"protocol": "TCP", "port": 80}]}]}),
        # S3 behind a gateway endpoint still resolves to public S3 addresses, and STS/ECR may be
        # interface endpoints inside the VPC: HTTPS cannot be narrowed to AWS by address.
        policy("allow-https-egress", {"policyTypes": ["Egress"], "egress": [{
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}]}),
    ]


# ---------------------------------------------------------------------------------------------
# Storage: the team's S3 prefix and EFS access point
# ---------------------------------------------------------------------------------------------


def checkpoint_policy(*, team: str, bucket_arn: str, kms_key_arn: str) -> str:
    """The trainer's S3 access: its team's prefix only, so one team can never read another's
    checkpoints; the bucket key to encrypt and decrypt them."""
    prefix = team_prefix(team)
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "ListTeamPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": bucket_arn, "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        # Unfinished multipart uploads are listed when a checkpoint is deleted, to abort them.
        # ListBucketMultipartUploads has no s3:prefix condition key (AWS sends none, so a prefix
        # condition denies it always): it is granted on the bucket, which shows a team the keys
        # and upload ids of other teams' unfinished uploads, never their data; aborting or
        # listing their parts stays limited to the team's prefix below.
        {"Sid": "ListUnfinishedUploads", "Effect": "Allow", "Action": "s3:ListBucketMultipartUploads",
         "Resource": bucket_arn},
        {"Sid": "ReadWriteTeamObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts", "s3:GetObjectVersion"],
         "Resource": f"{bucket_arn}/{prefix}*"},
        {"Sid": "BucketKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
         "Resource": kms_key_arn},
    ]})


def shared_volume(team: str, *, file_system_id: str, access_point_id: str, capacity: str = "1Ti") -> list[dict]:
    """The team's EFS access point as a statically bound volume (EFS ignores capacity)."""
    pv_name = f"efs-{team}"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "labels": {TEAM_LABEL: team}},
         "spec": {"capacity": {"storage": capacity}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "claimRef": {"namespace": team, "name": SHARED_PVC},
                  # Encrypted in transit (efs-utils TLS tunnel); the file system is encrypted at rest.
                  "mountOptions": ["tls"],
                  "csi": {"driver": "efs.csi.aws.com", "volumeHandle": f"{file_system_id}::{access_point_id}"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": SHARED_PVC, "namespace": team},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                  "resources": {"requests": {"storage": capacity}}}},
    ]


def team_objects(team: TeamConfig, quota: TeamQuota, *, monitoring_namespace: str) -> list[dict]:
    """Every namespaced object a team gets (the volume needs IDs and is planned apart)."""
    return [namespace(team.name), resource_quota(quota), limit_range(team.name), trainer_service_account(team.name),
            member_role(team.name), member_role_binding(team.name),
            *network_policies(team.name, monitoring_namespace=monitoring_namespace),
            cluster_queue(quota), local_queue(team.name), local_queue(team.name, DEFAULT_LOCAL_QUEUE)]
