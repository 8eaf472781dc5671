"""Compute rules: GPU NodePools (finite GPU limit, GPU taint, one GPU model, on-demand behind
spot), EC2NodeClasses (IMDSv2 within a hop bound, encrypted volumes), the system node group on
on-demand capacity, and system pods kept off spot."""

from __future__ import annotations

import json
from typing import Any, Mapping

from infra import cost as cost_model
from policies import objects
from policies.framework import MISSING, Report, Resource, Rule, dig, is_unknown, label, number

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ADDON = "aws:eks/addon:Addon"


def _gpu_pool(resource: Resource, report: Report) -> Any:
    """The NodePool's spec if it is a GPU pool; None when not (or when that is unknown)."""
    spec = dig(resource.props, "spec")
    gpu = objects.is_gpu_node_pool(spec)
    if gpu is None:
        report.unknown(f"{label(resource)}: whether it launches GPU instances")
    return spec if gpu else None


def check_gpu_limit(resource: Resource, config: Mapping, report: Report) -> None:
    spec = _gpu_pool(resource, report)
    if spec is None:
        return
    limit = dig(spec, "limits", objects.GPU_RESOURCE)
    if is_unknown(limit) or is_unknown(dig(spec, "limits")):
        report.unknown(f"{label(resource)}: spec.limits.{objects.GPU_RESOURCE}")
        return
    value = number(limit)
    if limit is MISSING or value is None:
        report.violation(f"{label(resource)}: spec.limits.{objects.GPU_RESOURCE} must be a finite GPU count "
                         f"(the pool's hard ceiling), got {'nothing' if limit is MISSING else repr(limit)}")
    elif not 0 < value <= config["maxGpusPerPool"]:
        report.violation(f"{label(resource)}: spec.limits.{objects.GPU_RESOURCE} must be in "
                         f"1..{config['maxGpusPerPool']}, "
                         f"got {limit}")


def check_gpu_taint(resource: Resource, config: Mapping, report: Report) -> None:
    spec = _gpu_pool(resource, report)
    if spec is None:
        return
    taints = dig(spec, "template", "spec", "taints")
    if is_unknown(taints):
        report.unknown(f"{label(resource)}: spec.template.spec.taints")
        return
    taints = [] if taints is MISSING else taints
    for t in taints:
        if is_unknown(t) or any(is_unknown(dig(t, f)) for f in ("key", "effect")):
            report.unknown(f"{label(resource)}: a taint")
            return
    if not any(dig(t, "key") == config["taintKey"] and dig(t, "effect") in ("NoSchedule", "NoExecute")
               for t in taints):
        found = ", ".join(f"{dig(t, 'key')}:{dig(t, 'effect')}" for t in taints) or "none"
        report.violation(f"{label(resource)}: GPU nodes must carry the taint {config['taintKey']}:NoSchedule so only "
                         f"pods that tolerate it land there; taints: {found}")


def gpu_models(spec: Any) -> tuple[set[str] | None, list[str]]:
    """The GPU models a pool can launch (None: not bounded, or unknown) and why it could not tell."""
    name_req, type_req = objects.requirement(spec, objects.GPU_NAME), objects.requirement(spec, objects.INSTANCE_TYPE)
    if is_unknown(name_req) or is_unknown(type_req):
        return None, ["unknown"]
    by_name = objects.allowed_values(name_req, ()) if dig(name_req, "operator") == "In" else None
    by_type, problems = None, []
    if dig(type_req, "operator") == "In":
        types = objects.allowed_values(type_req, ())
        if types is None:
            return None, ["unknown"]
        unpriced = sorted(t for t in types if t not in cost_model.CATALOGUE)
        if unpriced:
            problems.append(f"not in the GPU catalogue (infra/cost.py): {', '.join(unpriced)}")
        else:
            by_type = {cost_model.CATALOGUE[t].gpu_model for t in types}
    if by_name is not None and by_type is not None:
        return by_name & by_type, []
    return (by_name if by_name is not None else by_type), ([] if by_name is not None else problems)


def check_one_gpu_model(resource: Resource, config: Mapping, report: Report) -> None:
    spec = _gpu_pool(resource, report)
    if spec is None:
        return
    models, problems = gpu_models(spec)
    if problems == ["unknown"]:
        report.unknown(f"{label(resource)}: its instance-type or GPU-name requirement")
        return
    if models is None or len(models) != 1:
        shown = "any" if models is None else ", ".join(sorted(models)) or "none"
        detail = f" ({'; '.join(problems)})" if problems else ""
        report.violation(f"{label(resource)}: a GPU pool must be restricted to exactly one GPU model (an `In` "
                         f"requirement on {objects.GPU_NAME} or on {objects.INSTANCE_TYPE} from one model), "
                         f"so a job's workers "
                         f"never mix models; it allows: {shown}{detail}")


