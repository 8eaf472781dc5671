"""The cluster scaler against the Kubernetes/Kueue stand-in (real HTTP, the real lightkube client)
and moto (EC2 spot prices, the S3 checkpoint tier): each scenario drives passes on a fake clock
and ends by checking every request against the contract's RBAC and the two fields it may write."""

from __future__ import annotations

import pytest
from cluster_bench import (NAMESPACE, assert_only_allowed_requests, controller_config, elastic_job, set_spend,
                      write_checkpoints)

from tensile.cluster.config import parse_controller_config
from tensile.cluster.controller import ScalerController
from tensile.cluster.kube import KubeApi
from tensile.scaler import ReasonKind


def make_controller(standin, clock, checkpoints, **overrides) -> ScalerController:
    config = parse_controller_config(controller_config(checkpoints, **overrides))
    return ScalerController(config, KubeApi.at(standin.url), clock=clock)


def start_job(standin, clock, checkpoints, *, nodes: int, max_nodes: int = 3, steps_per_s: float = 0.1):
    """The Job as Pulumi creates it, admitted at `nodes`, with two checkpoints measured at that size."""
    standin.create("jobs", NAMESPACE, elastic_job("llm", parallelism=nodes, max_nodes=max_nodes))
    t = clock()
    write_checkpoints(checkpoints, [(1000, nodes * 8, t - 200, "periodic"),
                                    (1000 + int(100 * steps_per_s), nodes * 8, t - 100, "periodic")])


def train_at(checkpoints, clock, *, nodes: int, from_step: int, steps_per_s: float = 0.18):
    """The group stopped (a resize), re-formed at `nodes` and checkpointed twice since."""
    t = clock()
    write_checkpoints(checkpoints, [(from_step, 8, t - 300, "stop"),
                                    (from_step + 10, nodes * 8, t - 200, "periodic"),
                                    (from_step + 10 + int(100 * steps_per_s), nodes * 8, t - 100, "periodic")])


def job(standin):
    return standin.get("jobs", NAMESPACE, "llm")


def events(standin):
    return [(e["reason"], e["message"]) for e in standin.all("events", NAMESPACE)]


def test_controller_grows_one_slice_at_a_time_while_quota_capacity_and_budget_allow(standin, team, clock, cloud):
    start_job(standin, clock, cloud, nodes=1)
    controller = make_controller(standin, clock, cloud)
    decision = controller.decide_all()["team-vision/llm"]
    assert decision.kind is ReasonKind.GROW and decision.desired_nodes == 2
    assert job(standin)["spec"]["parallelism"] == 2
    assert sum(1 for p in standin.job_pods(NAMESPACE, "llm") if p["status"]["conditions"]) == 2  # slice admitted, ready
    standin.advance(30)
    assert controller.decide_all()["team-vision/llm"].kind is ReasonKind.HOLD  # cooling down
    standin.advance(400)
    train_at(cloud, clock, nodes=2, from_step=1020)
    assert controller.decide_all()["team-vision/llm"].desired_nodes == 3
    standin.advance(400)
    decision = controller.decide_all()["team-vision/llm"]
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.HOLD, 3) and "maximum" in decision.reason
    assert [reason for reason, _ in events(standin)] == ["ScalerGrow", "ScalerHold", "ScalerGrow", "ScalerHold"]
    assert standin.evictions == []
    assert_only_allowed_requests(standin)


def test_controller_grows_only_within_the_flavor_kueue_first_assigned(standin, team, clock, cloud):
    standin.cluster_queue("team-vision", {"h100": (8, None), "a100": (32, None)})  # h100 full with one node
    start_job(standin, clock, cloud, nodes=1)
    controller = make_controller(standin, clock, cloud)
    decision = controller.decide_all()["team-vision/llm"]
    assert decision.kind is ReasonKind.HOLD and "quota" in decision.reason
    assert job(standin)["spec"]["parallelism"] == 1
    assert_only_allowed_requests(standin)


def test_controller_holds_when_the_budget_nears_its_limit(standin, team, clock, cloud):
    set_spend(standin, clock, 8_500.0)
    start_job(standin, clock, cloud, nodes=1)
    decision = make_controller(standin, clock, cloud).decide_all()["team-vision/llm"]
    assert decision.kind is ReasonKind.HOLD and "grow limit" in decision.reason
    assert job(standin)["spec"]["parallelism"] == 1


def test_controller_shrinks_to_min_at_a_spot_price_trigger(standin, team, clock, cloud):
    start_job(standin, clock, cloud, nodes=3)
    # moto quotes every spot price at $0.00001/h: a trigger just below it holds.
    controller = make_controller(standin, clock, cloud, scaler={"triggers": [
        {"action": "shrink_to_min", "spot_price_above_usd_per_hour": 0.000005, "pool": "h100-spot"}]})
    decision = controller.decide_all()["team-vision/llm"]
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.SHRINK_TRIGGER, 1)
    assert job(standin)["spec"]["parallelism"] == 1
    assert len(standin.job_pods(NAMESPACE, "llm")) == 1
    usage = standin.get("clusterqueues", "", "team-vision")["status"]["flavorsUsage"]
    assert {u["name"]: u["resources"][0]["total"] for u in usage}["h100"] == "8"  # quota released at once
    assert events(standin)[0][0] == "ScalerShrinkTrigger"
    assert_only_allowed_requests(standin)


