"""The cluster scaler's config file (JSON, schema version 1, docs/design/scaler.md): the jobs it
sizes, their teams, pools and the enforcer's spend ConfigMap, validated once at start.

Every problem is reported together with its property path and the fix, as the training config
does; each job's `scaler` section is the mapping `tensile.scaler.load_scaler_config` parses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensile.config import ConfigError
from tensile.scaler import ScalerConfig, load_scaler_config

SCHEMA_VERSION = 1
CAPACITY_TYPES = ("spot", "on-demand", "reserved")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaledJob:
    namespace: str
    name: str
    """The Job's metadata.name (an elastic Kueue Job labelled tensile.dev/scaled=true)."""
    team: str
    pool: str
    """The Karpenter NodePool its nodes come from: the market entry its prices are read from."""
    gpus_per_node: int
    min_nodes: int
    max_nodes: int
    priority: int
    steps: int
    """The run's `run.steps`: with the newest checkpoint's step, how much is left to train."""
    global_batch_size: int
    """The run's `batch.global_batch_size`: steps/s measured on the tier become samples/s."""
    checkpoints: str
    """`s3://bucket/prefix` of the run's shared checkpoint tier (the file's `ledger` key): its
    manifests (step, world size, time) are where the controller measures throughput."""
    scaler: ScalerConfig
    scheduled: bool = False
    """`name` is a CronJob's: the Job sized is the run it has going (labelled tensile.dev/schedule)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamConfig:
    namespace: str
    quota_gpus: int
    borrowing_gpus: int
    monthly_budget_usd: float
    cluster_queue: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolConfig:
    capacity_type: str
    instance_types: tuple[str, ...]
    on_demand_usd_per_hour: float
    """Per node: the price of growing on demand, and of every node of an on-demand pool."""
    gpu_limit: int | None = None
    """The NodePool's GPU limit (`limits` in its spec): no grow past it. Optional."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ControllerConfig:
    region: str
    decide_every_s: float
    metrics_port: int
    jobs: tuple[ScaledJob, ...]
    teams: Mapping[str, TeamConfig]
    pools: Mapping[str, PoolConfig]
    spend_namespace: str
    spend_configmap: str

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({job.namespace for job in self.jobs}))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Reader:
    """Reads fields of one mapping, noting every problem with its path."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems

    def mapping(self, data: Any, path: str, known: tuple[str, ...]) -> Mapping | None:
        if not isinstance(data, Mapping):
            self.problems.append((path, f"must be a mapping, got {data!r}"))
            return None
        for key in data:
            if key not in known:
                self.problems.append((f"{path}.{key}", f"unknown key; known keys: {', '.join(sorted(known))}"))
        return data

    def text(self, data: Mapping, key: str, path: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            self.problems.append((f"{path}.{key}", f"must be a non-empty string, got {value!r}"))
            return ""
        return value

    def integer(self, data: Mapping, key: str, path: str, *, low: int, high: int | None = None,
                default: int | None = None) -> int:
        value = data.get(key, default)
        if not _integer(value) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            self.problems.append((f"{path}.{key}", f"must be an integer {bound}, got {value!r}"))
            return low
        return value

    def positive(self, data: Mapping, key: str, path: str) -> float:
        value = data.get(key)
        if not _number(value) or value <= 0:
            self.problems.append((f"{path}.{key}", f"must be a number > 0, got {value!r}"))
            return 1.0
        return float(value)


def _job(data: Any, path: str, read: _Reader) -> ScaledJob | None:
    known = ("namespace", "name", "team", "pool", "gpus_per_node", "min_nodes", "max_nodes", "priority",
             "steps", "global_batch_size", "ledger", "scaler", "scheduled")
    data = read.mapping(data, path, known)
    if data is None:
        return None
    before = len(read.problems)
    min_nodes = read.integer(data, "min_nodes", path, low=1)
    max_nodes = read.integer(data, "max_nodes", path, low=1)
    if min_nodes > max_nodes:
        read.problems.append((f"{path}.min_nodes", f"{min_nodes} is above max_nodes {max_nodes}: lower it or raise max_nodes"))
    checkpoints = read.text(data, "ledger", path)
    if checkpoints and (not checkpoints.startswith("s3://") or not checkpoints[5:].split("/")[0]):
        read.problems.append((f"{path}.ledger", f"must be the run's s3://bucket/prefix checkpoint tier, got {checkpoints!r}"))
    try:
        scaler = load_scaler_config(data.get("scaler"), path=f"{path}.scaler")
    except ConfigError as e:
        read.problems.extend(e.problems)
        scaler = ScalerConfig()
    job = ScaledJob(namespace=read.text(data, "namespace", path), name=read.text(data, "name", path),
                    team=read.text(data, "team", path), pool=read.text(data, "pool", path),
                    gpus_per_node=read.integer(data, "gpus_per_node", path, low=1), min_nodes=min_nodes,
                    max_nodes=max_nodes, priority=read.integer(data, "priority", path, low=-(2**31), default=0),
                    steps=read.integer(data, "steps", path, low=1),
                    global_batch_size=read.integer(data, "global_batch_size", path, low=1),
                    checkpoints=checkpoints, scaler=scaler, scheduled=data.get("scheduled", False))
    if not isinstance(job.scheduled, bool):
        read.problems.append((f"{path}.scheduled", f"must be true or false (name is a CronJob's), got {job.scheduled!r}"))
    return job if len(read.problems) == before else None


def _team(data: Any, path: str, read: _Reader) -> TeamConfig | None:
    data = read.mapping(data, path, ("namespace", "quota_gpus", "borrowing_gpus", "monthly_budget_usd", "cluster_queue"))
    if data is None:
        return None
    return TeamConfig(namespace=read.text(data, "namespace", path), quota_gpus=read.integer(data, "quota_gpus", path, low=0),
                      borrowing_gpus=read.integer(data, "borrowing_gpus", path, low=0, default=0),
                      monthly_budget_usd=read.positive(data, "monthly_budget_usd", path),
                      cluster_queue=read.text(data, "cluster_queue", path))


def _pool(data: Any, path: str, read: _Reader) -> PoolConfig | None:
    data = read.mapping(data, path, ("capacity_type", "instance_types", "on_demand_usd_per_hour", "gpu_limit"))
    if data is None:
        return None
    capacity_type = data.get("capacity_type")
    if capacity_type not in CAPACITY_TYPES:
        read.problems.append((f"{path}.capacity_type", f"must be one of {', '.join(CAPACITY_TYPES)}, got {capacity_type!r}"))
    types = data.get("instance_types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) and t for t in types):
        read.problems.append((f"{path}.instance_types", f"must be a non-empty list of EC2 instance types "
                                                        f"(whose spot prices are read), got {types!r}"))
        types = []
    gpu_limit = read.integer(data, "gpu_limit", path, low=1) if "gpu_limit" in data else None
    return PoolConfig(capacity_type=str(capacity_type), instance_types=tuple(types),
                      on_demand_usd_per_hour=read.positive(data, "on_demand_usd_per_hour", path), gpu_limit=gpu_limit)


def parse_controller_config(doc: Any, source: str | None = None) -> ControllerConfig:
    """The validated config from a parsed JSON document; ConfigError lists every problem."""
    problems: list[tuple[str, str]] = []
    read = _Reader(problems)
    known = ("version", "region", "decide_every_s", "metrics_port", "jobs", "teams", "pools", "spend")
    doc = read.mapping(doc, "config", known)
    if doc is None:
        raise ConfigError(problems, source)
    if doc.get("version") != SCHEMA_VERSION:
        problems.append(("version", f"must be {SCHEMA_VERSION} (the schema this controller reads), got {doc.get('version')!r}"))
    region = read.text(doc, "region", "config")
    decide_every_s = read.positive(doc, "decide_every_s", "config")
    metrics_port = read.integer(doc, "metrics_port", "config", low=0, high=65535)
    teams: dict[str, TeamConfig] = {}
    pools: dict[str, PoolConfig] = {}
    for section, parse, out in (("teams", _team, teams), ("pools", _pool, pools)):
        entries = doc.get(section)
        if not isinstance(entries, Mapping) or not entries:
            problems.append((section, f"must be a non-empty mapping of name to entry, got {entries!r}"))
            continue
        for name, entry in entries.items():
            parsed = parse(entry, f"{section}.{name}", read)
            if parsed is not None:
                out[name] = parsed
    spend = read.mapping(doc.get("spend"), "spend", ("namespace", "configmap")) or {}
    spend_namespace, spend_configmap = read.text(spend, "namespace", "spend"), read.text(spend, "configmap", "spend")
    jobs: list[ScaledJob] = []
    entries = doc.get("jobs")
    if not isinstance(entries, list):
        problems.append(("jobs", f"must be a list of jobs, got {entries!r}"))
        entries = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        path = f"jobs[{index}]"
        job = _job(entry, path, read)
        if job is None:
            continue
        if job.key in seen:
            problems.append((f"{path}.name", f"{job.key} is listed twice: one controller entry per Job"))
        seen.add(job.key)
        team = teams.get(job.team)
        if job.team not in (doc.get("teams") or {}):
            problems.append((f"{path}.team", f"{job.team!r} is not in teams; add it there or fix the name"))
        elif team is not None and team.namespace != job.namespace:
            problems.append((f"{path}.namespace", f"{job.namespace!r} is not team {job.team}'s namespace "
                                                  f"{team.namespace!r}: a job runs in its team's namespace"))
        elif team is not None and job.gpus_per_node * job.min_nodes > team.quota_gpus + team.borrowing_gpus:
            problems.append((f"{path}.min_nodes", f"{job.min_nodes} nodes x {job.gpus_per_node} GPUs exceed team "
                                                  f"{job.team}'s quota plus borrowing ({team.quota_gpus + team.borrowing_gpus})"))
        if job.pool not in (doc.get("pools") or {}):
            problems.append((f"{path}.pool", f"{job.pool!r} is not in pools; add the NodePool there or fix the name"))
        jobs.append(job)
    if problems:
        raise ConfigError(problems, source)
    return ControllerConfig(region=region, decide_every_s=decide_every_s, metrics_port=metrics_port, jobs=tuple(jobs),
                            teams=teams, pools=pools, spend_namespace=spend_namespace, spend_configmap=spend_configmap)


def load_controller_config(path: str | Path) -> ControllerConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([("config", f"cannot read {path}: {e.strerror}; mount the tensile-scaler ConfigMap there")],
                          str(path)) from e
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError([("config", f"is not JSON: {e}")], str(path)) from e
    return parse_controller_config(doc, str(path))