def check_on_demand_fallback(resource: Resource, config: Mapping, report: Report) -> None:
    spec = _gpu_pool(resource, report)
    if spec is None:
        return
    req = objects.requirement(spec, objects.CAPACITY_TYPE)
    if is_unknown(req):
        report.unknown(f"{label(resource)}: the {objects.CAPACITY_TYPE} requirement")
        return
    if req is MISSING:
        return  # Karpenter's default is on-demand only.
    allowed = objects.allowed_values(req, objects.CAPACITY_TYPES)
    if allowed is None:
        report.unknown(f"{label(resource)}: the {objects.CAPACITY_TYPE} requirement's values")
        return
    if "spot" in allowed and "on-demand" not in allowed:
        report.violation(f"{label(resource)}: a pool that allows spot must also allow on-demand, so Karpenter falls "
                         f"back when spot is short; {objects.CAPACITY_TYPE} allows {sorted(allowed)}")


def check_imdsv2(resource: Resource, config: Mapping, report: Report) -> None:
    options = dig(resource.props, "spec", "metadataOptions")
    if is_unknown(options) or is_unknown(dig(resource.props, "spec")):
        report.unknown(f"{label(resource)}: spec.metadataOptions")
        return
    if options is MISSING:
        return  # Karpenter's default: httpTokens required, hop limit 1.
    tokens, endpoint, hops = (dig(options, f) for f in ("httpTokens", "httpEndpoint", "httpPutResponseHopLimit"))
    if any(is_unknown(v) for v in (tokens, endpoint, hops)):
        report.unknown(f"{label(resource)}: spec.metadataOptions fields")
        return
    if endpoint == "disabled":
        return
    if tokens not in (MISSING, "required"):
        report.violation(f"{label(resource)}: spec.metadataOptions.httpTokens must be 'required' (IMDSv2 only), "
                         f"got {tokens!r}")
    hop_limit = 1.0 if hops is MISSING else number(hops)
    low, high = config["minHopLimit"], config["maxHopLimit"]
    if hop_limit is None or not low <= hop_limit <= high:
        report.violation(f"{label(resource)}: spec.metadataOptions.httpPutResponseHopLimit must be in {low}..{high} "
                         f"(2 lets a pod read spot notices through the node; more reaches further), got {hops}")


def check_encrypted_volumes(resource: Resource, config: Mapping, report: Report) -> None:
    mappings = dig(resource.props, "spec", "blockDeviceMappings")
    if is_unknown(mappings) or is_unknown(dig(resource.props, "spec")):
        report.unknown(f"{label(resource)}: spec.blockDeviceMappings")
        return
    if mappings is MISSING:
        return  # Karpenter's default root volume is encrypted.
    for i, m in enumerate(mappings):
        encrypted = dig(m, "ebs", "encrypted")
        if is_unknown(encrypted):
            report.unknown(f"{label(resource)}: spec.blockDeviceMappings[{i}].ebs.encrypted")
        elif encrypted is not True:
            report.violation(f"{label(resource)}: spec.blockDeviceMappings[{i}] ({dig(m, 'deviceName')}) must set "
                             f"ebs.encrypted: true, got {None if encrypted is MISSING else encrypted}")


def _label_pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def check_system_node_group(resource: Resource, config: Mapping, report: Report) -> None:
    key, value = _label_pair(config["systemNodeLabel"])
    labels = dig(resource.props, "labels")
    if is_unknown(labels) or is_unknown(dig(labels, key)):
        report.unknown(f"{label(resource)}: labels")
        return
    role = dig(labels, key)
    if role is not MISSING and role != value:
        return  # declared another role; a group without the label is a system group (fail closed)
    capacity = dig(resource.props, "capacityType")
    if is_unknown(capacity):
        report.unknown(f"{label(resource)}: capacityType")
    elif capacity not in (MISSING, "ON_DEMAND"):
        labelled = f"labelled {key}={value}" if role is not MISSING else (
            f"no {key} label: a managed node group is a system group unless it declares another role")
        report.violation(f"{label(resource)}: the system node group ({labelled}) runs Karpenter, CoreDNS, Kueue "
                         f"and the rendezvous store and must be capacityType ON_DEMAND, got {capacity!r}")


