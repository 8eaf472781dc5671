"""The GPU admission policy: in team namespaces only what Kueue manages may use GPUs, so every
GPU-hour a team runs is admitted, metered and held by its ClusterQueue. A ValidatingAdmissionPolicy
(CEL, evaluated by the API server) and its binding, as plain manifests."""

from __future__ import annotations

from infra.plan.pools import GPU_TAINT
from infra.plan.teams import KUEUE_MANAGED_NAMESPACES

POLICY_NAME = "tensile-gpu-only-through-kueue"
GPU_RESOURCE_PREFIX = "nvidia.com/"
"""Every NVIDIA device-plugin resource (whole GPUs, MIG slices) is a GPU."""

# "Kueue-managed", concretely, inside a team namespace (the binding's scope, which is also
# Kueue's managedJobsNamespaceSelector, with manageJobsWithoutQueueName on):
#   - a batch/v1 Job: Kueue suspends every one until admitted (labelled or given `default`);
#   - a batch/v1 CronJob: each Job it creates is such a Job;
#   - a Pod whose controller is a batch/v1 Job: it exists only once that Job is admitted.
# Everything else (Deployments, StatefulSets, ReplicaSets, bare Pods, Pods of any other
# controller) is not: Kueue runs only its batch/job integration here.
# "Uses GPUs": a container or init container requests or limits an nvidia.com/ resource, the
# pod tolerates the GPU taint (or every taint), or it names its node (which skips taints).
_VARIABLES = [
    ("podSpec", "object.kind == 'Pod' ? object.spec : "
                "(object.kind == 'CronJob' ? object.spec.jobTemplate.spec.template.spec : object.spec.template.spec)"),
    ("containers", "variables.podSpec.containers + "
                   "(has(variables.podSpec.initContainers) ? variables.podSpec.initContainers : [])"),
    ("requestsGpu", "variables.containers.exists(c, has(c.resources) && ("
                    f"(has(c.resources.requests) && c.resources.requests.exists(r, r.startsWith('{GPU_RESOURCE_PREFIX}'))) || "
                    f"(has(c.resources.limits) && c.resources.limits.exists(r, r.startsWith('{GPU_RESOURCE_PREFIX}')))))"),
    ("toleratesGpuTaint", "has(variables.podSpec.tolerations) && variables.podSpec.tolerations.exists(t, "
                          f"(has(t.key) && t.key == '{GPU_TAINT['key']}') || "
                          "((!has(t.key) || t.key == '') && has(t.operator) && t.operator == 'Exists'))"),
    ("pinsNode", "has(variables.podSpec.nodeName) && variables.podSpec.nodeName != ''"),
    ("kueueManaged", "object.kind == 'Job' || object.kind == 'CronJob' || "
                     "(object.kind == 'Pod' && has(object.metadata.ownerReferences) && "
                     "object.metadata.ownerReferences.exists(o, o.apiVersion == 'batch/v1' && o.kind == 'Job' && "
                     "has(o.controller) && o.controller))"),
]


def gpu_admission_policy() -> dict:
    rules = [
        {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]},
        {"apiGroups": ["apps"], "apiVersions": ["v1"], "resources": ["deployments", "statefulsets", "replicasets"]},
        {"apiGroups": ["batch"], "apiVersions": ["v1"], "resources": ["jobs", "cronjobs"]},
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            # An API server that cannot evaluate the policy refuses rather than admits.
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{**r, "operations": ["CREATE", "UPDATE"]} for r in rules]},
            "variables": [{"name": n, "expression": e} for n, e in _VARIABLES],
            "validations": [{
                "expression": "variables.kueueManaged || "
                              "!(variables.requestsGpu || variables.toleratesGpuTaint || variables.pinsNode)",
                "messageExpression": "object.kind + ' ' + (has(object.metadata.name) ? object.metadata.name : "
                                     "object.metadata.generateName) + ': in a team namespace only "
                                     "Kueue-managed workloads (batch/v1 Jobs and CronJobs, and the pods of Jobs) may "
                                     f"request {GPU_RESOURCE_PREFIX}* resources, tolerate the {GPU_TAINT['key']} "
                                     "taint or set nodeName; run it as a Job (its queue: the namespace LocalQueue)'",
                "reason": "Forbidden",
            }],
        },
    }


def gpu_admission_binding() -> dict:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {"policyName": POLICY_NAME, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": dict(KUEUE_MANAGED_NAMESPACES)}},
    }
