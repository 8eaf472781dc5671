"""Teams from one config entry each: namespace, quota, limits, network policies, RBAC bound to
the team's IAM role through an EKS access entry, a Pod Identity scoped to the team's S3 prefix,
the team's EFS volume, and Kueue queues (flavors per GPU model, a cohort with capped borrowing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import cost
from infra.components import tagging
from infra.components.cluster import assume_role_policy
from infra.components.k8s_objects import declare
from infra.config.types import GpuPoolConfig, PlatformConfig, TeamConfig
from infra.plan import admission as admission_plan
from infra.plan import teams as team_plan


@dataclass(frozen=True, kw_only=True)
class TeamsArgs:
    teams: tuple[TeamConfig, ...]
    pools: tuple[GpuPoolConfig, ...]
    prices: cost.PriceBook
    platform: PlatformConfig
    cluster_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    file_system_id: pulumi.Input[str]
    access_point_ids: Mapping[str, pulumi.Input[str]]
    provider: k8s.Provider
    kueue: Sequence[pulumi.Resource]
    """The Kueue CRDs and release: queues and flavors wait for them."""


class Teams(pulumi.ComponentResource):
    namespaces: dict[str, pulumi.Resource]
    local_queues: dict[str, dict[str, pulumi.Resource]]
    """team -> LocalQueue name -> the LocalQueue."""

    def __init__(self, name: str, args: TeamsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Teams", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider)
        kueue_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.kueue))

        # Only Kueue-managed workloads may use GPUs in team namespaces (plan/admission.py).
        policy = declare(f"{name}-gpu-admission-policy", admission_plan.gpu_admission_policy(), k8s_opts)
        declare(f"{name}-gpu-admission-binding", admission_plan.gpu_admission_binding(),
                pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[policy])))

        models = sorted({m for t in args.teams for m in t.gpu_models})
        for model in models:
            declare(f"{name}-flavor-{model}", team_plan.resource_flavor(model), kueue_opts)
        quotas = {team.name: team_plan.team_quota(team, args.pools, args.prices) for team in args.teams}
        cohort = declare(f"{name}-cohort", team_plan.cohort(quotas.values(), args.pools), kueue_opts)

        self.namespaces = {}
        self.trainer_role_arns = {}
        self.local_queues: dict[str, dict[str, pulumi.Resource]] = {}
        for team in args.teams:
            quota = quotas[team.name]
            prefix = f"{name}-{team.name}"
            objects = team_plan.team_objects(team, quota, monitoring_namespace=args.platform.monitoring_namespace)
            namespace = declare(f"{prefix}-namespace", objects[0], k8s_opts)
            self.namespaces[team.name] = namespace
            in_namespace = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace])
            for manifest in objects[1:]:
                kind = manifest["kind"]
                if kind == "ClusterQueue":
                    declare(f"{prefix}-clusterqueue", manifest, pulumi.ResourceOptions.merge(
                        kueue_opts, pulumi.ResourceOptions(depends_on=[cohort])))
                elif kind == "LocalQueue":
                    queue = manifest["metadata"]["name"]
                    suffix = "" if queue == team_plan.LOCAL_QUEUE else f"-{queue}"
                    self.local_queues.setdefault(team.name, {})[queue] = declare(
                        f"{prefix}-localqueue{suffix}", manifest, pulumi.ResourceOptions.merge(
                            kueue_opts, pulumi.ResourceOptions(depends_on=[namespace])))
                else:
                    declare(f"{prefix}-{kind.lower()}-{manifest['metadata']['name']}", manifest, in_namespace)

            # People: the team's IAM role maps to a group bound to the team Role, nothing more.
            entry = aws.eks.AccessEntry(
                f"{prefix}-access", cluster_name=args.cluster_name, principal_arn=team.member_role_arn,
                type="STANDARD", kubernetes_groups=[team_plan.member_group(team.name)],
                tags={tagging.TEAM_TAG: team.name}, opts=child)

            # The trainer's AWS identity: the team's checkpoint prefix only.
            role = aws.iam.Role(f"{prefix}-trainer-role", assume_role_policy=assume_role_policy(
                "pods.eks.amazonaws.com", tag_session=True), tags={tagging.TEAM_TAG: team.name}, opts=child)
            self.trainer_role_arns[team.name] = role.arn
            policy = pulumi.Output.all(args.bucket_arn, args.kms_key_arn).apply(
                lambda v, t=team.name: team_plan.checkpoint_policy(team=t, bucket_arn=v[0], kms_key_arn=v[1]))
            aws.iam.RolePolicy(f"{prefix}-trainer-s3", role=role.id, policy=policy, opts=child)
            aws.eks.PodIdentityAssociation(
                f"{prefix}-trainer-identity", cluster_name=args.cluster_name, namespace=team.name,
                service_account=team_plan.TRAINER_SERVICE_ACCOUNT, role_arn=role.arn,
                tags={tagging.TEAM_TAG: team.name}, opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]))

            volume = pulumi.Output.all(args.file_system_id, args.access_point_ids[team.name]).apply(
                lambda v, t=team.name: team_plan.shared_volume(t, file_system_id=v[0], access_point_id=v[1]))
            pv = k8s.core.v1.PersistentVolume(
                f"{prefix}-pv", metadata={"name": f"efs-{team.name}", "labels": {team_plan.TEAM_LABEL: team.name}},
                spec=volume.apply(lambda objs: objs[0]["spec"]), opts=k8s_opts)
            pvc = team_plan.shared_volume(team.name, file_system_id="", access_point_id="")[1]
            declare(f"{prefix}-pvc", pvc, pulumi.ResourceOptions(parent=self, provider=args.provider,
                                                                 depends_on=[namespace, pv]))
        self.quotas = quotas
        self.register_outputs({"teams": {t: {"nominalGpus": q.nominal_gpus, "borrowingGpus": q.borrowing_gpus,
                                             "gpusWithinBudget": q.gpus_within_budget}
                                         for t, q in quotas.items()},
                               "flavors": models})
