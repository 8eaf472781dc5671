"""Every Kubernetes object each stack renders is valid: built-ins with kubernetes-validate
--strict at the stack's version, custom resources against the vendored CRD schemas, their CEL
rules evaluated; and the validator itself catches what it should."""

from __future__ import annotations

import copy
import hashlib

import pytest

from infra.tools import validation

# Vendored CRDs (Kueue v0.19.2 and prometheus-operator v0.93.0, byte for byte; see their README.md).
KUEUE_PINNED = {"kueue/kueue.x-k8s.io_resourceflavors.yaml": "19e339c47e9c",
                "kueue/kueue.x-k8s.io_clusterqueues.yaml": "e0a5fc9b370c",
                "kueue/kueue.x-k8s.io_localqueues.yaml": "dd10ef8d3578", "kueue/kueue.x-k8s.io_cohorts.yaml": "61fbe5ec55d4",
                "kueue/kueue.x-k8s.io_workloads.yaml": "1970ff6fcc5d",
                "kueue/kueue.x-k8s.io_admissionchecks.yaml": "2bf4003c0a3e",
                "kueue/kueue.x-k8s.io_multikueueclusters.yaml": "842e579d281f",
                "kueue/kueue.x-k8s.io_multikueueconfigs.yaml": "4aa94664f85d",
                "kueue/kueue.x-k8s.io_provisioningrequestconfigs.yaml": "0399b2689d74",
                "kueue/kueue.x-k8s.io_topologies.yaml": "f703575d3bb6",
                "kueue/kueue.x-k8s.io_workloadpriorityclasses.yaml": "0b755726aab0",
                "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml": "a99047972c9d"}
EXPECTED_KINDS = {
    # dev's examples: the scaled `demo` (elastic Job) and the scheduled `demo-nightly` (CronJob),
    # each with its config, store and Services; the scaler controller (SA, config, RBAC in
    # tensile-system and sandbox, Deployment, Service).
    "dev": {"CustomResourceDefinition": 14, "ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1, "NodePool": 1, "EC2NodeClass": 1, "Namespace": 2, "ConfigMap": 5,
            "ResourceFlavor": 1, "Cohort": 1, "ClusterQueue": 1, "LocalQueue": 2, "ResourceQuota": 1, "LimitRange": 1,
            "ServiceAccount": 3, "Role": 4, "RoleBinding": 4, "NetworkPolicy": 6, "PersistentVolume": 1,
            "PersistentVolumeClaim": 1, "Deployment": 4, "Service": 5, "Job": 1, "CronJob": 1, "ClusterRole": 2,
            "ClusterRoleBinding": 2},
    "prod": {"CustomResourceDefinition": 15, "ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1, "NodePool": 4, "EC2NodeClass": 4, "Namespace": 3, "ConfigMap": 3,
             "ResourceFlavor": 3, "Cohort": 1, "ClusterQueue": 2, "LocalQueue": 4, "ResourceQuota": 2, "LimitRange": 2,
             "ServiceAccount": 3, "Role": 3, "RoleBinding": 3, "NetworkPolicy": 12, "PersistentVolume": 2,
             "PersistentVolumeClaim": 2, "Deployment": 2, "Service": 2, "Job": 1, "ClusterRole": 1,
             "ClusterRoleBinding": 1},
}


@pytest.fixture(scope="module")
def schemas():
    return validation.load_crd_schemas()


@pytest.fixture(scope="module")
def rendered(example_runs):
    return {stack: validation.manifests_from_run(run.resources) for stack, run in example_runs.items()}


def _version(run) -> str:
    return next(r for r in run.resources if r["type"] == "aws:eks/cluster:Cluster")["inputs"]["version"]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_rendered_object_is_valid_for_the_stacks_kubernetes_version(stack, example_runs, rendered, schemas,
                                                                           tmp_path):
    manifests = rendered[stack]
    kinds: dict[str, int] = {}
    for m in manifests:
        kinds[m["kind"]] = kinds.get(m["kind"], 0) + 1
    assert kinds == EXPECTED_KINDS[stack]
    assert len(validation.write_manifests(manifests, tmp_path)) == len(manifests)
    report = validation.validate(manifests, _version(example_runs[stack]), schemas)
    assert report.errors == []
    assert report.cel.failed == []
    # Every CEL rule on create was evaluated; none passed unevaluated.
    assert report.cel.unevaluated == {}
    assert report.cel.evaluated > 50
    # Transition rules (on `oldSelf`) only apply to updates: listed, not evaluated.
    assert all("oldSelf" in r.rule for r in report.cel.transition)


def test_a_kind_with_no_schema_anywhere_fails(schemas):
    report = validation.validate([{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                                   "metadata": {"name": "x", "namespace": "y"}, "spec": {}}], "1.35", schemas)
    assert report.errors and "no schema for jobset.x-k8s.io/v1alpha2 JobSet" in report.errors[0]


def test_a_misspelled_builtin_field_fails_strict_validation(rendered, schemas):
    policy = copy.deepcopy(next(m for m in rendered["dev"] if m["kind"] == "NetworkPolicy"))
    policy["spec"]["policyType"] = ["Ingress"]
    report = validation.validate([policy], "1.35", schemas)
    assert report.errors


def test_a_custom_resource_field_outside_its_crd_schema_fails(rendered, schemas):
    queue = copy.deepcopy(next(m for m in rendered["dev"] if m["kind"] == "ClusterQueue"))
    queue["spec"]["cohort"] = "v1beta1-name"  # renamed to cohortName in v1beta2
    report = validation.validate([queue], "1.35", schemas)
    assert any("cohort" in e for e in report.errors)


def test_a_broken_cel_rule_fails(rendered, schemas):
    pool = copy.deepcopy(next(m for m in rendered["dev"] if m["kind"] == "NodePool"))
    # Karpenter refuses its own label domain in a NodePool template (a CEL rule on the labels).
    pool["spec"]["template"]["metadata"]["labels"]["karpenter.sh/custom"] = "x"
    report = validation.validate([pool], "1.35", schemas)
    assert report.cel.failed and report.cel.failed[0][0].path == ".spec.template.metadata.labels"


def test_a_rule_the_library_cannot_evaluate_is_listed_not_passed():
    outcome = validation.CelOutcome()
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "isQuantity(self.size)"}],
              "properties": {"size": {"type": "string"}}}
    validation._cel_rules("Demo", schema, {"size": "1Gi"}, "", outcome)
    assert list(outcome.unevaluated) == [validation.CelRule("Demo", "<root>", "isQuantity(self.size)")]
    assert outcome.evaluated == 0 and not outcome.failed


@pytest.mark.parametrize("name, digest", sorted(KUEUE_PINNED.items()))
def test_vendored_crd_is_byte_for_byte_the_pinned_file(name, digest):
    path = validation.REPO_ROOT / "infra" / "crds" / name
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:12] == digest