def test_controller_shrinks_for_a_higher_priority_workload_that_waits(standin, team, clock, cloud):
    standin.cluster_queue("team-vision", {"h100": (24, None)})
    start_job(standin, clock, cloud, nodes=3)
    standin.create("jobs", NAMESPACE, elastic_job("urgent", parallelism=1, max_nodes=1, priority_class="high",
                                                  scaled=False))
    assert not standin.job_workloads(NAMESPACE, "urgent")[0]["status"].get("admission")
    decision = make_controller(standin, clock, cloud).decide_all()["team-vision/llm"]
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.SHRINK_PRIORITY, 2)
    assert standin.job_workloads(NAMESPACE, "urgent")[0]["status"]["admission"]  # Kueue admitted it
    assert_only_allowed_requests(standin)


def test_controller_suspends_below_its_minimum_and_resumes_when_capacity_returns(standin, team, clock, cloud):
    start_job(standin, clock, cloud, nodes=2, max_nodes=2)
    controller = make_controller(standin, clock, cloud, min_nodes=2, max_nodes=2)
    assert controller.decide_all()["team-vision/llm"].kind is ReasonKind.HOLD
    standin.capacity["h100"] = 1  # a node is reclaimed; its replacement finds none
    lost = next(p for p in standin.job_pods(NAMESPACE, "llm"))
    with standin.lock:
        standin._delete("pods", lost)
        standin._sync_pods(job(standin))
    standin.reconcile()
    decision = controller.decide_all()["team-vision/llm"]
    assert decision.kind is ReasonKind.HOLD and "suspending after" in decision.reason
    standin.advance(150)
    decision = controller.decide_all()["team-vision/llm"]
    assert decision.kind is ReasonKind.SUSPEND
    workload = standin.job_workloads(NAMESPACE, "llm")[0]
    assert workload["spec"]["active"] is False and not workload["status"].get("admission")
    assert job(standin)["spec"]["suspend"] is True and standin.job_pods(NAMESPACE, "llm") == []
    standin.advance(30)
    assert controller.decide_all()["team-vision/llm"].kind is ReasonKind.HOLD  # cooling down after the suspension
    standin.capacity["h100"] = 4
    standin.advance(400)
    decision = controller.decide_all()["team-vision/llm"]
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.RESUME, 2)
    workload = standin.job_workloads(NAMESPACE, "llm")[0]
    assert workload["spec"]["active"] is True and workload["status"]["admission"]
    assert job(standin)["spec"]["parallelism"] == 2 and job(standin)["spec"]["suspend"] is False
    reasons = [r for r, _ in events(standin)]
    assert reasons.index("ScalerSuspend") < reasons.index("ScalerResume") == len(reasons) - 1
    assert_only_allowed_requests(standin)


def _grow_into_no_capacity(standin, clock, cloud, *, deadline_s: float):
    standin.capacity["h100"] = 1  # quota for more, but Karpenter finds no node for a second pod
    start_job(standin, clock, cloud, nodes=1)
    controller = make_controller(standin, clock, cloud, scaler={"grow_ready_deadline_s": deadline_s})
    assert controller.decide_all()["team-vision/llm"].kind is ReasonKind.GROW
    for _ in range(24):  # 12 minutes of passes, 30 s apart
        standin.advance(30)
        controller.decide_all()
    return controller


def test_pods_ready_guard_shrinks_back_before_kueue_evicts_the_slice(standin, team, clock, cloud):
    _grow_into_no_capacity(standin, clock, cloud, deadline_s=300)  # below waitForPodsReady's 600 s
    assert standin.evictions == []
    sizes = [r.body["spec"]["parallelism"] for r in standin.requests if r.verb == "patch"]
    # Given back at the deadline; after the cool-down it tries again (spot availability is not
    # observable here) and gives back again: never evicted, never below the ready count.
    assert sizes[:2] == [2, 1] and set(sizes) == {1, 2}
    assert job(standin)["spec"]["suspend"] is False
    assert "ScalerShrinkNotReady" in [r for r, _ in events(standin)]
    assert_only_allowed_requests(standin)


def test_without_the_guard_a_slice_that_misses_pods_ready_evicts_the_whole_job(standin, team, clock, cloud):
    _grow_into_no_capacity(standin, clock, cloud, deadline_s=900)  # past waitForPodsReady's 600 s
    assert [reason for _, reason in standin.evictions] == ["PodsReadyTimeout"]
    assert "ScalerShrinkNotReady" not in [r for r, _ in events(standin)]


