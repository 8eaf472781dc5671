"""Section parsers for the stack config: each reads one section's raw values, records every
problem with its property path, and returns typed config (infra/config/types.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any, Mapping

from infra import cost
from tensile.config import ConfigError as ScalerConfigError
from tensile.scaler.config import load_scaler_config

from infra.config.cron import schedule_problem
from infra.config.reader import (DNS_LABEL, DURATION, EMAIL, ISO_DATE, RESERVATION_ID, ZONE_ID, Reader, at_least,
                                 cidr_problem, image_problem, one_of, positive, role_arn_problem)
from infra.config.types import (BudgetConfig, ClusterConfig, GpuPoolConfig, JobConfig, KarpenterConfig,
                                NetworkConfig, PlatformConfig, ScalerControllerConfig, StorageConfig,
                                SystemNodesConfig, TeamConfig)

# EKS standard support end per Kubernetes minor (AWS EKS version calendar, checked 2026-11-28;
# 1.36's date is its EKS release + 14 months). Refresh with each EKS release.
EKS_STANDARD_SUPPORT_ENDS: dict[str, dt.date] = {
    "1.34": dt.date(2026, 12, 2),
    "1.35": dt.date(2027, 3, 27),
    "1.36": dt.date(2027, 8, 2),
}
MIN_SUPPORT_LEFT = dt.timedelta(days=60)
"""A version leaving standard support sooner than this is warned about at every preview: an upgrade
is due. Never refused: an emergency fix must still ship on the version the cluster runs."""
EKS_SUPPORT_TYPES = ("EXTENDED", "STANDARD")
EKS_EXTENDED_USD_PER_HOUR = 0.60
"""Control plane in extended support, against 0.10 in standard (aws.amazon.com/eks/pricing, 2026-11)."""


def support_window_warning(version: str, ends: dt.date, today: dt.date, support_type: str) -> str:
    """What to do about a version near or past the end of its standard support, with the date."""
    later = sorted((v for v in EKS_STANDARD_SUPPORT_ENDS if _minor(v) > _minor(version)), key=_minor)
    target = later[0] if later else "the next EKS version"
    upgrade = (f"upgrade to {target}: refresh cluster.addonVersions (aws eks describe-addon-versions "
               f"--kubernetes-version {target}), then pulumi config set --path 'tensile:cluster.kubernetesVersion' "
               f"{target} and pulumi up (docs/upgrades.md)")
    if today < ends:
        return f"{version} leaves EKS standard support on {ends.isoformat()} ({(ends - today).days} days): {upgrade}"
    after = (f"the control plane is in extended support, ${EKS_EXTENDED_USD_PER_HOUR:.2f}/h instead of $0.10/h"
             if support_type == "EXTENDED" else "EKS upgrades the control plane itself (supportType STANDARD), "
             "leaving the stack's version, add-ons and nodes behind")
    return f"{version} left EKS standard support on {ends.isoformat()}: {after}; {upgrade}"


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))

CLUSTER_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
REQUIRED_ADDONS = ("vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent", "eks-node-monitoring-agent")


def resolve_zones(r: Reader, zones: tuple[str, ...], path: str, region: str,
                  zone_names: Mapping[str, str] | None) -> tuple[str, ...]:
    """Zone names, with each AZ ID (`use1-az1`) replaced by this account's name for it. Without
    `zone_names` (readers of a stack file that never deploy) an ID stays as written."""
    resolved = []
    for i, zone in enumerate(zones):
        if ZONE_ID.match(zone) and zone_names is not None:
            if zone not in zone_names:
                r.problem(f"{path}[{i}]", f"{zone} is no AZ ID of this account's zones in {region}: list the "
                                          f"account's with aws ec2 describe-availability-zones --region {region}")
            resolved.append(zone_names.get(zone, zone))
        else:
            resolved.append(zone)
    return tuple(resolved)


def parse_network(r: Reader, raw: Any, region: str, zone_names: Mapping[str, str] | None = None) -> NetworkConfig | None:
    path = "network"
    obj = r.section(raw, path, {"cidr", "availabilityZones", "natGateways", "interfaceEndpoints"})
    cidr = r.value(obj, "cidr", path, str, check=cidr_problem)
    if cidr and not cidr_problem(cidr):
        prefix = ipaddress.ip_network(cidr).prefixlen
        if not 16 <= prefix <= 20:
            r.problem(f"{path}.cidr", f"prefix must be /16 to /20 so every AZ gets room for pods (got /{prefix})")
    azs = resolve_zones(r, r.strings(obj, "availabilityZones", path), f"{path}.availabilityZones", region, zone_names)
    if azs and len(azs) < 2:
        r.problem(f"{path}.availabilityZones", f"must list at least 2 AZs for a multi-AZ cluster (got {len(azs)})")
    if len(azs) > 6:
        r.problem(f"{path}.availabilityZones", f"at most 6 AZs fit the subnet plan (got {len(azs)})")
    if len(set(azs)) != len(azs):
        r.problem(f"{path}.availabilityZones", "must not repeat an AZ")
    for i, az in enumerate(azs):
        if region and not ZONE_ID.match(az) and not (az.startswith(region) and len(az) == len(region) + 1):
            r.problem(f"{path}.availabilityZones[{i}]", f"{az!r} is not an AZ of region {region}")
    nat = r.value(obj, "natGateways", path, str, "per-az", check=one_of("per-az", "single"))
    endpoints = r.value(obj, "interfaceEndpoints", path, bool, False)
    if cidr is None or not azs:
        return None
    return NetworkConfig(cidr=cidr, availability_zones=azs, nat_gateways=nat, interface_endpoints=endpoints)


def parse_cluster(r: Reader, raw: Any, environment: str | None, today: dt.date) -> ClusterConfig | None:
    path = "cluster"
    obj = r.section(raw, path, {"kubernetesVersion", "endpointPublicAccessCidrs", "logTypes", "addonVersions",
                                "systemNodes", "adminRoleArns", "supportType"})
    support_type = r.value(obj, "supportType", path, str, "EXTENDED", check=one_of(*EKS_SUPPORT_TYPES))
    version = r.value(obj, "kubernetesVersion", path, str)
    if version is not None:
        ends = EKS_STANDARD_SUPPORT_ENDS.get(version)
        supported = ", ".join(v for v, end in EKS_STANDARD_SUPPORT_ENDS.items() if end - today >= MIN_SUPPORT_LEFT)
        if ends is None:
            r.problem(f"{path}.kubernetesVersion", f"{version!r} is not a known EKS version: use one of {supported}")
        elif ends - today < MIN_SUPPORT_LEFT:
            r.warning(f"{path}.kubernetesVersion", support_window_warning(version, ends, today, support_type or "EXTENDED"))
    cidrs = r.strings(obj, "endpointPublicAccessCidrs", path, (), check=cidr_problem)
    for i, c in enumerate(cidrs):
        if environment == "prod" and c in ("0.0.0.0/0", "::/0"):
            r.problem(f"{path}.endpointPublicAccessCidrs[{i}]",
                      "must not open the API to the internet in prod: list your office/VPN CIDRs or none")
    logs = r.strings(obj, "logTypes", path, ("api", "audit", "authenticator"),
                     check=lambda v: None if v in CLUSTER_LOG_TYPES else f"must be one of {', '.join(CLUSTER_LOG_TYPES)}")
    addons = r.value(obj, "addonVersions", path, dict) or {}
    for name in REQUIRED_ADDONS:
        if not isinstance(addons.get(name), str) or not addons.get(name):
            r.problem(f"{path}.addonVersions.{name}",
                      "is required: pin it (aws eks describe-addon-versions --addon-name NAME)")
    for name in sorted(set(addons) - set(REQUIRED_ADDONS)):
        r.problem(f"{path}.addonVersions.{name}", f"unknown add-on: expected {', '.join(REQUIRED_ADDONS)}")
    admins = r.strings(obj, "adminRoleArns", path, (),
                       check=lambda v: None if v.startswith("arn:aws") and ":role/" in v else "must be an IAM role ARN")
    system = parse_system_nodes(r, obj.get("systemNodes"), f"{path}.systemNodes")
    if version is None or system is None:
        return None
    return ClusterConfig(kubernetes_version=version, endpoint_public_access_cidrs=cidrs, log_types=logs,
                         addon_versions=dict(addons), system_nodes=system, admin_role_arns=admins,
                         support_type=support_type or "EXTENDED")


def parse_system_nodes(r: Reader, raw: Any, path: str) -> SystemNodesConfig | None:
    obj = r.section(raw, path, {"instanceType", "minSize", "desiredSize", "maxSize", "diskGiB"})
    instance_type = r.value(obj, "instanceType", path, str)
    # Two at least: Karpenter and CoreDNS run two replicas each, and they must outlive a node.
    min_size = r.value(obj, "minSize", path, int, check=at_least(2))
    desired = r.value(obj, "desiredSize", path, int, check=at_least(1))
    max_size = r.value(obj, "maxSize", path, int, check=at_least(1))
    disk = r.value(obj, "diskGiB", path, int, 50, check=at_least(20))
    if None in (instance_type, min_size, desired, max_size):
        return None
    if not min_size <= desired <= max_size:
        r.problem(path, f"must satisfy minSize <= desiredSize <= maxSize (got {min_size} <= {desired} <= {max_size})")
    return SystemNodesConfig(instance_type=instance_type, min_size=min_size, desired_size=desired,
                             max_size=max_size, disk_gib=disk)


def parse_karpenter(r: Reader, raw: Any) -> KarpenterConfig | None:
    path = "karpenter"
    obj = r.section(raw, path, {"chartVersion", "amiAlias", "imdsHopLimit", "terminationGracePeriod", "expireAfter",
                                "createSpotServiceLinkedRole"})
    chart = r.value(obj, "chartVersion", path, str,
                    check=lambda v: None if re.fullmatch(r"\d+\.\d+\.\d+", v) else f"must be an exact version such as 1.14.1 (got {v!r})")
    alias = r.value(obj, "amiAlias", path, str,
                    check=lambda v: None if re.fullmatch(r"(al2023|bottlerocket)@v[0-9.]+", v)
                    else f"must pin an AMI release, e.g. al2023@v20261110, not {v!r}")
    hop = r.value(obj, "imdsHopLimit", path, int, 2,
                  check=lambda v: None if 1 <= v <= 3 else f"must be 1..3 (2 lets pods read IMDS through the node; got {v})")
    duration = re.compile(r"^\d+(s|m|h)$")
    tgp = r.value(obj, "terminationGracePeriod", path, str, "2h",
                  check=lambda v: None if duration.match(v) else f"must be a duration such as 2h (got {v!r})")
    expire = r.value(obj, "expireAfter", path, str, "720h",
                     check=lambda v: None if duration.match(v) else f"must be a duration such as 720h (got {v!r})")
    spot_role = r.value(obj, "createSpotServiceLinkedRole", path, bool, False)
    if chart is None or alias is None:
        return None
    return KarpenterConfig(chart_version=chart, ami_alias=alias, imds_hop_limit=hop,
                           termination_grace_period=tgp, expire_after=expire,
                           create_spot_service_linked_role=spot_role)


def parse_prices(r: Reader, raw_prices: Any, raw_spot: Any) -> cost.PriceBook:
    overrides: dict[str, cost.Price] = {}
    if raw_prices is not None and not isinstance(raw_prices, Mapping):
        r.problem("prices", "must be a mapping of instance type to {usdPerHour, asOf, source}")
        raw_prices = {}
    for instance_type, entry in (raw_prices or {}).items():
        path = f"prices.{instance_type}"
        obj = r.section(entry, path, {"usdPerHour", "asOf", "source"})
        usd = r.value(obj, "usdPerHour", path, float, check=positive)
        as_of = r.value(obj, "asOf", path, str,
                        check=lambda v: None if ISO_DATE.match(v) else f"must be an ISO date such as 2026-11-01 (got {v!r})")
        source = r.value(obj, "source", path, str, check=lambda v: None if v.strip() else "must say where the price comes from")
        if usd is not None and as_of and source:
            overrides[instance_type] = cost.Price(usd_per_hour=usd, as_of=as_of, source=source)
    discounts: dict[str, float] = {}
    if raw_spot is not None and not isinstance(raw_spot, Mapping):
        r.problem("spotDiscounts", "must be a mapping of GPU model to a fraction such as 0.6")
        raw_spot = {}
    for model, value in (raw_spot or {}).items():
        v = r.value({model: value}, model, "spotDiscounts", float,
                    check=lambda x: None if 0 <= x < 1 else f"must be a fraction in [0, 1) (got {x})")
        if v is not None:
            discounts[model] = v
    return cost.price_book(overrides, discounts)


def parse_pools(r: Reader, raw: Any, azs: tuple[str, ...], prices: cost.PriceBook, region: str = "",
                zone_names: Mapping[str, str] | None = None) -> tuple[GpuPoolConfig, ...]:
    if not isinstance(raw, list) or not raw:
        r.problem("gpuPools", "must list at least one GPU pool")
        return ()
    models = sorted({t.gpu_model for t in cost.CATALOGUE.values()})
    pools, names = [], set()
    for i, entry in enumerate(raw):
        path = f"gpuPools[{i}]"
        obj = r.section(entry, path, {"name", "gpuModel", "instanceTypes", "maxGpus", "spot",
                                      "capacityReservationIds", "zones", "rootVolumeGiB", "efa",
                                      "placementGroup"})
        name = r.value(obj, "name", path, str,
                       check=lambda v: None if DNS_LABEL.match(v) else f"must be a DNS label (lower case, digits, '-'), got {v!r}")
        if name in names:
            r.problem(f"{path}.name", f"duplicate pool name {name!r}")
        names.add(name)
        model = r.value(obj, "gpuModel", path, str,
                        check=lambda v: None if v in models else f"unknown GPU model {v!r}: expected one of {', '.join(models)}")
        types = r.strings(obj, "instanceTypes", path, None)
        if model in models:
            offered = cost.instance_types_for(model)
            if not types:
                types = tuple(offered)
            for j, t in enumerate(types):
                shape = cost.CATALOGUE.get(t)
                if shape is None:
                    r.problem(f"{path}.instanceTypes[{j}]", f"{t} is not in the GPU catalogue: use one of {', '.join(offered)}")
                elif shape.gpu_model != model:
                    r.problem(f"{path}.instanceTypes[{j}]",
                              f"{t} carries {shape.gpu_model}, not {model}: one GPU model per pool (mixed models make stragglers)")
                elif t not in prices.on_demand:
                    r.problem(f"{path}.instanceTypes[{j}]", f"no on-demand price for {t}: add it under prices")
        max_gpus = r.value(obj, "maxGpus", path, int, check=positive)
        spot = r.value(obj, "spot", path, bool, True)
        reservations = r.strings(obj, "capacityReservationIds", path, (),
                                 check=lambda v: None if RESERVATION_ID.match(v) else f"must be a capacity reservation id cr-..., got {v!r}")
        zones = r.strings(obj, "zones", path, None)
        zones = resolve_zones(r, zones, f"{path}.zones", region, zone_names) if zones else azs
        for j, z in enumerate(zones):
            if azs and z not in azs:
                r.problem(f"{path}.zones[{j}]", f"{z} is not one of network.availabilityZones ({', '.join(azs)})")
        disk = r.value(obj, "rootVolumeGiB", path, int, 200,
                       check=lambda v: None if v >= 100 else f"must be >= 100 to hold training images (got {v})")
        efa = r.value(obj, "efa", path, bool, False)
        if efa and types:
            for j, t in enumerate(types):
                shape = cost.CATALOGUE.get(t)
                if shape is not None and not shape.efa:
                    r.problem(f"{path}.instanceTypes[{j}]", f"{t} has no EFA: drop it or set efa: false")
        if efa and max_gpus and zones and types and all(t in cost.CATALOGUE for t in types):
            node_gpus = max(cost.CATALOGUE[t].gpus for t in types)
            if max_gpus < node_gpus * len(zones):
                r.problem(f"{path}.maxGpus",
                          f"an EFA pool gets one NodePool per zone; {max_gpus} GPUs cannot give each of "
                          f"{len(zones)} zone(s) a {node_gpus}-GPU node: raise maxGpus or list fewer zones")
        placement_group = r.value(obj, "placementGroup", path, str, None)
        check_reservation_placement(r, path, efa=efa, reservations=reservations, zones=zones,
                                    placement_group=placement_group)
        if None in (name, model, max_gpus):
            continue
        pools.append(GpuPoolConfig(name=name, gpu_model=model, instance_types=types, max_gpus=max_gpus, spot=spot,
                                   capacity_reservation_ids=reservations, zones=zones, root_volume_gib=disk, efa=efa,
                                   placement_group=placement_group))
    return tuple(pools)


def check_reservation_placement(r: Reader, path: str, *, efa: bool, reservations: tuple[str, ...],
                                zones: tuple[str, ...], placement_group: str | None) -> None:
    """A targeted reservation in a cluster placement group works only in the group it was made in.

    Karpenter 1.14.1 puts the EC2NodeClass's placement group into every launch template it builds
    for the class, reserved ones included (pkg/providers/amifamily/resolver.go passes it to each
    template after pkg/providers/launchtemplate/launchtemplate.go resolves the selector,
    pkg/providers/launchtemplate/types.go `buildPlacement` sets Placement.GroupId), next
    to the reservation target with preference capacity-reservations-only (same file, LaunchModeTargeted).
    EC2 fills such a launch only from a reservation created in that group, and an existing
    reservation cannot be moved into one: a group this stack creates never holds the reservation,
    so every reserved launch would fail and the pool fall back to spot and on-demand unnoticed.
    Hence a reserved EFA pool names the group its reservation was created in (`placementGroup`),
    and the stack selects that group instead of creating one (docs/design/infra.md)."""
    if placement_group is not None and not efa:
        r.problem(f"{path}.placementGroup", "only an EFA pool launches into a cluster placement group: set efa: true "
                                            "or drop placementGroup")
    if placement_group is not None and len(zones) != 1:
        r.problem(f"{path}.placementGroup", f"a cluster placement group lives in one zone; list exactly that zone in "
                                            f"zones (got {', '.join(zones) or 'none'})")
    if efa and reservations and placement_group is None:
        r.problem(f"{path}.capacityReservationIds",
                  "a targeted reservation with EFA needs the cluster placement group it was created in: Karpenter "
                  "1.14.1 launches reserved instances into the node class's placement group "
                  "(pkg/providers/launchtemplate/types.go), and EC2 fills that only from a reservation made in that "
                  "group (an existing one cannot be moved in). Create the reservation with `aws ec2 "
                  "create-capacity-reservation --placement-group-arn arn:aws:ec2:REGION:ACCOUNT:placement-group/NAME "
                  "...` and set placementGroup: NAME, or drop efa or the reservation")


def parse_storage(r: Reader, raw: Any) -> StorageConfig | None:
    path = "storage"
    obj = r.section(raw, path, {"noncurrentVersionDays", "abortMultipartDays"}, required=False)
    keep = r.value(obj, "noncurrentVersionDays", path, int, 30, check=at_least(1))
    abort = r.value(obj, "abortMultipartDays", path, int, 7, check=at_least(1))
    return StorageConfig(noncurrent_version_days=keep, abort_multipart_days=abort)


def parse_budget(r: Reader, raw: Any) -> BudgetConfig | None:
    path = "budget"
    obj = r.section(raw, path, {"monthlyUsd", "actualThresholds", "forecastThresholds", "emails", "onWorstCaseOverBudget"})
    monthly = r.value(obj, "monthlyUsd", path, float, check=positive)

    def thresholds(key: str, default: list[float]) -> tuple[float, ...]:
        values = r.value(obj, key, path, list, default) or []
        out = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 200:
                r.problem(f"{path}.{key}[{i}]", f"must be a percentage in (0, 200] (got {v!r})")
            else:
                out.append(float(v))
        if out != sorted(set(out)):
            r.problem(f"{path}.{key}", f"must be increasing without repeats (got {values})")
        return tuple(out)

    actual = thresholds("actualThresholds", [50, 80, 100])
    forecast = thresholds("forecastThresholds", [100])
    emails = r.strings(obj, "emails", path, (), check=lambda v: None if EMAIL.match(v) else f"not an email address: {v!r}")
    mode = r.value(obj, "onWorstCaseOverBudget", path, str, "refuse", check=one_of("warn", "refuse"))
    if monthly is None:
        return None
    return BudgetConfig(monthly_usd=monthly, actual_thresholds=actual, forecast_thresholds=forecast, emails=emails,
                        on_worst_case_over_budget=mode)


def parse_teams(r: Reader, raw: Any, pools: tuple[GpuPoolConfig, ...]) -> tuple[TeamConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("teams", "must be a list of teams")
        return ()
    pool_models = {p.gpu_model for p in pools}
    teams, names, uids = [], set(), {}
    for i, entry in enumerate(raw):
        path = f"teams[{i}]"
        obj = r.section(entry, path, {"name", "gpuQuota", "borrowingLimit", "monthlyBudgetUsd", "gpuModels",
                                      "memberRoleArn", "efsUid"})
        name = r.value(obj, "name", path, str,
                       check=lambda v: None if DNS_LABEL.match(v) else f"must be a DNS label, got {v!r}")
        if name in names:
            r.problem(f"{path}.name", f"duplicate team {name!r}")
        names.add(name)
        quota = r.value(obj, "gpuQuota", path, int, check=positive)
        borrow = r.value(obj, "borrowingLimit", path, int, 0, check=at_least(0))
        budget = r.value(obj, "monthlyBudgetUsd", path, float, check=positive)
        models = r.strings(obj, "gpuModels", path,
                           check=lambda v: None if v in pool_models else f"no GPU pool offers {v!r} (pools offer {', '.join(sorted(pool_models))})")
        member_role = r.value(obj, "memberRoleArn", path, str, check=role_arn_problem)
        uid = r.value(obj, "efsUid", path, int, None, check=efs_uid_problem)
        if obj.get("efsUid") is None:
            # Stack files from before efsUid: the uid the team's access point was created with.
            uid = positional_efs_uid(i)
            r.warning(f"{path}.efsUid", f"not set, so team {name} keeps {uid}, the uid of its place in the list; "
                                        f"write efsUid: {uid} so that removing or reordering teams cannot change it")
        if uid is not None and uid in uids:
            r.problem(f"{path}.efsUid", f"{uid} is team {uids[uid]}'s too: two teams with one uid can write each "
                                        "other's files; give each team its own efsUid")
        elif uid is not None:
            uids[uid] = name
        if quota and models:
            ceiling = sum(p.max_gpus for p in pools if p.gpu_model in models)
            if quota + (borrow or 0) > ceiling:
                r.problem(f"{path}.gpuQuota",
                          f"quota {quota} + borrowing {borrow} exceeds the {ceiling} GPUs its pools allow: lower it or raise gpuPools maxGpus")
        if None in (name, quota, budget, member_role, uid) or not models:
            continue
        teams.append(TeamConfig(name=name, gpu_quota=quota, borrowing_limit=borrow or 0,
                                monthly_budget_usd=budget, gpu_models=models, member_role_arn=member_role,
                                efs_uid=uid))
    return tuple(teams)


EFS_UID_RANGE = (1000, 2_147_483_647)
"""Above system accounts; within what Kubernetes' runAsUser and NFS both take."""
POSITIONAL_EFS_UID_BASE = 50_000
"""Before efsUid, team i's access point had uid 50000 + i."""


