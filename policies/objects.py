"""Where things live in the resources the rules read: Karpenter NodePools, pod specs inside
Kubernetes workloads, teams, and tags. Shared by the domain modules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from infra import cost as cost_model
from policies.framework import MISSING, Resource, Stack, dig, is_unknown, number

NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
EC2_NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
NAMESPACE = "kubernetes:core/v1:Namespace"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
RESOURCE_QUOTA = "kubernetes:core/v1:ResourceQuota"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CLUSTER_QUEUE_PREFIX = "kubernetes:kueue.x-k8s.io/"

GPU_RESOURCE = "nvidia.com/gpu"
CAPACITY_TYPE = "karpenter.sh/capacity-type"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"
GPU_NAME = "karpenter.k8s.aws/instance-gpu-name"
GPU_COUNT = "karpenter.k8s.aws/instance-gpu-count"
INSTANCE_FAMILY = "karpenter.k8s.aws/instance-family"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TEAM_LABEL = "tensile.io/team"
TEAM_TAG = "tensile.io/team"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
CAPACITY_TYPES = ("reserved", "spot", "on-demand")
GPU_FAMILIES = frozenset(t.family for t in cost_model.CATALOGUE.values())
SYSTEM_NAMESPACES = ("kube-system", "karpenter", "kueue-system", "tensile-system")
GPU_QUOTA_KEYS = (f"requests.{GPU_RESOURCE}",)
"""How a ResourceQuota caps an extended resource: Kubernetes counts `requests.` only (no overcommit,
so no `limits.`); a `limits.nvidia.com/gpu` entry caps nothing."""

SYSTEM_NAMESPACES_CONFIG = {"systemNamespaces": {
    "type": "array", "items": {"type": "string"}, "default": list(SYSTEM_NAMESPACES),
    "description": "the platform's own namespaces; every other declared Namespace is a team's, labelled or not"}}
TEAM_CONFIG = {
    "teamBudgetsConfigMap": {
        "type": "string", "default": "tensile-system/team-budgets",
        "description": "namespace/name of the ConfigMap holding team budgets (infra/components/budgets.py)"},
    **SYSTEM_NAMESPACES_CONFIG,
}


# -- Karpenter NodePools -------------------------------------------------------------------------

def requirement(spec: Any, key: str) -> Any:
    """The NodePool requirement on `key` ({operator, values}), MISSING, or an unknown sentinel."""
    requirements = dig(spec, "template", "spec", "requirements")
    if requirements is MISSING or is_unknown(requirements):
        return requirements
    for req in requirements:
        if is_unknown(req):
            return req
        if dig(req, "key") == key:
            return req
    return MISSING


def allowed_values(req: Any, universe: tuple[str, ...]) -> set[str] | None:
    """What a requirement admits out of `universe` (None when the requirement is unknown)."""
    if req is MISSING:
        return None
    operator, values = dig(req, "operator"), dig(req, "values")
    if is_unknown(operator) or is_unknown(values) or (values is not MISSING and any(is_unknown(v) for v in values)):
        return None
    values = [] if values is MISSING else list(values)
    if operator == "In":
        return set(values)
    if operator == "NotIn":
        return set(universe) - set(values)
    if operator == "Exists":
        return set(universe)
    if operator == "DoesNotExist":
        return set()
    return set(universe)


def is_gpu_node_pool(spec: Any) -> bool | None:
    """True when the pool can launch GPU instances; None when that depends on unknown values."""
    if is_unknown(spec):
        return None
    taints = dig(spec, "template", "spec", "taints")
    if isinstance(taints, list) and any(dig(t, "key") == GPU_RESOURCE for t in taints):
        return True
    if dig(spec, "limits", GPU_RESOURCE) is not MISSING:
        return True
    for key in (GPU_NAME, GPU_COUNT):
        if requirement(spec, key) is not MISSING:
            return True
    types = dig(requirement(spec, INSTANCE_TYPE), "values")
    if isinstance(types, list) and any(isinstance(t, str) and t in cost_model.CATALOGUE for t in types):
        return True
    families = dig(requirement(spec, INSTANCE_FAMILY), "values")
    if isinstance(families, list) and any(isinstance(f, str) and f in GPU_FAMILIES for f in families):
        return True
    if any(is_unknown(x) for x in (taints, dig(spec, "limits"), dig(spec, "template", "spec", "requirements"))):
        return None
    return False


# -- pod specs inside workloads ------------------------------------------------------------------

_POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:batch/v1:Job": ("spec", "template"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template"),
    "kubernetes:apps/v1:Deployment": ("spec", "template"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template"),
}
JOBSET_PREFIX = "kubernetes:jobset.x-k8s.io/"
POD = "kubernetes:core/v1:Pod"
WORKLOAD_TYPES = (POD, *_POD_TEMPLATE_PATHS)


def is_workload(type_: str) -> bool:
    return type_ in WORKLOAD_TYPES or (type_.startswith(JOBSET_PREFIX) and type_.endswith(":JobSet"))


@dataclass(frozen=True)
class PodTemplate:
    where: str
    """Where in the resource the pod spec sits, for messages (e.g. `spec.template`)."""
    metadata: Any
    spec: Any
    owner_labels: Any
    """The workload's own labels (Kueue's queue label sits on the Job, not on its pods)."""


def pod_templates(resource: Resource) -> Iterator[PodTemplate]:
    props = resource.props
    owner_labels = dig(props, "metadata", "labels")
    if resource.type == POD:
        yield PodTemplate("", dig(props, "metadata"), dig(props, "spec"), owner_labels)
    elif resource.type in _POD_TEMPLATE_PATHS:
        path = _POD_TEMPLATE_PATHS[resource.type]
        template = dig(props, *path)
        yield PodTemplate(".".join(path), dig(template, "metadata"), dig(template, "spec"), owner_labels)
    elif is_workload(resource.type):
        jobs = dig(props, "spec", "replicatedJobs")
        if is_unknown(jobs):
            yield PodTemplate("spec.replicatedJobs", MISSING, jobs, owner_labels)
        elif isinstance(jobs, list):
            for i, job in enumerate(jobs):
                template = dig(job, "template", "spec", "template")
                yield PodTemplate(f"spec.replicatedJobs[{i}].template.spec.template", dig(template, "metadata"),
                                  dig(template, "spec"), owner_labels)


def containers(spec: Any) -> Iterator[tuple[str, Any]]:
    """(kind[index], container) for containers, init and ephemeral containers."""
    for kind in ("containers", "initContainers", "ephemeralContainers"):
        listed = dig(spec, kind)
        if is_unknown(listed):
            yield kind, listed
        elif isinstance(listed, list):
            for i, c in enumerate(listed):
                yield f"{kind}[{i}]", c


def mentions_gpu(spec: Any) -> bool:
    for _, c in containers(spec):
        for section in ("requests", "limits"):
            if dig(c, "resources", section, GPU_RESOURCE) is not MISSING:
                return True
    tolerations = dig(spec, "tolerations")
    return isinstance(tolerations, list) and any(dig(t, "key") == GPU_RESOURCE for t in tolerations)


def is_training_pod(template: PodTemplate) -> bool | None:
    """A pod that runs training: admitted through a Kueue queue, or asking for or tolerating GPUs."""
    for labels in (template.owner_labels, dig(template.metadata, "labels")):
        if isinstance(labels, Mapping) and QUEUE_LABEL in labels:
            return True
    if is_unknown(template.spec):
        return None
    return mentions_gpu(template.spec)


# -- teams ---------------------------------------------------------------------------------------

def team_budgets(stack: Stack, configmap: str) -> tuple[Resource | None, Any]:
    """The enforcer's team-budgets ConfigMap (`namespace/name`) and its decoded document
    (MISSING when absent, an unknown sentinel when unknown at preview)."""
    namespace, _, name = configmap.partition("/")
    for r in stack.of_type(CONFIG_MAP):
        if dig(r.props, "metadata", "name") == name and dig(r.props, "metadata", "namespace") == namespace:
            data = dig(r.props, "data")
            if is_unknown(data):
                return r, data
            text = dig(data, "budgets.json")
            if is_unknown(text) or text is MISSING:
                return r, text
            try:
                return r, json.loads(text)
            except (TypeError, ValueError):
                return r, {}
    return None, MISSING


def known_teams(stack: Stack, configmap: str, system_namespaces: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Every team the stack mentions -> where it was seen: the team-budgets ConfigMap, a namespace
    labelled `tensile.io/team`, an AWS resource tagged `tensile.io/team`, and (fail closed) every
    other namespace outside `system_namespaces` that can run GPU pods, named after itself."""
    teams: dict[str, str] = {}
    _, document = team_budgets(stack, configmap)
    entries = dig(document, "teams")
    if isinstance(entries, Mapping):
        for team in entries:
            teams.setdefault(team, f"ConfigMap {configmap}")
    for r in stack.of_type(NAMESPACE):
        team = dig(r.props, "metadata", "labels", TEAM_LABEL)
        if isinstance(team, str) and not is_unknown(team):
            teams.setdefault(team, f"Namespace {r.name}")
    for r in stack.resources:
        team = dig(r.props, "tags", TEAM_TAG) if r.type.startswith("aws:") else MISSING
        if isinstance(team, str) and not is_unknown(team):
            teams.setdefault(team, f"{r.type.rsplit(':', 1)[-1]} {r.name}")
    for namespace, name in unlabelled_team_namespaces(stack, system_namespaces):
        if isinstance(name, str) and not is_unknown(name) and can_run_gpus(stack, namespace, name):
            teams.setdefault(name, f"Namespace {namespace.name} (outside the system namespaces, GPUs not capped at 0)")
    return teams


