"""Typed stack configuration: read once from `Pulumi.<stack>.yaml`, validated before any resource
is declared. Every problem is reported at once, each with its property path and the fix.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Mapping

from infra import cost

NAMESPACE = "tensile"

# EKS standard support end per Kubernetes minor (AWS EKS version calendar, checked 2026-11-28;
# 1.36's date is its EKS release + 14 months). Refresh with each EKS release.
EKS_STANDARD_SUPPORT_ENDS: dict[str, dt.date] = {
    "1.34": dt.date(2026, 12, 2),
    "1.35": dt.date(2027, 3, 27),
    "1.36": dt.date(2027, 8, 2),
}
MIN_SUPPORT_LEFT = dt.timedelta(days=60)
"""A version leaving standard support sooner than this is refused: an upgrade is due first."""

CLUSTER_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
REQUIRED_ADDONS = ("vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent", "eks-node-monitoring-agent")


# ---------------------------------------------------------------------------------------------
# Typed config
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkConfig:
    cidr: str
    availability_zones: tuple[str, ...]
    nat_gateways: str
    """"per-az" (survives an AZ outage) or "single" (cheaper, dev)."""
    interface_endpoints: bool
    """ECR api/dkr, STS and CloudWatch Logs endpoints: image pulls and auth stay off the NAT."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SystemNodesConfig:
    instance_type: str
    min_size: int
    desired_size: int
    max_size: int
    disk_gib: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterConfig:
    kubernetes_version: str
    endpoint_public_access_cidrs: tuple[str, ...]
    """Empty: private endpoint only; `pulumi up` must then run inside the VPC."""
    log_types: tuple[str, ...]
    addon_versions: Mapping[str, str]
    system_nodes: SystemNodesConfig
    admin_role_arns: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class KarpenterConfig:
    chart_version: str
    ami_alias: str
    """EC2NodeClass `amiSelectorTerms[].alias`, pinned (`al2023@v<date>`), never `@latest`."""
    imds_hop_limit: int
    """2 lets the trainer's pod read spot notices from IMDS; 1 keeps pods off IMDS."""
    termination_grace_period: str
    expire_after: str


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuPoolConfig:
    name: str
    gpu_model: str
    instance_types: tuple[str, ...]
    max_gpus: int
    spot: bool
    capacity_reservation_ids: tuple[str, ...]
    zones: tuple[str, ...]
    root_volume_gib: int
    efa: bool

    @property
    def reserved(self) -> bool:
        return bool(self.capacity_reservation_ids)


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageConfig:
    noncurrent_version_days: int
    abort_multipart_days: int


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetConfig:
    monthly_usd: float
    actual_thresholds: tuple[float, ...]
    forecast_thresholds: tuple[float, ...]
    emails: tuple[str, ...]
    on_worst_case_over_budget: str
    """"warn" or "refuse": what validation does when capacity could outspend the budget."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamConfig:
    name: str
    gpu_quota: int
    borrowing_limit: int
    monthly_budget_usd: float
    gpu_models: tuple[str, ...]
    member_role_arn: str = ""
    """IAM role the team's people assume; an EKS access entry binds it to the team's namespace only."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlatformConfig:
    """In-cluster add-ons and admission settings (Kubernetes issue)."""

    prometheus_operator: bool
    """A Prometheus operator (its CRDs) is installed: DCGM's ServiceMonitor is turned on."""
    monitoring_namespace: str
    """Namespace of the Prometheus that scrapes trainers; team network policies admit it."""
    pods_ready_timeout: str
    """Kueue waitForPodsReady timeout: an admitted job whose pods are not all ready by then is
    evicted and requeued (capacity did not come), instead of holding quota while pending."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobConfig:
    """A training run the stack deploys (optional; `tensile job render` makes the same objects)."""

    name: str
    team: str
    training_config: str
    """Path of the trainer's YAML config, relative to the repository root."""
    image: str
    gpu_model: str | None
    gpus_per_worker: int
    emergency_checkpoint_seconds: int
    """Measured notice-to-durable time of an emergency checkpoint; the grace period covers it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StackConfig:
    stack: str
    environment: str
    region: str
    cost_centre: str
    network: NetworkConfig
    cluster: ClusterConfig
    karpenter: KarpenterConfig
    gpu_pools: tuple[GpuPoolConfig, ...]
    storage: StorageConfig
    budget: BudgetConfig
    teams: tuple[TeamConfig, ...]
    prices: cost.PriceBook
    platform: PlatformConfig | None = None
    jobs: tuple[JobConfig, ...] = ()
    warnings: tuple[str, ...] = ()
    """Problems that `budget.onWorstCaseOverBudget: warn` lets through; logged at preview."""

    @property
    def cluster_name(self) -> str:
        return f"tensile-{self.stack}"

    @property
    def is_production(self) -> bool:
        return self.environment == "prod"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ConfigError(ValueError):
    """The stack config is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the stack config:\n{lines}")


# ---------------------------------------------------------------------------------------------
# Parsing (section parsers and cross-checks live in infra/config_sections.py)
# ---------------------------------------------------------------------------------------------


def parse(raw: Mapping[str, Any], *, stack: str, today: dt.date | None = None) -> StackConfig:
    """Turn fully qualified raw config (`{"tensile:network": {...}, "aws:region": "..."}`, values
    already decoded from JSON) into a StackConfig, or raise ConfigError listing every problem."""
    today = today or dt.date.today()
    from infra import config_sections as sections  # the parsers need the types above

    r = sections.Reader()
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

    environment = r.value(top, "environment", "", str, check=sections.one_of("dev", "staging", "prod"))
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
        warnings = sections.check_costs(r, stack=stack, pools=pools, teams=teams, budget=budget,
                                cluster=cluster, network=network, prices=prices)
    if r.problems:
        raise ConfigError(r.problems)
    return StackConfig(
        stack=stack, environment=environment, region=region, cost_centre=cost_centre, network=network,
        cluster=cluster, karpenter=karpenter, gpu_pools=pools, storage=storage, budget=budget, teams=teams,
        prices=prices, platform=platform, jobs=jobs, warnings=tuple(warnings),
    )


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