def pins_off_spot(node_selector: Any, affinity: Any, config: Mapping) -> bool | None:
    """Does this placement keep pods on the system nodes or on-demand capacity (None: unknown)?"""
    key, value = _label_pair(config["systemNodeLabel"])
    on_demand = {key: {value}, objects.CAPACITY_TYPE: {"on-demand"}, "eks.amazonaws.com/capacityType": {"ON_DEMAND"}}
    if is_unknown(node_selector) or is_unknown(affinity):
        return None
    if isinstance(node_selector, Mapping):
        if any(is_unknown(v) for v in node_selector.values()):
            return None
        if node_selector.get(objects.CAPACITY_TYPE) == "spot":
            return False
        if any(node_selector.get(label_key) in values for label_key, values in on_demand.items()):
            return True
    terms = dig(affinity, "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
    if isinstance(terms, list) and terms:
        def term_pins(term: Any) -> bool:
            for expr in dig(term, "matchExpressions") if isinstance(dig(term, "matchExpressions"), list) else []:
                values = dig(expr, "values")
                if (dig(expr, "key") in on_demand and dig(expr, "operator") == "In" and isinstance(values, list)
                        and values and set(values) <= on_demand[dig(expr, "key")]):
                    return True
            return False
        return all(term_pins(t) for t in terms)
    return False


def check_system_pods(resource: Resource, config: Mapping, report: Report) -> None:
    props = resource.props
    if resource.type == objects.HELM_RELEASE:
        name = dig(props, "name")
        releases: Mapping[str, str] = config["systemReleases"]
        if is_unknown(name) or name not in releases:
            return
        values = dig(props, "values")
        selector = dig(values, *releases[name].split(".")) if not is_unknown(values) else values
        placement = pins_off_spot(selector, MISSING, config)
        where = f"values.{releases[name]}"
    elif resource.type == ADDON:
        name = dig(props, "addonName")
        if is_unknown(name) or name not in config["systemAddons"]:
            return
        text = dig(props, "configurationValues")
        if is_unknown(text):
            report.unknown(f"{label(resource)}: configurationValues")
            return
        try:
            values = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            values = {}
        placement = pins_off_spot(dig(values, "nodeSelector"), dig(values, "affinity"), config)
        where = "configurationValues.nodeSelector"
    elif objects.is_workload(resource.type) and resource.type != "kubernetes:apps/v1:DaemonSet":
        namespace = dig(props, "metadata", "namespace")
        if is_unknown(namespace) or namespace not in config["systemNamespaces"]:
            return
        placement = True
        for template in objects.pod_templates(resource):
            pinned = pins_off_spot(dig(template.spec, "nodeSelector"), dig(template.spec, "affinity"), config)
            if pinned is None or placement is None:
                placement = None
            else:
                placement = placement and pinned
        where = "the pod spec's nodeSelector/affinity"
    else:
        return
    if placement is None:
        report.unknown(f"{label(resource)}: {where}")
    elif not placement:
        report.violation(f"{label(resource)}: system pods must not run on spot: select {config['systemNodeLabel']} "
                         f"(or on-demand capacity) in {where}")


_PLACEMENT_CONFIG = {
    "systemNodeLabel": {"type": "string", "default": "tensile.io/node-role=system",
                        "description": "key=value label of the on-demand system node group"},
}

RULES = [
    Rule("gpu-nodepool-gpu-limit", "GPU NodePools have a finite nvidia.com/gpu limit (the hard cost ceiling).",
         "resource", check_gpu_limit, (objects.NODE_POOL,),
         {"maxGpusPerPool": {"type": "number", "default": 512, "description": "largest GPU limit one pool may have"}}),
    Rule("gpu-nodepool-gpu-taint", "GPU NodePools taint their nodes so only GPU workloads schedule there.",
         "resource", check_gpu_taint, (objects.NODE_POOL,),
         {"taintKey": {"type": "string", "default": objects.GPU_RESOURCE}}),
    Rule("gpu-nodepool-one-gpu-model", "Each GPU NodePool launches one GPU model (mixed models make stragglers).",
         "resource", check_one_gpu_model, (objects.NODE_POOL,)),
    Rule("gpu-nodepool-on-demand-fallback", "A GPU NodePool that allows spot also allows on-demand.",
         "resource", check_on_demand_fallback, (objects.NODE_POOL,)),
    Rule("ec2nodeclass-imdsv2", "EC2NodeClasses require IMDSv2 with a bounded hop limit.",
         "resource", check_imdsv2, (objects.EC2_NODE_CLASS,),
         {"minHopLimit": {"type": "number", "default": 1}, "maxHopLimit": {"type": "number", "default": 2}}),
    Rule("ec2nodeclass-encrypted-volumes", "EC2NodeClasses encrypt every EBS volume.",
         "resource", check_encrypted_volumes, (objects.EC2_NODE_CLASS,)),
    Rule("system-nodegroup-on-demand", "System node groups (every managed node group not labelled with another "
         "role) run on on-demand capacity.",
         "resource", check_system_node_group, (NODE_GROUP,), _PLACEMENT_CONFIG),
    Rule("system-pods-off-spot", "System pods (Karpenter, Kueue, CoreDNS, system namespaces) are pinned off spot.",
         "resource", check_system_pods, (),
         {**_PLACEMENT_CONFIG,
          "systemReleases": {"type": "object", "additionalProperties": {"type": "string"},
                             "default": {"karpenter": "nodeSelector", "kueue": "controllerManager.nodeSelector"},
                             "description": "Helm release name -> values path of its node selector"},
          "systemAddons": {"type": "array", "items": {"type": "string"}, "default": ["coredns"]},
          **objects.SYSTEM_NAMESPACES_CONFIG}),
]
