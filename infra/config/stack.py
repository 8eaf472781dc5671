"""The whole stack config: every section parsed, then the budget refusals, with every problem
reported at once; read from the running Pulumi stack or from a stack file (`Pulumi.<stack>.yaml`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from infra.config import checks, sections
from infra.config.reader import Reader, one_of
from infra.config.types import ConfigError, JobConfig, Problem, StackConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this infra belongs to: its stack files are at the root."""
NAMESPACE = "tensile"


def parse(raw: Mapping[str, Any], *, stack: str, today: dt.date | None = None) -> StackConfig:
    """Turn fully qualified raw config (`{"tensile:network": {...}, "aws:region": "..."}`, values
    already decoded from JSON) into a StackConfig, or raise ConfigError listing every problem."""
    today = today or dt.date.today()
    r = Reader()
    top: dict[str, Any] = {}
    known_top = {"environment", "costCentre", "network", "cluster", "karpenter", "gpuPools", "storage",
                 "budget", "teams", "prices", "spotDiscounts", "platform", "jobs"}
    for key, value in raw.items():
        namespace, _, name = key.partition(":")
        if namespace != NAMESPACE:
            continue
        if name not in known_top:
            r.problem(name, f"unknown setting: expected one of {', '.join(sorted(known_top))}")
        top[name] = value

    region = raw.get("aws:region")
    if not isinstance(region, str) or not region:
        r.problem("aws:region", "is required: pulumi config set aws:region us-east-1")
        region = ""

    environment = r.value(top, "environment", "", str, check=one_of("dev", "staging", "prod"))
    cost_centre = r.value(top, "costCentre", "", str,
                          check=lambda v: None if v.strip() else "must not be empty: it tags every resource")

    network = sections.parse_network(r, top.get("network"), region)
    azs = network.availability_zones if network else ()
    cluster = sections.parse_cluster(r, top.get("cluster"), environment, today)
    karpenter = sections.parse_karpenter(r, top.get("karpenter"))
    prices = sections.parse_prices(r, top.get("prices"), top.get("spotDiscounts"))
    pools = sections.parse_pools(r, top.get("gpuPools"), azs, prices)
    storage = sections.parse_storage(r, top.get("storage"))
    budget = sections.parse_budget(r, top.get("budget"))
    teams = sections.parse_teams(r, top.get("teams"), pools)
    platform = sections.parse_platform(r, top.get("platform"))
    jobs = sections.parse_jobs(r, top.get("jobs"), teams, pools)

    warnings: list[str] = []
    if not r.problems:
        warnings = checks.check_costs(r, stack=stack, pools=pools, teams=teams, budget=budget,
                                cluster=cluster, network=network, prices=prices)
    if r.problems:
        raise ConfigError(r.problems)
    return StackConfig(
        stack=stack, environment=environment, region=region, cost_centre=cost_centre, network=network,
        cluster=cluster, karpenter=karpenter, gpu_pools=pools, storage=storage, budget=budget, teams=teams,
        prices=prices, platform=platform, jobs=jobs, warnings=tuple(warnings),
    )


def parse_job_entry(entry: Mapping[str, Any], cfg: StackConfig) -> JobConfig:
    """One `tensile:jobs` entry checked against a parsed stack exactly as the stack's own jobs are
    (`tensile job render`); ConfigError's paths are relative to the entry."""
    r = Reader()
    jobs = sections.parse_jobs(r, [dict(entry)], cfg.teams, cfg.gpu_pools)
    if r.problems:
        raise ConfigError([Problem(p.path.removeprefix("jobs[0]."), p.reason) for p in r.problems])
    return jobs[0]


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


def decode_value(value: Any) -> Any:
    """Pulumi passes structured config to the program as JSON text; plain strings stay strings."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def load_from_pulumi() -> StackConfig:
    """Read the running stack's config (under `pulumi up` or the SDK's mocks) and validate it."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    raw = {key: decode_value(value) for key, value in runtime_config.get_config_env().items()}
    # Values set through the runtime (mocks, automation) are kept in CONFIG, not the environment.
    raw.update({key: decode_value(value) for key, value in runtime_config.CONFIG.get().items()})
    return parse(raw, stack=pulumi.get_stack())


class StackFileError(Exception):
    """The stack does not exist or its file cannot be read as a Pulumi stack file."""


def stack_names(root: Path = REPO_ROOT) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in root.glob("Pulumi.*.yaml"))


def read_stack_document(stack: str, root: Path = REPO_ROOT) -> tuple[Path, str, dict]:
    """The stack file's path, text and document, or StackFileError naming the stacks that exist."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = ", ".join(stack_names(root)) or "none"
        raise StackFileError(f"no stack {stack!r}: {path.name} not found (stacks here: {known})")
    text = path.read_text()
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StackFileError(f"{path.name} is not valid YAML: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("config", {}), dict):
        raise StackFileError(f"{path.name}: expected a mapping with a `config:` mapping")
    for key in document.get("config") or {}:
        if not isinstance(key, str) or ":" not in key:
            raise StackFileError(f"{path.name}: config key {key!r} must be namespaced, e.g. tensile:{key}")
    return path, text, document


def _is_secret(value: Any) -> bool:
    # Encrypted with the stack's key; only the CLI can decrypt it. The program needs no secret
    # to preview, so it is left out offline.
    return isinstance(value, dict) and set(value) == {"secure"}


def read_stack_config(stack: str, root: Path = REPO_ROOT) -> tuple[dict[str, str], list[str]]:
    """The config Pulumi would hand the program for `stack`, as `{"ns:key": text}` (structured
    values as JSON text, as the CLI passes them), plus the secret keys left out offline."""
    _path, _text, document = read_stack_document(stack, root)
    config, secrets = {}, []
    for key, value in (document.get("config") or {}).items():
        if _is_secret(value):
            secrets.append(key)
            continue
        config[key] = value if isinstance(value, str) else json.dumps(value)
    return config, secrets


def parse_document(document: Mapping[str, Any], stack: str) -> StackConfig:
    """A stack file's document parsed as the program would parse it (secrets left out)."""
    raw = {k: v for k, v in (document.get("config") or {}).items() if not _is_secret(v)}
    return parse(raw, stack=stack)
