"""The in-cluster scaler: every `decide_every_s`, and soon after a watched Job or Workload changes,
it reads each configured job's state from the cluster, its team, the market and the run's
checkpoint tier, asks the policy core, and carries the decision out through Kueue: a Job's
`spec.parallelism` to grow or shrink, a Workload's `spec.active` to suspend or resume
(docs/design/scaler.md). One job's unreadable input holds that job only, with a backoff.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tensile.cluster.cloud import CheckpointProgress, SpotPrices
from tensile.cluster.config import ControllerConfig, ScaledJob
from tensile.cluster.kube import KubeApi
from tensile.cluster.metrics import ScalerMetrics
from tensile.cluster.observe import (SCHEDULE_LABEL, InputUnknown, JobView, check_scalable, is_active, is_finished,
                                     job_entry_problems, job_view, owned_by, pool_market, progress, scheduled_run,
                                     team_spend, team_state)
from tensile.scaler import Decision, JobState, ReasonKind, decide

log = logging.getLogger(__name__)

ASSUMED_RECOVERY_S = 300.0
"""A resize's cost until one is measured on the run's tier (a stop, a re-form, a resume)."""
MAX_BACKOFF_S = 600.0
WAKE_DEBOUNCE_S = 1.0
"""A burst of watch events (a patch, then Kueue's status updates) makes one pass, not several."""
WARNING_KINDS = frozenset({ReasonKind.SHRINK_NOT_READY, ReasonKind.SUSPEND})


class StageError(Exception):
    """An input read or an action of one job failed; `stage` names which, for logs and metrics."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        super().__init__(f"{stage}: {cause}")


def _stage(stage: str, call: Callable[..., Any], *args: Any) -> Any:
    try:
        return call(*args)
    except InputUnknown as e:
        raise StageError(stage, e) from e
    except Exception as e:  # noqa: BLE001 - any failure of this read is this stage's
        raise StageError(stage, e) from e


@dataclass(kw_only=True, slots=True)
class JobMemory:
    """What the controller remembers of one job between passes (lost on restart: the timers then
    start again, which delays a shrink or suspension, never hastens one)."""
    flavor: str | None = None
    steps_per_s: dict[int, float] = field(default_factory=dict)
    recovery_s: float = ASSUMED_RECOVERY_S
    last_resize_at: float | None = None
    below_min_since: float | None = None
    unready_since: float | None = None
    last_decision: Decision | None = None
    waiting_for_admission: bool = False
    seen: bool = False
    run: str | None = None
    """A scheduled job's current Job: a new one starts its timers afresh (throughput stays)."""
    failures: int = 0
    retry_at: float = 0.0

    def start_run(self, run: str | None) -> None:
        """Another run of a scheduled job: its own admission, flavor and timers; the run's measured
        throughput and recovery (the same checkpoint tier) and this job's backoff carry over."""
        fresh = JobMemory(run=run, **{name: getattr(self, name) for name in KEPT_ACROSS_RUNS})
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(fresh, f.name))


KEPT_ACROSS_RUNS = ("steps_per_s", "recovery_s", "failures", "retry_at")


class _PassReads:
    """Reads shared by the jobs of one pass (a namespace's Workloads, a team's ClusterQueue, the
    spend ConfigMap), each made once; a failed read fails each job that needs it."""

    def __init__(self, api: KubeApi, config: ControllerConfig):
        self.api, self.config = api, config
        self._memo: dict[tuple, Any] = {}

    def _once(self, key: tuple, call: Callable[[], Any]) -> Any:
        if key not in self._memo:
            try:
                self._memo[key] = (True, call())
            except Exception as e:  # noqa: BLE001 - kept and raised to every job that reads it
                self._memo[key] = (False, e)
        ok, value = self._memo[key]
        if not ok:
            raise value
        return value

    def workloads(self, namespace: str) -> list[dict]:
        return self._once(("workloads", namespace), lambda: self.api.workloads(namespace))

    def local_queues(self, namespace: str) -> list[dict]:
        return self._once(("localqueues", namespace), lambda: self.api.local_queues(namespace))

    def cluster_queue(self, name: str) -> dict:
        return self._once(("clusterqueue", name), lambda: self.api.cluster_queue(name))

    def spend(self) -> dict[str, str]:
        return self._once(("spend",), lambda: self.api.configmap_data(self.config.spend_namespace,
                                                                      self.config.spend_configmap))


