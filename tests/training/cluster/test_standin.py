"""The stand-in enforces what Kueue enforces as far as the scaler's design relies on it, seen
through the controller's own client (lightkube over loopback HTTP): a stand-in that accepted
anything would let a wrong controller pass its scenarios."""

from __future__ import annotations

import pytest
from cluster_bench import NAMESPACE, elastic_job
from lightkube import ApiError

from tensile.cluster.kube import KubeApi
from tensile.cluster.observe import job_view


@pytest.fixture
def api(standin) -> KubeApi:
    return KubeApi.at(standin.url)


def test_standin_refuses_elastic_with_partial_admission_at_create(standin, team, api):
    body = elastic_job("llm", parallelism=1, max_nodes=3,
                       annotations={"kueue.x-k8s.io/elastic-job": "true", "kueue.x-k8s.io/job-min-parallelism": "1"})
    from lightkube.resources.batch_v1 import Job

    with pytest.raises(ApiError, match="partial admission and elastic job cannot be used together"):
        api.client.create(Job.from_dict(body), namespace=NAMESPACE)
    assert standin.all("jobs") == []


def test_standin_refuses_resizing_a_running_partial_admission_job(standin, team, api):
    standin.create("jobs", NAMESPACE, elastic_job("old", parallelism=2, max_nodes=2,
                                                  annotations={"kueue.x-k8s.io/job-min-parallelism": "1"}))
    assert standin.get("jobs", NAMESPACE, "old")["spec"]["suspend"] is False  # admitted, running
    with pytest.raises(ApiError, match="cannot change when partial admission is enabled"):
        api.set_parallelism(NAMESPACE, "old", 1)


def test_standin_keeps_the_elastic_annotation_immutable(standin, team, api):
    from lightkube.resources.batch_v1 import Job
    from lightkube.types import PatchType

    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=1, max_nodes=3))
    with pytest.raises(ApiError, match="immutable"):
        api.client.patch(Job, "llm", {"metadata": {"annotations": {"kueue.x-k8s.io/elastic-job": None}}},
                         namespace=NAMESPACE, patch_type=PatchType.MERGE)


def test_standin_gates_a_scale_up_until_its_slice_fits_the_quota_of_the_first_flavor(standin, team, api):
    standin.cluster_queue("team-vision", {"h100": (16, None), "a100": (64, None)})
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=2, max_nodes=4))
    api.set_parallelism(NAMESPACE, "llm", 3)  # 24 GPUs: over h100's 16, though a100 has room
    view = job_view(api.job(NAMESPACE, "llm"), api.job_pods(NAMESPACE, "llm"), api.workloads(NAMESPACE))
    assert (view.parallelism, view.ready, view.gated, view.flavor) == (3, 2, 1, "h100")
    assert len(view.workloads) == 2  # the admitted slice and the pending one
    standin.cluster_queue("team-vision", {"h100": (32, None), "a100": (64, None)})  # quota raised
    view = job_view(api.job(NAMESPACE, "llm"), api.job_pods(NAMESPACE, "llm"), api.workloads(NAMESPACE))
    assert (view.ready, view.gated, view.flavor, len(view.workloads)) == (3, 0, "h100", 1)  # the old slice finished


def test_standin_deactivation_evicts_suspends_and_releases_quota(standin, team, api):
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=2, max_nodes=4))
    workload = standin.job_workloads(NAMESPACE, "llm")[0]["metadata"]["name"]
    api.set_active(NAMESPACE, workload, False)
    assert standin.get("jobs", NAMESPACE, "llm")["spec"]["suspend"] is True
    assert standin.job_pods(NAMESPACE, "llm") == []
    usage = api.cluster_queue("team-vision")["status"]["flavorsUsage"]
    assert all(u["resources"][0]["total"] == "0" for u in usage)
    assert standin.evictions == [(workload, "Deactivated")]
    api.set_active(NAMESPACE, workload, True)
    assert standin.get("jobs", NAMESPACE, "llm")["spec"]["suspend"] is False


def test_standin_evicts_a_slice_whose_pods_miss_the_pods_ready_timeout(standin, team, api):
    standin.capacity["h100"] = 1
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=1, max_nodes=4))
    api.set_parallelism(NAMESPACE, "llm", 2)
    standin.advance(599)
    assert standin.evictions == []
    standin.advance(1)
    assert [reason for _, reason in standin.evictions] == ["PodsReadyTimeout"]
    assert standin.get("jobs", NAMESPACE, "llm")["spec"]["suspend"] is True


def test_standin_refuses_strategic_merge_patches_of_custom_resources(standin, team, api):
    from lightkube.types import PatchType

    from tensile.cluster.kube import Workload

    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=1, max_nodes=4))
    workload = standin.job_workloads(NAMESPACE, "llm")[0]["metadata"]["name"]
    with pytest.raises(ApiError):
        api.client.patch(Workload, workload, {"spec": {"active": False}}, namespace=NAMESPACE,
                         patch_type=PatchType.STRATEGIC)
