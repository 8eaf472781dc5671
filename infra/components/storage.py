"""Checkpoint storage: an S3 bucket (versioned, SSE-KMS, public access blocked, TLS only,
lifecycle for old versions and aborted uploads) and an encrypted EFS with a mount target in
every AZ and an access point per team, reachable only from the cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws

from infra.components import tagging
from infra.config.types import StorageConfig, TeamConfig
from infra.plan import storage as storage_plan

def tls_only_policy(bucket_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyNonTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }]})


@dataclass(frozen=True, kw_only=True)
class StorageArgs:
    config: StorageConfig
    cluster_name: str
    teams: tuple[TeamConfig, ...]
    vpc_id: pulumi.Input[str]
    private_subnet_ids: Sequence[pulumi.Input[str]]
    availability_zones: tuple[str, ...]
    cluster_security_group_id: pulumi.Input[str]


class Storage(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    file_system_id: pulumi.Output[str]

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args.config

        # Protected: the bucket and EFS hold every team's checkpoints and files, and the key is
        # the only way to read them; `pulumi destroy` or a replacement stops at these.
        protected = pulumi.ResourceOptions(parent=self, protect=True)
        key = aws.kms.Key(f"{name}-key", description=f"{args.cluster_name} checkpoints and shared files",
                          enable_key_rotation=True, deletion_window_in_days=30, opts=protected)
        bucket = aws.s3.Bucket(f"{name}-checkpoints", bucket_prefix=f"{args.cluster_name}-ckpt-",
                               force_destroy=False, opts=protected)
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-checkpoints-public-access", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketOwnershipControls(
            f"{name}-checkpoints-ownership", bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"), opts=child)
        versioning = aws.s3.BucketVersioning(
            f"{name}-checkpoints-versioning", bucket=bucket.id,
            versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-checkpoints-sse", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms",
                                                                "kms_master_key_id": key.arn},
                    "bucket_key_enabled": True}],
            opts=child)
        aws.s3.BucketPolicy(f"{name}-checkpoints-tls-only", bucket=bucket.id, policy=bucket.arn.apply(tls_only_policy),
                            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]))
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-checkpoints-lifecycle", bucket=bucket.id,
            rules=[
                {"id": "expire-noncurrent", "status": "Enabled", "filter": {},
                 "noncurrent_version_expiration": {"noncurrent_days": cfg.noncurrent_version_days}},
                {"id": "abort-multipart", "status": "Enabled", "filter": {},
                 "abort_incomplete_multipart_upload": {"days_after_initiation": cfg.abort_multipart_days}},
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))

        efs_sg = aws.ec2.SecurityGroup(
            f"{name}-efs-sg", vpc_id=args.vpc_id, description="NFS from cluster nodes only",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=2049, to_port=2049,
                                                      security_groups=[args.cluster_security_group_id])],
            tags={"Name": f"{args.cluster_name}-efs"}, opts=child)
        file_system = aws.efs.FileSystem(
            f"{name}-efs", encrypted=True, kms_key_id=key.arn, performance_mode="generalPurpose",
            throughput_mode="elastic", tags={"Name": f"{args.cluster_name}-shared"}, opts=protected)
        # AWS Backup's default EFS plan: daily, kept 35 days (billed per GB-month of backup).
        aws.efs.BackupPolicy(f"{name}-efs-backup", file_system_id=file_system.id,
                             backup_policy=aws.efs.BackupPolicyBackupPolicyArgs(status="ENABLED"), opts=child)
        for az, subnet_id in zip(args.availability_zones, args.private_subnet_ids):
            aws.efs.MountTarget(f"{name}-efs-{az}", file_system_id=file_system.id, subnet_id=subnet_id,
                                security_groups=[efs_sg.id], opts=child)
        self.access_point_ids = {}
        for team in args.teams:
            spec = storage_plan.team_access_point(team)
            self.access_point_ids[team.name] = aws.efs.AccessPoint(
                f"{name}-efs-{team.name}", file_system_id=file_system.id,
                posix_user=aws.efs.AccessPointPosixUserArgs(uid=spec.uid, gid=spec.gid),
                root_directory=aws.efs.AccessPointRootDirectoryArgs(
                    path=spec.path,
                    creation_info=aws.efs.AccessPointRootDirectoryCreationInfoArgs(
                        owner_uid=spec.uid, owner_gid=spec.gid, permissions=spec.permissions)),
                tags={"Name": f"{args.cluster_name}-{team.name}", tagging.TEAM_TAG: team.name}, opts=child).id

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.file_system_id = file_system.id
        self.kms_key_arn = key.arn
        self.register_outputs({"bucketName": self.bucket_name, "fileSystemId": self.file_system_id,
                               "kmsKeyArn": self.kms_key_arn})