class ScalerController:
    def __init__(self, config: ControllerConfig, api: KubeApi, *, prices: SpotPrices | None = None,
                 progress_for: Callable[[ScaledJob], CheckpointProgress] | None = None,
                 clock: Callable[[], float] = time.time, metrics: ScalerMetrics | None = None):
        self.config, self.api, self.clock = config, api, clock
        self.metrics = metrics or ScalerMetrics()
        self.prices = prices or SpotPrices(config.region, clock=clock, on_error=self._price_error)
        self._progress_for = progress_for or (lambda job: CheckpointProgress(job.checkpoints))
        self._progress: dict[str, CheckpointProgress] = {}
        self.memory: dict[str, JobMemory] = {job.key: JobMemory() for job in config.jobs}
        self.wake = threading.Event()

    def _price_error(self, error: Exception) -> None:
        self.metrics.errors.labels(namespace="", job="", stage="spot-prices").inc()

    # ---- one pass ----------------------------------------------------------------------------
    def decide_all(self) -> dict[str, Decision | None]:
        """One pass over every job; returns each job's decision (None where it was not decided)."""
        now = self.clock()
        reads = _PassReads(self.api, self.config)
        out: dict[str, Decision | None] = {}
        for job in self.config.jobs:
            memory = self.memory[job.key]
            out[job.key] = None
            if now < memory.retry_at:
                continue
            began = time.perf_counter()
            try:
                out[job.key] = self._decide(job, memory, reads, now)
                memory.failures, memory.retry_at = 0, 0.0
            except Exception as e:  # noqa: BLE001 - one job's failure must not stop the others
                stage = e.stage if isinstance(e, StageError) else "unexpected"
                memory.failures += 1
                delay = min(MAX_BACKOFF_S, self.config.decide_every_s * 2 ** (memory.failures - 1))
                memory.retry_at = now + delay
                self.metrics.errors.labels(namespace=job.namespace, job=job.name, stage=stage).inc()
                log.warning("%s keeps its size: %s (try %d; next in %.0f s)", job.key, e, memory.failures, delay,
                            exc_info=not isinstance(e, StageError))
            finally:
                self.metrics.latency.observe(time.perf_counter() - began)
        return out

    def _job_name(self, job: ScaledJob, memory: JobMemory) -> str | None:
        """The Job to size: the entry's, or the run a scheduled job's CronJob has going (None between runs)."""
        if not job.scheduled:
            return job.name
        name = scheduled_run(_stage("job", self.api.jobs_labelled, job.namespace, {SCHEDULE_LABEL: job.name}))
        if name != memory.run:
            log.info("%s: %s", job.key, f"the scheduled run is Job {name}" if name else "no scheduled run is going")
            memory.start_run(name)
        return name

    def _decide(self, job: ScaledJob, memory: JobMemory, reads: _PassReads, now: float) -> Decision | None:
        name = self._job_name(job, memory)
        if name is None:
            return None
        job_object = _stage("job", self.api.job, job.namespace, name)
        _stage("job", check_scalable, job_object, job.key)
        pods = _stage("pods", self.api.job_pods, job.namespace, name)
        workloads = _stage("workloads", reads.workloads, job.namespace)
        view = job_view(job_object, pods, workloads)
        problems = job_entry_problems(job, view)
        if problems:
            raise StageError("job", InputUnknown(f"{job.key}: " + "; ".join(problems)))
        labels = {"namespace": job.namespace, "job": job.name}
        suspended = view.deactivated
        if not suspended and not view.admitted:
            # Kueue has not admitted it (first start, or requeued): the queue decides, not the scaler.
            self._gauges(labels, desired=view.parallelism, current=view.parallelism, ready=view.ready)
            if not memory.waiting_for_admission:
                log.info("%s waits for Kueue to admit it (%d pods asked for)", job.key, view.parallelism)
            memory.waiting_for_admission = True
            return None
        memory.waiting_for_admission = False
        if view.flavor is not None:
            if memory.flavor not in (None, view.flavor):
                log.info("%s was admitted again in flavor %s (was %s)", job.key, view.flavor, memory.flavor)
            memory.flavor = view.flavor
        team_config = self.config.teams[job.team]
        cluster_queue = _stage("clusterqueue", reads.cluster_queue, team_config.cluster_queue)
        local_queues = _stage("localqueues", reads.local_queues, job.namespace)
        spend = _stage("spend", lambda: team_spend(reads.spend(), job.team,
                                                  now=dt.datetime.fromtimestamp(now, dt.timezone.utc)))
        # Quota in the flavor Kueue assigned: a scale-up slice is admitted only there.
        team = _stage("team", lambda: team_state(team_config, cluster_queue, local_queues, workloads,
                                                 flavor=None if suspended else view.flavor, own_uid=view.uid,
                                                 spend_usd=spend))
        market = self._market(job)
        points = _stage("checkpoints", self._tier(job).points)
        measured = progress(points, gpus_per_node=job.gpus_per_node)
        memory.steps_per_s.update(measured.steps_per_s_by_nodes)
        if measured.recovery_s is not None:
            memory.recovery_s = measured.recovery_s
        state = self._job_state(job, memory, view, suspended=suspended, now=now, step=measured.step,
                                last_restart_at=measured.last_restart_at)
        decision = decide(state, team, market, job.scaler, now_s=now)
        changed = decision.desired_nodes != state.current_nodes
        if changed:
            self._act(job, name, view, decision)
            memory.last_resize_at, memory.unready_since = now, None
            if decision.kind is ReasonKind.SUSPEND:
                memory.below_min_since = None
        self.metrics.decisions.labels(**labels, reason=decision.kind.value).inc()
        self._gauges(labels, desired=decision.desired_nodes, current=state.current_nodes, ready=state.ready_nodes)
        previous, memory.last_decision, memory.seen = memory.last_decision, decision, True
        if changed or previous is None or previous.gist() != decision.gist():
            self._report(job, job_object, state, decision, now)
        return decision

    def _job_state(self, job: ScaledJob, memory: JobMemory, view: JobView, *, suspended: bool, now: float,
                   step: int, last_restart_at: float | None) -> JobState:
        current = 0 if suspended else view.parallelism
        ready = 0 if suspended else min(view.ready, current)
        below_min = ready < job.min_nodes and not suspended
        memory.below_min_since = (memory.below_min_since or now) if below_min else None
        if ready < current:
            if memory.unready_since is None:
                # Started while Kueue's pods-ready clock runs: it started at the slice's admission.
                fresh = not memory.seen and view.admitted_at is not None and not view.pods_ready
                memory.unready_since = view.admitted_at if fresh else now
        else:
            memory.unready_since = None
        resized = [t for t in (memory.last_resize_at, last_restart_at) if t is not None]
        return JobState(
            name=job.key, pool=job.pool, min_nodes=job.min_nodes, max_nodes=job.max_nodes, current_nodes=current,
            ready_nodes=ready, gpus_per_node=job.gpus_per_node,
            samples_per_s_by_nodes={n: rate * job.global_batch_size for n, rate in memory.steps_per_s.items()},
            steps_left=max(0, job.steps - step), samples_per_step=job.global_batch_size, recovery_s=memory.recovery_s,
            last_resize_at_s=max(resized) if resized else None, below_min_since_s=memory.below_min_since,
            unready_since_s=memory.unready_since, suspended=suspended, priority=job.priority)

    def _market(self, job: ScaledJob) -> dict:
        names = {job.pool} | {t.pool for t in job.scaler.triggers if t.pool in self.config.pools}
        market = {}
        for name in names:
            pool = self.config.pools[name]
            price = self.prices.price(pool.instance_types) if pool.capacity_type == "spot" else None
            market[name] = pool_market(name, pool, price, job_max_nodes=job.max_nodes)
        return market

    def _tier(self, job: ScaledJob) -> CheckpointProgress:
        if job.key not in self._progress:
            self._progress[job.key] = self._progress_for(job)
        return self._progress[job.key]

    # ---- acting ------------------------------------------------------------------------------
    def _act(self, job: ScaledJob, name: str, view: JobView, decision: Decision) -> None:
        ns = job.namespace
        if decision.kind is ReasonKind.SUSPEND:
            # Kueue evicts a deactivated Workload, suspends the Job (SIGTERM: the agreed stop saves)
            # and releases its quota; every slice goes, so none is admitted behind our back.
            for workload in view.workloads:
                _stage("act", self.api.set_active, ns, workload, False)
            return
        if decision.kind is ReasonKind.RESUME:
            if view.parallelism != decision.desired_nodes:
                _stage("act", self.api.set_parallelism, ns, name, decision.desired_nodes)
            for workload in _stage("act", self.api.workloads, ns):
                if owned_by(workload, view.uid) and not is_finished(workload) and not is_active(workload):
                    _stage("act", self.api.set_active, ns, workload["metadata"]["name"], True)
            return
        if decision.desired_nodes > view.parallelism and not view.admitted:
            raise StageError("act", InputUnknown(f"{job.key} has no admitted flavor to grow in"))
        _stage("act", self.api.set_parallelism, ns, name, decision.desired_nodes)

    def _report(self, job: ScaledJob, job_object: dict, state: JobState, decision: Decision, now: float) -> None:
        log.info("%s %d/%d ready: %s", job.key, state.ready_nodes, state.current_nodes, decision)
        reason = "Scaler" + "".join(part.title() for part in decision.kind.value.split("-"))
        try:
            self.api.job_event(job_object, reason=reason, message=str(decision), warning=decision.kind in WARNING_KINDS,
                               now=dt.datetime.fromtimestamp(now, dt.timezone.utc))
        except Exception as e:  # noqa: BLE001 - the decision stands; only its Event is lost
            self.metrics.errors.labels(namespace=job.namespace, job=job.name, stage="event").inc()
            log.warning("%s: the Event of '%s' was not recorded: %s", job.key, decision, e)

    def _gauges(self, labels: dict, *, desired: int, current: int, ready: int) -> None:
        self.metrics.desired.labels(**labels).set(desired)
        self.metrics.current.labels(**labels).set(current)
        self.metrics.ready.labels(**labels).set(ready)

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, watch: bool = True) -> None:
        """Pass after pass until `stop` is set: every decide_every_s, or soon after a watch event."""
        if watch:
            for namespace in self.config.namespaces:
                self.api.watch_namespace(namespace, self.wake.set, stop)
        while not stop.is_set():
            began = time.monotonic()
            self.wake.clear()
            self.decide_all()
            deadline = began + self.config.decide_every_s
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.wake.wait(remaining):
                    stop.wait(min(remaining, WAKE_DEBOUNCE_S))
                    break
