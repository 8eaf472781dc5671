"""The EKS cluster: pinned version, private endpoint (public only from configured CIDRs), KMS
secrets encryption, control-plane logs, OIDC provider, pinned managed add-ons, the on-demand
system node group, Karpenter's node role, and a Kubernetes provider for in-cluster objects."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config.types import ClusterConfig
from infra.plan.pools import DISCOVERY_TAG, SYSTEM_NODE_LABEL
from infra.plan.system_capacity import COREDNS_REPLICAS, COREDNS_REQUESTS, SYSTEM_TAINT, SYSTEM_TOLERATION

# Add-ons that are DaemonSets can go on before any node; the rest need nodes to become healthy.
ADDONS_BEFORE_NODES = ("vpc-cni", "kube-proxy", "eks-pod-identity-agent")
ADDONS_AFTER_NODES = ("coredns", "eks-node-monitoring-agent")


def assume_role_policy(service: str, *, tag_session: bool = False) -> str:
    actions = ["sts:AssumeRole", "sts:TagSession"] if tag_session else ["sts:AssumeRole"]
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": actions}]})


def addon_configuration(addon: str) -> str | None:
    """Explicit add-on settings. Network policy enforcement in the VPC CNI is what makes the
    teams' NetworkPolicies (Kubernetes issue) mean anything."""
    if addon == "vpc-cni":
        return json.dumps({"enableNetworkPolicy": "true"})
    if addon == "coredns":
        # Requests as EKS's own default, stated so the system nodes can be sized from them; the
        # toleration for the system nodes' taint is given explicitly rather than relied upon.
        return json.dumps({"nodeSelector": SYSTEM_NODE_LABEL, "replicaCount": COREDNS_REPLICAS,
                           "tolerations": [SYSTEM_TOLERATION],
                           "resources": {"requests": COREDNS_REQUESTS, "limits": {"memory": "170Mi"}}})
    return None


def kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str, *, profile: str = "",
               role_arn: str = "") -> str:
    """A kubeconfig that authenticates with `aws eks get-token` as the AWS provider does: with its
    profile and the role it assumes, so the Kubernetes provider (and an operator using the stack
    output) reach the cluster as the identity that created it, whatever the shell's defaults."""
    args = ["eks", "get-token", "--cluster-name", cluster_name, "--region", region]
    if role_arn:
        args += ["--role-arn", role_arn]
    exec_config = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws", "args": args,
                   "interactiveMode": "Never"}
    if profile:
        exec_config["env"] = [{"name": "AWS_PROFILE", "value": profile}]
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "current-context": cluster_name,
        "users": [{"name": cluster_name, "user": {"exec": exec_config}}],
    })


