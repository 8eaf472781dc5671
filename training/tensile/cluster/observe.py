"""From the cluster's objects (plain dicts as the API serves them) to what the policy core reads:
one Job's size, readiness and Kueue state, its team's quota, usage and queue, and the throughput
measured on the run's checkpoint tier. Pure: the controller fetches, these functions judge.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tensile.cluster.config import PoolConfig, ScaledJob, TeamConfig
from tensile.scaler import PendingWorkload, PoolMarket, TeamState

GPU = "nvidia.com/gpu"
SCALED_LABEL = "tensile.dev/scaled"
SCHEDULE_LABEL = "tensile.dev/schedule"
"""On the Jobs a scheduled job's CronJob creates (its jobTemplate's label): the CronJob's name."""
ELASTIC_ANNOTATION = "kueue.x-k8s.io/elastic-job"
MIN_PARALLELISM_ANNOTATION = "kueue.x-k8s.io/job-min-parallelism"
ELASTIC_GATE = "kueue.x-k8s.io/elastic-job"
"""The scheduling gate Kueue's pod webhook puts on pods of a scale-up until its slice is admitted."""
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


class InputUnknown(Exception):
    """An input the decision needs cannot be read or trusted this pass: the job keeps its size."""


def _time(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _condition(obj: Mapping, kind: str) -> Mapping | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _true(obj: Mapping, kind: str) -> bool:
    condition = _condition(obj, kind)
    return condition is not None and condition.get("status") == "True"


def gpu_count(value: Any) -> float:
    """A Kubernetes quantity of GPUs ("8", 8, "8000m") as a number."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def check_scalable(job: Mapping, key: str) -> None:
    """Only elastic Jobs labelled for the scaler are touched: a partial-admission Job's parallelism
    cannot change while it runs (Kueue refuses it), and an unlabelled one is someone else's."""
    metadata = job.get("metadata") or {}
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    problems = []
    if labels.get(SCALED_LABEL) != "true":
        problems.append(f"it lacks the label {SCALED_LABEL}=\"true\"")
    if annotations.get(ELASTIC_ANNOTATION) != "true":
        problems.append(f"it is not an elastic Job (annotation {ELASTIC_ANNOTATION}=\"true\")")
    if MIN_PARALLELISM_ANNOTATION in annotations:
        problems.append(f"it uses partial admission ({MIN_PARALLELISM_ANNOTATION})")
    if problems:
        raise InputUnknown(f"Job {key} is not one the scaler may size: " + "; ".join(problems))


def owned_by(workload: Mapping, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (workload.get("metadata") or {}).get("ownerReferences") or [])


def is_finished(workload: Mapping) -> bool:
    return _true(workload, "Finished")


def is_admitted(workload: Mapping) -> bool:
    return bool((workload.get("status") or {}).get("admission")) and _true(workload, "Admitted")


def is_active(workload: Mapping) -> bool:
    return (workload.get("spec") or {}).get("active", True) is not False


def assigned_flavor(workload: Mapping) -> str | None:
    """The flavor Kueue assigned to the workload's GPUs at admission (a job keeps it: a scale-up
    slice must be admitted in the same flavor)."""
    for assignment in ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []:
        flavor = (assignment.get("flavors") or {}).get(GPU)
        if flavor:
            return flavor
    return None


def workload_gpus(workload: Mapping) -> float:
    total = 0.0
    for pod_set in (workload.get("spec") or {}).get("podSets") or []:
        per_pod = 0.0
        for container in ((pod_set.get("template") or {}).get("spec") or {}).get("containers") or []:
            requests = (container.get("resources") or {}).get("requests") or {}
            per_pod += gpu_count(requests.get(GPU, 0))
        total += per_pod * int(pod_set.get("count", 1))
    return total


def pod_ready(pod: Mapping) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return _true(pod, "Ready")


def pod_gated(pod: Mapping) -> bool:
    return any(gate.get("name") == ELASTIC_GATE for gate in (pod.get("spec") or {}).get("schedulingGates") or [])


@dataclass(frozen=True, kw_only=True, slots=True)
class JobView:
    """One scaled Job as the cluster shows it now."""
    uid: str
    parallelism: int
    ready: int
    gated: int
    """Pods held by Kueue's elastic gate: a scale-up whose slice is not admitted yet."""
    workloads: tuple[str, ...]
    """Its workloads not finished (the admitted slice, and a pending scale-up slice if any)."""
    deactivated: bool
    """A workload of it has spec.active false: the scaler (or an operator) suspended it."""
    admitted: bool
    flavor: str | None
    admitted_at: float | None
    pods_ready: bool
    """Kueue's PodsReady condition on the admitted slice."""


def job_view(job: Mapping, pods: Iterable[Mapping], workloads: Iterable[Mapping]) -> JobView:
    uid = (job.get("metadata") or {}).get("uid", "")
    mine = [w for w in workloads if owned_by(w, uid) and not is_finished(w)]
    admitted = [w for w in mine if is_admitted(w)]
    current = admitted[-1] if admitted else None
    pods = list(pods)
    admitted_condition = _condition(current, "Admitted") if current else None
    return JobView(
        uid=uid, parallelism=int((job.get("spec") or {}).get("parallelism") or 0),
        ready=sum(1 for p in pods if pod_ready(p)), gated=sum(1 for p in pods if pod_gated(p)),
        workloads=tuple(w["metadata"]["name"] for w in mine), deactivated=any(not is_active(w) for w in mine),
        admitted=current is not None, flavor=assigned_flavor(current) if current else None,
        admitted_at=_time(admitted_condition.get("lastTransitionTime")) if admitted_condition else None,
        pods_ready=current is not None and _true(current, "PodsReady"))


def _flavor_quota(cluster_queue: Mapping, flavor: str) -> tuple[float, float | None]:
    """(nominal GPUs, borrowing limit or None for none set) of one flavor in the ClusterQueue."""
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for entry in group.get("flavors") or []:
            if entry.get("name") != flavor:
                continue
            for resource in entry.get("resources") or []:
                if resource.get("name") == GPU:
                    limit = resource.get("borrowingLimit")
                    return gpu_count(resource.get("nominalQuota", 0)), None if limit is None else gpu_count(limit)
    return 0.0, 0.0


def _flavor_usage(cluster_queue: Mapping, flavor: str) -> float:
    for entry in (cluster_queue.get("status") or {}).get("flavorsUsage") or []:
        if entry.get("name") == flavor:
            return sum(gpu_count(r.get("total", 0)) for r in entry.get("resources") or [] if r.get("name") == GPU)
    return 0.0


def gpu_flavors(cluster_queue: Mapping) -> list[str]:
    return [entry["name"] for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []
            for entry in group.get("flavors") or [] if any(r.get("name") == GPU for r in entry.get("resources") or [])]


def team_state(team: TeamConfig, cluster_queue: Mapping, local_queues: Iterable[Mapping],
               workloads: Iterable[Mapping], *, flavor: str | None, own_uid: str, spend_usd: float) -> TeamState:
    """The team's quota in the job's flavor (the stack's quota_gpus and borrowing_gpus cap what the
    ClusterQueue says), GPUs admitted in it, and the workloads waiting in its ClusterQueue. With no
    flavor (a suspended job, whose next admission may pick any), the flavor with the most room."""
    flavors = [flavor] if flavor else gpu_flavors(cluster_queue)
    if not flavors:
        raise InputUnknown(f"ClusterQueue {team.cluster_queue} has no {GPU} quota")

    def room(name: str) -> tuple[int, int, int]:
        nominal, limit = _flavor_quota(cluster_queue, name)
        quota = int(min(nominal, team.quota_gpus))
        borrowing = team.borrowing_gpus if limit is None else int(min(limit, team.borrowing_gpus))
        return quota, borrowing, int(_flavor_usage(cluster_queue, name))

    quota, borrowing, in_use = max((room(name) for name in flavors), key=lambda r: r[0] + r[1] - r[2])
    queues = {q["metadata"]["name"] for q in local_queues
              if (q.get("spec") or {}).get("clusterQueue") == team.cluster_queue}
    pending = tuple(
        PendingWorkload(name=w["metadata"]["name"], priority=int((w.get("spec") or {}).get("priority") or 0),
                        gpus=int(workload_gpus(w)))
        for w in workloads
        if (w.get("spec") or {}).get("queueName") in queues and not owned_by(w, own_uid)
        and is_active(w) and not is_finished(w) and not (w.get("status") or {}).get("admission"))
    return TeamState(gpu_quota=quota, borrowing_limit=borrowing, gpus_in_use=in_use, pending=pending,
                     spend_usd=spend_usd, budget_usd=team.monthly_budget_usd)


def team_spend(spend_data: Mapping[str, str] | None, team: str, *, now: dt.datetime) -> float:
    """Month-to-date spend from the enforcer's ConfigMap (infra/enforcer.py: data[team] is JSON
    {month, spend_usd, last_seen}); an entry of another month is not this month's spend."""
    text = (spend_data or {}).get(team)
    if text is None:
        raise InputUnknown(f"the enforcer's spend ConfigMap has no entry for team {team}")
    try:
        entry = json.loads(text)
        month, spend = entry["month"], float(entry["spend_usd"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputUnknown(f"the enforcer's spend entry for team {team} is unreadable: {e}") from e
    if month != now.strftime("%Y-%m"):
        raise InputUnknown(f"the enforcer's spend for team {team} is of {month}, not {now:%Y-%m}: not metered yet")
    return spend


def pool_market(name: str, pool: PoolConfig, spot_usd_per_hour: float | None, *, job_max_nodes: int) -> PoolMarket:
    """A spot pool whose price EC2 quotes is taken to offer nodes (how many is not observable from
    here: the pods-ready guard gives back a grow that finds none); an unknown price offers none.
    Idle reservations are not observable either: a reserved pool counts none free."""
    spot = spot_usd_per_hour if pool.capacity_type == "spot" else None
    return PoolMarket(pool=name, on_demand_usd_per_hour=pool.on_demand_usd_per_hour, spot_usd_per_hour=spot,
                      spot_nodes_available=job_max_nodes if spot is not None else None, gpu_limit=pool.gpu_limit)


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointPoint:
    """What a checkpoint's manifest says about the run's progress."""
    checkpoint_id: str
    step: int
    world_size: int
    created_at: float
    reason: str


@dataclass(kw_only=True, slots=True)
class Progress:
    steps_per_s_by_nodes: dict[int, float] = field(default_factory=dict)
    recovery_s: float | None = None
    """From a stop checkpoint to the first checkpoint at a new size, less the steps trained between."""
    last_restart_at: float | None = None
    """The newest stop checkpoint: the group stopped (a resize or an interruption) then."""
    step: int = 0


def progress(points: Iterable[CheckpointPoint], *, gpus_per_node: int) -> Progress:
    """Throughput per node count between consecutive checkpoints of one uninterrupted group
    (same world size, the earlier not a stop), and the recovery across a resize."""
    ordered = sorted(points, key=lambda p: (p.step, p.created_at))
    out = Progress(step=ordered[-1].step if ordered else 0)
    resizes = []
    for earlier, later in zip(ordered, ordered[1:]):
        if later.created_at <= earlier.created_at or later.step <= earlier.step:
            continue
        if earlier.reason == "stop":
            out.last_restart_at = earlier.created_at
            if later.world_size != earlier.world_size:
                resizes.append((earlier, later))
        elif later.world_size == earlier.world_size:
            out.steps_per_s_by_nodes[later.world_size // gpus_per_node] = (
                (later.step - earlier.step) / (later.created_at - earlier.created_at))
    if ordered and ordered[-1].reason == "stop":
        out.last_restart_at = ordered[-1].created_at
    for earlier, later in reversed(resizes):
        rate = out.steps_per_s_by_nodes.get(later.world_size // gpus_per_node)
        if rate:
            out.recovery_s = max(0.0, later.created_at - earlier.created_at - (later.step - earlier.step) / rate)
            break
    return out


def job_finished(job: Mapping) -> bool:
    """A Job that completed or failed (its Complete, SuccessCriteriaMet or Failed condition)."""
    return any(c.get("type") in ("Complete", "SuccessCriteriaMet", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def scheduled_run(jobs: Iterable[Mapping]) -> str | None:
    """The Job a scheduled job's CronJob runs now: the newest of its Jobs not finished (its
    `concurrencyPolicy: Forbid` leaves at most one), or None between runs."""
    running = [j for j in jobs if not job_finished(j)]
    if not running:
        return None
    return max(running, key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]))["metadata"]["name"]


def job_entry_problems(job: ScaledJob, view: JobView) -> list[str]:
    """Differences between the controller's entry and the Job that make sizing it unsafe."""
    problems = []
    if view.parallelism > job.max_nodes:
        problems.append(f"parallelism {view.parallelism} is above the entry's max_nodes {job.max_nodes}")
    return problems
