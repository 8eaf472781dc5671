"""Each rule on synthetic resource properties, sent to the running pack over gRPC: a passing
case, a failing case (mandatory), and a case whose checked value is the engine's unknown sentinel
(advisory, never mandatory). Tunables are set through `Configure`, as `--policy-pack-config` does."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from policies import pack
from policies.framework import UNKNOWN_SENTINELS

U = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's unknown sentinel, as it travels in the gRPC struct
DELETE = object()
STACK = "dev"


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::tensile::{type_}::{name}"


def res(type_: str, name: str, inputs: dict, deps: dict[str, list[dict]] | None = None) -> dict:
    return {"urn": urn(type_, name), "type": type_, "name": name, "inputs": inputs, "parent": None,
            "dependencies": sorted({d["urn"] for ds in (deps or {}).values() for d in ds}),
            "property_dependencies": {k: [d["urn"] for d in v] for k, v in (deps or {}).items()}}


def edit(resource: dict, path: str, value: Any) -> dict:
    """A copy of `resource` with inputs at the dotted `path` (`[n]` for list items) set or deleted;
    a label key such as `nvidia.com/gpu` stays one step."""
    out = copy.deepcopy(resource)
    parts = [p for p in path.replace("[", ".[").split(".") if p]
    merged: list[str] = []
    for part in parts:
        if "/" in part and merged and not merged[-1].startswith("["):
            merged[-1] = f"{merged[-1]}.{part}"
        else:
            merged.append(part)
    steps = [int(s[1:-1]) if s.startswith("[") else s for s in merged]
    node = out["inputs"]
    for step in steps[:-1]:
        node = node[step]
    if value is DELETE:
        del node[steps[-1]]
    else:
        node[steps[-1]] = value
    return out


# -- synthetic resources that pass every rule -----------------------------------------------------

TAGS = {"tensile.io/stack": STACK, "tensile.io/environment": "dev", "tensile.io/cost-centre": "ml"}
NODE_POOL = res("kubernetes:karpenter.sh/v1:NodePool", "gpu-l4", {"spec": {
    "limits": {"nvidia.com/gpu": "4"},
    "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m",
                   "budgets": [{"reasons": ["Drifted", "Underutilized"], "nodes": "0"}]},
    "template": {"spec": {
        "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
        "requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
            {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["g6.xlarge", "g6.4xlarge"]}]}}}})
NODE_CLASS = res("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "gpu-class", {"spec": {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 2},
    "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "200Gi", "encrypted": True}}],
    "tags": TAGS}})
NODE_GROUP = res("aws:eks/nodeGroup:NodeGroup", "system", {
    "capacityType": "ON_DEMAND", "labels": {"tensile.io/node-role": "system"}, "instanceTypes": ["m7i.large"],
    "scalingConfig": {"minSize": 2, "maxSize": 3, "desiredSize": 2}, "tags": TAGS})
KARPENTER = res("kubernetes:helm.sh/v3:Release", "karpenter", {
    "name": "karpenter", "values": {"nodeSelector": {"tensile.io/node-role": "system"}}})
BUDGET = res("aws:budgets/budget:Budget", "stack-budget", {
    "budgetType": "COST", "timeUnit": "MONTHLY", "limitAmount": "5000.00", "tags": TAGS,
    "costFilters": [{"name": "TagKeyValue", "values": [f"user:tensile.io/stack${STACK}"]}], "notifications": [
        {"notificationType": "ACTUAL", "threshold": 80, "subscriberEmailAddresses": ["a@example.com"]},
        {"notificationType": "FORECASTED", "threshold": 100, "subscriberSnsTopicArns": [U]}]})


def team_budgets(teams: dict) -> dict:
    return res("kubernetes:core/v1:ConfigMap", "team-budgets", {
        "metadata": {"name": "team-budgets", "namespace": "tensile-system"},
        "data": {"budgets.json": json.dumps({"teams": teams})}})


TEAM_BUDGETS = team_budgets({"vision": {"clusterQueue": "vision", "monthlyBudgetUsd": 2000}})
CLUSTER_QUEUE = res("kubernetes:kueue.x-k8s.io/v1beta2:ClusterQueue", "vision-queue", {
    "metadata": {"name": "vision"}, "spec": {"cohortName": "gpu", "resourceGroups": [{
        "coveredResources": ["nvidia.com/gpu"],
        "flavors": [{"name": "l4", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 2,
                                                   "borrowingLimit": 1}]}]}]}})
BUCKET = res("aws:s3/bucket:Bucket", "checkpoints", {"bucketPrefix": "ckpt-", "tags": TAGS})
ON_BUCKET = {"bucket": [BUCKET]}
VERSIONING = res("aws:s3/bucketVersioning:BucketVersioning", "checkpoints-versioning",
                 {"bucket": "checkpoints-id", "versioningConfiguration": {"status": "Enabled"}}, ON_BUCKET)
SSE = res("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
          "checkpoints-sse", {"bucket": "checkpoints-id", "rules": [
              {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": U}}]}, ON_BUCKET)
PUBLIC_BLOCK = res("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "checkpoints-block", {
    "bucket": "checkpoints-id", "blockPublicAcls": True, "blockPublicPolicy": True, "ignorePublicAcls": True,
    "restrictPublicBuckets": True}, ON_BUCKET)
TLS_DOCUMENT = {"Version": "2012-10-17", "Statement": [{
    "Sid": "DenyNonTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": ["arn", "arn/*"],
    "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
TLS_POLICY = res("aws:s3/bucketPolicy:BucketPolicy", "checkpoints-tls",
                 {"bucket": "checkpoints-id", "policy": json.dumps(TLS_DOCUMENT)},
                 {"bucket": [BUCKET], "policy": [BUCKET]})
EFS = res("aws:efs/fileSystem:FileSystem", "shared", {"encrypted": True, "kmsKeyId": U, "tags": TAGS})
SUBNET_A = res("aws:ec2/subnet:Subnet", "private-a", {"availabilityZone": "us-east-1a", "tags": TAGS})
SUBNET_B = res("aws:ec2/subnet:Subnet", "private-b", {"availabilityZone": "us-east-1b", "tags": TAGS})


def mount_target(subnet: dict) -> dict:
    return res("aws:efs/mountTarget:MountTarget", f"shared-{subnet['name']}",
               {"fileSystemId": "shared-id", "subnetId": f"{subnet['name']}-id"},
               {"fileSystemId": [EFS], "subnetId": [subnet]})


CONTAINER = {"name": "worker", "image": "123.dkr.ecr.us-east-1.amazonaws.com/tensile/trainer:0.4.1",
             "resources": {"requests": {"cpu": "8", "memory": "60Gi", "nvidia.com/gpu": 1},
                           "limits": {"cpu": "8", "memory": "60Gi", "nvidia.com/gpu": 1}}}
TRAINING_JOB = res("kubernetes:batch/v1:Job", "run-42", {
    "metadata": {"name": "run-42", "namespace": "vision", "labels": {"kueue.x-k8s.io/queue-name": "default"}},
    "spec": {"completionMode": "Indexed", "template": {"metadata": {"labels": {"app": "run-42"}}, "spec": {
        "terminationGracePeriodSeconds": 300, "containers": [CONTAINER],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}}})
NAMESPACE = res("kubernetes:core/v1:Namespace", "vision-ns",
                {"metadata": {"name": "vision", "labels": {"tensile.io/team": "vision"}}})
QUOTA = res("kubernetes:core/v1:ResourceQuota", "vision-quota", {
    "metadata": {"name": "quota", "namespace": "vision"}, "spec": {"hard": {"requests.nvidia.com/gpu": "3"}}})
DEFAULT_DENY = res("kubernetes:networking.k8s.io/v1:NetworkPolicy", "vision-deny", {
    "metadata": {"name": "default-deny", "namespace": "vision"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
CLUSTER = res("aws:eks/cluster:Cluster", "eks", {
    "name": "tensile-dev", "tags": {**TAGS, "tensile.io/environment": "prod"},
    "vpcConfig": {"endpointPrivateAccess": True, "endpointPublicAccess": True,
                  "publicAccessCidrs": ["198.51.100.0/24"]},
    "encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": U}}})
VPC_CNI = res("aws:eks/addon:Addon", "vpc-cni", {
    "clusterName": "tensile-dev", "addonName": "vpc-cni", "configurationValues": '{"enableNetworkPolicy": "true"}',
    "tags": TAGS}, {"clusterName": [CLUSTER]})
SCOPED_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::ckpt/teams/vision/*"}]}
ROLE_POLICY = res("aws:iam/rolePolicy:RolePolicy", "team-policy", {"role": "r", "policy": json.dumps(SCOPED_POLICY)})
POD_IDENTITY = res("aws:eks/podIdentityAssociation:PodIdentityAssociation", "vision-identity", {
    "clusterName": "tensile-dev", "namespace": "vision", "serviceAccount": "trainer", "roleArn": U, "tags": TAGS})
IRSA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
    "Principal": {"Federated": "arn:aws:iam::1:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/X"},
    "Condition": {"StringEquals": {
        "oidc.eks.us-east-1.amazonaws.com/id/X:sub": "system:serviceaccount:vision:trainer"}}}]}
IRSA_ROLE = res("aws:iam/role:Role", "vision-irsa", {"assumeRolePolicy": json.dumps(IRSA_TRUST), "tags": TAGS})
ACCESS_POINT = res("aws:efs/accessPoint:AccessPoint", "shared-vision", {
    "fileSystemId": "shared-id", "rootDirectory": {"path": "/teams/vision"},
    "tags": {**TAGS, "tensile.io/team": "vision"}})

# A namespace the stack forgot to label: outside the system namespaces, so still a team's (its own name).
UNLABELLED_NAMESPACE = res("kubernetes:core/v1:Namespace", "research-ns", {"metadata": {"name": "research"}})
UNLABELLED_QUOTA = edit(edit({**QUOTA, "urn": urn(QUOTA["type"], "research-quota"), "name": "research-quota"},
                             "metadata.namespace", "research"), "spec.hard", {"requests.nvidia.com/gpu": "8"})
UNLABELLED_DENY = edit({**DEFAULT_DENY, "urn": urn(DEFAULT_DENY["type"], "research-deny"), "name": "research-deny"},
                       "metadata.namespace", "research")
UNLABELLED_TEAM = [TEAM_BUDGETS, CLUSTER_QUEUE, UNLABELLED_NAMESPACE, UNLABELLED_QUOTA, UNLABELLED_DENY]

STORAGE = [BUCKET, VERSIONING, SSE, PUBLIC_BLOCK, TLS_POLICY]
EFS_STACK = [EFS, SUBNET_A, SUBNET_B, mount_target(SUBNET_A), mount_target(SUBNET_B)]
TEAM_NAMESPACE = [TEAM_BUDGETS, NAMESPACE, QUOTA, DEFAULT_DENY]


def replace(resources: list[dict], old: dict, new: dict | None) -> list[dict]:
    return [new if r is old else r for r in resources if not (r is old and new is None)]


# -- the table -------------------------------------------------------------------------------------

@dataclass
class Case:
    rule: str
    expect: str
    """"pass", "mandatory" or "advisory"."""
    subject: dict | list
    """One resource (Analyze) or a whole stack (AnalyzeStack)."""
    config: dict = field(default_factory=dict)
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.expect}" + (f":{self.note}" if self.note else "")


CASES = [
    # compute
    Case("gpu-nodepool-gpu-limit", "pass", NODE_POOL),
    Case("gpu-nodepool-gpu-limit", "mandatory", edit(NODE_POOL, "spec.limits", {"cpu": "64"})),
    Case("gpu-nodepool-gpu-limit", "mandatory", NODE_POOL, {"maxGpusPerPool": 2}, "config"),
    Case("gpu-nodepool-gpu-limit", "advisory", edit(NODE_POOL, "spec.limits.nvidia.com/gpu", U)),
    Case("gpu-nodepool-gpu-taint", "pass", NODE_POOL),
    Case("gpu-nodepool-gpu-taint", "mandatory", edit(NODE_POOL, "spec.template.spec.taints", [])),
    Case("gpu-nodepool-gpu-taint", "advisory", edit(NODE_POOL, "spec.template.spec.taints", U)),
    Case("gpu-nodepool-one-gpu-model", "pass", NODE_POOL),
    Case("gpu-nodepool-one-gpu-model", "mandatory",
         edit(NODE_POOL, "spec.template.spec.requirements[1].values", ["g6.xlarge", "g6e.xlarge"])),
    Case("gpu-nodepool-one-gpu-model", "advisory", edit(NODE_POOL, "spec.template.spec.requirements[1].values", U)),
    Case("gpu-nodepool-on-demand-fallback", "pass", NODE_POOL),
    Case("gpu-nodepool-on-demand-fallback", "mandatory",
         edit(NODE_POOL, "spec.template.spec.requirements[0].values", ["reserved", "spot"])),
    Case("gpu-nodepool-on-demand-fallback", "advisory", edit(NODE_POOL, "spec.template.spec.requirements[0]", U)),
    Case("ec2nodeclass-imdsv2", "pass", NODE_CLASS),
    Case("ec2nodeclass-imdsv2", "mandatory", edit(NODE_CLASS, "spec.metadataOptions.httpPutResponseHopLimit", 3)),
    Case("ec2nodeclass-imdsv2", "pass", edit(NODE_CLASS, "spec.metadataOptions.httpPutResponseHopLimit", 3),
         {"maxHopLimit": 3}, "config"),
    Case("ec2nodeclass-imdsv2", "mandatory", edit(NODE_CLASS, "spec.metadataOptions.httpTokens", "optional"),
         note="imdsv1"),
    Case("ec2nodeclass-imdsv2", "advisory", edit(NODE_CLASS, "spec.metadataOptions.httpPutResponseHopLimit", U)),
    Case("ec2nodeclass-encrypted-volumes", "pass", NODE_CLASS),
    Case("ec2nodeclass-encrypted-volumes", "mandatory", edit(NODE_CLASS, "spec.blockDeviceMappings[0].ebs.encrypted",
                                                             False)),
    Case("ec2nodeclass-encrypted-volumes", "advisory",
         edit(NODE_CLASS, "spec.blockDeviceMappings[0].ebs.encrypted", U)),
    Case("system-nodegroup-on-demand", "pass", NODE_GROUP),
    Case("system-nodegroup-on-demand", "mandatory", edit(NODE_GROUP, "capacityType", "SPOT")),
    Case("system-nodegroup-on-demand", "advisory", edit(NODE_GROUP, "capacityType", U)),
    # Fail closed: a node group without the role label is a system group; only another role exempts it.
    Case("system-nodegroup-on-demand", "mandatory", edit(edit(NODE_GROUP, "labels", DELETE), "capacityType", "SPOT"),
         note="forgot-label"),
    Case("system-nodegroup-on-demand", "pass", edit(edit(NODE_GROUP, "labels.tensile.io/node-role", "batch"),
                                                    "capacityType", "SPOT"), note="other-role"),
    Case("system-nodegroup-on-demand", "advisory", edit(edit(NODE_GROUP, "labels", U), "capacityType", "SPOT"),
         note="labels-unknown"),
    Case("system-pods-off-spot", "pass", KARPENTER),
    Case("system-pods-off-spot", "mandatory", edit(KARPENTER, "values.nodeSelector", {})),
    Case("system-pods-off-spot", "mandatory", res("kubernetes:apps/v1:Deployment", "rdzv", {
        "metadata": {"namespace": "tensile-system"}, "spec": {"template": {"spec": {
            "nodeSelector": {"karpenter.sh/capacity-type": "spot"}, "containers": [CONTAINER]}}}}), note="deployment"),
    Case("system-pods-off-spot", "advisory", edit(KARPENTER, "values", U)),
    # cost
    Case("stack-budget-with-notifications", "pass", [BUDGET]),
    Case("stack-budget-with-notifications", "mandatory", [edit(BUDGET, "notifications", [BUDGET["inputs"]
                                                                                         ["notifications"][0]])]),
    Case("stack-budget-with-notifications", "pass", [edit(BUDGET, "notifications", [BUDGET["inputs"]
                                                                                    ["notifications"][0]])],
         {"requireForecast": False}, "config"),
    Case("stack-budget-with-notifications", "mandatory", [TEAM_BUDGETS], note="none"),
    Case("stack-budget-with-notifications", "advisory", [edit(BUDGET, "notifications", U)]),
    Case("team-has-budget", "pass", [TEAM_BUDGETS, NAMESPACE]),
    Case("team-has-budget", "mandatory", [TEAM_BUDGETS, edit(NAMESPACE, "metadata.labels.tensile.io/team", "llm")]),
    Case("team-has-budget", "advisory", [edit(TEAM_BUDGETS, "data", U), NAMESPACE]),
    # Fail closed: an unlabelled namespace that can run GPU pods is a team with no budget entry.
    Case("team-has-budget", "mandatory", UNLABELLED_TEAM, note="forgot-label"),
    Case("team-has-budget", "pass", replace(UNLABELLED_TEAM, UNLABELLED_QUOTA, edit(
        UNLABELLED_QUOTA, "spec.hard", {"requests.nvidia.com/gpu": "0", "pods": "10"})), note="gpus-capped-at-0"),
    # Kubernetes counts an extended resource's quota under `requests.` only: `limits.` caps nothing.
    Case("team-has-budget", "mandatory", replace(UNLABELLED_TEAM, UNLABELLED_QUOTA, edit(
        UNLABELLED_QUOTA, "spec.hard", {"limits.nvidia.com/gpu": "0", "pods": "10"})), note="gpu-limits-cap-nothing"),
    Case("team-has-budget", "pass", UNLABELLED_TEAM, {"systemNamespaces": ["research"]}, "config"),
    Case("team-has-budget", "advisory", replace(UNLABELLED_TEAM, UNLABELLED_QUOTA, edit(
        UNLABELLED_QUOTA, "spec.hard", {"requests.nvidia.com/gpu": U})), note="gpu-cap-unknown"),
    Case("team-has-queue-quota", "pass", [TEAM_BUDGETS, CLUSTER_QUEUE]),
    Case("team-has-queue-quota", "mandatory", [TEAM_BUDGETS, edit(CLUSTER_QUEUE, "spec.resourceGroups[0].flavors[0]"
                                                                  ".resources[0].borrowingLimit", DELETE)]),
    Case("team-has-queue-quota", "mandatory", [TEAM_BUDGETS, edit(CLUSTER_QUEUE, "metadata.name", "llm")],
         note="no-queue"),
    Case("team-has-queue-quota", "advisory", [TEAM_BUDGETS, edit(CLUSTER_QUEUE, "spec.resourceGroups", U)]),
    Case("team-has-queue-quota", "advisory", [TEAM_BUDGETS], note="no-kueue"),
    Case("team-has-queue-quota", "mandatory", UNLABELLED_TEAM, note="forgot-label"),
    # 4 L4 GPUs at g6.4xlarge's $1.3232/GPU-h = $3,864/month.
    Case("worst-case-cost-within-budget", "pass", [NODE_POOL, BUDGET]),
    Case("worst-case-cost-within-budget", "mandatory", [NODE_POOL, edit(BUDGET, "limitAmount", "3000.00")]),
    Case("worst-case-cost-within-budget", "pass", [NODE_POOL, edit(BUDGET, "limitAmount", "3000.00")],
         {"budgetFactor": 1.5}, "factor"),
    Case("worst-case-cost-within-budget", "mandatory", [NODE_POOL, BUDGET], {"prices": {"g6.4xlarge": 8.0}}, "prices"),
    # A second, larger budget that is not the stack's (no stack-tag filter) does not raise the ceiling.
    Case("worst-case-cost-within-budget", "mandatory", [NODE_POOL, edit(BUDGET, "limitAmount", "3000.00"), {
        **edit(BUDGET, "costFilters", DELETE), "urn": urn("aws:budgets/budget:Budget", "other"), "name": "other",
        "inputs": {**edit(BUDGET, "costFilters", DELETE)["inputs"], "limitAmount": "90000.00"}}], note="stack-budget"),
    Case("worst-case-cost-within-budget", "advisory", [edit(NODE_POOL, "spec.limits.nvidia.com/gpu", U), BUDGET]),
    # storage
    Case("s3-bucket-versioned", "pass", STORAGE),
    Case("s3-bucket-versioned", "mandatory", replace(STORAGE, VERSIONING, edit(VERSIONING, "versioningConfiguration",
                                                                               {"status": "Suspended"}))),
    Case("s3-bucket-versioned", "mandatory", replace(STORAGE, VERSIONING, {**VERSIONING, "property_dependencies": {}}),
         note="joined-by-name-only"),
    Case("s3-bucket-versioned", "advisory", replace(STORAGE, VERSIONING, edit(VERSIONING, "versioningConfiguration",
                                                                              U))),
    Case("s3-bucket-kms-encrypted", "pass", STORAGE),
    Case("s3-bucket-kms-encrypted", "mandatory", replace(STORAGE, SSE, edit(
        SSE, "rules[0].applyServerSideEncryptionByDefault.sseAlgorithm", "AES256"))),
    Case("s3-bucket-kms-encrypted", "advisory", replace(STORAGE, SSE, edit(
        SSE, "rules[0].applyServerSideEncryptionByDefault.sseAlgorithm", U))),
    Case("s3-bucket-public-access-blocked", "pass", STORAGE),
    Case("s3-bucket-public-access-blocked", "mandatory", replace(STORAGE, PUBLIC_BLOCK, None)),
    Case("s3-bucket-public-access-blocked", "advisory",
         replace(STORAGE, PUBLIC_BLOCK, edit(PUBLIC_BLOCK, "restrictPublicBuckets", U))),
    Case("s3-bucket-tls-only", "pass", STORAGE),
    Case("s3-bucket-tls-only", "mandatory", replace(STORAGE, TLS_POLICY, edit(TLS_POLICY, "policy", json.dumps(
        {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn/*"}]})))),
    # At a real preview the policy text is computed from the bucket's ARN: unknown.
    Case("s3-bucket-tls-only", "advisory", replace(STORAGE, TLS_POLICY, edit(TLS_POLICY, "policy", U))),
    Case("efs-encrypted", "pass", EFS),
    Case("efs-encrypted", "mandatory", edit(EFS, "encrypted", False)),
    Case("efs-encrypted", "advisory", edit(EFS, "encrypted", U)),
    Case("efs-multi-az-mount-targets", "pass", EFS_STACK),
    Case("efs-multi-az-mount-targets", "mandatory", [EFS, SUBNET_A, mount_target(SUBNET_A)]),
    Case("efs-multi-az-mount-targets", "advisory",
         [EFS, SUBNET_A, edit(SUBNET_B, "availabilityZone", U), mount_target(SUBNET_A), mount_target(SUBNET_B)]),
    # kubernetes
    Case("training-pod-resources", "pass", TRAINING_JOB),
    Case("training-pod-resources", "mandatory",
         edit(TRAINING_JOB, "spec.template.spec.containers[0].resources.limits.memory", DELETE)),
    Case("training-pod-resources", "mandatory",
         edit(TRAINING_JOB, "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", DELETE), note="gpu"),
    Case("training-pod-resources", "advisory", edit(TRAINING_JOB, "spec.template.spec.containers[0].resources", U)),
    Case("training-pod-termination-grace", "pass", TRAINING_JOB),
    Case("training-pod-termination-grace", "mandatory",
         edit(TRAINING_JOB, "spec.template.spec.terminationGracePeriodSeconds", DELETE)),
    Case("training-pod-termination-grace", "mandatory", TRAINING_JOB, {"minSeconds": 600}, "config"),
    Case("training-pod-termination-grace", "advisory",
         edit(TRAINING_JOB, "spec.template.spec.terminationGracePeriodSeconds", U)),
    Case("training-pod-no-do-not-disrupt", "pass", TRAINING_JOB),
    Case("training-pod-no-do-not-disrupt", "mandatory", edit(TRAINING_JOB, "spec.template.metadata.annotations",
                                                             {"karpenter.sh/do-not-disrupt": "true"})),
    Case("training-pod-no-do-not-disrupt", "advisory", edit(TRAINING_JOB, "spec.template.metadata.annotations", U)),
    Case("gpu-nodepool-keeps-training-nodes", "pass", NODE_POOL),
    Case("gpu-nodepool-keeps-training-nodes", "mandatory",
         edit(NODE_POOL, "spec.disruption", {"consolidationPolicy": "WhenEmptyOrUnderutilized", "budgets": []})),
    Case("gpu-nodepool-keeps-training-nodes", "mandatory",
         edit(NODE_POOL, "spec.disruption.budgets[0].reasons", ["Underutilized"]), note="drift"),
    Case("gpu-nodepool-keeps-training-nodes", "advisory", edit(NODE_POOL, "spec.disruption", U)),
    Case("no-privileged-containers", "pass", TRAINING_JOB),
    Case("no-privileged-containers", "mandatory", edit(TRAINING_JOB, "spec.template.spec.containers[0].securityContext",
                                                       {"privileged": True})),
    Case("no-privileged-containers", "advisory", edit(TRAINING_JOB, "spec.template.spec.containers[0].securityContext",
                                                      {"privileged": U})),
    Case("no-latest-images", "pass", TRAINING_JOB),
    Case("no-latest-images", "pass", edit(TRAINING_JOB, "spec.template.spec.containers[0].image",
                                          "registry:5000/trainer@sha256:" + "a" * 64), note="digest"),
    Case("no-latest-images", "mandatory", edit(TRAINING_JOB, "spec.template.spec.containers[0].image",
                                               "registry:5000/tensile/trainer:latest")),
    Case("no-latest-images", "mandatory", edit(TRAINING_JOB, "spec.template.spec.containers[0].image",
                                               "registry:5000/tensile/trainer"), note="untagged"),
    Case("no-latest-images", "advisory", edit(TRAINING_JOB, "spec.template.spec.containers[0].image", U)),
    Case("team-namespace-resource-quota", "pass", TEAM_NAMESPACE),
    Case("team-namespace-resource-quota", "pass", [
        TEAM_BUDGETS, edit(NAMESPACE, "metadata.name", U),
        {**edit(QUOTA, "metadata.namespace", U), "property_dependencies": {"metadata": [NAMESPACE["urn"]]}}],
         note="joined-by-urn"),
    Case("team-namespace-resource-quota", "mandatory", replace(TEAM_NAMESPACE, QUOTA, None)),
    Case("team-namespace-resource-quota", "advisory", replace(TEAM_NAMESPACE, QUOTA, edit(QUOTA, "spec.hard", U))),
    # Fail closed: every namespace outside systemNamespaces is a team's, labelled or not.
    Case("team-namespace-resource-quota", "mandatory", replace(UNLABELLED_TEAM, UNLABELLED_QUOTA, None),
         note="forgot-label"),
    Case("team-namespace-resource-quota", "pass", [edit(UNLABELLED_NAMESPACE, "metadata.name", "karpenter")],
         note="system-namespace"),
    Case("team-namespace-resource-quota", "pass", replace(UNLABELLED_TEAM, UNLABELLED_QUOTA, None),
         {"systemNamespaces": ["research"]}, "config"),
    Case("team-namespace-default-deny", "pass", TEAM_NAMESPACE),
    Case("team-namespace-default-deny", "mandatory", replace(TEAM_NAMESPACE, DEFAULT_DENY, edit(
        DEFAULT_DENY, "spec.ingress", [{"from": [{"podSelector": {}}]}]))),
    Case("team-namespace-default-deny", "advisory", replace(TEAM_NAMESPACE, DEFAULT_DENY,
                                                            edit(DEFAULT_DENY, "spec", U))),
    Case("team-namespace-default-deny", "mandatory", replace(UNLABELLED_TEAM, UNLABELLED_DENY, None),
         note="forgot-label"),
    Case("team-namespace-default-deny", "mandatory", [edit(UNLABELLED_NAMESPACE, "metadata", {})],
         note="unnamed"),
    Case("vpc-cni-network-policy", "pass", [CLUSTER, VPC_CNI]),
    Case("vpc-cni-network-policy", "mandatory", [CLUSTER, edit(VPC_CNI, "configurationValues", "{}")]),
    Case("vpc-cni-network-policy", "mandatory", [CLUSTER], note="no-addon"),
    Case("vpc-cni-network-policy", "advisory", [CLUSTER, edit(VPC_CNI, "configurationValues", U)]),
    # security
    Case("iam-no-wildcard-admin", "pass", ROLE_POLICY),
    Case("iam-no-wildcard-admin", "mandatory", edit(ROLE_POLICY, "policy", json.dumps(
        {"Statement": [{"Sid": "Admin", "Effect": "Allow", "Action": "*", "Resource": "*"}]}))),
    Case("iam-no-wildcard-admin", "advisory", edit(ROLE_POLICY, "policy", U)),
    Case("pod-identity-scoped", "pass", POD_IDENTITY),
    Case("pod-identity-scoped", "pass", IRSA_ROLE, note="irsa"),
    Case("pod-identity-scoped", "mandatory", edit(POD_IDENTITY, "serviceAccount", "*")),
    Case("pod-identity-scoped", "mandatory", edit(IRSA_ROLE, "assumeRolePolicy", json.dumps(
        {"Statement": [{**IRSA_TRUST["Statement"][0], "Condition": {"StringLike": {
            "oidc.eks.us-east-1.amazonaws.com/id/X:sub": "system:serviceaccount:vision:*"}}}]})), note="irsa"),
    Case("pod-identity-scoped", "advisory", edit(POD_IDENTITY, "serviceAccount", U)),
    Case("eks-secrets-encrypted", "pass", CLUSTER),
    Case("eks-secrets-encrypted", "mandatory", edit(CLUSTER, "encryptionConfig", DELETE)),
    Case("eks-secrets-encrypted", "advisory", edit(CLUSTER, "encryptionConfig.resources", U)),
    Case("eks-api-not-open", "pass", CLUSTER),
    Case("eks-api-not-open", "mandatory", edit(CLUSTER, "vpcConfig.publicAccessCidrs", ["0.0.0.0/0"])),
    Case("eks-api-not-open", "mandatory", edit(CLUSTER, "vpcConfig", {"endpointPrivateAccess": True}),
         note="eks-default-open"),
    Case("eks-api-not-open", "pass", edit(edit(CLUSTER, "vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]),
                                          "tags.tensile.io/environment", "dev"), note="dev"),
    Case("eks-api-not-open", "mandatory", edit(edit(CLUSTER, "vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]),
                                               "tags.tensile.io/environment", "dev"), {"environments": ["dev", "prod"]},
         "config"),
    Case("eks-api-not-open", "advisory", edit(CLUSTER, "vpcConfig.publicAccessCidrs", U)),
    # Fail closed: a cluster without the environment tag is in every listed environment's scope.
    Case("eks-api-not-open", "mandatory", edit(edit(CLUSTER, "vpcConfig.publicAccessCidrs", ["0.0.0.0/0"]),
                                               "tags.tensile.io/environment", DELETE), note="forgot-tag"),
    # tagging
    Case("aws-stack-tags", "pass", BUCKET),
    Case("aws-stack-tags", "mandatory", edit(BUCKET, "tags.tensile.io/cost-centre", DELETE)),
    Case("aws-stack-tags", "mandatory", edit(BUCKET, "tags", DELETE), note="untagged"),
    Case("aws-stack-tags", "mandatory", edit(BUCKET, "tags.tensile.io/stack", "prod"), note="wrong-stack"),
    Case("aws-stack-tags", "mandatory", edit(NODE_CLASS, "spec.tags", {}), note="nodeclass"),
    Case("aws-stack-tags", "advisory", edit(BUCKET, "tags", U)),
    Case("team-resources-tagged", "pass", ACCESS_POINT),
    Case("team-resources-tagged", "mandatory", edit(ACCESS_POINT, "tags.tensile.io/team", "llm")),
    Case("team-resources-tagged", "advisory", edit(ACCESS_POINT, "tags.tensile.io/team", U)),
]


def run_case(analyzer, case: Case) -> list:
    analyzer.configure({case.rule: case.config} if case.config else None)
    if isinstance(case.subject, list):
        response = analyzer.analyze_stack(case.subject)
    else:
        response = analyzer.analyze(case.subject)
    return [d for d in response.diagnostics if d.policyName == case.rule]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_on_synthetic_properties(analyzer, case):
    diagnostics = run_case(analyzer, case)
    levels = sorted({"mandatory" if d.enforcementLevel == 1 else "advisory" for d in diagnostics})
    messages = "\n".join(d.message for d in diagnostics)
    if case.expect == "pass":
        assert diagnostics == [], messages
    elif case.expect == "mandatory":
        assert "mandatory" in levels, messages
    else:
        assert levels == ["advisory"], messages
        assert "unknown at preview" in messages or "no Kueue objects" in messages


def test_every_rule_has_a_passing_failing_and_unknown_case():
    kinds: dict[str, set[str]] = {}
    for case in CASES:
        kinds.setdefault(case.rule, set()).add(case.expect)
    assert set(kinds) == set(pack.BY_NAME)
    assert {name for name, seen in kinds.items() if seen != {"pass", "mandatory", "advisory"}} == set()


def test_rule_names_are_unique_kebab_case_and_match_what_the_pack_serves(analyzer):
    served = [p.name for p in analyzer.info().policies]
    assert served == [r.name for r in pack.RULES]
    assert len(set(served)) == len(served)
    assert all(name == name.lower() and " " not in name and "_" not in name for name in served)


def test_unknown_cases_really_carry_the_sentinel():
    for case in CASES:
        if case.expect == "advisory" and case.note != "no-kueue":
            assert U in json.dumps(case.subject), case.id
    assert U in UNKNOWN_SENTINELS


def _in_process(rule, case: Case) -> str:
    """The verdict of `rule` on a case without gRPC (same plain data the pack hands its rules)."""
    from policies.framework import Resource, Stack

    def convert(r: dict) -> Resource:
        return Resource(urn=r["urn"], type=r["type"], name=r["name"], props=r["inputs"],
                        property_dependencies={k: tuple(v) for k, v in r["property_dependencies"].items()})

    subject = Stack(map(convert, case.subject)) if isinstance(case.subject, list) else convert(case.subject)
    report = rule.evaluate(subject, case.config)
    return "mandatory" if report.violations else "advisory" if report.unknowns else "pass"


def test_every_rule_broken_on_purpose_fails_its_cases():
    """A rule whose check does nothing must fail at least one of its cases: no case passes vacuously."""
    import dataclasses

    for case in CASES:
        assert _in_process(pack.BY_NAME[case.rule], case) == case.expect, case.id
    undetected = []
    for rule in pack.RULES:
        broken = dataclasses.replace(rule, check=lambda subject, config, report: None)
        if all(_in_process(broken, c) == c.expect for c in CASES if c.rule == rule.name):
            undetected.append(rule.name)
    assert undetected == []
