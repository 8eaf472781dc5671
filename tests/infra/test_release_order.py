"""Every Helm release, rendered offline from its vendored chart with the exact values the program
passes, yields objects valid like the program's own; the stack installs in order (every custom
resource after its CRD, everything Kueue manages after Kueue and its LocalQueue) with one owner
per object; and the checks themselves report each kind of mistake."""

from __future__ import annotations

import copy

import pytest
import yaml

from infra.components import addons
from infra.tools import charts, graph, validation

STACKS = ("dev", "prod")


@pytest.fixture(scope="module")
def releases(example_runs):
    return {stack: charts.render_releases(run.resources) for stack, run in example_runs.items()}


def _version(run) -> str:
    return next(r for r in run.resources if r["type"] == "aws:eks/cluster:Cluster")["inputs"]["version"]


def _named(run, name: str) -> dict:
    return next(r for r in run.resources if r["name"] == name)


@pytest.mark.parametrize("stack", STACKS)
def test_every_release_installs_a_vendored_chart_at_its_pinned_version(stack, example_runs, releases):
    rendered = {r.name: r for r in releases[stack]}
    for record in example_runs[stack].of_type(charts.RELEASE_TYPE):
        inputs = record["inputs"]
        release = rendered[inputs["name"]]
        chart = yaml.safe_load((release.chart_dir / "Chart.yaml").read_text())
        assert release.chart_dir.name == f"{chart['name']}-{inputs['version']}"
        # Karpenter's repository Chart.yaml says 1.13.0; its release job writes 1.14.1 (README).
        assert chart["version"] == inputs["version"] or chart["name"] == "karpenter"
        assert (release.chart_dir / "LICENSE").read_text().strip().startswith("Apache License\n")
        assert not (release.chart_dir / "crds").exists()  # Helm would install those first; none is vendored
    kueue = next(r for r in example_runs[stack].of_type(charts.RELEASE_TYPE) if r["inputs"]["name"] == "kueue")
    assert kueue["inputs"]["chart"] == "charts/kueue-0.19.2"  # relative to infra/, the program's directory


@pytest.mark.parametrize("stack", STACKS)
def test_every_chart_object_is_valid_for_the_stacks_kubernetes_version(stack, example_runs, releases):
    schemas = validation.load_crd_schemas()
    objects = [o for r in releases[stack] for o in r.objects]
    report = validation.validate(objects, _version(example_runs[stack]), schemas)
    assert report.errors == [] and report.cel.failed == [] and report.cel.unevaluated == {}
    kinds = {o["kind"] for o in objects}
    assert "CustomResourceDefinition" not in kinds  # the program owns every CRD
    assert ("ServiceMonitor" in kinds) is (stack == "prod")  # prod: platform.prometheusOperator
    assert report.objects == len(objects) > 100


@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_installs_in_order_with_one_owner_per_object(stack, example_runs, releases):
    assert graph.check(example_runs[stack].resources, releases[stack]) == []


# ---------------------------------------------------------------------------------------------
# The ordering check reports each kind of mistake (each one a defect the stack once had)
# ---------------------------------------------------------------------------------------------


def test_a_training_job_created_before_kueue_and_its_queue_is_reported(example_runs, releases):
    resources = copy.deepcopy(example_runs["prod"].resources)
    job = next(r for r in resources if r["type"] == "kubernetes:batch/v1:Job")
    namespace = _named(example_runs["prod"], "teams-llm-namespace")["urn"]
    job["dependencies"] = [namespace]  # what the Job depended on before issue 15
    problems = graph.check(resources, releases["prod"])
    assert problems == [
        "Job llm/llm-pretrain (job-llm-llm-pretrain-job-workers): Kueue manages it but it does not depend on the "
        "Kueue release; created before Kueue's webhooks, it is neither defaulted nor suspended",
        "Job llm/llm-pretrain (job-llm-llm-pretrain-job-workers): does not depend on its LocalQueue llm/training "
        "(teams-llm-localqueue)"]


def test_a_service_monitor_without_its_crd_is_reported(example_runs, releases):
    crd = _named(example_runs["prod"], "addons-crd-servicemonitors")["urn"]
    resources = [r for r in copy.deepcopy(example_runs["prod"].resources) if r["urn"] != crd]
    for r in resources:
        r["dependencies"] = [d for d in r["dependencies"] if d != crd]
    problems = graph.check(resources, releases["prod"])
    assert sorted(p.split(":")[0] for p in problems) == [
        "ServiceMonitor kube-system/dcgm-exporter (release dcgm-exporter)",
        "ServiceMonitor kueue-system/kueue-controller-manager-metrics-monitor (release kueue)"]
    assert all("no CRD serving monitoring.coreos.com/v1 ServiceMonitor" in p for p in problems)


