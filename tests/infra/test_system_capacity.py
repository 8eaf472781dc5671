"""The system node group is sized from what the program renders for it (its own Deployments and
the Helm-rendered charts, CoreDNS's add-on values, room for the teams' rendezvous stores and the
EKS DaemonSets), its nodes are tainted CriticalAddonsOnly, and everything bound for them tolerates it."""

from __future__ import annotations

import pytest

from infra.plan import system_capacity as plan
from infra.plan import teams as team_plan
from infra.tools import system_capacity

STACKS = ("dev", "prod")


@pytest.fixture(scope="module")
def rendered(example_runs):
    return {stack: system_capacity.workloads(run) for stack, run in example_runs.items()}


@pytest.mark.parametrize("quantity, millicores", [("250m", 250), ("1", 1000), (2, 2000), ("0.5", 500), (None, 0)])
def test_cpu_millicores_reads_kubernetes_quantities(quantity, millicores):
    assert plan.cpu_millicores(quantity) == millicores


@pytest.mark.parametrize("quantity, size", [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("70Mi", 70 * 2**20),
                                            ("1024", 1024), (None, 0)])
def test_memory_bytes_reads_kubernetes_quantities(quantity, size):
    assert plan.memory_bytes(quantity) == size


@pytest.mark.parametrize("instance_type, cpu, memory_mib", [
    ("m7i.large", 2000 - 70, 8192 - (11 * 29 + 255 + 100)),
    ("m7i.xlarge", 4000 - 80, 16384 - (11 * 58 + 255 + 100)),
])
def test_allocatable_subtracts_the_kubelet_reservation(instance_type, cpu, memory_mib):
    node = plan.allocatable(instance_type)
    assert (node.cpu_millicores, node.memory_bytes) == (cpu, memory_mib * 2**20)


def _pod(kind="Deployment", replicas=2, requests=None, node_selector=None, tolerations=None, affinity=None):
    spec = {"containers": [{"name": "c", "resources": {"requests": requests or {"cpu": "500m", "memory": "1Gi"}}}]}
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if tolerations is not None:
        spec["tolerations"] = tolerations
    if affinity is not None:
        spec["affinity"] = affinity
    return {"kind": kind, "metadata": {"name": "x", "namespace": "kube-system"},
            "spec": {"replicas": replicas, "template": {"spec": spec}}}


GPU_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]}]}]}}}


@pytest.mark.parametrize("manifest, on_system, tolerates", [
    (_pod(node_selector=dict(plan.SYSTEM_NODE_LABEL), tolerations=[plan.SYSTEM_TOLERATION]), True, True),
    (_pod(node_selector=dict(plan.SYSTEM_NODE_LABEL)), True, False),
    (_pod(), False, False),  # no selector: a team's pod or a GPU pod, not placed on the system nodes
    (_pod(kind="DaemonSet", tolerations=[{"operator": "Exists"}]), True, True),
    (_pod(kind="DaemonSet", tolerations=[{"operator": "Exists"}], affinity=GPU_AFFINITY), False, True),
    (_pod(kind="DaemonSet", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]), False, False),
    (_pod(kind="DaemonSet", tolerations=[{"operator": "Exists"}], node_selector={"tensile.io/efa": "true"}), False, True),
])
def test_workload_says_where_it_runs_and_whether_it_tolerates_the_taint(manifest, on_system, tolerates):
    w = plan.workload(manifest)
    assert (w.on_system_nodes, w.tolerates_system_taint) == (on_system, tolerates)


