"""The order and ownership of everything a stack puts in the cluster, checked offline over the
program's objects and its Helm releases' rendered objects: every custom resource has its CRD
installed by something it depends on, nothing Kueue manages is created before Kueue is ready
(or before its LocalQueue), and no object has two owners."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import yaml

from infra.tools.charts import RenderedRelease
from infra.tools.validation import manifests_from_run

BUILTIN_GROUPS = frozenset({
    "", "apps", "batch", "policy", "autoscaling", "rbac.authorization.k8s.io", "networking.k8s.io",
    "storage.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io",
    "scheduling.k8s.io", "coordination.k8s.io", "node.k8s.io", "discovery.k8s.io", "certificates.k8s.io",
    "flowcontrol.apiserver.k8s.io", "resource.k8s.io", "events.k8s.io"})
"""The API groups a Kubernetes API server serves itself; any other group needs a CRD."""
CLUSTER_SCOPED_BUILTINS = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "APIService", "StorageClass", "CSIDriver", "CSINode", "VolumeAttachment", "PriorityClass", "RuntimeClass",
    "IngressClass", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding", "FlowSchema", "PriorityLevelConfiguration", "DeviceClass"})
KUEUE_GROUP = "kueue.x-k8s.io"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DEFAULT_LOCAL_QUEUE = "default"
"""Kueue labels an unlabelled job in a managed namespace with this LocalQueue when it exists."""
KUEUE_CHART = "kueue"


@dataclass(frozen=True, slots=True)
class Placed:
    """An object and the Pulumi resource that creates it (itself, or the release rendering it)."""

    urn: str
    owner: str
    """How a message names the creator: the program's resource name or `release <name>`."""
    object: dict
    release: RenderedRelease | None = None


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def placed_objects(resources: list[dict], releases: Iterable[RenderedRelease]) -> list[Placed]:
    """The program's Kubernetes objects (one per resource) and every release's objects, each with
    its creator. A release that creates its namespace owns that Namespace too."""
    objects = [r for r in resources if r["type"].startswith("kubernetes:") and r.get("custom")
               and not r["type"].startswith(("kubernetes:helm.sh/", "pulumi:providers:"))]
    placed = [Placed(urn=r["urn"], owner=r["name"], object=m)
              for r, m in zip(objects, manifests_from_run(objects), strict=True)]
    for release in releases:
        owner = f"release {release.name}"
        if release.create_namespace:
            placed.append(Placed(urn=release.urn, owner=owner, release=release, object={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release.namespace}}))
        placed += [Placed(urn=release.urn, owner=owner, object=o, release=release) for o in release.objects]
    return placed


class DependencyGraph:
    """What each resource waits for, as the engine orders it: its recorded dependencies (explicit
    `dependsOn` and inputs from other resources), transitively. A dependency on a component is a
    dependency on every resource under it. A parent's own `dependsOn` is not counted: the engine
    does not hold a child for it."""

    def __init__(self, resources: list[dict]):
        self._direct = {r["urn"]: set(r["dependencies"]) for r in resources}
        self._children: dict[str, set[str]] = {}
        for r in resources:
            if r["parent"]:
                self._children.setdefault(r["parent"], set()).add(r["urn"])
        self._closure: dict[str, frozenset[str]] = {}

    def _descendants(self, urn: str) -> set[str]:
        out, stack = set(), [urn]
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out

    def waits_for(self, urn: str) -> frozenset[str]:
        if urn in self._closure:
            return self._closure[urn]
        seen: set[str] = set()
        stack = list(self._direct.get(urn, ()))
        while stack:
            dep = stack.pop()
            if dep in seen:
                continue
            seen.add(dep)
            stack.extend(self._direct.get(dep, ()))
            stack.extend(self._descendants(dep))
        self._closure[urn] = frozenset(seen)
        return self._closure[urn]


# ---------------------------------------------------------------------------------------------
# What Kueue manages, from the Configuration the program gives it
# ---------------------------------------------------------------------------------------------