def unlabelled_team_namespaces(stack: Stack, system_namespaces: tuple[str, ...] | list[str]
                               ) -> list[tuple[Resource, Any]]:
    """The team namespaces with no `tensile.io/team` label: each is its own team, by its name."""
    return [(r, name) for r, name in team_namespaces(stack, system_namespaces)
            if not isinstance(dig(r.props, "metadata", "labels", TEAM_LABEL), str)]


def undecided_teams(stack: Stack, system_namespaces: tuple[str, ...] | list[str]) -> list[str]:
    """Unlabelled team namespaces whose team or GPU cap is unknown at preview, for messages."""
    undecided = []
    for namespace, name in unlabelled_team_namespaces(stack, system_namespaces):
        if is_unknown(name) or is_unknown(dig(namespace.props, "metadata", "labels")):
            undecided.append(f"Namespace {namespace.name}: its name or team label")
        elif isinstance(name, str) and can_run_gpus(stack, namespace, name) is None:
            undecided.append(f"Namespace {namespace.name}: its ResourceQuota's GPU limits")
    return undecided


def team_namespaces(stack: Stack, system_namespaces: tuple[str, ...] | list[str]) -> list[tuple[Resource, Any]]:
    """Every declared namespace that belongs to a team, with its name: all of them but the
    configured system namespaces (an unlabelled or unnamed one included: fail closed), and any
    namespace labelled with a team wherever it is."""
    found = []
    for r in stack.of_type(NAMESPACE):
        name = dig(r.props, "metadata", "name")
        labelled = dig(r.props, "metadata", "labels", TEAM_LABEL)
        if name not in system_namespaces or (isinstance(labelled, str) and not is_unknown(labelled)):
            found.append((r, name))
    return found


def can_run_gpus(stack: Stack, namespace: Resource, name: Any) -> bool | None:
    """False when a ResourceQuota in the namespace caps GPU requests or limits at 0; None when a
    quota's limits are unknown at preview; else True (nothing stops a GPU pod there)."""
    unknown = False
    for quota in in_namespace(stack, namespace, name, RESOURCE_QUOTA):
        hard = dig(quota.props, "spec", "hard")
        for key in GPU_QUOTA_KEYS:
            value = dig(hard, key)
            if is_unknown(value):
                unknown = True
            elif number(value) == 0:
                return False
    return None if unknown else True


def in_namespace(stack: Stack, namespace: Resource, name: Any, type_: str) -> list[Resource]:
    """Objects of `type_` placed in the namespace: by its name when known, else through a property
    dependency on the Namespace resource (its name computed at preview)."""
    matches = []
    for r in stack.of_type(type_):
        placed = dig(r.props, "metadata", "namespace")
        if isinstance(name, str) and not is_unknown(name) and placed == name:
            matches.append(r)
        elif namespace.urn in r.depends_through("metadata"):
            matches.append(r)
    return matches