def test_system_capacity_refuses_too_few_nodes_with_the_numbers_and_the_fix():
    pods = [plan.workload(_pod(replicas=4, node_selector=dict(plan.SYSTEM_NODE_LABEL),
                               tolerations=[plan.SYSTEM_TOLERATION]))]
    daemon = [plan.Reserve(name="ds", cpu_millicores=430, memory_bytes=2**29, per_node=True)]
    report = plan.system_capacity(pods, daemon, instance_type="m7i.large", desired_size=1)
    # 2000m over 1930 − 430 = 1500m a node: two nodes.
    assert report.nodes_needed == 2 and not report.fits
    (problem,) = report.problems()
    assert "2000m CPU" in problem and "430m" in problem and "need 2 nodes and desiredSize is 1" in problem
    assert "at least 2" in problem
    assert plan.system_capacity(pods, daemon, instance_type="m7i.large", desired_size=2).fits


def test_system_capacity_refuses_a_system_pod_that_does_not_tolerate_the_taint():
    report = plan.system_capacity([plan.workload(_pod(node_selector=dict(plan.SYSTEM_NODE_LABEL)))], [],
                                  instance_type="m7i.xlarge", desired_size=3)
    assert not report.fits
    assert any("does not tolerate" in p and "Deployment kube-system/x" in p for p in report.problems())


@pytest.mark.parametrize("stack", STACKS)
def test_system_node_group_fits_what_the_program_renders_for_it(stack, example_runs):
    report = system_capacity.check(example_runs[stack])
    assert report.fits, "\n".join([*report.problems(), *report.lines])


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_charts_are_counted_with_their_requests(stack, rendered):
    by_label = {w.label: w for w in rendered[stack]}
    karpenter = by_label["Deployment kube-system/karpenter"]
    assert (karpenter.replicas, karpenter.cpu_millicores, karpenter.on_system_nodes) == (2, 1000, True)
    assert by_label["Deployment kube-system/coredns"].cpu_millicores == 100
    assert by_label["DaemonSet kube-system/efs-csi-node"].on_system_nodes
    # The GPU-only DaemonSets stay off the system nodes.
    assert not by_label["DaemonSet kube-system/nvidia-device-plugin"].on_system_nodes
    # Every container placed on the system nodes states its requests.
    assert [w.label for w in rendered[stack] if w.on_system_nodes and w.unrequested] == []


@pytest.mark.parametrize("stack", STACKS)
def test_everything_bound_for_the_system_nodes_tolerates_their_taint(stack, rendered):
    untolerated = [w.label for w in rendered[stack]
                   if w.on_system_nodes and w.kind != "DaemonSet" and not w.tolerates_system_taint]
    assert untolerated == []
    names = {w.label for w in rendered[stack] if w.on_system_nodes}
    assert {"Deployment kueue-system/kueue-controller-manager", "Deployment kube-system/metrics-server",
            "Deployment tensile-system/tensile-enforcer", "Deployment kube-system/coredns"} <= names


@pytest.mark.parametrize("stack", STACKS)
def test_system_nodes_are_tainted_critical_addons_only(stack, example_runs):
    (group,) = example_runs[stack].of_type(system_capacity.NODE_GROUP_TYPE)
    assert group["inputs"]["taints"] == [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NO_SCHEDULE"}]


@pytest.mark.parametrize("stack", STACKS)
def test_rendezvous_stores_tolerate_the_taint_and_fit_the_team_reserve(stack, example_runs):
    stores = [r for r in example_runs[stack].of_type("kubernetes:apps/v1:Deployment")
              if r["inputs"]["metadata"]["name"].endswith("-rdzv")]
    assert stores
    for record in stores:
        store = plan.workload({"kind": "Deployment", **record["inputs"]})
        assert store.on_system_nodes and store.tolerates_system_taint
        assert store.cpu_millicores == plan.cpu_millicores(team_plan.RDZV_STORE_REQUESTS["cpu"])
        assert store.memory_bytes == plan.memory_bytes(team_plan.RDZV_STORE_REQUESTS["memory"])
    # The team's quota caps its Deployments at the stores the reserve holds room for.
    for quota in example_runs[stack].of_type("kubernetes:core/v1:ResourceQuota"):
        assert quota["inputs"]["spec"]["hard"]["count/deployments.apps"] == str(team_plan.MAX_TEAM_DEPLOYMENTS)