def _selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True, slots=True)
class KueueScope:
    """Which Jobs Kueue manages (Kueue's apis/config/v1beta2: a labelled Job always; an unlabelled
    one only with manageJobsWithoutQueueName and a namespace matching managedJobsNamespaceSelector,
    by default every namespace but kube-system and Kueue's own)."""

    release_urn: str
    without_queue_name: bool
    namespace_selector: dict

    @classmethod
    def of(cls, release: RenderedRelease, values: dict) -> KueueScope:
        config = yaml.safe_load(values.get("managerConfig", {}).get("controllerManagerConfigYaml") or "{}") or {}
        default = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                         "values": ["kube-system", release.namespace]}]}
        return cls(release_urn=release.urn, without_queue_name=bool(config.get("manageJobsWithoutQueueName")),
                   namespace_selector=config.get("managedJobsNamespaceSelector") or default)

    def manages_namespace(self, labels: dict[str, str]) -> bool:
        return _selector_matches(self.namespace_selector, labels)


def _job_queue(obj: dict, scope: KueueScope | None, namespace_labels: dict[str, dict]) -> str | None:
    """The LocalQueue a Job (or a CronJob's jobs) will wait in, or None if Kueue ignores it."""
    if obj["kind"] == "Job" and obj["apiVersion"] == "batch/v1":
        labels = obj.get("metadata", {}).get("labels") or {}
    elif obj["kind"] == "CronJob" and obj["apiVersion"] == "batch/v1":
        labels = obj.get("spec", {}).get("jobTemplate", {}).get("metadata", {}).get("labels") or {}
    else:
        return None
    if labels.get(QUEUE_LABEL):
        return labels[QUEUE_LABEL]
    namespace = obj.get("metadata", {}).get("namespace", "default")
    ns_labels = {"kubernetes.io/metadata.name": namespace, **namespace_labels.get(namespace, {})}
    if scope is not None and scope.without_queue_name and scope.manages_namespace(ns_labels):
        return DEFAULT_LOCAL_QUEUE
    return None


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


def _crd_index(placed: list[Placed]) -> dict[tuple[str, str], list[tuple[Placed, set[str], str]]]:
    """(group, kind) -> [(where the CRD is created, its served versions, its scope)]."""
    index: dict[tuple[str, str], list] = {}
    for p in placed:
        if p.object["kind"] == "CustomResourceDefinition":
            spec = p.object["spec"]
            served = {v["name"] for v in spec["versions"] if v.get("served")}
            index.setdefault((spec["group"], spec["names"]["kind"]), []).append((p, served, spec.get("scope")))
    return index


def _identity(p: Placed, crds: dict) -> tuple[str, str, str, str]:
    obj = p.object
    group, kind = group_of(obj["apiVersion"]), obj["kind"]
    scopes = {scope for _, _, scope in crds.get((group, kind), [])}
    cluster_scoped = kind in CLUSTER_SCOPED_BUILTINS if group in BUILTIN_GROUPS else scopes == {"Cluster"}
    namespace = ""
    if not cluster_scoped:
        namespace = obj.get("metadata", {}).get("namespace") or (p.release.namespace if p.release else "default")
    return group, kind, namespace, obj.get("metadata", {}).get("name", "")


