"""The GPU admission policy the program deploys, its CEL evaluated offline (cel-python, as the API
server would): in team namespaces only Kueue-managed workloads may use GPUs; the binding covers
exactly the namespaces where Kueue manages every Job."""

from __future__ import annotations

import copy

import pytest
import yaml

from infra.plan import admission, teams
from infra.tools import validation

GPU = {"limits": {"nvidia.com/gpu": "1"}}
MIG = {"requests": {"nvidia.com/mig-1g.10gb": "1"}}
CPU = {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
JOB_OWNER = {"apiVersion": "batch/v1", "kind": "Job", "name": "train", "uid": "u-1", "controller": True}
RS_OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u-2", "controller": True}


def pod_spec(resources=None, *, init=None, tolerations=None, node_name=None) -> dict:
    spec = {"containers": [{"name": "main", "image": "img", **({"resources": resources} if resources else {})}]}
    if init:
        spec["initContainers"] = [{"name": "init", "image": "img", "resources": init}]
    if tolerations:
        spec["tolerations"] = tolerations
    if node_name:
        spec["nodeName"] = node_name
    return spec


def workload(kind: str, spec: dict, owners=None) -> dict:
    api = {"Pod": "v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "apps/v1")
    metadata = {"name": f"x-{kind.lower()}", "namespace": "llm", **({"ownerReferences": owners} if owners else {})}
    if kind == "Pod":
        return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}
    template = {"spec": spec}
    if kind == "CronJob":
        return {"apiVersion": api, "kind": kind, "metadata": metadata,
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}
    return {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": {"template": template}}


CASES = [
    # (case, object, admitted)
    ("job with GPUs, labelled or not", workload("Job", pod_spec(GPU)), True),
    ("cronjob with GPUs (its Jobs are Kueue's)", workload("CronJob", pod_spec(GPU)), True),
    ("pod of a Job, GPUs and the toleration Kueue injects", workload(
        "Pod", pod_spec(GPU, tolerations=[GPU_TOLERATION]), [JOB_OWNER]), True),
    ("deployment without GPUs", workload("Deployment", pod_spec(CPU)), True),
    ("deployment tolerating another taint", workload("Deployment", pod_spec(CPU, tolerations=[
        {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}])), True),
    ("bare pod without GPUs", workload("Pod", pod_spec(CPU)), True),
    ("deployment requesting GPUs", workload("Deployment", pod_spec(GPU)), False),
    ("statefulset requesting GPUs", workload("StatefulSet", pod_spec(GPU)), False),
    ("replicaset requesting GPUs", workload("ReplicaSet", pod_spec(GPU)), False),
    ("deployment requesting a MIG slice", workload("Deployment", pod_spec(MIG)), False),
    ("deployment with a GPU init container", workload("Deployment", pod_spec(CPU, init=GPU)), False),
    ("deployment tolerating the GPU taint, no GPU request", workload(
        "Deployment", pod_spec(CPU, tolerations=[GPU_TOLERATION])), False),
    ("deployment tolerating every taint", workload("Deployment", pod_spec(CPU, tolerations=[
        {"operator": "Exists"}])), False),
    ("deployment pinned to a node by name", workload("Deployment", pod_spec(CPU, node_name="ip-10-0-1-1")), False),
    ("pod of a ReplicaSet with GPUs", workload("Pod", pod_spec(GPU), [RS_OWNER]), False),
    ("bare pod with GPUs", workload("Pod", pod_spec(GPU)), False),
    ("pod naming a Job as owner but not as controller", workload(
        "Pod", pod_spec(GPU), [{**JOB_OWNER, "controller": False}]), False),
]


@pytest.fixture(scope="module")
def deployed(stack_runs):
    """The policy and binding exactly as the prod program declares them."""
    run = stack_runs["prod"]
    policy = next(r for r in run.resources if r["type"].endswith(":ValidatingAdmissionPolicy"))
    binding = next(r for r in run.resources if r["type"].endswith(":ValidatingAdmissionPolicyBinding"))
    return validation.normalise(policy["inputs"]), validation.normalise(binding["inputs"]), run


@pytest.mark.parametrize("case, obj, admitted", CASES, ids=[c[0] for c in CASES])
def test_gpu_admission_policy_admits_only_kueue_managed_gpu_use(case, obj, admitted, deployed):
    policy, _, _ = deployed
    refused = validation.evaluate_admission_policy(policy, obj, namespace_object={"metadata": {"name": "llm"}})
    assert (refused == []) is admitted, (case, refused)
    if not admitted:
        assert refused[0].startswith(f"{obj['kind']} {obj['metadata']['name']}: in a team namespace only Kueue-managed")


def test_gpu_admission_policy_covers_pods_and_every_workload_template(deployed):
    policy, _, _ = deployed
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    covered = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert covered == {("", "pods"), ("apps", "deployments"), ("apps", "statefulsets"), ("apps", "replicasets"),
                       ("batch", "jobs"), ("batch", "cronjobs")}
    assert all(set(rule["operations"]) == {"CREATE", "UPDATE"} for rule in rules)
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_gpu_admission_binding_denies_in_exactly_the_namespaces_kueue_manages(deployed):
    policy, binding, run = deployed
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    kueue = next(r for r in run.resources if r["name"] == "addons-kueue")
    config = yaml.safe_load(kueue["inputs"]["values"]["managerConfig"]["controllerManagerConfigYaml"])
    assert config["manageJobsWithoutQueueName"] is True
    assert binding["spec"]["matchResources"]["namespaceSelector"] == config["managedJobsNamespaceSelector"]
    # ... which every team namespace matches.
    namespaces = [r["inputs"] for r in run.resources if r["type"] == "kubernetes:core/v1:Namespace"
                  and teams.TEAM_LABEL in r["inputs"]["metadata"].get("labels", {})]
    assert len(namespaces) == 2


def test_a_policy_expression_the_library_cannot_evaluate_raises_never_admits():
    policy = copy.deepcopy(admission.gpu_admission_policy())
    policy["spec"]["validations"][0]["expression"] = "isQuantity(object.metadata.name)"
    with pytest.raises(validation.AdmissionPolicyError):
        validation.evaluate_admission_policy(policy, workload("Deployment", pod_spec(GPU)))
