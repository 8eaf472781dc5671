"""The team budget enforcer (infra/enforcer.py) in the cluster: plain-stdlib Python run from a
pinned Python image with the module mounted from a ConfigMap, on the system nodes, with RBAC
limited to what it reads and patches (ClusterQueues, its two ConfigMaps)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from infra import enforcer
from infra.components.k8s_objects import declare
from infra.plan.pools import SYSTEM_NODE_LABEL
from infra.plan.system_capacity import SYSTEM_TOLERATION

IMAGE = "public.ecr.aws/docker/library/python:3.12.11-slim-bookworm"
"""Docker's official image through ECR Public (no Docker Hub rate limits), pinned by tag."""
NAME = "tensile-enforcer"
METRICS_PORT = 9102
SOURCE = Path(enforcer.__file__)


def enforcer_objects(source: str) -> list[dict]:
    ns = enforcer.NAMESPACE
    labels = {"app.kubernetes.io/name": NAME}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": ns, "labels": labels}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": NAME, "labels": labels},
         "rules": [{"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"], "verbs": ["get", "list", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": NAME, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": NAME, "namespace": ns, "labels": labels},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
                   {"apiGroups": [""], "resources": ["configmaps"],
                    "resourceNames": [enforcer.BUDGETS_CONFIGMAP, enforcer.SPEND_CONFIGMAP], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": NAME, "namespace": ns, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{NAME}-code", "namespace": ns, "labels": labels},
         "data": {"enforcer.py": source}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": ns, "labels": labels},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}}, "spec": {
                      "serviceAccountName": NAME, "nodeSelector": dict(SYSTEM_NODE_LABEL),
                      "tolerations": [dict(SYSTEM_TOLERATION)],
                      # The one container that calls the API gets its token through an explicit
                      # projected volume (short-lived, at the standard path) instead of automount.
                      "automountServiceAccountToken": False,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "enforcer", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                          "command": ["python", "/opt/tensile/enforcer.py", "--interval", "60",
                                      "--metrics-port", str(METRICS_PORT)],
                          "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                          "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                        "limits": {"cpu": "250m", "memory": "128Mi"}},
                          "readinessProbe": {"httpGet": {"path": "/metrics", "port": METRICS_PORT}, "periodSeconds": 30},
                          # /healthz fails once no pass has completed for 5 intervals (a 401 loop,
                          # a hung call): /metrics would keep answering with the last numbers.
                          "livenessProbe": {"httpGet": {"path": "/healthz", "port": METRICS_PORT}, "periodSeconds": 60,
                                            "failureThreshold": 3},
                          "volumeMounts": [{"name": "code", "mountPath": "/opt/tensile", "readOnly": True},
                                           {"name": "api-token", "mountPath": enforcer.SERVICE_ACCOUNT_DIR,
                                            "readOnly": True}],
                          "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                              "runAsNonRoot": True, "runAsUser": 65534,
                                              "capabilities": {"drop": ["ALL"]},
                                              "seccompProfile": {"type": "RuntimeDefault"}},
                      }],
                      "volumes": [{"name": "code", "configMap": {"name": f"{NAME}-code"}},
                                  {"name": "api-token", "projected": {"sources": [
                                      {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                                      {"configMap": {"name": "kube-root-ca.crt",
                                                     "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
                  }}}},
    ]


@dataclass(frozen=True, kw_only=True)
class BudgetEnforcerArgs:
    provider: k8s.Provider
    depends_on: tuple = ()
    """The enforcer namespace and its budgets ConfigMap, the Kueue CRDs."""


class BudgetEnforcer(pulumi.ComponentResource):
    def __init__(self, name: str, args: BudgetEnforcerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:BudgetEnforcer", name, None, opts)
        opts_k8s = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        objects = enforcer_objects(SOURCE.read_text())
        for manifest in objects:
            declare(f"{name}-{manifest['kind'].lower()}", manifest, opts_k8s)
        # Its only identity: it calls the Kubernetes API alone, so it has RBAC and no IAM role.
        self.service_account = f"{enforcer.NAMESPACE}/{NAME}"
        self.register_outputs({"image": IMAGE, "serviceAccount": self.service_account, "objects": [f"{m['kind']}/{m['metadata']['name']}" for m in objects]})
