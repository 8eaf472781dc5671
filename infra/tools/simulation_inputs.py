"""What `tensile simulate` needs from a stack, as plain data: the job entry (from the stack file's
`tensile:jobs`, enabled or not, or a `--job-file`), its pool's node type and prices through the
cost model, its team, and the worst-case monthly cost of the stack's autoscaling config with the
Karpenter scale-out overrun (plan/scale_out_overrun.py). The simulation itself is the trainer's
(`tensile.simulate`): infra hands it values, never imports it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from infra import cost
from infra.config.stack import REPO_ROOT, StackFileError, parse_document, parse_job_entry, read_stack_document
from infra.config.types import ConfigError, JobConfig, StackConfig
from infra.plan import job as job_plan
from infra.plan import scale_out_overrun

JOB_FILE_KEYS = {"job", "scaler", "startup"}
STARTUP_KEYS = {"nodeLaunchS": "node_launch_s", "imagePullS": "image_pull_s", "tensileStartS": "tensile_start_s"}
"""A job file's `startup:` (seconds; each optional, the simulator's documented defaults otherwise)."""


class SimulationInputError(ValueError):
    """The stack, the job or the job file cannot be simulated; the message says why and the fix."""


def _startup(path: Path, raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    problems = [] if isinstance(raw, dict) else [f"startup must be a mapping of {', '.join(STARTUP_KEYS)}, got {raw!r}"]
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        if key not in STARTUP_KEYS:
            problems.append(f"startup.{key}: unknown; known: {', '.join(STARTUP_KEYS)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            problems.append(f"startup.{key}: must be seconds >= 0, got {value!r}")
    if problems:
        raise SimulationInputError(f"{path}: " + "; ".join(problems))
    return {STARTUP_KEYS[key]: float(value) for key, value in raw.items()}


def _job_from_file(path: Path, cfg: StackConfig) -> tuple[JobConfig, Any, dict[str, float]]:
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SimulationInputError(f"cannot read job file {path}: {e}") from e
    unknown = set(document) - JOB_FILE_KEYS if isinstance(document, dict) else {"<not a mapping>"}
    if unknown or not isinstance(document.get("job"), dict):
        raise SimulationInputError(f"{path}: expected `job:` (a tensile:jobs entry) and optionally `scaler:` and "
                                   f"`startup:`, got {sorted(unknown) or 'no job'}")
    startup = _startup(path, document.get("startup"))
    try:
        return parse_job_entry(document["job"], cfg), document.get("scaler"), startup
    except ConfigError as e:
        raise SimulationInputError(f"{path}: job: " + "; ".join(str(p) for p in e.problems)) from e


def simulation_inputs(stack: str, *, job_name: str, job_file: Path | None = None,
                      root: Path = REPO_ROOT) -> dict[str, Any]:
    """The inputs as a dict of plain values; SimulationInputError names what is wrong."""
    try:
        _path, _text, document = read_stack_document(stack, root)
        cfg = parse_document(document, stack)
    except (StackFileError, ConfigError) as e:
        raise SimulationInputError(f"stack {stack}: {e}") from e
    scaler, startup = None, {}
    if job_file is not None:
        job, scaler, startup = _job_from_file(job_file, cfg)
        if job.name != job_name:
            raise SimulationInputError(f"{job_file} holds job {job.name!r}, not {job_name!r}")
    else:
        matching = [j for j in cfg.jobs if j.name == job_name]
        if not matching:
            known = ", ".join(j.name for j in cfg.jobs) or "none"
            raise SimulationInputError(f"stack {stack} has no job {job_name!r} under tensile:jobs (jobs: {known}); "
                                       f"add one (enabled: false) or pass --job-file")
        job = matching[0]
    training_path = root / job.training_config
    try:
        training = yaml.safe_load(training_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SimulationInputError(f"job {job.name}: cannot read {job.training_config}: {e}") from e
    team = next(t for t in cfg.teams if t.name == job.team)
    models = (job.gpu_model,) if job.gpu_model else team.gpu_models
    pool = next((p for p in cfg.gpu_pools if p.gpu_model in models), None)
    types = [t for t in (pool.instance_types if pool else ()) if cost.lookup(t).gpus >= job.gpus_per_worker]
    if pool is None or not types:
        raise SimulationInputError(f"job {job.name}: no pool of {', '.join(models)} has a node with "
                                   f"{job.gpus_per_worker} GPUs")
    # Karpenter picks the cheapest type that fits the pod: the fewest GPUs at or above the request.
    instance_type = min(types, key=lambda t: (cost.lookup(t).gpus, cfg.prices.on_demand_per_hour(t)))
    on_demand = cfg.prices.on_demand_per_hour(instance_type)
    discount = cfg.prices.spot_discount(pool.gpu_model)
    try:
        parameters = job_plan.model_parameters(job, training)
    except job_plan.JobPlanError as e:
        raise SimulationInputError(str(e)) from e
    elastic = training.get("elastic") or {}
    max_nodes = int(elastic.get("max_nodes", elastic.get("max_workers", 1)))
    worst = scale_out_overrun.worst_case(cfg, batch_nodes={pool.name: max_nodes})
    price = cfg.prices.on_demand[instance_type]
    return {
        "stack": stack,
        "job": {"name": job.name, "team": job.team, "training_config": str(training_path),
                "gpus_per_worker": job.gpus_per_worker, "emergency_checkpoint_seconds": job.emergency_checkpoint_seconds,
                "model_parameters": parameters, "enabled": job.enabled},
        "pool": {"name": pool.name, "gpu_model": pool.gpu_model, "instance_type": instance_type,
                 "on_demand_usd_per_node_hour": on_demand, "spot_usd_per_node_hour": on_demand * (1 - discount),
                 "spot_discount": discount, "spot": pool.spot, "reserved": pool.reserved,
                 "node_limit": pool.max_gpus // cost.lookup(instance_type).gpus,
                 "price_source": f"{price.source}, as of {price.as_of}; spot discount {discount:.0%} (assumed)"},
        "team": {"gpu_quota": team.gpu_quota, "borrowing_limit": team.borrowing_limit,
                 "monthly_budget_usd": team.monthly_budget_usd},
        "scaler": scaler,
        "startup": startup,
        "worst_case": {**asdict(worst), "overrun_monthly_usd": worst.overrun_monthly_usd,
                       "with_overrun_monthly_usd": worst.with_overrun_monthly_usd, "within_budget": worst.within_budget,
                       "karpenter_only_monthly_usd": worst.karpenter_only_monthly_usd,
                       "pools": [{**asdict(p), "monthly_usd": p.monthly_usd,
                                  "karpenter_only_monthly_usd": p.karpenter_only_monthly_usd} for p in worst.pools]},
    }
