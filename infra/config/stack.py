"""The whole stack config: every section parsed, then the budget refusals, with every problem
reported at once; read from the running Pulumi stack or from a stack file (`Pulumi.<stack>.yaml`)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from infra.config import checks, sections
from infra.config.reader import ZONE_ID, Reader, one_of
from infra.config.types import (CallerIdentity, ClusterConfig, ConfigError, GpuPoolConfig, JobConfig, KarpenterConfig,
                                Problem, StackConfig, TeamConfig)

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this infra belongs to: its stack files are at the root."""
NAMESPACE = "tensile"
PLACEHOLDER_ACCOUNTS = ("111122223333", "123456789012", "444455556666", "777788889999", "000000000000")
"""Account ids from AWS's documentation and the stack files' examples: never a real account."""
SPOT_ROLE_COMMAND = "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com"


def parse(raw: Mapping[str, Any], *, stack: str, today: dt.date | None = None,
          caller: CallerIdentity | None = None, zone_names: Mapping[str, str] | None = None) -> StackConfig:
    """Turn fully qualified raw config (`{"tensile:network": {...}, "aws:region": "..."}`, values
    already decoded from JSON) into a StackConfig, or raise ConfigError listing every problem.
    `caller` (who runs `up`) enables the checks against the identity; the program always passes
    it, readers of stack files that never deploy may not. `zone_names` (AZ ID → this account's
    name for it) resolves the AZ IDs the stack file may list instead of names."""
    today = today or dt.date.today()
    r = Reader()
    top: dict[str, Any] = {}
    known_top = {"environment", "costCentre", "network", "cluster", "karpenter", "gpuPools", "storage",
                 "budget", "teams", "prices", "spotDiscounts", "platform", "jobs", "scaler"}
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

    network = sections.parse_network(r, top.get("network"), region, zone_names)
    azs = network.availability_zones if network else ()
    cluster = sections.parse_cluster(r, top.get("cluster"), environment, today)
    karpenter = sections.parse_karpenter(r, top.get("karpenter"))
    prices = sections.parse_prices(r, top.get("prices"), top.get("spotDiscounts"))
    pools = sections.parse_pools(r, top.get("gpuPools"), azs, prices, region, zone_names)
    checks.check_region_prices(r, region, pools, cluster, prices)
    storage = sections.parse_storage(r, top.get("storage"))
    budget = sections.parse_budget(r, top.get("budget"))
    teams = sections.parse_teams(r, top.get("teams"), pools)
    platform = sections.parse_platform(r, top.get("platform"))
    jobs = sections.parse_jobs(r, top.get("jobs"), teams, pools, platform)
    scaler = sections.parse_scaler_controller(r, top.get("scaler"), jobs)

    if caller is not None:
        check_identities(r, cluster=cluster, teams=teams, caller=caller)
    profile, role_arn = provider_credentials(r, raw)
    warnings = r.warnings + spot_role_warnings(pools, karpenter)
    if not r.problems:
        warnings += checks.check_costs(r, stack=stack, pools=pools, teams=teams, budget=budget,
                                cluster=cluster, network=network, prices=prices)
    if r.problems:
        raise ConfigError(r.problems)
    return StackConfig(
        stack=stack, environment=environment, region=region, cost_centre=cost_centre, network=network,
        cluster=cluster, karpenter=karpenter, gpu_pools=pools, storage=storage, budget=budget, teams=teams,
        prices=prices, platform=platform, jobs=jobs, scaler=scaler, warnings=tuple(warnings),
        aws_profile=profile, aws_role_arn=role_arn,
    )


def provider_credentials(r: Reader, raw: Mapping[str, Any]) -> tuple[str, str]:
    """The AWS provider's profile and assumed role (`aws:profile`, `aws:assumeRoles`), so that the
    kubeconfig's `aws eks get-token` signs as the identity that created the cluster, not as
    whatever the shell's default credentials are."""
    profile = raw.get("aws:profile")
    if profile is not None and not isinstance(profile, str):
        r.problem("aws:profile", f"must be a profile name, got {profile!r}")
        profile = ""
    roles = raw.get("aws:assumeRoles") or []
    arns = [role.get("roleArn") for role in roles if isinstance(role, Mapping)] if isinstance(roles, list) else []
    if not isinstance(roles, list) or not all(isinstance(a, str) and a for a in arns) or len(arns) != len(roles):
        r.problem("aws:assumeRoles", "must be a list of {roleArn: ...} entries")
        return profile or "", ""
    if len(arns) > 1:
        r.warning("aws:assumeRoles", f"a chain of {len(arns)} roles: the kubeconfig's aws eks get-token assumes only "
                                     f"the last ({arns[-1]}) from the profile's credentials")
    return profile or "", arns[-1] if arns else ""


def _role_of(arn: str) -> tuple[str, str] | None:
    """(account, role name) of a role ARN or of an assumed-role session ARN (STS drops the path)."""
    match = re.fullmatch(r"arn:aws[a-z-]*:(?:iam::(\d{12}):role/(?:.*/)?|sts::(\d{12}):assumed-role/)([^/]+)(?:/.*)?", arn)
    return (match.group(1) or match.group(2), match.group(3)) if match else None


