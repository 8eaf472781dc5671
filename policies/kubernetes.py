"""Kubernetes rules: training pods (requests and limits, a grace period that covers the emergency
checkpoint, no do-not-disrupt), GPU NodePools that never consolidate or drift-replace training
nodes, no privileged containers or `:latest` images, team namespaces fenced by a ResourceQuota and a
default-deny NetworkPolicy, and the VPC CNI enforcing network policy."""

from __future__ import annotations

import json
from typing import Any, Mapping

from policies import objects
from policies.framework import MISSING, Report, Resource, Rule, Stack, dig, is_unknown, label, number

ADDON = "aws:eks/addon:Addon"
EKS_CLUSTER = "aws:eks/cluster:Cluster"


def _training_templates(resource: Resource, report: Report):
    for template in objects.pod_templates(resource):
        training = objects.is_training_pod(template)
        if training is None:
            report.unknown(f"{label(resource)}: {template.where or 'spec'} (is it a training pod?)")
        elif training:
            yield template


def check_training_resources(resource: Resource, config: Mapping, report: Report) -> None:
    for template in _training_templates(resource, report):
        gpu_limited = unknown = False
        for where, container in objects.containers(template.spec):
            if where.startswith("ephemeralContainers"):
                continue
            if is_unknown(container) or is_unknown(dig(container, "resources")):
                report.unknown(f"{label(resource)}: {where}.resources")
                unknown = True
                continue
            missing = [f"{section}.{name}" for section in ("requests", "limits") for name in ("cpu", "memory")
                       if dig(container, "resources", section, name) is MISSING]
            if missing and where.startswith("containers"):
                report.violation(f"{label(resource)}: training container {dig(container, 'name')} ({where}) must set "
                                 f"resources {', '.join(missing)} (Kueue admits by requests; limits keep a worker "
                                 f"from starving its neighbours)")
            requested = dig(container, "resources", "requests", objects.GPU_RESOURCE)
            limited = dig(container, "resources", "limits", objects.GPU_RESOURCE)
            if limited is not MISSING:
                gpu_limited = True
            if requested is not MISSING and limited is MISSING:
                report.violation(f"{label(resource)}: container {dig(container, 'name')} requests "
                                 f"{objects.GPU_RESOURCE} "
                                 f"but sets no limit for it")
        if objects.mentions_gpu(template.spec) and not gpu_limited and not unknown:
            report.violation(f"{label(resource)}: a training pod on GPU nodes must request and limit "
                             f"{objects.GPU_RESOURCE} in a container ({template.where or 'spec'})")


def check_termination_grace(resource: Resource, config: Mapping, report: Report) -> None:
    for template in _training_templates(resource, report):
        grace = dig(template.spec, "terminationGracePeriodSeconds")
        if is_unknown(grace):
            report.unknown(f"{label(resource)}: terminationGracePeriodSeconds")
            continue
        seconds = 30.0 if grace is MISSING else number(grace)
        if seconds is None or seconds < config["minSeconds"]:
            report.violation(f"{label(resource)}: terminationGracePeriodSeconds must cover the emergency checkpoint "
                             f"(>= {config['minSeconds']} s), got {'30 (default)' if grace is MISSING else grace}")


def check_no_do_not_disrupt(resource: Resource, config: Mapping, report: Report) -> None:
    for template in _training_templates(resource, report):
        sources = [dig(template.metadata, "annotations")]
        if resource.type == objects.POD:
            sources = [dig(resource.props, "metadata", "annotations")]
        for pod_annotations in sources:
            if is_unknown(pod_annotations):
                report.unknown(f"{label(resource)}: pod annotations")
            elif isinstance(pod_annotations, Mapping) and objects.DO_NOT_DISRUPT in pod_annotations:
                report.violation(f"{label(resource)}: training pods must not carry {objects.DO_NOT_DISRUPT} "
                                 f"({pod_annotations[objects.DO_NOT_DISRUPT]!r}): Karpenter would never evict them, "
                                 f"so on a "
                                 f"spot interruption they get no SIGTERM and cannot checkpoint")


