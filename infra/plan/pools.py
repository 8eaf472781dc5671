"""GPU pool planning as pure functions of the config: NodePool and EC2NodeClass specs, capacity
order, limits, per-zone splits, and the labels and taints that place pods on nodes.
Components only turn these plans into resources; tests check the plans with tables of cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from infra import cost
from infra.config.types import GpuPoolConfig, KarpenterConfig
from infra.plan import checkpoint_window

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
EFA_SECURITY_GROUP_TAG = "tensile.io/efa"
DISCOVERY_TAG = "karpenter.sh/discovery"
CAPACITY_TYPE_KEY = "karpenter.sh/capacity-type"
POOL_LABEL = "tensile.io/gpu-pool"
MODEL_LABEL = "tensile.io/gpu-model"
EFA_LABEL = "tensile.io/efa"
"""On EFA nodes only: the EFA device plugin runs where this label is."""
SYSTEM_NODE_LABEL = {"tensile.io/node-role": "system"}
"""On the on-demand system node group: what must outlive any spot node (Karpenter, rendezvous stores) runs there."""


# ---------------------------------------------------------------------------------------------
# GPU pools
# ---------------------------------------------------------------------------------------------


def capacity_type_order(*, reserved: bool, spot: bool) -> list[str]:
    """Karpenter tries reserved, then spot, then on-demand within one NodePool. On-demand is
    always present so a spot shortage falls back at once instead of leaving jobs pending."""
    order = []
    if reserved:
        order.append("reserved")
    if spot:
        order.append("spot")
    order.append("on-demand")
    return order


def pool_limits(instance_types: Iterable[str], max_gpus: int) -> dict[str, str]:
    """GPU limit is the hard ceiling; CPU and memory limits follow from the widest host per GPU,
    so they never bind before the GPU limit does but still stop a runaway CPU-only launch."""
    shapes = [cost.lookup(t) for t in instance_types]
    cpu_per_gpu = max(s.vcpus / s.gpus for s in shapes)
    mem_per_gpu = max(s.memory_gib / s.gpus for s in shapes)
    return {
        "nvidia.com/gpu": str(max_gpus),
        "cpu": str(math.ceil(cpu_per_gpu * max_gpus)),
        "memory": f"{math.ceil(mem_per_gpu * max_gpus)}Gi",
    }


def split_across_zones(max_gpus: int, zones: Iterable[str], node_gpus: int) -> dict[str, int]:
    """EFA pools get one NodePool per zone (a cluster placement group lives in one AZ). Split the
    pool's GPU limit in whole nodes, earlier zones first, so the per-zone limits add up to at
    most `max_gpus` and the cost bound stays exact."""
    zones = list(zones)
    nodes = max_gpus // node_gpus
    base, extra = divmod(nodes, len(zones))
    return {z: (base + (1 if i < extra else 0)) * node_gpus for i, z in enumerate(zones)}


@dataclass(frozen=True, kw_only=True, slots=True)
class NodePoolPlan:
    name: str
    pool: str
    node_class: str
    zones: tuple[str, ...]
    max_gpus: int
    efa: bool
    spec: dict
    """The NodePool's `spec`, ready for the custom resource."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeClassPlan:
    name: str
    zones: tuple[str, ...]
    placement_group: str | None
    efa: bool
    spec: dict
    creates_placement_group: bool = False
    """The stack creates `placement_group`; False for a group the config names (a reservation's)."""


def node_pool_spec(pool: GpuPoolConfig, *, zones: Iterable[str], max_gpus: int, node_class: str,
                   karpenter: KarpenterConfig) -> dict:
    zones = list(zones)
    labels = {POOL_LABEL: pool.name, MODEL_LABEL: pool.gpu_model}
    if pool.efa:
        labels[EFA_LABEL] = "true"
    return {
        "weight": 50,
        "limits": pool_limits(pool.instance_types, max_gpus),
        "disruption": {
            # Never consolidate a node that runs training; an empty node goes after 10 minutes.
            "consolidationPolicy": "WhenEmpty",
            "consolidateAfter": "10m",
            "budgets": [
                # Drift and underutilisation never replace a GPU node; spot interruptions,
                # expiry and node repair are not governed by budgets, so those nodes are still
                # drained and the trainer's pods get SIGTERM and checkpoint.
                {"nodes": "0", "reasons": ["Drifted", "Underutilized"]},
                {"nodes": "10%", "reasons": ["Empty"]},
            ],
        },
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_class},
                "expireAfter": karpenter.expire_after,
                "terminationGracePeriod": karpenter.termination_grace_period,
                "taints": [dict(GPU_TAINT)],
                "requirements": [
                    {"key": CAPACITY_TYPE_KEY, "operator": "In",
                     "values": capacity_type_order(reserved=pool.reserved, spot=pool.spot)},
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(pool.instance_types)},
                    {"key": "karpenter.k8s.aws/instance-gpu-name", "operator": "In", "values": [pool.gpu_model]},
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": zones},
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                ],
            },
        },
    }


