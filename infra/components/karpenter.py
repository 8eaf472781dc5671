"""Karpenter's controller: its IAM role through EKS Pod Identity, the pinned CRDs declared as
CustomResourceDefinition resources (so NodePools preview on a first `up`), and the pinned
Helm release with explicit values, installed without its own CRDs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.components.cluster import assume_role_policy
from infra.plan.pools import SYSTEM_NODE_LABEL

CRD_DIR = Path(__file__).resolve().parents[1] / "crds" / "karpenter"
CRD_FILES = ("karpenter.sh_nodepools.yaml", "karpenter.sh_nodeclaims.yaml", "karpenter.k8s.aws_ec2nodeclasses.yaml")
CHART = "oci://public.ecr.aws/karpenter/karpenter"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"


def load_crds(directory: Path = CRD_DIR) -> list[dict]:
    """The vendored CRDs (karpenter-provider-aws v1.14.1, byte for byte; see crds/README.md)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [yaml.load((directory / f).read_text(), Loader=loader) for f in CRD_FILES]


def controller_policy(*, cluster_name: str, region: str, account_id: str, queue_arn: str, node_role_arn: str) -> str:
    """Karpenter's controller permissions: upstream's six getting-started policies at the pinned
    version (statement ids kept, so tests/infra/test_karpenter_iam.py diffs them one by one), in one
    document. Launch and delete only what is tagged for this cluster, pass only the node role, read
    only this queue. Where it is narrower than upstream, that test lists why."""
    ec2 = f"arn:aws:ec2:{region}"
    created = [f"{ec2}:*:{kind}/*" for kind in
               ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")]
    cluster_tag = f"kubernetes.io/cluster/{cluster_name}"
    launch_request_tags = {"StringEquals": {f"aws:RequestTag/{cluster_tag}": "owned",
                                            "aws:RequestTag/eks:eks-cluster-name": cluster_name},
                           "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}
    owned_by_a_nodepool = {"StringEquals": {f"aws:ResourceTag/{cluster_tag}": "owned"},
                           "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}
    profile = f"arn:aws:iam::{account_id}:instance-profile/*"
    profile_request_tags = {f"aws:RequestTag/{cluster_tag}": "owned", "aws:RequestTag/eks:eks-cluster-name": cluster_name,
                            "aws:RequestTag/topology.kubernetes.io/region": region}
    profile_resource_tags = {f"aws:ResourceTag/{cluster_tag}": "owned", "aws:ResourceTag/topology.kubernetes.io/region": region}
    cluster_arn = f"arn:aws:eks:{region}:{account_id}:cluster/{cluster_name}"
    return json.dumps({"Version": "2012-10-17", "Statement": [
        # NodeLifecyclePolicy
        {"Sid": "AllowScopedEC2InstanceAccessActions", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{ec2}::image/*", f"{ec2}::snapshot/*", f"{ec2}:*:security-group/*", f"{ec2}:*:subnet/*",
                      f"{ec2}:*:capacity-reservation/*", f"{ec2}:*:placement-group/*"]},
        # A fleet that uses an existing launch template sends no request tag for it: the template
        # is authorized by its own tags (karpenter-provider-aws #5550).
        {"Sid": "AllowScopedEC2LaunchTemplateAccessActions", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"], "Resource": f"{ec2}:*:launch-template/*",
         "Condition": owned_by_a_nodepool},
        {"Sid": "AllowScopedEC2InstanceActionsWithTags", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], "Resource": created,
         "Condition": launch_request_tags},
        {"Sid": "AllowScopedResourceCreationTagging", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": created,
         "Condition": {"StringEquals": {**launch_request_tags["StringEquals"],
                                        "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]},
                       "StringLike": launch_request_tags["StringLike"]}},
        {"Sid": "AllowScopedResourceTagging", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": f"{ec2}:*:instance/*",
         "Condition": {**owned_by_a_nodepool,
                       "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]}}},
        {"Sid": "AllowScopedDeletion", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"], "Condition": owned_by_a_nodepool},
        # IAMIntegrationPolicy (the commercial partition only: no ec2.amazonaws.com.cn)
        {"Sid": "AllowPassingInstanceRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com"]}}},
        {"Sid": "AllowScopedInstanceProfileCreationActions", "Effect": "Allow", "Action": ["iam:CreateInstanceProfile"],
         "Resource": profile,
         "Condition": {"StringEquals": profile_request_tags,
                       "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowScopedInstanceProfileTagActions", "Effect": "Allow", "Action": ["iam:TagInstanceProfile"],
         "Resource": profile,
         "Condition": {"StringEquals": {**profile_resource_tags, **profile_request_tags},
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                                      "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowScopedInstanceProfileActions", "Effect": "Allow",
         "Action": ["iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"],
         "Resource": profile,
         "Condition": {"StringEquals": profile_resource_tags,
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        # EKSIntegrationPolicy, InterruptionPolicy, ZonalShiftPolicy
        {"Sid": "AllowAPIServerEndpointDiscovery", "Effect": "Allow", "Action": "eks:DescribeCluster",
         "Resource": cluster_arn},
        {"Sid": "AllowInterruptionQueueActions", "Effect": "Allow",
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"], "Resource": queue_arn},
        {"Sid": "AllowZonalShiftStatusReadOnly", "Effect": "Allow", "Action": ["arc-zonal-shift:GetManagedResource"],
         "Resource": "*", "Condition": {"StringEquals": {"arc-zonal-shift:ResourceIdentifier": cluster_arn}}},
        # ResourceDiscoveryPolicy
        {"Sid": "AllowRegionalReadActions", "Effect": "Allow",
         "Action": ["ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"],
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "AllowSSMReadActions", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/*"},
        {"Sid": "AllowPricingReadActions", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
        {"Sid": "AllowUnscopedInstanceProfileListAction", "Effect": "Allow", "Action": "iam:ListInstanceProfiles",
         "Resource": "*"},
        {"Sid": "AllowInstanceProfileReadActions", "Effect": "Allow", "Action": "iam:GetInstanceProfile",
         "Resource": profile},
    ]})


def helm_values(*, cluster_name: str, cluster_endpoint: str, queue_name: str) -> dict:
    """Every value the release relies on, explicit."""
    return {
        "settings": {"clusterName": cluster_name, "clusterEndpoint": cluster_endpoint,
                     "interruptionQueue": queue_name,
                     # Node repair replaces nodes the EKS node monitoring agent marks unhealthy
                     # (GPU faults); reserved capacity makes `reserved` a capacity type.
                     "featureGates": {"nodeRepair": True, "reservedCapacity": True}},
        # Pod Identity: no IRSA annotation; the association below binds the role.
        "serviceAccount": {"create": True, "name": SERVICE_ACCOUNT},
        "replicas": 2,
        "nodeSelector": dict(SYSTEM_NODE_LABEL),
        "controller": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}},
        "podDisruptionBudget": {"name": "karpenter", "maxUnavailable": 1},
        "logLevel": "info",
    }


@dataclass(frozen=True, kw_only=True)
class KarpenterArgs:
    cluster_name: pulumi.Input[str]
    cluster_endpoint: pulumi.Input[str]
    region: str
    chart_version: str
    node_role_arn: pulumi.Input[str]
    queue_name: pulumi.Input[str]
    queue_arn: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: tuple = ()
    """Resources the release must wait for (the system nodes it schedules on)."""


class Karpenter(pulumi.ComponentResource):
    crds: list[k8s.apiextensions.v1.CustomResourceDefinition]
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: KarpenterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Karpenter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        k8s_child = pulumi.ResourceOptions(parent=self, provider=args.provider)

        role = aws.iam.Role(f"{name}-controller-role", assume_role_policy=assume_role_policy(
            "pods.eks.amazonaws.com", tag_session=True), opts=child)
        account_id = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        policy_doc = pulumi.Output.all(args.cluster_name, account_id, args.queue_arn, args.node_role_arn).apply(
            lambda v: controller_policy(cluster_name=v[0], region=args.region, account_id=v[1], queue_arn=v[2],
                                        node_role_arn=v[3]))
        aws.iam.RolePolicy(f"{name}-controller-policy", role=role.id, policy=policy_doc, opts=child)
        association = aws.eks.PodIdentityAssociation(
            f"{name}-pod-identity", cluster_name=args.cluster_name, namespace=NAMESPACE,
            service_account=SERVICE_ACCOUNT, role_arn=role.arn, opts=child)

        # Deleting a CRD deletes every NodePool with it (and Karpenter then drains every GPU
        # node): if the program ever stops declaring one, leave it in the cluster.
        crd_opts = pulumi.ResourceOptions.merge(k8s_child, pulumi.ResourceOptions(retain_on_delete=True))
        self.crds = []
        for crd in load_crds():
            self.crds.append(k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd-{crd['spec']['names']['plural']}", metadata=crd["metadata"], spec=crd["spec"],
                opts=crd_opts))

        values = pulumi.Output.all(args.cluster_name, args.cluster_endpoint, args.queue_name).apply(
            lambda v: helm_values(cluster_name=v[0], cluster_endpoint=v[1], queue_name=v[2]))
        self.release = k8s.helm.v3.Release(
            f"{name}-release", name="karpenter", chart=CHART, version=args.chart_version, namespace=NAMESPACE,
            skip_crds=True, atomic=True, timeout=600, values=values,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                        depends_on=[association, *self.crds, *args.depends_on]))
        self.controller_role_arn = role.arn
        self.register_outputs({"controllerRoleArn": role.arn, "chartVersion": args.chart_version,
                               "crds": [c.metadata.name for c in self.crds]})