def _budget_blocks(budget: Any, reason: str) -> bool:
    reasons = dig(budget, "reasons")
    applies = reasons is MISSING or (isinstance(reasons, list) and reason in reasons)
    nodes = str(dig(budget, "nodes")).strip()
    return applies and dig(budget, "schedule") is MISSING and nodes in ("0", "0%")


def check_keeps_training_nodes(resource: Resource, config: Mapping, report: Report) -> None:
    spec = dig(resource.props, "spec")
    gpu = objects.is_gpu_node_pool(spec)
    if gpu is None:
        report.unknown(f"{label(resource)}: whether it launches GPU instances")
        return
    if not gpu:
        return
    disruption = dig(spec, "disruption")
    if is_unknown(disruption) or is_unknown(dig(disruption, "budgets")) or is_unknown(
            dig(disruption, "consolidationPolicy")):
        report.unknown(f"{label(resource)}: spec.disruption")
        return
    budgets = dig(disruption, "budgets")
    budgets = budgets if isinstance(budgets, list) else []
    policy = dig(disruption, "consolidationPolicy")
    policy = "WhenEmptyOrUnderutilized" if policy is MISSING else policy
    problems = []
    if policy != "WhenEmpty" and not any(_budget_blocks(b, "Underutilized") for b in budgets):
        problems.append(f"consolidationPolicy {policy} consolidates nodes that run training (use WhenEmpty or a "
                        f"budget of 0 nodes for Underutilized)")
    if not any(_budget_blocks(b, "Drifted") for b in budgets):
        problems.append("no always-on budget of 0 nodes for the Drifted reason, so a NodePool or EC2NodeClass change "
                        "would replace nodes in the middle of training")
    if problems:
        report.violation(f"{label(resource)}: " + "; ".join(problems))


def check_privileged(resource: Resource, config: Mapping, report: Report) -> None:
    for template in objects.pod_templates(resource):
        if is_unknown(template.spec):
            report.unknown(f"{label(resource)}: {template.where or 'spec'}")
            continue
        for where, container in objects.containers(template.spec):
            flag = dig(container, "securityContext", "privileged")
            if is_unknown(container) or is_unknown(flag):
                report.unknown(f"{label(resource)}: {where}.securityContext.privileged")
            elif flag is True:
                report.violation(f"{label(resource)}: container {dig(container, 'name')} ({where}) must not be "
                                 f"privileged")


