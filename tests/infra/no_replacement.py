"""Which changes to a stack would replace a resource that holds data or identity: the inputs that
force replacement per resource type, a stack's record of them, and the comparison of a record
with a run under the mocks, less the changes listed with their migration.

A replacement in the cloud is a delete and a create: the bucket or file system is emptied, the
cluster and its nodes are rebuilt, a role or access point gets a new identity. The engine
replaces a resource when its URN goes away (unless an alias names the old URN) or when an input
that the provider marks ForceNew changes; both are visible offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MIGRATIONS = FIXTURES / "migrations.yaml"

# Inputs whose change replaces the resource, by Pulumi type token, as the mocks record them
# (camelCase, dotted into nested objects; `[]` marks a set, compared without order). Source: the
# ForceNew marks of terraform-provider-aws, which pulumi-aws 7.x bridges (its schema.json does
# not carry them: the bridge asks the provider at diff time). Read in the provider's source for
# eks/cluster.go, eks/node_group.go and efs/access_point.go (a recent snapshot, read 2026-12-01);
# the rest from the resources' documented schemas, not re-read here. Where an input's update is
# possible only one way (EKS encryption can be added, never removed or changed) it counts as
# forcing. An input listed here that is in fact updatable makes the check stricter, never blind.
FORCING_INPUTS: dict[str, tuple[str, ...]] = {
    "aws:ec2/vpc:Vpc": ("cidrBlock", "ipv4IpamPoolId", "ipv4NetmaskLength"),
    "aws:ec2/subnet:Subnet": ("vpcId", "cidrBlock", "availabilityZone", "availabilityZoneId", "ipv6Native",
                              "outpostArn"),
    # vpc_config.subnet_ids / security_group_ids carry no ForceNew in the current provider.
    "aws:eks/cluster:Cluster": ("name", "roleArn", "bootstrapSelfManagedAddons",
                                "accessConfig.bootstrapClusterCreatorAdminPermissions",
                                "kubernetesNetworkConfig.ipFamily", "kubernetesNetworkConfig.serviceIpv4Cidr",
                                "outpostConfig", "encryptionConfig"),
    # version, labels, taints, scaling and update config, launch template *version*: in place.
    "aws:eks/nodeGroup:NodeGroup": ("clusterName", "nodeGroupName", "nodeGroupNamePrefix", "nodeRoleArn",
                                    "subnetIds[]", "amiType", "capacityType", "diskSize", "instanceTypes",
                                    "launchTemplate.id", "launchTemplate.name", "remoteAccess"),
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:efs/fileSystem:FileSystem": ("creationToken", "encrypted", "kmsKeyId", "performanceMode",
                                      "availabilityZoneName"),
    # posix_user and root_directory are ForceNew as whole blocks: a new uid is a new access point.
    "aws:efs/accessPoint:AccessPoint": ("fileSystemId", "posixUser", "rootDirectory"),
    "aws:efs/mountTarget:MountTarget": ("fileSystemId", "subnetId", "ipAddress", "ipAddressType", "ipv6Address"),
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "multiRegion", "customKeyStoreId", "xksKeyId"),
    # assume_role_policy is updated in place (UpdateAssumeRolePolicy); the name (auto-named from
    # the URN when not given) and path are the role's identity.
    "aws:iam/role:Role": ("name", "namePrefix", "path"),
    # Identity in the cluster: IRSA's issuer, who may join or act, which pod gets which role.
    "aws:iam/openIdConnectProvider:OpenIdConnectProvider": ("url",),
    "aws:eks/accessEntry:AccessEntry": ("clusterName", "principalArn", "type"),
    "aws:eks/podIdentityAssociation:PodIdentityAssociation": ("clusterName", "namespace", "serviceAccount"),
}


# A running Job is a run in progress: replacing it stops the run (one agreed stop, resumed from
# its checkpoint by the new Job). The stacks as shipped deploy no job, so these are recorded from
# each stack with its example jobs enabled (`<stack>-examples`). Kueue refuses any change of the
# elastic annotation (`jobframework/validation.go`), so the program replaces the Job on it
# (infra/components/job.py: replace_on_changes, delete before replace).
ELASTIC_ANNOTATION_PATH = 'metadata.annotations["kueue.x-k8s.io/elastic-job"]'
JOB_FORCING_INPUTS: dict[str, tuple[str, ...]] = {
    "kubernetes:batch/v1:Job": ("metadata.name", "metadata.namespace", ELASTIC_ANNOTATION_PATH),
}
_PATH_PART = re.compile(r'([^.\[\]]+)|\["([^"]+)"\]')


def _at(inputs: dict, path: str):
    value = inputs
    for plain, quoted in _PATH_PART.findall(path.removesuffix("[]")):
        key = plain or quoted
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if path.endswith("[]") and isinstance(value, list):
        return sorted(value, key=json.dumps)
    return value


def record_of(resources: list[dict], forcing: dict[str, tuple[str, ...]] = FORCING_INPUTS) -> dict:
    """URN → type and forcing inputs, for every resource that holds data or identity."""
    return {r["urn"]: {"type": r["type"], "forcing": {p: _at(r["inputs"], p) for p in forcing[r["type"]]}}
            for r in resources if r["type"] in forcing}


def current_of(resources: list[dict], forcing: dict[str, tuple[str, ...]] = FORCING_INPUTS
               ) -> tuple[dict, dict[str, str]]:
    """The record of a run, and each alias URN → the URN that now carries it. Only a resource's
    own aliases count: children of a renamed component, which the engine matches through their
    parent's alias, are reported gone (a false alarm, never a missed replacement); give them
    their own alias."""
    aliases = {alias: r["urn"] for r in resources if r["type"] in forcing for alias in r.get("aliases", [])}
    return record_of(resources, forcing), aliases


@dataclass(frozen=True)
class Replacement:
    stack: str
    urn: str
    change: str
    """"gone" (URN removed, no alias) or "input:<path>" (a forcing input changed)."""
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.stack}: {self.urn}: {self.change}{(' (' + self.detail + ')') if self.detail else ''}"


def replacements(stack: str, recorded: dict, current: dict, aliases: dict[str, str]) -> list[Replacement]:
    found = []
    for urn, before in sorted(recorded.items()):
        now_urn = urn if urn in current else aliases.get(urn)
        if now_urn is None:
            found.append(Replacement(stack, urn, "gone", "no resource has this URN or an alias to it"))
            continue
        after = current[now_urn]
        for path, was in before["forcing"].items():
            now = after["forcing"].get(path)
            if now != was:
                found.append(Replacement(stack, urn, f"input:{path}",
                                         f"was {json.dumps(was)[:200]}, now {json.dumps(now)[:200]}"))
    return found


@dataclass(frozen=True)
class Migration:
    stack: str
    urn: str
    change: str
    what: str
    steps: tuple[str, ...]


def load_migrations(path: Path = MIGRATIONS) -> list[Migration]:
    """The listed replacements, each with what it is and the steps that keep its data."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("migrations") or []
    migrations = []
    for i, entry in enumerate(entries):
        missing = [k for k in ("stack", "urn", "change", "what", "steps") if not entry.get(k)]
        if missing:
            raise ValueError(f"{path.name}: migrations[{i}] lacks {', '.join(missing)}: every listed "
                             "replacement says what it is and the steps that carry its data or identity over")
        migrations.append(Migration(entry["stack"], entry["urn"], entry["change"], entry["what"],
                                    tuple(entry["steps"])))
    return migrations


def unlisted(found: list[Replacement], migrations: list[Migration]) -> list[Replacement]:
    listed = {(m.stack, m.urn, m.change) for m in migrations}
    return [r for r in found if (r.stack, r.urn, r.change) not in listed]


def stale(found: list[Replacement], migrations: list[Migration], stacks: tuple[str, ...]) -> list[Migration]:
    """Listed migrations that no change needs any more (the list must say only what is true)."""
    seen = {(r.stack, r.urn, r.change) for r in found}
    return [m for m in migrations if m.stack in stacks and (m.stack, m.urn, m.change) not in seen]


def record_path(stack: str) -> Path:
    return FIXTURES / f"no-replacement-{stack}.json"
