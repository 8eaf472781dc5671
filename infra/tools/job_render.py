"""`tensile job render`: print one training run's Kubernetes objects as YAML (for `kubectl apply
-f -`), the job entry checked against the stack as the stack's own jobs are. Exit codes: 0
printed, 2 refused (bad input, or a stack config the stack would refuse)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import yaml

from infra.config.stack import REPO_ROOT, StackFileError, parse_document, parse_job_entry, read_stack_document
from infra.config.types import ConfigError
from infra.plan import job as job_plan
from infra.tools.team_add import EXIT_OK, EXIT_REFUSED, error


def job_render(stack: str, *, name: str, team: str, training_config: str, image: str, bucket: str | None,
               gpu_model: str | None = None, gpus_per_worker: int = 1, emergency_checkpoint_seconds: int = 60,
               schedule: str | None = None, root: Path = REPO_ROOT, out: TextIO = sys.stdout,
               err: TextIO = sys.stderr) -> int:
    """Print the objects of one training run as YAML (for `kubectl apply -f -`); with a schedule
    (cron, UTC), a CronJob whose runs resume the run instead of its Job."""
    try:
        _path, _text, document = read_stack_document(stack, root)
        cfg = parse_document(document, stack)
    except StackFileError as e:
        return error(str(e), err)
    except ConfigError as e:
        return error(f"the stack config is invalid:\n{e}", err)
    if not bucket:
        return error("pass the checkpoint bucket (`pulumi stack output checkpointBucket`)", err)
    entry = {"name": name, "team": team, "trainingConfig": training_config, "image": image,
             "gpusPerWorker": gpus_per_worker, "emergencyCheckpointSeconds": emergency_checkpoint_seconds}
    if gpu_model:
        entry["gpuModel"] = gpu_model
    if schedule is not None:
        entry["schedule"] = schedule
    try:
        job = parse_job_entry(entry, cfg)
    except ConfigError as e:
        for p in e.problems:
            error(str(p), err)
        return EXIT_REFUSED
    config_path = Path(training_config)
    config_path = config_path if config_path.is_absolute() else root / config_path
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        return error(f"cannot read training config {training_config}: {e}", err)
    models = next(t.gpu_models for t in cfg.teams if t.name == team)
    try:
        objects = job_plan.job_objects(job, training_config=raw, team_models=models, pools=cfg.gpu_pools,
                                       bucket=bucket)
    except job_plan.JobPlanError as e:
        return error(str(e), err)
    out.write(yaml.safe_dump_all(objects, sort_keys=False))
    return EXIT_OK