def image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (means :latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return "uses :latest"
    return None


def check_images(resource: Resource, config: Mapping, report: Report) -> None:
    for template in objects.pod_templates(resource):
        if is_unknown(template.spec):
            report.unknown(f"{label(resource)}: {template.where or 'spec'}")
            continue
        for where, container in objects.containers(template.spec):
            image = dig(container, "image")
            if is_unknown(container) or is_unknown(image):
                report.unknown(f"{label(resource)}: {where}.image")
            elif isinstance(image, str) and (problem := image_problem(image)):
                report.violation(f"{label(resource)}: image {image} ({where}) {problem}: pin a version or digest so "
                                 f"every worker of a job runs the same code")


def _team_namespace_objects(stack: Stack, config: Mapping, report: Report, type_: str, judge, what: str) -> None:
    for namespace, name in objects.team_namespaces(stack, config["systemNamespaces"]):
        placed = objects.in_namespace(stack, namespace, name, type_)
        verdicts = [judge(o) for o in placed]
        if any(v is True for v in verdicts):
            continue
        if any(v is None for v in verdicts) or (is_unknown(name) and not placed):
            report.unknown(f"{label(namespace)}: its {what}")
        else:
            report.violation(f"{label(namespace)}: a team namespace (every namespace outside systemNamespaces "
                             f"{sorted(config['systemNamespaces'])} is one, labelled or not) needs {what}",
                             namespace.urn)


def check_namespace_quota(stack: Stack, config: Mapping, report: Report) -> None:
    def judge(quota: Resource) -> Any:
        hard = dig(quota.props, "spec", "hard")
        if is_unknown(hard):
            return None
        return True if isinstance(hard, Mapping) and hard else False
    _team_namespace_objects(stack, config, report, objects.RESOURCE_QUOTA, judge, "a ResourceQuota with hard limits")


def is_default_deny(policy: Resource) -> bool | None:
    spec = dig(policy.props, "spec")
    if is_unknown(spec) or is_unknown(dig(spec, "podSelector")) or is_unknown(dig(spec, "policyTypes")):
        return None
    selector = dig(spec, "podSelector")
    selects_all = selector is MISSING or selector == {} or (
        isinstance(selector, Mapping) and not dig(selector, "matchLabels") and not dig(selector, "matchExpressions"))
    types = dig(spec, "policyTypes")
    return bool(selects_all and isinstance(types, list) and {"Ingress", "Egress"} <= set(types)
                and dig(spec, "ingress") in (MISSING, []) and dig(spec, "egress") in (MISSING, []))


def check_namespace_default_deny(stack: Stack, config: Mapping, report: Report) -> None:
    _team_namespace_objects(stack, config, report, objects.NETWORK_POLICY, is_default_deny,
                            "a default-deny NetworkPolicy (podSelector {}, policyTypes Ingress and Egress, no rules)")


def check_vpc_cni(stack: Stack, config: Mapping, report: Report) -> None:
    addons = stack.of_type(ADDON)
    for cluster in stack.of_type(EKS_CLUSTER):
        cni = [a for a in stack.referencing(cluster, "clusterName", ADDON) if dig(a.props, "addonName") == "vpc-cni"]
        if not cni:
            if any(is_unknown(dig(a.props, "addonName")) for a in addons):
                report.unknown(f"{label(cluster)}: add-on names")
            else:
                report.violation(f"{label(cluster)}: declares no vpc-cni add-on (joined by its clusterName); without "
                                 f"it nothing enforces the teams' NetworkPolicies", cluster.urn)
            continue
        for addon in cni:
            text = dig(addon.props, "configurationValues")
            if is_unknown(text):
                report.unknown(f"{label(addon)}: configurationValues")
                continue
            try:
                values = json.loads(text) if isinstance(text, str) else {}
            except ValueError:
                values = {}
            if str(dig(values, "enableNetworkPolicy")).lower() != "true":
                report.violation(f"{label(addon)}: configurationValues must set enableNetworkPolicy \"true\" or "
                                 f"NetworkPolicies are not enforced; got {text!r}", addon.urn)


def _workloads_only(check):
    """Workload types vary (JobSet has several API versions), so the rule filters, not the type list."""
    def run(resource: Resource, config: Mapping, report: Report) -> None:
        if objects.is_workload(resource.type):
            check(resource, config, report)
    run.__name__ = check.__name__
    return run


RULES = [
    Rule("training-pod-resources", "Training pods request and limit CPU, memory and GPUs.", "resource",
         _workloads_only(check_training_resources)),
    Rule("training-pod-termination-grace", "Training pods' grace period covers the emergency checkpoint.",
         "resource", _workloads_only(check_termination_grace), (),
         {"minSeconds": {"type": "number", "default": 120,
                         "description": "measured emergency-checkpoint time plus margin, in seconds"}}),
    Rule("training-pod-no-do-not-disrupt", "Training pods never carry karpenter.sh/do-not-disrupt.", "resource",
         _workloads_only(check_no_do_not_disrupt)),
    Rule("gpu-nodepool-keeps-training-nodes", "GPU NodePools never consolidate or drift-replace nodes running "
         "training.", "resource", check_keeps_training_nodes, (objects.NODE_POOL,)),
    Rule("no-privileged-containers", "No container runs privileged.", "resource", _workloads_only(check_privileged)),
    Rule("no-latest-images", "Every image is pinned to a tag other than latest, or a digest.", "resource",
         _workloads_only(check_images)),
    Rule("team-namespace-resource-quota", "Every team namespace has a ResourceQuota.", "stack",
         check_namespace_quota, (), objects.SYSTEM_NAMESPACES_CONFIG),
    Rule("team-namespace-default-deny", "Every team namespace has a default-deny NetworkPolicy.", "stack",
         check_namespace_default_deny, (), objects.SYSTEM_NAMESPACES_CONFIG),
    Rule("vpc-cni-network-policy", "The cluster's VPC CNI add-on enforces NetworkPolicies.", "stack", check_vpc_cni),
]