@dataclass(frozen=True, kw_only=True)
class ClusterArgs:
    config: ClusterConfig
    cluster_name: str
    region: str
    private_subnet_ids: Sequence[pulumi.Input[str]]
    tags: Mapping[str, str]
    """The stack tags, for what the tagging transformation cannot reach (the system nodes' ASG)."""
    aws_profile: str = ""
    aws_role_arn: str = ""
    """The AWS provider's profile and assumed role, for the kubeconfig's token."""


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    security_group_id: pulumi.Output[str]
    karpenter_node_role_name: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        # Protected, with the cluster: deleting either loses every Secret and workload (docs/upgrades.md).
        protected = pulumi.ResourceOptions(parent=self, protect=True)
        secrets_key = aws.kms.Key(f"{name}-secrets-key", description=f"{args.cluster_name} Kubernetes secrets",
                                  enable_key_rotation=True, deletion_window_in_days=30, opts=protected)
        role = aws.iam.Role(f"{name}-role", assume_role_policy=assume_role_policy("eks.amazonaws.com"), opts=child)
        # The cluster depends on it: EKS needs the policy to create the cluster, and to delete it
        # (its ENIs and security group) before the attachment goes.
        cluster_policy = aws.iam.RolePolicyAttachment(
            f"{name}-role-cluster-policy", role=role.name, policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child)
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", name=f"/aws/eks/{args.cluster_name}/cluster", retention_in_days=90, opts=child)

        cluster = aws.eks.Cluster(
            f"{name}-eks", name=args.cluster_name, version=cfg.kubernetes_version, role_arn=role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=list(args.private_subnet_ids),
                endpoint_private_access=True,
                endpoint_public_access=bool(cfg.endpoint_public_access_cidrs),
                public_access_cidrs=list(cfg.endpoint_public_access_cidrs) or None,
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn), resources=["secrets"]),
            enabled_cluster_log_types=list(cfg.log_types),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True),
            bootstrap_self_managed_addons=False,
            # EXTENDED (the default): past the end of standard support the cluster stays on the
            # stack's version, billed $0.60/h instead of $0.10/h while it lags, rather than EKS
            # upgrading it behind the stack (docs/design/infra.md, "Upgrades").
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type=cfg.support_type),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group, cluster_policy], protect=True),
        )
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc", url=cluster.identities[0].oidcs[0].issuer, client_id_lists=["sts.amazonaws.com"],
            opts=child)
        # Karpenter finds the node security group by this tag (EKS creates the group itself).
        aws.ec2.Tag(f"{name}-sg-discovery-tag", resource_id=cluster.vpc_config.cluster_security_group_id,
                    key=DISCOVERY_TAG, value=args.cluster_name, opts=child)

        for i, admin in enumerate(cfg.admin_role_arns):
            entry = aws.eks.AccessEntry(f"{name}-admin-{i}", cluster_name=cluster.name, principal_arn=admin,
                                        type="STANDARD", opts=child)
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{i}-policy", cluster_name=cluster.name, principal_arn=admin,
                policy_arn="arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[entry]))

        early_addons = [self._addon(name, cluster, addon, cfg) for addon in ADDONS_BEFORE_NODES]

        system_role = self._node_role(f"{name}-system-node-role")
        system_nodes = aws.eks.NodeGroup(
            # A prefix, not a fixed name: a replacement (new instance type) is created before the
            # old group is deleted, and two groups cannot share a name.
            f"{name}-system", cluster_name=cluster.name, node_group_name_prefix="system-",
            node_role_arn=system_role.arn,
            # Pinned with the control plane: a version change is a rolling in-place update of the
            # group (UpdateNodegroupVersion) in the same `up`, after the cluster's.
            version=cfg.kubernetes_version,
            subnet_ids=list(args.private_subnet_ids), capacity_type="ON_DEMAND",
            instance_types=[cfg.system_nodes.instance_type], ami_type="AL2023_x86_64_STANDARD",
            disk_size=cfg.system_nodes.disk_gib, labels=dict(SYSTEM_NODE_LABEL),
            # Only pods that tolerate it run here (add-ons, Tensile's own): team pods cannot take
            # the room the group is sized for. Taints update in place (UpdateNodegroupConfig).
            taints=[aws.eks.NodeGroupTaintArgs(key=SYSTEM_TAINT["key"], value=SYSTEM_TAINT["value"],
                                               effect="NO_SCHEDULE")],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=cfg.system_nodes.min_size, desired_size=cfg.system_nodes.desired_size,
                max_size=cfg.system_nodes.max_size),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            # Operators and autoscalers move desired size; `pulumi up` must not undo them.
            opts=pulumi.ResourceOptions(parent=self, depends_on=early_addons,
                                        ignore_changes=["scalingConfig.desiredSize"]),
        )
        # A managed node group's tags reach neither its Auto Scaling group nor its instances
        # (aws/containers-roadmap#608), so the stack budget, filtered on tensile.io/stack, would
        # miss the system nodes: tag the group, propagated to every instance it launches. A launch
        # template with tag specifications would do it too, but replaces the node group.
        asg_name = system_nodes.resources.apply(lambda r: r[0].autoscaling_groups[0].name)
        for key, value in sorted(args.tags.items()):
            aws.autoscaling.Tag(f"{name}-system-asg-{key.rsplit('/', 1)[-1]}", autoscaling_group_name=asg_name,
                                tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=True),
                                opts=child)
        for addon in ADDONS_AFTER_NODES:
            self._addon(name, cluster, addon, cfg, depends_on=[system_nodes])

        # Karpenter-launched GPU nodes join through an access entry for this role.
        karpenter_node_role = self._node_role(f"{name}-karpenter-node-role")
        aws.eks.AccessEntry(f"{name}-karpenter-node-access", cluster_name=cluster.name,
                            principal_arn=karpenter_node_role.arn, type="EC2_LINUX", opts=child)

        config_text = pulumi.Output.all(cluster.name, cluster.endpoint, cluster.certificate_authority.data).apply(
            lambda v: kubeconfig(v[0], v[1], v[2], args.region, profile=args.aws_profile,
                                 role_arn=args.aws_role_arn))
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=config_text,
                                     enable_server_side_apply=True, delete_unreachable=False,
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=[system_nodes]))

        self.name = cluster.name
        self.endpoint = cluster.endpoint
        self.certificate_authority = cluster.certificate_authority.data
        self.kubeconfig = config_text
        self.security_group_id = cluster.vpc_config.cluster_security_group_id
        self.karpenter_node_role_name = karpenter_node_role.name
        self.karpenter_node_role_arn = karpenter_node_role.arn
        self.system_node_role_arn = system_role.arn
        self.oidc_provider_arn = oidc.arn
        self.system_nodes = system_nodes
        self.register_outputs({"name": self.name, "endpoint": self.endpoint,
                               "securityGroupId": self.security_group_id,
                               "karpenterNodeRole": self.karpenter_node_role_name,
                               "oidcProviderArn": self.oidc_provider_arn})

    def _node_role(self, name: str) -> aws.iam.Role:
        role = aws.iam.Role(name, assume_role_policy=assume_role_policy("ec2.amazonaws.com"),
                            opts=pulumi.ResourceOptions(parent=self))
        for short, arn in (
            ("worker", "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy"),
            ("cni", "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy"),
            ("ecr", "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly"),
            ("ssm", "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"),
        ):
            aws.iam.RolePolicyAttachment(f"{name}-{short}", role=role.name, policy_arn=arn,
                                         opts=pulumi.ResourceOptions(parent=self))
        return role

    def _addon(self, name: str, cluster: aws.eks.Cluster, addon: str, cfg: ClusterConfig,
               depends_on: list | None = None) -> aws.eks.Addon:
        return aws.eks.Addon(
            f"{name}-addon-{addon}", cluster_name=cluster.name, addon_name=addon,
            addon_version=cfg.addon_versions[addon], configuration_values=addon_configuration(addon),
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on or []))