def check(resources: list[dict], releases: list[RenderedRelease]) -> list[str]:
    """Every problem, one line each; empty when the stack installs in order with one owner each."""
    placed = placed_objects(resources, releases)
    graph = DependencyGraph(resources)
    crds = _crd_index(placed)
    problems: list[str] = []

    def where(p: Placed) -> str:
        meta = p.object.get("metadata", {})
        name = "/".join(filter(None, [meta.get("namespace"), meta.get("name")]))
        return f"{p.object['kind']} {name} ({p.owner})"

    # 1. Custom resources and their CRDs.
    for p in placed:
        group, kind = group_of(p.object["apiVersion"]), p.object["kind"]
        if group in BUILTIN_GROUPS:
            continue
        version = p.object["apiVersion"].rpartition("/")[2]
        defining = [(c, served) for c, served, _ in crds.get((group, kind), []) if version in served]
        if not defining:
            problems.append(f"{where(p)}: no CRD serving {p.object['apiVersion']} {kind} is installed by anything "
                            "in the stack (\"no matches for kind\")")
            continue
        if any(c.urn in graph.waits_for(p.urn) for c, _ in defining):
            continue
        if any(c.urn == p.urn for c, _ in defining):
            problems.append(f"{where(p)}: its CRD is a template of the same release; Helm maps every object of a "
                            "release before creating any, so the install fails (\"no matches for kind\")")
        else:
            creators = ", ".join(sorted({c.owner for c, _ in defining}))
            problems.append(f"{where(p)}: does not depend on {creators}, which installs its CRD")

    # 2. Nothing Kueue manages before Kueue is ready; a Job after its LocalQueue.
    kueue = next((r for r in releases if r.chart_dir.name.startswith(f"{KUEUE_CHART}-")), None)
    values = next((r["inputs"].get("values") or {} for r in resources if kueue and r["urn"] == kueue.urn), {})
    scope = KueueScope.of(kueue, values) if kueue else None
    namespace_labels = {p.object["metadata"]["name"]: p.object["metadata"].get("labels") or {}
                        for p in placed if p.object["kind"] == "Namespace" and p.object["apiVersion"] == "v1"}
    local_queues = {(p.object["metadata"].get("namespace"), p.object["metadata"]["name"]): p for p in placed
                    if p.object["kind"] == "LocalQueue" and group_of(p.object["apiVersion"]) == KUEUE_GROUP}
    for p in placed:
        if p.release is not None and p.release is kueue:
            continue
        is_kueue_object = group_of(p.object["apiVersion"]) == KUEUE_GROUP
        queue = _job_queue(p.object, scope, namespace_labels)
        if not is_kueue_object and queue is None:
            continue
        if scope is None:
            problems.append(f"{where(p)}: Kueue manages it, and the stack installs no Kueue release")
            continue
        if scope.release_urn not in graph.waits_for(p.urn):
            problems.append(f"{where(p)}: Kueue manages it but it does not depend on the Kueue release; created "
                            "before Kueue's webhooks, it is neither defaulted nor suspended")
        if queue is not None:
            namespace = p.object.get("metadata", {}).get("namespace", "default")
            local_queue = local_queues.get((namespace, queue))
            if local_queue is None:
                problems.append(f"{where(p)}: waits in LocalQueue {namespace}/{queue}, which nothing declares")
            elif local_queue.urn not in graph.waits_for(p.urn):
                problems.append(f"{where(p)}: does not depend on its LocalQueue {namespace}/{queue} "
                                f"({local_queue.owner})")

    # A CRD converted by a webhook needs that webhook's Service, or every read of a converted
    # version fails.
    services = {_identity(p, crds)[2:] for p in placed if p.object["kind"] == "Service" and p.object["apiVersion"] == "v1"}
    for p in placed:
        if p.object["kind"] != "CustomResourceDefinition":
            continue
        conversion = p.object["spec"].get("conversion") or {}
        service = conversion.get("webhook", {}).get("clientConfig", {}).get("service")
        if conversion.get("strategy") == "Webhook" and service and (service["namespace"], service["name"]) not in services:
            problems.append(f"{where(p)}: its conversion webhook names Service {service['namespace']}/{service['name']}, "
                            "which nothing in the stack creates")

    # 3. One owner per object.
    owners: dict[tuple[str, str, str, str], list[Placed]] = {}
    for p in placed:
        owners.setdefault(_identity(p, crds), []).append(p)
    for (group, kind, namespace, name), claimants in sorted(owners.items()):
        distinct = sorted({c.owner for c in claimants})
        if len(distinct) > 1:
            shown = "/".join(filter(None, [namespace, name]))
            problems.append(f"{kind}.{group or 'core'} {shown}: {len(distinct)} owners ({', '.join(distinct)})")
    return problems