def node_class_spec(*, cluster_name: str, node_role: str, karpenter: KarpenterConfig, root_volume_gib: int,
                    tags: dict[str, str], efa: bool,
                    placement_group: str | None, capacity_reservation_ids: Iterable[str],
                    instance_store: bool = False) -> dict:
    # Subnets and security groups by tag; a per-zone (EFA) class needs no zone filter here
    # because its NodePool's zone requirement already confines launches to that AZ.
    subnet_term: dict = {"tags": {DISCOVERY_TAG: cluster_name}}
    security_groups = [{"tags": {DISCOVERY_TAG: cluster_name}}]
    if efa:
        security_groups.append({"tags": {EFA_SECURITY_GROUP_TAG: cluster_name}})
    spec: dict = {
        "role": node_role,
        "amiSelectorTerms": [{"alias": karpenter.ami_alias}],
        "subnetSelectorTerms": [subnet_term],
        "securityGroupSelectorTerms": security_groups,
        "metadataOptions": {
            "httpEndpoint": "enabled",
            "httpProtocolIPv6": "disabled",
            "httpPutResponseHopLimit": karpenter.imds_hop_limit,
            "httpTokens": "required",
        },
        "blockDeviceMappings": [{
            "deviceName": "/dev/xvda",
            "ebs": {"volumeSize": f"{root_volume_gib}Gi", "volumeType": "gp3", "encrypted": True,
                    "deleteOnTermination": True},
        }],
        "tags": dict(tags),
    }
    # The emergency checkpoint is staged on the node's disk before its upload (plan/checkpoint_window.py):
    # where every type has NVMe instance store, RAID0 puts the kubelet's and containerd's
    # directories, so every emptyDir, on the array (GB/s); elsewhere the root gp3 gets more than
    # its default 125 MiB/s.
    if instance_store:
        spec["instanceStorePolicy"] = "RAID0"
    else:
        spec["blockDeviceMappings"][0]["ebs"]["throughput"] = checkpoint_window.GP3_STAGING_MIB_PER_S
    if placement_group:
        spec["placementGroupSelector"] = {"name": placement_group}
    reservations = list(capacity_reservation_ids)
    if reservations:
        spec["capacityReservationSelectorTerms"] = [{"id": r} for r in reservations]
    return spec


def plan_gpu_pools(pools: Iterable[GpuPoolConfig], *, cluster_name: str, node_role: str,
                   karpenter: KarpenterConfig, tags: dict[str, str]) -> tuple[list[NodeClassPlan], list[NodePoolPlan]]:
    """One NodePool per GPU pool (per zone for EFA pools); plain pools share one EC2NodeClass per
    root-volume size, pools with EFA or reservations get their own. `node_role` goes into each
    class's `spec.role` (a component passes the role's name once it is known)."""
    classes: dict[str, NodeClassPlan] = {}
    node_pools: list[NodePoolPlan] = []
    for pool in pools:
        if pool.efa:
            node_gpus = max(cost.lookup(t).gpus for t in pool.instance_types)
            for zone, zone_gpus in split_across_zones(pool.max_gpus, pool.zones, node_gpus).items():
                name = f"{pool.name}-{zone}"
                placement = pool.placement_group or f"{cluster_name}-{name}"
                classes[name] = NodeClassPlan(
                    name=name, zones=(zone,), placement_group=placement, efa=True,
                    creates_placement_group=pool.placement_group is None,
                    spec=node_class_spec(cluster_name=cluster_name, node_role=node_role, karpenter=karpenter,
                                         root_volume_gib=pool.root_volume_gib, tags=tags, efa=True,
                                         placement_group=placement,
                                         capacity_reservation_ids=pool.capacity_reservation_ids,
                                         instance_store=checkpoint_window.uses_instance_store(pool.instance_types)))
                node_pools.append(NodePoolPlan(
                    name=name, pool=pool.name, node_class=name, zones=(zone,), max_gpus=zone_gpus, efa=True,
                    spec=node_pool_spec(pool, zones=(zone,), max_gpus=zone_gpus, node_class=name, karpenter=karpenter)))
            continue
        instance_store = checkpoint_window.uses_instance_store(pool.instance_types)
        if pool.reserved:
            class_name = pool.name
        else:
            # Pools share a class only with the same staging disk (instance store, or a faster gp3).
            class_name = f"gpu-{pool.root_volume_gib}gi" + ("" if instance_store else "-ebs")
        if class_name not in classes:
            classes[class_name] = NodeClassPlan(
                name=class_name, zones=tuple(pool.zones), placement_group=None, efa=False,
                spec=node_class_spec(cluster_name=cluster_name, node_role=node_role, karpenter=karpenter,
                                     root_volume_gib=pool.root_volume_gib, tags=tags, efa=False,
                                     placement_group=None, capacity_reservation_ids=pool.capacity_reservation_ids,
                                     instance_store=instance_store))
        node_pools.append(NodePoolPlan(
            name=pool.name, pool=pool.name, node_class=class_name, zones=tuple(pool.zones), max_gpus=pool.max_gpus,
            efa=False,
            spec=node_pool_spec(pool, zones=pool.zones, max_gpus=pool.max_gpus, node_class=class_name,
                                karpenter=karpenter)))
    return list(classes.values()), node_pools