def check_identities(r: Reader, *, cluster: ClusterConfig | None, teams: tuple[TeamConfig, ...],
                     caller: CallerIdentity) -> None:
    """What a real account refuses at `up` and the mocks never would: an admin entry for the
    creator, and example account ids left in role ARNs."""
    caller_role = _role_of(caller.arn)
    for i, arn in enumerate(cluster.admin_role_arns if cluster else ()):
        path = f"cluster.adminRoleArns[{i}]"
        if arn == caller.arn or (caller_role is not None and _role_of(arn) == caller_role):
            r.problem(path, f"is the identity running pulumi ({caller.arn}): EKS already gives the cluster's creator an "
                            "admin access entry, and a second one fails with ResourceInUseException. Remove it "
                            f"(pulumi config rm --path 'tensile:{path}'), or run `up` as another role; turning the "
                            "creator's bootstrap access off instead would replace the cluster")
        elif _placeholder(arn, caller):
            r.problem(path, f"{arn} names the example account {_role_of(arn)[0]}: set your admin role with "
                            f"pulumi config set --path 'tensile:{path}' arn:aws:iam::{caller.account_id}:role/YOUR-ADMIN-ROLE")
    for i, team in enumerate(teams):
        if team.member_role_arn and _placeholder(team.member_role_arn, caller):
            path = f"teams[{i}].memberRoleArn"
            r.problem(path, f"{team.member_role_arn} names the example account {_role_of(team.member_role_arn)[0]}: "
                            f"set the role team {team.name} assumes with pulumi config set --path 'tensile:{path}' "
                            f"arn:aws:iam::{caller.account_id}:role/YOUR-{team.name.upper()}-ROLE")


def _placeholder(arn: str, caller: CallerIdentity) -> bool:
    # The offline mocks run as the documentation account, so there an example id is the account.
    role = _role_of(arn)
    return role is not None and role[0] in PLACEHOLDER_ACCOUNTS and role[0] != caller.account_id


def spot_role_warnings(pools: tuple[GpuPoolConfig, ...], karpenter: KarpenterConfig | None) -> list[str]:
    """Without the spot service-linked role EC2 refuses every spot launch and Karpenter quietly
    runs everything on-demand; say so at every preview of a stack with spot pools."""
    spot = [p.name for p in pools if p.spot]
    if not spot or karpenter is None or karpenter.create_spot_service_linked_role:
        return []
    return [f"gpuPools {', '.join(spot)} allow spot, which needs the account's spot service-linked role "
            f"(spot.amazonaws.com); this stack does not create it. Once per account: `{SPOT_ROLE_COMMAND}` "
            "(an error saying it has been taken means it exists), or set tensile:karpenter.createSpotServiceLinkedRole "
            "true to create it with the stack. Without it every spot pool runs on-demand."]


def parse_job_entry(entry: Mapping[str, Any], cfg: StackConfig) -> JobConfig:
    """One `tensile:jobs` entry checked against a parsed stack exactly as the stack's own jobs are
    (`tensile job render`); ConfigError's paths are relative to the entry."""
    r = Reader()
    jobs = sections.parse_jobs(r, [dict(entry)], cfg.teams, cfg.gpu_pools, cfg.platform)
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
    import pulumi_aws as aws
    from pulumi.runtime import config as runtime_config

    raw = {key: decode_value(value) for key, value in runtime_config.get_config_env().items()}
    # Values set through the runtime (mocks, automation) are kept in CONFIG, not the environment.
    raw.update({key: decode_value(value) for key, value in runtime_config.CONFIG.get().items()})
    # A plain invoke: it resolves at preview as at up (from the credentials, no resource needed),
    # and the mocks answer it offline.
    identity = aws.get_caller_identity()
    zone_ids = zone_ids_in(raw)
    zone_names = None
    if zone_ids:
        # Names, not IDs, go into the subnets and NodePools: a stack written with names keeps
        # exactly the inputs it had, and one written with IDs gets this account's names for them.
        zones = aws.get_availability_zones(filters=[{"name": "zone-id", "values": zone_ids}])
        zone_names = dict(zip(zones.zone_ids, zones.names, strict=True))
    return parse(raw, stack=pulumi.get_stack(), caller=CallerIdentity(account_id=identity.account_id, arn=identity.arn),
                 zone_names=zone_names)


def zone_ids_in(raw: Mapping[str, Any]) -> list[str]:
    """The AZ IDs the config lists (network.availabilityZones, gpuPools[].zones), in order, once."""
    network = raw.get(f"{NAMESPACE}:network")
    lists = [network.get("availabilityZones")] if isinstance(network, Mapping) else []
    pools = raw.get(f"{NAMESPACE}:gpuPools")
    lists += [p.get("zones") for p in pools if isinstance(p, Mapping)] if isinstance(pools, list) else []
    found: list[str] = []
    for zones in lists:
        for zone in zones if isinstance(zones, list) else []:
            if isinstance(zone, str) and ZONE_ID.match(zone) and zone not in found:
                found.append(zone)
    return found


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
