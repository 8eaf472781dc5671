"""`tensile team add`: add a team to `Pulumi.<stack>.yaml`, judged by the stack's own parse (the
file is changed only when the whole new config validates). Prints clear errors and returns an
exit code: 0 done, 2 refused (bad input or a config the stack would refuse)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Sequence, TextIO

import yaml

from infra import cost
from infra.config.stack import REPO_ROOT, StackFileError, parse_document, read_stack_document
from infra.config.types import ConfigError
from infra.plan import storage as storage_plan
from infra.plan import teams as team_plan

EXIT_OK, EXIT_REFUSED = 0, 2

FLAGS = {"name": "team name", "memberRoleArn": "--member-role-arn"}
"""Entry fields written exactly as given: the parse's problem with one is the argument's."""


def error(message: str, err: TextIO) -> int:
    print(f"error: {message}", file=err)
    return EXIT_REFUSED


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
                    efs_uid: int, indent: str) -> str:
    budget = int(budget_usd) if float(budget_usd).is_integer() else budget_usd
    return (f"{indent}- name: {name}\n"
            f"{indent}  gpuQuota: {gpus}\n"
            f"{indent}  borrowingLimit: 0\n"
            f"{indent}  monthlyBudgetUsd: {budget}\n"
            f"{indent}  gpuModels: [{', '.join(gpu_models)}]\n"
            f"{indent}  memberRoleArn: {member_role_arn}\n"
            f"{indent}  efsUid: {efs_uid}\n")


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
             member_role_arn: str, *, root: Path = REPO_ROOT, out: TextIO = sys.stdout,
             err: TextIO = sys.stderr) -> int:
    """Add a team to `Pulumi.<stack>.yaml` after validating it with the whole stack config: the
    stack's parse judges the stack as it is (which teams exist) and with the entry (name, role,
    quota, budgets); only what the parse cannot see is checked here (the GPU families, and the
    numbers' types before they are written into the file as text)."""
    try:
        path, text, document = read_stack_document(stack, root)
        current = parse_document(document, stack)
    except StackFileError as e:
        return error(str(e), err)
    except ConfigError as e:
        return error(f"{path.name} left unchanged: the stack config is invalid already:\n{e}", err)
    problems = []
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
    if name in {team.name for team in current.teams}:
        problems.append(f"team {name!r} already exists in {path.name}")
    if problems:
        for p in problems:
            error(p, err)
        return EXIT_REFUSED

    if any(re.match(r"^\s*tensile:teams:\s*[^\s#]", line) for line in text.splitlines()):
        return error(f"{path.name} writes tensile:teams in flow style ([...]); write it as a block list "
                      "(one `- name: ...` entry per team) so an entry can be added without rewriting the file", err)
    new_text = insert_team(text, lambda indent: team_entry_text(
        name=name, gpus=gpus, budget_usd=budget_usd, gpu_models=models, member_role_arn=member_role_arn,
        efs_uid=storage_plan.next_efs_uid(current.teams), indent=indent))
    try:
        cfg = parse_document(yaml.safe_load(new_text), stack)
    except ConfigError as e:
        return _refused(e, path=path, name=name, index=len(current.teams), err=err)
    except yaml.YAMLError as e:  # the insertion must never produce broken YAML; refuse if it did
        return error(f"{path.name} left unchanged: could not add the entry cleanly ({e})", err)
    team = next((t for t in cfg.teams if t.name == name), None)
    if team is None:  # the text given did not come back as one entry of that name
        return error(f"{path.name} left unchanged: could not add the entry cleanly (team {name!r} did not parse back)", err)

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


def _refused(e: ConfigError, *, path: Path, name: str, index: int, err: TextIO) -> int:
    """The parse's problems: those of a field written as given are the argument's; the rest keep
    their stack paths (they are about the stack: pools, budgets, other teams)."""
    entry = f"teams[{index}]."
    given = [p for p in e.problems if p.path.removeprefix(entry) in FLAGS and p.path.startswith(entry)]
    for p in given:
        error(f"{FLAGS[p.path.removeprefix(entry)]} {p.reason}", err)
    rest = [p for p in e.problems if p not in given]
    if rest:
        print(f"error: {path.name} left unchanged; with team {name!r} the stack config would be refused:", file=err)
        for p in rest:
            print(f"  - {p}", file=err)
    return EXIT_REFUSED


__all__ = ["team_add", "gpu_models_for", "insert_team"]
