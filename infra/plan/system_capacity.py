"""System node capacity as pure functions: what the workloads placed on the on-demand system node
group request, against what its nodes can allocate, and the taint that keeps everything else off.
The inputs are rendered manifests (the program's own and its charts'); infra/tools/system_capacity.py
gathers them from a program run."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from infra.plan.pools import SYSTEM_NODE_LABEL

SYSTEM_TAINT = {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}
"""On every system node: only pods that tolerate it (add-ons, Tensile's own) run there, so team
pods never take the room the add-ons were sized for."""
SYSTEM_TOLERATION = {"key": SYSTEM_TAINT["key"], "operator": "Exists", "effect": SYSTEM_TAINT["effect"]}
COREDNS_REPLICAS = 2
COREDNS_REQUESTS = {"cpu": "100m", "memory": "70Mi"}
"""The CoreDNS add-on's pods (EKS's default requests, set explicitly in its configuration values)."""

SYSTEM_INSTANCE_TYPES: Mapping[str, tuple[int, int, int]] = {
    # name: (vCPUs, memory GiB, max pods). Max pods with the VPC CNI and no prefix delegation is
    # ENIs × (IPv4 addresses per ENI − 1) + 2 (the EKS AMI's eni-max-pods table); it sizes the
    # kubelet's memory reservation.
    "m7i.large": (2, 8, 29), "m7i.xlarge": (4, 16, 58), "m7i.2xlarge": (8, 32, 58), "m7i.4xlarge": (16, 64, 234),
    "m6i.large": (2, 8, 29), "m6i.xlarge": (4, 16, 58), "m6i.2xlarge": (8, 32, 58),
}

EKS_ADDON_DAEMONSETS: Mapping[str, tuple[int, int]] = {
    # name: (CPU millicores, memory MiB) requested per node by the managed add-ons' DaemonSets,
    # which EKS deploys and the program does not render: the add-ons' default manifests at the
    # pinned versions, rounded up (aws-node and its network-policy agent 25m each; kube-proxy 100m;
    # the pod identity and node monitoring agents are given a margin, their manifests set little).
    "vpc-cni": (50, 64),
    "kube-proxy": (100, 64),
    "eks-pod-identity-agent": (25, 64),
    "eks-node-monitoring-agent": (50, 128),
}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def cpu_millicores(quantity: str | int | float | None) -> int:
    if quantity in (None, ""):
        return 0
    text = str(quantity)
    if text.endswith("m"):
        return math.ceil(float(text[:-1]))
    return math.ceil(float(text) * 1000)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(quantity: str | int | float | None) -> int:
    if quantity in (None, ""):
        return 0
    match = re.fullmatch(r"([0-9.]+)([KMGT]i?)?", str(quantity))
    if not match:
        raise ValueError(f"memory quantity {quantity!r} is not a Kubernetes quantity")
    number, unit = match.groups()
    return math.ceil(float(number) * _MEMORY_UNITS.get(unit or "", 1))


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeAllocatable:
    cpu_millicores: int
    memory_bytes: int


def allocatable(instance_type: str) -> NodeAllocatable:
    """What the kubelet of an EKS AL2023 node offers pods (nodeadm's kube-reserved: CPU 6 % of the
    first core, 1 % of the second, 0.5 % of the third and fourth, 0.25 % of the rest; memory
    11 MiB per pod + 255 MiB; plus the 100 Mi hard eviction threshold)."""
    if instance_type not in SYSTEM_INSTANCE_TYPES:
        raise KeyError(f"system instance type {instance_type!r} has no entry in SYSTEM_INSTANCE_TYPES "
                       f"(infra/plan/system_capacity.py); known: {', '.join(SYSTEM_INSTANCE_TYPES)}")
    cores, memory_gib, max_pods = SYSTEM_INSTANCE_TYPES[instance_type]
    reserved_cpu = 60 + (10 if cores > 1 else 0) + 5 * min(max(cores - 2, 0), 2) + 2.5 * max(cores - 4, 0)
    reserved_memory_mib = 11 * max_pods + 255 + 100
    return NodeAllocatable(cpu_millicores=cores * 1000 - math.ceil(reserved_cpu),
                           memory_bytes=memory_gib * 2**30 - reserved_memory_mib * 2**20)


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    kind: str
    namespace: str
    name: str
    replicas: int
    cpu_millicores: int
    """Per pod: the containers' requests, or the largest init container's if larger."""
    memory_bytes: int
    on_system_nodes: bool
    tolerates_system_taint: bool
    unrequested: tuple[str, ...] = ()
    """Containers that request no CPU or memory (counted as zero)."""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _tolerates(tolerations: Iterable[dict], taint: Mapping[str, str]) -> bool:
    for t in tolerations or ():
        if t.get("effect") not in (None, "", taint["effect"]):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value") == taint["value"]:
            return True
    return False


def _selects_system_nodes(pod: dict) -> bool:
    selector = pod.get("nodeSelector") or {}
    return all(selector.get(k) == v for k, v in SYSTEM_NODE_LABEL.items())


def _daemonset_reaches_system_nodes(pod: dict) -> bool:
    """A DaemonSet runs on a system node unless a node selector or required affinity rules it out
    (the GPU-only ones select on GPU labels that system nodes lack) or it does not tolerate the taint."""
    selector = pod.get("nodeSelector") or {}
    if any(SYSTEM_NODE_LABEL.get(k) != v for k, v in selector.items() if k not in ("kubernetes.io/os",)):
        return False
    required = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or ():
        for expression in term.get("matchExpressions") or ():
            key = expression.get("key", "")
            if key.startswith(("karpenter.", "nvidia.com", "feature.node.kubernetes.io", "tensile.io/efa")):
                return False
            if key == "tensile.io/gpu-pool" or (key in SYSTEM_NODE_LABEL and expression.get("operator") == "NotIn"):
                return False
    return _tolerates(pod.get("tolerations") or (), SYSTEM_TAINT)


def workload(manifest: dict) -> Workload:
    """One Deployment, StatefulSet or DaemonSet: its per-pod requests and where it runs."""
    kind = manifest["kind"]
    metadata = manifest.get("metadata") or {}
    spec = manifest.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    cpu = memory = 0
    unrequested = []
    for container in pod.get("containers") or ():
        requests = (container.get("resources") or {}).get("requests") or {}
        if not requests.get("cpu") or not requests.get("memory"):
            unrequested.append(container["name"])
        cpu += cpu_millicores(requests.get("cpu"))
        memory += memory_bytes(requests.get("memory"))
    for container in pod.get("initContainers") or ():
        requests = (container.get("resources") or {}).get("requests") or {}
        cpu = max(cpu, cpu_millicores(requests.get("cpu")))
        memory = max(memory, memory_bytes(requests.get("memory")))
    tolerates = _tolerates(pod.get("tolerations") or (), SYSTEM_TAINT)
    on_system = _daemonset_reaches_system_nodes(pod) if kind == "DaemonSet" else _selects_system_nodes(pod)
    replicas = 1 if kind == "DaemonSet" else int(spec.get("replicas", 1))
    return Workload(kind=kind, namespace=metadata.get("namespace", "default"), name=metadata.get("name", "?"),
                    replicas=replicas, cpu_millicores=cpu, memory_bytes=memory, on_system_nodes=on_system,
                    tolerates_system_taint=tolerates, unrequested=tuple(unrequested))


@dataclass(frozen=True, kw_only=True, slots=True)
class Reserve:
    """Room held for pods the program does not render itself (EKS add-on DaemonSets, the teams'
    future rendezvous stores): per node when `per_node`, else in total."""
    name: str
    cpu_millicores: int
    memory_bytes: int
    per_node: bool


@dataclass(frozen=True, kw_only=True)
class SystemCapacity:
    instance_type: str
    desired_size: int
    node: NodeAllocatable
    cpu_per_node: int
    """Per-node overhead (DaemonSets) in millicores."""
    memory_per_node: int
    cpu_total: int
    """Replicated pods on the group, in millicores."""
    memory_total: int
    nodes_needed: int
    untolerated: tuple[str, ...] = ()
    """Workloads that select system nodes but do not tolerate the taint: they would never schedule."""
    lines: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.nodes_needed <= self.desired_size and not self.untolerated

    def problems(self) -> list[str]:
        found = []
        if self.nodes_needed > self.desired_size:
            found.append(
                f"cluster.systemNodes: the system pods request {self.cpu_total}m CPU and "
                f"{self.memory_total / 2**30:.2f} GiB, plus {self.cpu_per_node}m and "
                f"{self.memory_per_node / 2**30:.2f} GiB of DaemonSets per node; a {self.instance_type} offers "
                f"{self.node.cpu_millicores}m and {self.node.memory_bytes / 2**30:.2f} GiB, so they need "
                f"{self.nodes_needed} nodes and desiredSize is {self.desired_size}: set minSize and desiredSize "
                f"to at least {self.nodes_needed} (maxSize above them), or a larger instanceType")
        for label in self.untolerated:
            found.append(f"{label} selects the system nodes but does not tolerate their taint "
                         f"{SYSTEM_TAINT['key']}:{SYSTEM_TAINT['effect']}: add the toleration")
        return found


def system_capacity(workloads: Iterable[Workload], reserves: Iterable[Reserve], *, instance_type: str,
                    desired_size: int) -> SystemCapacity:
    """Sum the requests of everything bound for the system nodes and the nodes of `instance_type`
    they need: DaemonSets cost every node, the rest is spread over what is left. A sum, not a
    bin-packing: `nodes_needed` is a floor, which is why the stacks keep headroom above it."""
    node = allocatable(instance_type)
    cpu_node = memory_node = cpu_total = memory_total = 0
    untolerated = []
    lines = []
    for w in workloads:
        if not w.on_system_nodes:
            continue
        if w.kind != "DaemonSet" and not w.tolerates_system_taint:
            untolerated.append(w.label)
        if w.kind == "DaemonSet":
            cpu_node += w.cpu_millicores
            memory_node += w.memory_bytes
        else:
            cpu_total += w.replicas * w.cpu_millicores
            memory_total += w.replicas * w.memory_bytes
        lines.append(f"{w.label} ×{w.replicas}: {w.cpu_millicores}m, {w.memory_bytes / 2**20:.0f} MiB")
    for r in reserves:
        if r.per_node:
            cpu_node += r.cpu_millicores
            memory_node += r.memory_bytes
        else:
            cpu_total += r.cpu_millicores
            memory_total += r.memory_bytes
        lines.append(f"reserve {r.name}{' per node' if r.per_node else ''}: {r.cpu_millicores}m, "
                     f"{r.memory_bytes / 2**20:.0f} MiB")
    free_cpu, free_memory = node.cpu_millicores - cpu_node, node.memory_bytes - memory_node
    if free_cpu <= 0 or free_memory <= 0:
        needed = math.inf
    else:
        needed = max(1, math.ceil(cpu_total / free_cpu), math.ceil(memory_total / free_memory))
    return SystemCapacity(instance_type=instance_type, desired_size=desired_size, node=node,
                          cpu_per_node=cpu_node, memory_per_node=memory_node, cpu_total=cpu_total,
                          memory_total=memory_total, nodes_needed=needed, untolerated=tuple(untolerated),
                          lines=lines)
