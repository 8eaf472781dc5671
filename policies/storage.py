"""Storage rules: every S3 bucket the stack creates holds checkpoints, so each is versioned,
SSE-KMS encrypted, public-access blocked and TLS-only (its side resources joined to it by
property dependency); EFS is encrypted with mount targets in at least two AZs."""

from __future__ import annotations

import json
from typing import Any, Mapping

from policies.framework import MISSING, Report, Resource, Rule, Stack, contains_unknown, dig, is_unknown, label

BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
VERSIONING = ("aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketVersioningV2:BucketVersioningV2")
ENCRYPTION = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
PUBLIC_ACCESS_BLOCK = ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",)
BUCKET_POLICY = ("aws:s3/bucketPolicy:BucketPolicy",)
EFS = "aws:efs/fileSystem:FileSystem"
MOUNT_TARGET = "aws:efs/mountTarget:MountTarget"
SUBNET = "aws:ec2/subnet:Subnet"


def _side_resources(stack: Stack, bucket: Resource, types: tuple[str, ...]) -> list[Resource]:
    """Side resources whose `bucket` input was computed from this bucket (by URN, not by name or ID)."""
    return stack.referencing(bucket, "bucket", *types)


def _each_bucket(stack: Stack, report: Report, types: tuple[str, ...], what: str, judge) -> None:
    for bucket in stack.of_type(*BUCKET_TYPES):
        sides = _side_resources(stack, bucket, types)
        if not sides:
            report.violation(f"{label(bucket)}: no {types[0].rsplit(':', 1)[-1]} references it (by property "
                             f"dependency on its `bucket` input); checkpoint buckets must be {what}", bucket.urn)
            continue
        verdicts = [judge(side) for side in sides]
        if any(v is True for v in verdicts):
            continue
        if any(v is None for v in verdicts):
            report.unknown(f"{label(bucket)}: whether it is {what}")
        else:
            report.violation(f"{label(bucket)}: must be {what}: " + "; ".join(v for v in verdicts if v), bucket.urn)


def check_versioning(stack: Stack, config: Mapping, report: Report) -> None:
    def judge(side: Resource) -> Any:
        status = dig(side.props, "versioningConfiguration", "status")
        if is_unknown(status) or is_unknown(dig(side.props, "versioningConfiguration")):
            return None
        return True if status == "Enabled" else f"{label(side)} sets status {None if status is MISSING else status!r}"
    _each_bucket(stack, report, VERSIONING, "versioned", judge)


def check_kms(stack: Stack, config: Mapping, report: Report) -> None:
    def judge(side: Resource) -> Any:
        rules = dig(side.props, "rules")
        if contains_unknown([dig(r, "applyServerSideEncryptionByDefault", "sseAlgorithm") for r in rules]
                            if isinstance(rules, list) else rules):
            return None
        algorithms = [dig(r, "applyServerSideEncryptionByDefault", "sseAlgorithm")
                      for r in (rules if isinstance(rules, list) else [])]
        if algorithms and all(a in ("aws:kms", "aws:kms:dsse") for a in algorithms):
            return True
        return f"{label(side)} uses {algorithms or 'no algorithm'}, not aws:kms"
    _each_bucket(stack, report, ENCRYPTION, "SSE-KMS encrypted", judge)


def check_public_access_block(stack: Stack, config: Mapping, report: Report) -> None:
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")

    def judge(side: Resource) -> Any:
        values = {f: dig(side.props, f) for f in flags}
        if any(is_unknown(v) for v in values.values()):
            return None
        off = [f for f, v in values.items() if v is not True]
        return True if not off else f"{label(side)} leaves {', '.join(off)} off"
    _each_bucket(stack, report, PUBLIC_ACCESS_BLOCK, "public-access blocked (all four settings)", judge)


def denies_insecure_transport(document: Any) -> bool:
    statements = dig(document, "Statement")
    statements = [statements] if isinstance(statements, Mapping) else statements
    for s in statements if isinstance(statements, list) else []:
        actions = dig(s, "Action")
        actions = [actions] if isinstance(actions, str) else actions
        if (dig(s, "Effect") == "Deny" and isinstance(actions, list) and ("s3:*" in actions or "*" in actions)
                and str(dig(s, "Condition", "Bool", "aws:SecureTransport")).lower() == "false"
                and dig(s, "Principal") in ("*", {"AWS": "*"})):
            return True
    return False


def check_tls_only(stack: Stack, config: Mapping, report: Report) -> None:
    def judge(side: Resource) -> Any:
        text = dig(side.props, "policy")
        if is_unknown(text):
            return None
        try:
            document = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            return f"{label(side)}: policy is not JSON"
        if contains_unknown(document):
            return None
        return True if denies_insecure_transport(document) else (
            f"{label(side)} has no Deny of s3:* for everyone when aws:SecureTransport is false")
    _each_bucket(stack, report, BUCKET_POLICY, "TLS-only (a bucket policy denying aws:SecureTransport=false)", judge)


def check_efs_encrypted(resource: Resource, config: Mapping, report: Report) -> None:
    encrypted = dig(resource.props, "encrypted")
    if is_unknown(encrypted):
        report.unknown(f"{label(resource)}: encrypted")
    elif encrypted is not True:
        report.violation(f"{label(resource)}: EFS must set encrypted: true (at rest, with a KMS key), got "
                         f"{None if encrypted is MISSING else encrypted}")


def check_efs_zones(stack: Stack, config: Mapping, report: Report) -> None:
    for fs in stack.of_type(EFS):
        zones, unknown, outside = set(), [], []
        for target in stack.referencing(fs, "fileSystemId", MOUNT_TARGET):
            subnets = stack.referenced(target, "subnetId", SUBNET)
            zone = dig(subnets[0].props, "availabilityZone") if subnets else MISSING
            if not subnets:
                outside.append(target.name)
            elif zone is MISSING or is_unknown(zone):
                unknown.append(target.name)
            else:
                zones.add(zone)
        need = int(config["minZones"])
        if len(zones) >= need:
            continue
        if len(zones) + len(unknown) + len(outside) >= need:
            if unknown:
                report.unknown(f"{label(fs)}: the AZ of mount targets {', '.join(unknown)}")
            if outside:
                report.undecided(f"{label(fs)}: mount targets {', '.join(outside)} use subnets this stack does not "
                                 f"declare, so their AZs cannot be checked")
        else:
            report.violation(f"{label(fs)}: needs mount targets in at least {need} AZs, so losing one zone keeps "
                             f"the shared files reachable; has {sorted(zones) or 'none'}", fs.urn)


RULES = [
    Rule("s3-bucket-versioned", "Checkpoint buckets are versioned.", "stack", check_versioning),
    Rule("s3-bucket-kms-encrypted", "Checkpoint buckets default to SSE-KMS encryption.", "stack", check_kms),
    Rule("s3-bucket-public-access-blocked", "Checkpoint buckets block every kind of public access.", "stack",
         check_public_access_block),
    Rule("s3-bucket-tls-only", "Checkpoint buckets refuse requests without TLS.", "stack", check_tls_only),
    Rule("efs-encrypted", "EFS file systems are encrypted at rest.", "resource", check_efs_encrypted, (EFS,)),
    Rule("efs-multi-az-mount-targets", "EFS file systems have mount targets in at least N AZs.", "stack",
         check_efs_zones, (), {"minZones": {"type": "number", "default": 2}}),
]
