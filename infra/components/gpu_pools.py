"""GPU capacity as Karpenter NodePools and EC2NodeClasses, one loop over the configured pools;
for EFA families also the EFA security group, cluster placement groups and the EFA device plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config.types import GpuPoolConfig, KarpenterConfig
from infra.plan import pools as pool_plan

EFA_PLUGIN_CHART = "aws-efa-k8s-device-plugin"
EFA_PLUGIN_REPO = "https://aws.github.io/eks-charts"
EFA_PLUGIN_VERSION = "v0.5.14"


@dataclass(frozen=True, kw_only=True)
class GpuNodePoolsArgs:
    pools: tuple[GpuPoolConfig, ...]
    karpenter: KarpenterConfig
    cluster_name: str
    node_role_name: pulumi.Input[str]
    vpc_id: pulumi.Input[str]
    tags: dict[str, str]
    provider: k8s.Provider
    crds: Sequence[pulumi.Resource]
    """The Karpenter CRDs: custom resources must wait for them."""
    controller: pulumi.Resource


class GpuNodePools(pulumi.ComponentResource):
    def __init__(self, name: str, args: GpuNodePoolsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:GpuNodePools", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # The plan is pure; the node role's name is an Output, filled into each class spec below.
        node_role = pulumi.Output.from_input(args.node_role_name)
        classes, node_pools = pool_plan.plan_gpu_pools(
            args.pools, cluster_name=args.cluster_name, node_role="", karpenter=args.karpenter, tags=args.tags)
        efa_sg = None
        if any(p.efa for p in node_pools):
            # EFA needs all traffic between members of one group, in and out (EFA user guide).
            efa_sg = aws.ec2.SecurityGroup(
                f"{name}-efa-sg", vpc_id=args.vpc_id, description="EFA: all traffic within the group",
                ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="-1", from_port=0, to_port=0, self=True)],
                egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0, self=True),
                        aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0,
                                                        cidr_blocks=["0.0.0.0/0"])],
                tags={"Name": f"{args.cluster_name}-efa", pool_plan.EFA_SECURITY_GROUP_TAG: args.cluster_name},
                opts=child)
            self.efa_security_group_id = efa_sg.id
            k8s.helm.v3.Release(
                f"{name}-efa-device-plugin", name="aws-efa-k8s-device-plugin", chart=EFA_PLUGIN_CHART,
                version=EFA_PLUGIN_VERSION,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=EFA_PLUGIN_REPO), namespace="kube-system",
                values={"nodeSelector": {pool_plan.EFA_LABEL: "true"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[args.controller]))

        spot_role: list[pulumi.Resource] = []
        if args.karpenter.create_spot_service_linked_role:
            # One per account, shared by every stack in it: kept when this stack goes, so the
            # others' spot pools do not fall back to on-demand.
            spot_role.append(aws.iam.ServiceLinkedRole(
                f"{name}-spot-service-linked-role", aws_service_name="spot.amazonaws.com",
                description="EC2 Spot (created by Tensile; tensile:karpenter.createSpotServiceLinkedRole)",
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True)))

        node_classes: dict[str, k8s.apiextensions.CustomResource] = {}
        for plan in classes:
            # A class selects its placement group and EFA security group by name and tag, so
            # nothing orders them: without these dependencies `up` could create the class first,
            # and `destroy` delete the group while Karpenter still launches into it.
            selected: list[pulumi.Resource] = [efa_sg] if plan.efa and efa_sg is not None else []
            # A group the config names is the user's (its reservation was made in it: config/sections.py).
            if plan.placement_group and plan.creates_placement_group:
                selected.append(aws.ec2.PlacementGroup(f"{name}-{plan.name}-pg", name=plan.placement_group,
                                                       strategy="cluster", opts=child))
            spec = node_role.apply(lambda role, s=plan.spec: {**s, "role": role})
            node_classes[plan.name] = k8s.apiextensions.CustomResource(
                f"{name}-{plan.name}-nodeclass", api_version="karpenter.k8s.aws/v1", kind="EC2NodeClass",
                metadata={"name": plan.name}, spec=spec,
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                            depends_on=[*args.crds, args.controller, *selected]))

        self.node_pool_names = []
        for plan in node_pools:
            k8s.apiextensions.CustomResource(
                f"{name}-{plan.name}", api_version="karpenter.sh/v1", kind="NodePool",
                metadata={"name": plan.name, "labels": {pool_plan.POOL_LABEL: plan.pool}}, spec=plan.spec,
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                            depends_on=[*args.crds, args.controller, node_classes[plan.node_class],
                                                        *spot_role]))
            self.node_pool_names.append(plan.name)
        self.register_outputs({"nodePools": self.node_pool_names, "nodeClasses": [c.name for c in classes]})
