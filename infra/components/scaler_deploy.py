"""The scaler controller in the cluster (infra/plan/scaler.py): its config, RBAC in the namespaces
of scaled jobs only, the Deployment on the system nodes, and its own AWS identity through EKS Pod
Identity (spot prices, read of the scaled runs' checkpoint prefixes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import enforcer
from infra.components.cluster import assume_role_policy
from infra.components.k8s_objects import declare
from infra.config.types import JobConfig
from infra.plan import scaler as scaler_plan


@dataclass(frozen=True, kw_only=True)
class ScalerControllerArgs:
    config: pulumi.Input[dict]
    """The controller's config.json (scaler_plan.scaler_config), resolved with the bucket's name."""
    image: str
    team_namespaces: tuple[str, ...]
    scaled_jobs: tuple[JobConfig, ...]
    """The scaled jobs: their checkpoint prefixes are all the controller may read."""
    cluster_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    kms_key_arn: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource] = ()
    """The tensile-system namespace, the team namespaces, the Kueue CRDs."""


class ScalerController(pulumi.ComponentResource):
    def __init__(self, name: str, args: ScalerControllerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:ScalerController", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        config = pulumi.Output.from_input(args.config)
        # Planned with the config's shape now (every object known at preview), its text filled in.
        template = scaler_plan.scaler_objects(config={"spend": {"configmap": enforcer.SPEND_CONFIGMAP}},
                                              image=args.image, team_namespaces=args.team_namespaces)
        live = config.apply(lambda c: scaler_plan.scaler_objects(config=c, image=args.image,
                                                                 team_namespaces=args.team_namespaces))
        for i, manifest in enumerate(template):
            kind, meta = manifest["kind"], manifest["metadata"]
            if kind in ("ConfigMap", "Deployment"):  # the config's text, and its hash on the pods
                field = "data" if kind == "ConfigMap" else "spec"
                manifest = {**manifest, field: live.apply(lambda objs, i=i, field=field: objs[i][field])}
            where = "" if meta.get("namespace") in (None, scaler_plan.NAMESPACE) else f"-{meta['namespace']}"
            declare(f"{name}-{kind.lower()}{where}", manifest, k8s_opts)

        role = aws.iam.Role(f"{name}-iam-role", assume_role_policy=assume_role_policy("pods.eks.amazonaws.com",
                                                                                  tag_session=True), opts=child)
        policy = pulumi.Output.all(args.bucket_arn, args.kms_key_arn).apply(
            lambda v: scaler_plan.scaler_iam_policy(bucket_arn=v[0], kms_key_arn=v[1], jobs=args.scaled_jobs))
        aws.iam.RolePolicy(f"{name}-iam-policy", role=role.id, policy=policy, opts=child)
        aws.eks.PodIdentityAssociation(
            f"{name}-identity", cluster_name=args.cluster_name, namespace=scaler_plan.NAMESPACE,
            service_account=scaler_plan.NAME, role_arn=role.arn, opts=child)
        self.role_arn = role.arn
        self.service_account = f"{scaler_plan.NAMESPACE}/{scaler_plan.NAME}"
        self.register_outputs({"image": args.image, "serviceAccount": self.service_account, "roleArn": role.arn,
                               "objects": [f"{m['kind']}/{m['metadata'].get('namespace', '')}/{m['metadata']['name']}"
                                           for m in template]})
