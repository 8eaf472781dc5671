"""A run of the training package on the cluster: the objects `infra.plan.job` plans (config,
rendezvous store on the system nodes, headless Service, Kueue-admitted Indexed Job, or the CronJob
that creates it on a schedule)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pulumi
import pulumi_kubernetes as k8s
import yaml

from infra.components.k8s_objects import declare
from infra.config.stack import REPO_ROOT
from infra.config.types import GpuPoolConfig, JobConfig
from infra.plan import job as job_plan

ELASTIC_ANNOTATION_PATH = f'metadata.annotations["{job_plan.ELASTIC_JOB}"]'


def read_training_config(path: str, root: Path = REPO_ROOT) -> dict:
    file = (root / path).resolve()
    try:
        return yaml.safe_load(file.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise job_plan.JobPlanError(f"cannot read training config {path}: {e}") from e


@dataclass(frozen=True, kw_only=True)
class TrainingJobArgs:
    job: JobConfig
    team_models: tuple[str, ...]
    pools: tuple[GpuPoolConfig, ...]
    bucket_name: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource] = ()
    """The team's namespace, queue and identity."""


class TrainingJob(pulumi.ComponentResource):
    def __init__(self, name: str, args: TrainingJobArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:TrainingJob", name, None, opts)
        raw = read_training_config(args.job.training_config)
        # Planned now with a placeholder bucket (bad bounds fail the preview, not the apply);
        # the real bucket name is an output, filled in per object below.
        objects = pulumi.Output.from_input(args.bucket_name).apply(lambda bucket: job_plan.job_objects(
            args.job, training_config=raw, team_models=args.team_models, pools=args.pools, bucket=bucket))
        template = job_plan.job_objects(args.job, training_config=raw, team_models=args.team_models,
                                        pools=args.pools, bucket="bucket")
        base = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        declared = []
        for i, manifest in enumerate(template):
            kind = manifest["kind"]
            live = objects.apply(lambda objs, i=i: objs[i])
            resolved = {**manifest, **{k: live.apply(lambda o, k=k: o[k]) for k in manifest
                                       if k not in ("apiVersion", "kind", "metadata")}}
            opts = base
            if kind == "Job" and args.job.scaler is not None:
                # The scaler owns parallelism, Kueue suspension: `up` must not fight either. The
                # elastic annotation is immutable (Kueue refuses its change), so turning a job
                # elastic replaces the Job: the old one deleted first (its pods get SIGTERM and
                # save at an agreed step), the new one, same name, resumes the same run from
                # the same checkpoint.shared_dir; config, store and Services are kept
                # (docs/upgrades.md, "A job becomes elastic").
                opts = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(
                    depends_on=declared, ignore_changes=["spec.parallelism", "spec.completions", "spec.suspend"],
                    replace_on_changes=[ELASTIC_ANNOTATION_PATH], delete_before_replace=True))
            elif kind == "Job":
                # Kueue owns these after admission (partial admission, suspension): Pulumi must
                # not fight it on the next `up`.
                opts = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(
                    depends_on=declared, ignore_changes=["spec.parallelism", "spec.completions", "spec.suspend"]))
            elif kind == "CronJob":
                opts = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(depends_on=declared))
            suffix = manifest["metadata"]["name"].removeprefix(args.job.name).strip("-") or "workers"
            declared.append(declare(f"{name}-{kind.lower()}-{suffix}", resolved, opts))
        self.register_outputs({"job": args.job.name, "team": args.job.team,
                               "objects": [f"{m['kind']}/{m['metadata']['name']}" for m in template]})
