"""Network planning as pure functions of the config: subnets per AZ, NAT placement, the VPC's
interface endpoints."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, kw_only=True, slots=True)
class SubnetPlan:
    availability_zone: str
    private_cidr: str
    """Large: pods take VPC addresses (VPC CNI)."""
    public_cidr: str
    """Small: NAT gateways and load balancers only."""
    nat_index: int
    """Which NAT gateway this AZ's private subnet routes through."""


def plan_subnets(cidr: str, azs: Iterable[str], nat_gateways: str) -> list[SubnetPlan]:
    """Split the VPC into eighths: one per AZ for private subnets (up to six AZs), and the last
    eighth cut into small public subnets. With one NAT, every AZ routes through the first."""
    azs = list(azs)
    network = ipaddress.ip_network(cidr)
    eighths = list(network.subnets(prefixlen_diff=3))
    if len(azs) > len(eighths) - 2:
        raise ValueError(f"{len(azs)} AZs do not fit {cidr}: at most {len(eighths) - 2}")
    public_blocks = list(eighths[-1].subnets(prefixlen_diff=3))
    return [
        SubnetPlan(
            availability_zone=az,
            private_cidr=str(eighths[i]),
            public_cidr=str(public_blocks[i]),
            nat_index=i if nat_gateways == "per-az" else 0,
        )
        for i, az in enumerate(azs)
    ]


def interface_endpoint_services(region: str) -> list[str]:
    """Image pulls (ECR api + dkr), IRSA/Pod Identity token exchange (STS) and logs stay in the VPC."""
    return [f"com.amazonaws.{region}.{svc}" for svc in ("ecr.api", "ecr.dkr", "sts", "logs")]