def positional_efs_uid(index: int) -> int:
    return POSITIONAL_EFS_UID_BASE + index


def efs_uid_problem(value: int) -> str | None:
    low, high = EFS_UID_RANGE
    return None if low <= value <= high else f"must be a uid from {low} to {high}, got {value}"


def parse_platform(r: Reader, raw: Any) -> PlatformConfig:
    path = "platform"
    obj = r.section(raw, path, {"prometheusOperator", "monitoringNamespace", "podsReadyTimeout"}, required=False)
    operator = r.value(obj, "prometheusOperator", path, bool, False)
    monitoring = r.value(obj, "monitoringNamespace", path, str, "monitoring",
                         check=lambda v: None if DNS_LABEL.match(v) else f"must be a namespace name, got {v!r}")
    timeout = r.value(obj, "podsReadyTimeout", path, str, "15m",
                      check=lambda v: None if DURATION.match(v) else f"must be a duration such as 15m (got {v!r})")
    return PlatformConfig(prometheus_operator=bool(operator), monitoring_namespace=monitoring or "monitoring",
                          pods_ready_timeout=timeout or "15m")


def parse_jobs(r: Reader, raw: Any, teams: tuple[TeamConfig, ...], pools: tuple[GpuPoolConfig, ...],
               platform: PlatformConfig | None = None) -> tuple[JobConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem("jobs", "must be a list of training jobs")
        return ()
    by_team = {t.name: t for t in teams}
    jobs, names = [], set()
    for i, entry in enumerate(raw):
        path = f"jobs[{i}]"
        obj = r.section(entry, path, {"name", "team", "trainingConfig", "image", "gpuModel", "gpusPerWorker",
                                      "emergencyCheckpointSeconds", "enabled", "modelParameters", "scaler",
                                      "schedule"})
        name = r.value(obj, "name", path, str,
                       check=lambda v: None if DNS_LABEL.match(v) and len(v) <= 40 else f"must be a DNS label of at most 40 characters, got {v!r}")
        team_name = r.value(obj, "team", path, str,
                            check=lambda v: None if v in by_team else f"no team {v!r} (teams: {', '.join(sorted(by_team)) or 'none'})")
        if (team_name, name) in names:
            r.problem(f"{path}.name", f"duplicate job {name!r} in team {team_name!r}")
        names.add((team_name, name))
        training = r.value(obj, "trainingConfig", path, str)
        image = r.value(obj, "image", path, str, check=image_problem)
        team = by_team.get(team_name)
        model = r.value(obj, "gpuModel", path, str, None,
                        check=lambda v: None if team is None or v in team.gpu_models
                        else f"team {team_name} may use {', '.join(team.gpu_models)}, not {v!r}")
        gpus = r.value(obj, "gpusPerWorker", path, int, 1, check=positive)
        grace = r.value(obj, "emergencyCheckpointSeconds", path, int, 60,
                        check=lambda v: None if 1 <= v <= 90 else
                        f"must be 1..90: the save must fit inside the two-minute spot notice (got {v})")
        if team is not None and gpus:
            models = [model] if model else list(team.gpu_models)
            widest = max((cost.CATALOGUE[t].gpus for p in pools if p.gpu_model in models for t in p.instance_types),
                         default=0)
            if gpus > widest:
                r.problem(f"{path}.gpusPerWorker", f"no instance of {', '.join(models)} has {gpus} GPUs (largest: {widest})")
        # A YAML `no`/`off` is already a bool; "false" in quotes is not, and is refused rather than read as true.
        enabled = r.value(obj, "enabled", path, bool, True)
        parameters = r.value(obj, "modelParameters", path, int, None, check=positive)
        schedule = r.value(obj, "schedule", path, str, None, check=schedule_problem)
        scaler = obj.get("scaler")
        scaler_pool = None
        if scaler is not None:
            scaler_ok = _check_scaler(r, scaler, f"{path}.scaler", platform)
            scaler_pool = _scaler_pool(r, path, model, team, pools)
            if not scaler_ok:
                scaler = None
        if None in (name, team_name, training, image, gpus, grace, enabled) or team is None:
            continue
        jobs.append(JobConfig(name=name, team=team_name, training_config=training, image=image, gpu_model=model,
                              gpus_per_worker=gpus, emergency_checkpoint_seconds=grace, enabled=enabled,
                              model_parameters=parameters, scaler=dict(scaler) if scaler is not None else None,
                              scaler_pool=scaler_pool, schedule=schedule))
    return tuple(jobs)


def _check_scaler(r: Reader, raw: Any, path: str, platform: PlatformConfig | None) -> bool:
    """The trainer package's own parser checks the section (the controller reads it with the same),
    each problem reported at its stack property path; and a scale-up must give up on nodes that do
    not come before Kueue's waitForPodsReady would evict the whole job (docs/design/scaler.md)."""
    try:
        parsed = load_scaler_config(raw, path=path)
    except ScalerConfigError as e:
        for where, reason in e.problems:
            r.problem(where, reason)
        return False
    timeout = platform.pods_ready_timeout if platform else None
    if timeout and DURATION.match(timeout):
        seconds = int(timeout[:-1]) * {"s": 1, "m": 60, "h": 3600}[timeout[-1]]
        if parsed.grow_ready_deadline_s >= seconds:
            r.problem(f"{path}.grow_ready_deadline_s",
                      f"{parsed.grow_ready_deadline_s:g} s is not below platform.podsReadyTimeout ({timeout} = "
                      f"{seconds} s): a scale-up whose nodes never come would have Kueue evict the whole job "
                      f"first; set it below {seconds}")
    return True


def _scaler_pool(r: Reader, path: str, model: str | None, team: TeamConfig | None,
                 pools: tuple[GpuPoolConfig, ...]) -> str | None:
    """The one NodePool a scaled job runs in: the scaler prices and counts offers per pool."""
    if team is None:
        return None
    models = (model,) if model else team.gpu_models
    fitting = [p for p in pools if p.gpu_model in models]
    if len(fitting) != 1:
        r.problem(f"{path}.gpuModel", f"a scaled job runs in one GPU pool (the scaler reads that pool's prices and "
                                      f"offers), but {', '.join(models)} is offered by {len(fitting)} "
                                      f"({', '.join(p.name for p in fitting) or 'none'}): set gpuModel to a model "
                                      "one pool offers")
        return None
    if fitting[0].efa:
        r.problem(f"{path}.scaler", f"pool {fitting[0].name} has EFA, whose NodePools are one per zone; the scaler "
                                    "reads one NodePool's market: not supported yet, drop the scaler")
        return None
    return fitting[0].name


def parse_scaler_controller(r: Reader, raw: Any, jobs: tuple[JobConfig, ...]) -> ScalerControllerConfig | None:
    """`scaler`: the controller's image and pace; required once an enabled job has a scaler."""
    path = "scaler"
    needed = [j.name for j in jobs if j.enabled and j.scaler is not None]
    if raw is None and not needed:
        return None
    obj = r.section(raw, path, {"image", "decideEverySeconds"}, required=False)
    image = r.value(obj, "image", path, str, None, check=image_problem)
    every = r.value(obj, "decideEverySeconds", path, int, 30,
                    check=lambda v: None if 5 <= v <= 600 else f"must be 5..600 seconds (got {v})")
    if needed and not obj.get("image"):
        r.problem(f"{path}.image", f"is required: job(s) {', '.join(needed)} have a scaler, and the controller that "
                                   "resizes them runs the training image; set the platform's pinned training image")
    return ScalerControllerConfig(image=image, decide_every_s=every or 30)