def test_one_jobs_unreadable_input_holds_that_job_only_and_backs_off(standin, team, clock, cloud):
    start_job(standin, clock, cloud, nodes=1)
    doc = controller_config(cloud)
    doc["jobs"].append({**doc["jobs"][0], "name": "missing"})
    controller = ScalerController(parse_controller_config(doc), KubeApi.at(standin.url), clock=clock)
    decisions = controller.decide_all()
    assert decisions["team-vision/llm"].kind is ReasonKind.GROW and decisions["team-vision/missing"] is None
    memory = controller.memory["team-vision/missing"]
    assert memory.failures == 1 and memory.retry_at == clock() + 30
    asked = len(standin.requests)
    controller.decide_all()  # within the backoff: not asked again
    assert not any(r.name == "missing" for r in standin.requests[asked:])
    standin.advance(31)
    controller.decide_all()
    assert memory.failures == 2 and memory.retry_at == clock() + 60
    errors = controller.metrics.registry.get_sample_value(
        "tensile_scaler_errors_total", {"namespace": NAMESPACE, "job": "missing", "stage": "job"})
    assert errors == 2


@pytest.mark.parametrize("annotations", [{}, {"kueue.x-k8s.io/elastic-job": "true",
                                              "kueue.x-k8s.io/job-min-parallelism": "1"}])
def test_controller_never_sizes_a_job_that_is_not_elastic(standin, team, clock, cloud, annotations):
    # The stand-in refuses elastic + partial admission at create; an unlabelled Job is not created elastic.
    with standin.lock:
        body = elastic_job("llm", parallelism=1, max_nodes=3, annotations={})
        body["metadata"]["annotations"] = {k: v for k, v in annotations.items() if "min" in k}
        standin._create("jobs", NAMESPACE, body)
    write_checkpoints(cloud, [(10, 8, clock() - 200, "periodic"), (20, 8, clock() - 100, "periodic")])
    controller = make_controller(standin, clock, cloud)
    assert controller.decide_all()["team-vision/llm"] is None
    assert not [r for r in standin.requests if r.verb == "patch"]


def test_rbac_check_refuses_what_the_rules_do_not_grant(standin, team, clock, cloud):
    import json

    from cluster_bench import RBAC, rbac_allows

    start_job(standin, clock, cloud, nodes=1)
    make_controller(standin, clock, cloud).decide_all()
    rules = json.loads(RBAC.read_text())
    patch = next(r for r in standin.requests if r.verb == "patch")
    assert rbac_allows(patch, rules, team_namespaces={NAMESPACE})
    rules["team_namespaces"] = [{**r, "verbs": [v for v in r["verbs"] if v != "patch"]} for r in rules["team_namespaces"]]
    assert not rbac_allows(patch, rules, team_namespaces={NAMESPACE})
    spend = next(r for r in standin.requests if r.resource == "configmaps")
    assert not rbac_allows(spend, {**rules, "spend_namespace": [{**rules["spend_namespace"][0], "resourceNames": ["other"]}]},
                           team_namespaces={NAMESPACE})


def _run_of_schedule(name: str, *, nodes: int, finished: bool = False) -> dict:
    """A Job as a scheduled job's CronJob creates it: its jobTemplate's labels, schedule label included."""
    body = elastic_job(name, parallelism=nodes, max_nodes=3)
    body["metadata"]["labels"]["tensile.dev/schedule"] = "nightly"
    if finished:
        body["metadata"]["namespace"] = NAMESPACE
        body["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    return body


def test_a_scheduled_job_is_sized_through_the_run_its_cronjob_has_going(standin, team, clock, cloud):
    """The entry names the CronJob (`scheduled: true`); the controller sizes the newest unfinished
    Job carrying its schedule label, never last night's, and does nothing between runs."""
    standin.put("jobs", _run_of_schedule("nightly-28000000", nodes=2, finished=True))
    standin.create("jobs", NAMESPACE, _run_of_schedule("nightly-28001440", nodes=1))
    t = clock()
    write_checkpoints(cloud, [(1000, 8, t - 200, "periodic"), (1010, 8, t - 100, "periodic")])
    controller = make_controller(standin, clock, cloud, name="nightly", scheduled=True)
    decision = controller.decide_all()["team-vision/nightly"]
    assert (decision.kind, decision.desired_nodes) == (ReasonKind.GROW, 2)
    assert standin.get("jobs", NAMESPACE, "nightly-28001440")["spec"]["parallelism"] == 2
    assert standin.get("jobs", NAMESPACE, "nightly-28000000")["spec"]["parallelism"] == 2  # untouched
    assert [e["involvedObject"]["name"] for e in standin.all("events", NAMESPACE)] == ["nightly-28001440"]
    # The run ends: between runs nothing is decided and nothing is written.
    finished = standin.get("jobs", NAMESPACE, "nightly-28001440")
    finished["status"] = {**finished.get("status", {}), "conditions": [{"type": "Complete", "status": "True"}]}
    standin.put("jobs", finished)
    writes = sum(1 for r in standin.requests if r.verb in ("patch", "create"))
    standin.advance(400)
    assert controller.decide_all()["team-vision/nightly"] is None
    assert sum(1 for r in standin.requests if r.verb in ("patch", "create")) == writes
    assert_only_allowed_requests(standin)
