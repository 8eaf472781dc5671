"""Declare a plain Kubernetes manifest (a dict from a planner) as the matching typed
pulumi_kubernetes resource, so each object is its own resource that tests, the policy pack
and validation see with its real type token; custom resources go through CustomResource."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

_TYPED = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "ResourceQuota"): k8s.core.v1.ResourceQuota,
    ("v1", "LimitRange"): k8s.core.v1.LimitRange,
    ("v1", "PersistentVolume"): k8s.core.v1.PersistentVolume,
    ("v1", "PersistentVolumeClaim"): k8s.core.v1.PersistentVolumeClaim,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("batch/v1", "Job"): k8s.batch.v1.Job,
    ("batch/v1", "CronJob"): k8s.batch.v1.CronJob,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
    ("storage.k8s.io/v1", "StorageClass"): k8s.storage.v1.StorageClass,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"):
        k8s.admissionregistration.v1.ValidatingAdmissionPolicy,
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"):
        k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding,
}
# Top-level manifest fields other than apiVersion/kind/metadata, as resource arguments.
_FIELDS = {"spec": "spec", "data": "data", "rules": "rules", "subjects": "subjects", "roleRef": "role_ref",
           "automountServiceAccountToken": "automount_service_account_token", "provisioner": "provisioner",
           "parameters": "parameters", "reclaimPolicy": "reclaim_policy", "volumeBindingMode": "volume_binding_mode"}


def declare(resource_name: str, manifest: dict, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    unknown = set(manifest) - {"apiVersion", "kind", "metadata"} - set(_FIELDS)
    if unknown:
        raise ValueError(f"{kind} {resource_name}: fields {sorted(unknown)} have no resource argument mapping")
    kwargs = {_FIELDS[k]: v for k, v in manifest.items() if k in _FIELDS}
    typed = _TYPED.get((api_version, kind))
    if typed is not None:
        return typed(resource_name, metadata=manifest["metadata"], **kwargs, opts=opts)
    if "." not in api_version.split("/")[0]:
        raise ValueError(f"{api_version} {kind}: a built-in kind without a typed mapping; add it to _TYPED")
    return k8s.apiextensions.CustomResource(resource_name, api_version=api_version, kind=kind,
                                            metadata=manifest["metadata"], opts=opts,
                                            **{k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")})
