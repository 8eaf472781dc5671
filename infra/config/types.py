"""Typed stack configuration: the frozen dataclasses the program, planners and tools read, and
the error that lists every problem of a stack config with its property path (parsed in infra/config/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from infra import cost


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
    support_type: str = "EXTENDED"
    """EKS upgrade policy at the end of standard support: EXTENDED stays on the version (extended
    support, billed only while in it); STANDARD lets EKS upgrade the control plane itself."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KarpenterConfig:
    chart_version: str
    ami_alias: str
    """EC2NodeClass `amiSelectorTerms[].alias`, pinned (`al2023@v<date>`), never `@latest`."""
    imds_hop_limit: int
    """2 lets the trainer's pod read spot notices from IMDS; 1 keeps pods off IMDS."""
    termination_grace_period: str
    expire_after: str
    create_spot_service_linked_role: bool = False
    """Create the account's spot service-linked role (spot.amazonaws.com) with the stack. Off by
    default: creating it fails where it exists, and it exists in most accounts that used spot."""


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
    placement_group: str | None = None
    """An EFA pool's existing cluster placement group, by name (the one its capacity reservation
    was created in); None: the stack creates one per zone."""

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
    efs_uid: int = 50_000
    """POSIX uid and gid of the team's EFS access point, and owner of its directory: part of the
    access point's identity (a new uid replaces it, and the old directory, mode 0750, is then
    unwritable), so it is set per team, never derived from the team's place in the list."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PlatformConfig:
    """In-cluster add-ons and admission settings (Kubernetes issue)."""

    prometheus_operator: bool
    """Kueue's and DCGM's ServiceMonitors are rendered (for a Prometheus operator run beside the
    stack); the program then installs the ServiceMonitor CRD first, so a first `up` works."""
    monitoring_namespace: str
    """Namespace of the Prometheus that scrapes trainers; team network policies admit it."""
    pods_ready_timeout: str
    """Kueue waitForPodsReady timeout: an admitted job whose pods are not all ready by then is
    evicted and requeued (capacity did not come), instead of holding quota while pending."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScalerControllerConfig:
    """The in-cluster scaler controller (docs/design/scaler.md), deployed when an enabled job has
    a scaler section."""

    image: str | None
    """The training image the controller runs (`tensile scaler run`): the platform's, pinned, never
    a team's own (the controller acts in every team namespace with a scaled job)."""
    decide_every_s: int = 30


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
    enabled: bool = True
    """False: an example, validated like any entry but not deployed (the stack files ship theirs so)."""
    model_parameters: int | None = None
    """The model's parameter count where the renderer cannot compute it (a `model.factory` model);
    it sizes the emergency checkpoint (plan/checkpoint_window.py)."""
    scaler: Mapping[str, Any] | None = None
    """The scaler section (validated by tensile.scaler.config, passed to the controller as
    written); set, the job is an elastic Kueue Job the scaler grows and shrinks
    (docs/design/scaler.md). None: partial admission, as before."""
    scaler_pool: str | None = None
    """The one GPU pool (Karpenter NodePool) a scaled job runs in: the scaler reads its market."""
    schedule: str | None = None
    """A CronJob schedule (five fields, UTC): each run resumes the same run from its newest
    checkpoint; None: one Job, started by `pulumi up`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CallerIdentity:
    """Who runs `pulumi up` (`aws.get_caller_identity`; mocked offline)."""

    account_id: str
    arn: str
    """As STS reports it: `arn:aws:sts::A:assumed-role/NAME/SESSION` for a role, or an IAM user ARN."""


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
    scaler: ScalerControllerConfig | None = None
    warnings: tuple[str, ...] = ()
    """Problems that `budget.onWorstCaseOverBudget: warn` lets through; logged at preview."""
    aws_profile: str = ""
    """The AWS provider's profile (`aws:profile`): the kubeconfig's token is signed with it too."""
    aws_role_arn: str = ""
    """The role the AWS provider assumes (`aws:assumeRoles`, the last): the kubeconfig's too."""

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


def nat_gateway_count(azs: Iterable[str], nat_gateways: str) -> int:
    """How many NAT gateways a network config means: the subnet plan and the cost bound both count with it."""
    return len(list(azs)) if nat_gateways == "per-az" else 1

