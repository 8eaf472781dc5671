"""Platform commands behind `tensile team add` and `tensile job render`: plain functions that
print clear errors and return exit codes (0 done, 2 refused: bad input or a config the stack
would refuse). The stack file is changed only when the whole new config validates."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence, TextIO

import yaml

from infra import config as stack_config
from infra import cost, job_plan, mocks, team_plan
from infra.config_sections import DNS_LABEL, Reader, parse_jobs, role_arn_problem

EXIT_OK, EXIT_REFUSED = 0, 2


def _error(message: str, err: TextIO) -> int:
    print(f"error: {message}", file=err)
    return EXIT_REFUSED


def _load(stack: str, root: Path) -> tuple[Path, str, dict]:
    path = root / f"Pulumi.{stack}.yaml"
    mocks.read_stack_config(stack, root)  # raises StackFileError with the stacks that exist
    text = path.read_text()
    return path, text, yaml.safe_load(text) or {}


def _parse(document: dict, stack: str) -> stack_config.StackConfig:
    raw = {k: v for k, v in (document.get("config") or {}).items()
           if not (isinstance(v, dict) and set(v) == {"secure"})}
    return stack_config.parse(raw, stack=stack)


def gpu_models_for(families: Sequence[str]) -> tuple[list[str], list[str]]:
    """Accept GPU models (`h100`) or instance families (`p5`); return (models, unknown)."""
    models_known = {t.gpu_model for t in cost.CATALOGUE.values()}
    by_family = {t.family: t.gpu_model for t in cost.CATALOGUE.values()}
    models, unknown = [], []
    for family in families:
        value = family.strip().lower()
        model = value if value in models_known else by_family.get(value)
        if model is None:
            unknown.append(family)
        elif model not in models:
            models.append(model)
    return models, unknown


def team_entry_text(*, name: str, gpus: int, budget_usd: float, gpu_models: Sequence[str], member_role_arn: str,
                    indent: str) -> str:
    budget = int(budget_usd) if float(budget_usd).is_integer() else budget_usd
    return (f"{indent}- name: {name}\n"
            f"{indent}  gpuQuota: {gpus}\n"
            f"{indent}  borrowingLimit: 0\n"
            f"{indent}  monthlyBudgetUsd: {budget}\n"
            f"{indent}  gpuModels: [{', '.join(gpu_models)}]\n"
            f"{indent}  memberRoleArn: {member_role_arn}\n")


def insert_team(text: str, entry_for_indent) -> str:
    """Add a team entry at the end of the `tensile:teams:` list, keeping every other line (and
    comment) as it was; create the list at the end of `config:` if there is none."""
    lines = text.splitlines(keepends=True)
    header = next((i for i, line in enumerate(lines) if re.match(r"^(\s*)tensile:teams:\s*(#.*)?$", line)), None)
    if header is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        return "".join(lines) + "  tensile:teams:\n" + entry_for_indent("    ")
    key_indent = len(lines[header]) - len(lines[header].lstrip())
    item_indent = None
    end = header + 1
    for i in range(header + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        indent = len(lines[i]) - len(lines[i].lstrip())
        if indent <= key_indent and not (stripped.startswith("-") and indent == key_indent):
            break
        if stripped.startswith("#") and indent <= key_indent:
            break
        if stripped.startswith("- ") and item_indent is None:
            item_indent = lines[i][:indent]
        end = i + 1
    item_indent = item_indent if item_indent is not None else " " * (key_indent + 2)
    return "".join(lines[:end]) + entry_for_indent(item_indent) + "".join(lines[end:])


def team_add(stack: str, name: str, gpus: int, budget_usd: float, gpu_families: Sequence[str],
             member_role_arn: str, *, root: Path = mocks.REPO_ROOT, out: TextIO = sys.stdout,
             err: TextIO = sys.stderr) -> int:
    """Add a team to `Pulumi.<stack>.yaml` after validating it with the whole stack config."""
    try:
        path, text, document = _load(stack, root)
    except mocks.StackFileError as e:
        return _error(str(e), err)
    problems = []
    if not DNS_LABEL.match(name or ""):
        problems.append(f"team name must be a DNS label (lower case, digits, '-'), got {name!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
        problems.append(f"--gpus must be a positive integer, got {gpus!r}")
    if isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) or budget_usd <= 0:
        problems.append(f"--budget must be a positive amount in USD, got {budget_usd!r}")
    models, unknown = gpu_models_for(gpu_families)
    known = sorted({t.gpu_model for t in cost.CATALOGUE.values()} | {t.family for t in cost.CATALOGUE.values()})
    for family in unknown:
        problems.append(f"unknown GPU family {family!r}: use a GPU model or instance family ({', '.join(known)})")
    if not gpu_families:
        problems.append("give at least one GPU family (--gpu-family l4)")
    if (reason := role_arn_problem(member_role_arn or "")):
        problems.append(f"--member-role-arn {reason}")
    existing = [t.get("name") for t in ((document.get("config") or {}).get("tensile:teams") or []) if isinstance(t, dict)]
    if name in existing:
        problems.append(f"team {name!r} already exists in {path.name}")
    if problems:
        for p in problems:
            _error(p, err)
        return EXIT_REFUSED

    if any(re.match(r"^\s*tensile:teams:\s*[^\s#]", line) for line in text.splitlines()):
        return _error(f"{path.name} writes tensile:teams in flow style ([...]); write it as a block list "
                      "(one `- name: ...` entry per team) so an entry can be added without rewriting the file", err)
    new_text = insert_team(text, lambda indent: team_entry_text(
        name=name, gpus=gpus, budget_usd=budget_usd, gpu_models=models, member_role_arn=member_role_arn, indent=indent))
    try:
        cfg = _parse(yaml.safe_load(new_text), stack)
    except stack_config.ConfigError as e:
        print(f"error: {path.name} left unchanged; with team {name!r} the stack config would be refused:", file=err)
        for p in e.problems:
            print(f"  - {p}", file=err)
        return EXIT_REFUSED
    except yaml.YAMLError as e:  # the insertion must never produce broken YAML; refuse if it did
        return _error(f"{path.name} left unchanged: could not add the entry cleanly ({e})", err)

    team = next(t for t in cfg.teams if t.name == name)
    quota = team_plan.team_quota(team, cfg.gpu_pools, cfg.prices)
    # Atomic replace: a crash leaves the old file or the new one, never half of each.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(new_text)
    os.replace(tmp.name, path)
    print(f"added team {name} to {path.name}: {gpus} GPU quota ({', '.join(models)}), ${budget_usd:,.0f}/month; "
          f"the cost model allows {quota.gpus_within_budget} GPUs at on-demand, queue quota {quota.nominal_gpus}",
          file=out)
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=out)
    print(f"next: pulumi preview --stack {stack} --policy-pack policies", file=out)
    return EXIT_OK


def job_render(stack: str, *, name: str, team: str, training_config: str, image: str, bucket: str | None,
               gpu_model: str | None = None, gpus_per_worker: int = 1, emergency_checkpoint_seconds: int = 60,
               root: Path = mocks.REPO_ROOT, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print the objects of one training run as YAML (for `kubectl apply -f -`)."""
    try:
        _path, _text, document = _load(stack, root)
        cfg = _parse(document, stack)
    except mocks.StackFileError as e:
        return _error(str(e), err)
    except stack_config.ConfigError as e:
        return _error(f"the stack config is invalid:\n{e}", err)
    if not bucket:
        return _error("pass the checkpoint bucket (`pulumi stack output checkpointBucket`)", err)
    reader = Reader()
    entry = {"name": name, "team": team, "trainingConfig": training_config, "image": image,
             "gpusPerWorker": gpus_per_worker, "emergencyCheckpointSeconds": emergency_checkpoint_seconds}
    if gpu_model:
        entry["gpuModel"] = gpu_model
    jobs = parse_jobs(reader, [entry], cfg.teams, cfg.gpu_pools)
    if reader.problems:
        for p in reader.problems:
            _error(str(p).replace("jobs[0].", ""), err)
        return EXIT_REFUSED
    config_path = Path(training_config)
    config_path = config_path if config_path.is_absolute() else root / config_path
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        return _error(f"cannot read training config {training_config}: {e}", err)
    models = next(t.gpu_models for t in cfg.teams if t.name == team)
    try:
        objects = job_plan.job_objects(jobs[0], training_config=raw, team_models=models, pools=cfg.gpu_pools,
                                       bucket=bucket)
    except job_plan.JobPlanError as e:
        return _error(str(e), err)
    out.write(yaml.safe_dump_all(objects, sort_keys=False))
    return EXIT_OK


__all__ = ["team_add", "job_render", "gpu_models_for", "insert_team"]