def test_a_release_that_depends_on_nothing_installing_its_crd_is_reported(example_runs, releases):
    resources = copy.deepcopy(example_runs["prod"].resources)
    dcgm = next(r for r in resources if r["name"] == "addons-dcgm-exporter")
    dcgm["dependencies"] = []
    assert graph.check(resources, releases["prod"]) == [
        "ServiceMonitor kube-system/dcgm-exporter (release dcgm-exporter): does not depend on "
        "addons-crd-servicemonitors, which installs its CRD"]


def test_a_crd_the_chart_renders_too_has_two_owners(example_runs, releases):
    """The upstream Kueue chart renders all eleven Kueue CRDs as templates."""
    kueue = copy.deepcopy(next(r for r in releases["dev"] if r.name == "kueue"))
    kueue.objects += [copy.deepcopy(c) for c in addons.kueue_crds()]
    others = [r for r in releases["dev"] if r.name != "kueue"]
    problems = graph.check(example_runs["dev"].resources, [*others, kueue])
    assert len(problems) == 11
    assert ("CustomResourceDefinition.apiextensions.k8s.io workloads.kueue.x-k8s.io: 2 owners "
            "(addons-crd-workloads, release kueue)") in problems


def test_a_custom_resource_whose_crd_is_a_template_of_its_own_release_is_reported(example_runs, releases):
    resources = [r for r in example_runs["prod"].resources if r["name"] != "addons-crd-servicemonitors"]
    dcgm = copy.deepcopy(next(r for r in releases["prod"] if r.name == "dcgm-exporter"))
    dcgm.objects.append(addons.service_monitor_crd())
    others = [r for r in releases["prod"] if r.name not in ("dcgm-exporter", "kueue")]
    problems = graph.check(resources, [*others, dcgm])
    assert any(p.startswith("ServiceMonitor kube-system/dcgm-exporter") and "a template of the same release" in p
               for p in problems)


def test_a_conversion_webhook_without_its_service_is_reported(example_runs, releases):
    kueue = copy.deepcopy(next(r for r in releases["dev"] if r.name == "kueue"))
    for o in kueue.objects:
        if o["kind"] == "Service" and o["metadata"]["name"] == "kueue-webhook-service":
            o["metadata"]["name"] = "renamed-webhook-service"
    others = [r for r in releases["dev"] if r.name != "kueue"]
    problems = graph.check(example_runs["dev"].resources, [*others, kueue])
    assert len(problems) == len(addons.KUEUE_CONVERTED_CRDS)
    assert all("names Service kueue-system/kueue-webhook-service, which nothing in the stack creates" in p
               for p in problems)


def _unlabelled_job(run) -> dict:
    job = copy.deepcopy(next(r for r in run.resources if r["type"] == "kubernetes:batch/v1:Job"))
    job["urn"] += "-unlabelled"
    job["name"] += "-unlabelled"
    job["inputs"]["metadata"]["name"] = "unlabelled"
    del job["inputs"]["metadata"]["labels"][graph.QUEUE_LABEL]
    return job


def test_an_unlabelled_job_in_a_team_namespace_waits_in_the_default_local_queue(example_runs, releases):
    run = example_runs["dev"]
    job = _unlabelled_job(run)
    default_queue = _named(run, "teams-sandbox-localqueue-default")["urn"]
    assert graph.check([*run.resources, job], releases["dev"]) == [
        f"Job sandbox/unlabelled ({job['name']}): does not depend on its LocalQueue sandbox/default "
        "(teams-sandbox-localqueue-default)"]
    without_default = [r for r in run.resources if r["urn"] != default_queue]
    assert graph.check([*without_default, job], releases["dev"]) == [
        f"Job sandbox/unlabelled ({job['name']}): waits in LocalQueue sandbox/default, which nothing declares"]


def test_the_check_reads_which_jobs_kueue_manages_from_its_configuration(example_runs, releases):
    """With Kueue's configuration before issue 15 (manageJobsWithoutQueueName false), an
    unlabelled Job is not Kueue's: the check then has nothing to order it after."""
    resources = copy.deepcopy(example_runs["dev"].resources)
    release = next(r for r in resources if r["name"] == "addons-kueue")
    config = yaml.safe_load(release["inputs"]["values"]["managerConfig"]["controllerManagerConfigYaml"])
    config["manageJobsWithoutQueueName"] = False
    release["inputs"]["values"]["managerConfig"]["controllerManagerConfigYaml"] = yaml.safe_dump(config)
    default_queue = _named(example_runs["dev"], "teams-sandbox-localqueue-default")["urn"]
    resources = [r for r in resources if r["urn"] != default_queue]
    assert graph.check([*resources, _unlabelled_job(example_runs["dev"])], releases["dev"]) == []


def test_a_selector_outside_team_namespaces_leaves_their_jobs_unmanaged():
    scope = graph.KueueScope(release_urn="kueue", without_queue_name=True,
                             namespace_selector={"matchExpressions": [{"key": "tensile.io/team", "operator": "Exists"}]})
    assert scope.manages_namespace({"tensile.io/team": "llm"})
    assert not scope.manages_namespace({"kubernetes.io/metadata.name": "kube-system"})
