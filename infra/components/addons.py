"""In-cluster add-ons as pinned Helm releases with explicit values: Kueue (batch/Job integration,
waitForPodsReady), the NVIDIA device plugin, DCGM exporter, metrics-server and the EFS CSI driver
with its StorageClass. Karpenter owns node interruptions: no second handler is installed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.components.cluster import assume_role_policy
from infra.config.types import PlatformConfig
from infra.plan import teams as team_plan
from infra.plan.pools import GPU_TAINT, SYSTEM_NODE_LABEL
from infra.plan.system_capacity import SYSTEM_TOLERATION

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
KUEUE_CRD_DIR = CRD_DIR / "kueue"
SERVICE_MONITOR_CRD = CRD_DIR / "prometheus-operator" / "monitoring.coreos.com_servicemonitors.yaml"
CHART_DIR = Path(__file__).resolve().parents[1] / "charts"
KUEUE_RELEASE = "kueue"
# The CRDs whose conversion webhook Kueue serves and whose caBundle it injects (Kueue
# pkg/util/cert/cert.go, v0.19.2); the chart's CRD templates carry the same stanza.
KUEUE_CONVERTED_CRDS = ("localqueues", "clusterqueues", "workloads", "cohorts", "multikueueclusters")
KUEUE_NAMESPACE = "kueue-system"
EFS_CSI_SERVICE_ACCOUNT = "efs-csi-controller-sa"
EFS_STORAGE_CLASS = "efs-ap"
EFS_CSI_PLUGIN_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
EFS_CSI_SIDECAR_REQUESTS = {"cpu": "10m", "memory": "32Mi"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Chart:
    name: str
    chart: str
    version: str
    namespace: str
    repository: str | None = None
    """None for OCI charts (the chart field holds the oci:// address) and vendored ones."""
    vendored: bool = False
    """Installed from infra/charts/<name>-<version>/ (a chart changed there; that folder's README)."""

    def source(self) -> str:
        """What the release's `chart` input names: the address, or for a vendored chart its folder
        relative to the working directory, which is infra/ for the program and its provider
        (Pulumi runs both in the `main` folder), so the input is the same on every machine."""
        if self.vendored:
            return os.path.relpath(CHART_DIR / f"{self.name}-{self.version}")
        return self.chart


# Versions match the CRD schemas vendored in infra/crds (Kueue 0.19.2) and shared/REFERENCE.md §4.
CHARTS: dict[str, Chart] = {c.name: c for c in (
    # Vendored without its templates/crd/: the program owns every Kueue CRD (docs/design/job.md).
    Chart(name=KUEUE_RELEASE, chart="oci://registry.k8s.io/kueue/charts/kueue", version="0.19.2",
          namespace=KUEUE_NAMESPACE, vendored=True),
    Chart(name="nvidia-device-plugin", chart="nvidia-device-plugin", version="0.20.0", namespace="kube-system",
          repository="https://nvidia.github.io/k8s-device-plugin"),
    Chart(name="dcgm-exporter", chart="dcgm-exporter", version="4.8.2", namespace="kube-system",
          repository="https://nvidia.github.io/dcgm-exporter/helm-charts"),
    Chart(name="metrics-server", chart="metrics-server", version="3.13.1", namespace="kube-system",
          repository="https://kubernetes-sigs.github.io/metrics-server/"),
    Chart(name="aws-efs-csi-driver", chart="aws-efs-csi-driver", version="4.4.1", namespace="kube-system",
          repository="https://kubernetes-sigs.github.io/aws-efs-csi-driver/"),
)}
KUEUE_IMAGE_TAG = "v0.19.2"

GPU_TOLERATION = {"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}
# Karpenter labels every node it launches with its GPU count; this needs no node-feature-discovery.
GPU_NODE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
    "matchExpressions": [{"key": "karpenter.k8s.aws/instance-gpu-count", "operator": "Gt", "values": ["0"]}]}]}}}


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def kueue_crds(directory: Path = KUEUE_CRD_DIR, namespace: str = KUEUE_NAMESPACE) -> list[dict]:
    """Every Kueue CRD (kubernetes-sigs/kueue v0.19.2), as the chart's templates would render
    them for the release `kueue`: the converted kinds get the conversion webhook of the
    release's webhook Service (its caBundle is injected by Kueue's own cert rotator)."""
    crds = []
    for path in sorted(directory.glob("*.yaml")):
        crd = _load(path)
        if crd["spec"]["names"]["plural"] in KUEUE_CONVERTED_CRDS:
            crd["spec"] = {**crd["spec"], "conversion": {"strategy": "Webhook", "webhook": {
                "clientConfig": {"service": {"name": f"{KUEUE_RELEASE}-webhook-service", "namespace": namespace,
                                             "path": "/convert"}},
                "conversionReviewVersions": ["v1"]}}}
        crds.append(crd)
    return crds


def service_monitor_crd() -> dict:
    """prometheus-operator v0.93.0's ServiceMonitor CRD (infra/crds/prometheus-operator)."""
    return _load(SERVICE_MONITOR_CRD)


def kueue_manager_config(platform: PlatformConfig) -> dict:
    """Kueue's Configuration (the chart takes it whole, as text)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
        "health": {"healthProbeBindAddress": ":8081"},
        "metrics": {"bindAddress": ":8443", "enableClusterQueueResources": True},
        "webhook": {"port": 9443},
        "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
        # Every Job in a team namespace is Kueue's, labelled or not: an unlabelled one is given
        # the namespace's LocalQueue `default` (which every team has) and waits for admission
        # like any other. Nowhere else: the selector keeps system namespaces out.
        "manageJobsWithoutQueueName": True,
        "managedJobsNamespaceSelector": dict(team_plan.KUEUE_MANAGED_NAMESPACES),
        "waitForPodsReady": {
            # An admitted job whose pods are not all ready in time (no capacity came) is evicted
            # and requeued with backoff instead of holding quota while pending.
            "timeout": platform.pods_ready_timeout,
            # 0s turns the recovery timeout off. For a batch/v1 Job Kueue's PodsReady means
            # ready >= admitted parallelism, so any recovery timeout would evict a job that lost
            # one spot worker while still at or above its minimum (docs/design/job.md).
            "recoveryTimeout": "0s",
            "blockAdmission": False,
            "requeuingStrategy": {"timestamp": "Eviction", "backoffBaseSeconds": 60, "backoffMaxSeconds": 1800},
        },
        # Tensile's jobs are batch/v1 Indexed Jobs (partial admission is a batch/Job feature).
        "integrations": {"frameworks": ["batch/job"]},
        # EFA interfaces and hugepages are per-node devices, not team quota.
        "resources": {"excludeResourcePrefixes": ["vpc.amazonaws.com/efa", "hugepages-"]},
    }


def kueue_values(platform: PlatformConfig) -> dict:
    return {
        "controllerManager": {
            "replicas": 2,
            "manager": {"image": {"repository": "registry.k8s.io/kueue/kueue", "tag": KUEUE_IMAGE_TAG,
                                  "pullPolicy": "IfNotPresent"},
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                                      "limits": {"cpu": "2", "memory": "1Gi"}}},
            "nodeSelector": dict(SYSTEM_NODE_LABEL),
            # The chart tolerates nothing; system nodes carry CriticalAddonsOnly (plan/system_capacity.py).
            "tolerations": [dict(SYSTEM_TOLERATION)],
            "featureGates": [],
        },
        "enablePrometheus": platform.prometheus_operator,
        "enableCertManager": False,
        "managerConfig": {"controllerManagerConfigYaml": yaml.safe_dump(kueue_manager_config(platform), sort_keys=False)},
    }


def device_plugin_values() -> dict:
    return {"affinity": GPU_NODE_AFFINITY, "tolerations": [GPU_TOLERATION], "gfd": {"enabled": False},
            "nfd": {"enabled": False}, "priorityClassName": "system-node-critical",
            "deviceListStrategy": "envvar", "failOnInitError": True}


def dcgm_values(platform: PlatformConfig) -> dict:
    return {"affinity": GPU_NODE_AFFINITY, "tolerations": [GPU_TOLERATION],
            # The ServiceMonitor kind exists only with a Prometheus operator's CRDs.
            "serviceMonitor": {"enabled": platform.prometheus_operator},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}}


def metrics_server_values() -> dict:
    return {"replicas": 2, "nodeSelector": dict(SYSTEM_NODE_LABEL), "tolerations": [dict(SYSTEM_TOLERATION)],
            "args": ["--kubelet-preferred-address-types=InternalIP"],
            "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"cpu": "500m", "memory": "400Mi"}}}


def efs_csi_values(file_system_id: str) -> dict:
    return {
        # Rendered without hooks (a v4 Chart or `helm template` skips them) the CSIDriver object
        # must be a plain template, not a hook.
        "useHelmHooksForCSIDriver": False,
        "replicaCount": 2,
        # The chart requests nothing by default; explicit requests let the system nodes be sized
        # (plan/system_capacity.py) and the scheduler count them. The controller's chart default
        # tolerations include CriticalAddonsOnly.
        "controller": {"serviceAccount": {"create": True, "name": EFS_CSI_SERVICE_ACCOUNT},
                       "nodeSelector": dict(SYSTEM_NODE_LABEL), "resources": {"requests": EFS_CSI_PLUGIN_REQUESTS}},
        "sidecars": {sidecar: {"resources": {"requests": EFS_CSI_SIDECAR_REQUESTS}}
                     for sidecar in ("livenessProbe", "nodeDriverRegistrar", "csiProvisioner")},
        # The node plugin must run on every node, GPU nodes included: volumes are mounted there.
        "node": {"tolerations": [{"operator": "Exists"}], "resources": {"requests": EFS_CSI_PLUGIN_REQUESTS}},
        "storageClasses": [{"name": EFS_STORAGE_CLASS, "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate",
                            "mountOptions": ["tls"],
                            "parameters": {"provisioningMode": "efs-ap", "fileSystemId": file_system_id,
                                           "directoryPerms": "700", "basePath": "/dynamic"}}],
    }


@dataclass(frozen=True, kw_only=True)
class AddonsArgs:
    platform: PlatformConfig
    cluster_name: pulumi.Input[str]
    file_system_id: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: tuple = ()
    """What the releases wait for (the system nodes, Karpenter)."""


class Addons(pulumi.ComponentResource):
    kueue_crds: list[k8s.apiextensions.v1.CustomResourceDefinition]
    kueue: k8s.helm.v3.Release

    def __init__(self, name: str, args: AddonsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Addons", name, None, opts)
        k8s_child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        platform = args.platform

        # The program owns every Kueue CRD (the vendored chart renders none): custom resources
        # of the program preview on a first `up` only if their CRDs are resources too, and a
        # Helm uninstall or a rollback would delete CRDs that were chart templates, and every
        # Kueue object with them. retainOnDelete: deleting a CRD deletes all its objects.
        crd_opts = pulumi.ResourceOptions.merge(k8s_child, pulumi.ResourceOptions(retain_on_delete=True))
        self.kueue_crds = [
            k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd-{crd['spec']['names']['plural']}", metadata=crd["metadata"], spec=crd["spec"], opts=crd_opts)
            for crd in kueue_crds()]
        # ServiceMonitors (Kueue's and DCGM's) need their CRD before either release installs:
        # Helm maps every object of a release before creating any.
        monitoring_crds = []
        if platform.prometheus_operator:
            crd = service_monitor_crd()
            monitoring_crds.append(k8s.apiextensions.v1.CustomResourceDefinition(
                f"{name}-crd-{crd['spec']['names']['plural']}", metadata=crd["metadata"], spec=crd["spec"], opts=crd_opts))

        after = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        self.kueue = self._release(name, CHARTS["kueue"], kueue_values(platform), pulumi.ResourceOptions.merge(
            after, pulumi.ResourceOptions(depends_on=[*self.kueue_crds, *monitoring_crds])))
        self._release(name, CHARTS["nvidia-device-plugin"], device_plugin_values(), after)
        self._release(name, CHARTS["dcgm-exporter"], dcgm_values(platform),
                      pulumi.ResourceOptions.merge(after, pulumi.ResourceOptions(depends_on=monitoring_crds)))
        self._release(name, CHARTS["metrics-server"], metrics_server_values(), after)

        # EFS CSI controller identity through Pod Identity (AWS managed policy for the driver).
        role = aws.iam.Role(f"{name}-efs-csi-role", assume_role_policy=assume_role_policy(
            "pods.eks.amazonaws.com", tag_session=True), opts=pulumi.ResourceOptions(parent=self))
        aws.iam.RolePolicyAttachment(f"{name}-efs-csi-policy", role=role.name,
                                     policy_arn="arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy",
                                     opts=pulumi.ResourceOptions(parent=self))
        association = aws.eks.PodIdentityAssociation(
            f"{name}-efs-csi-identity", cluster_name=args.cluster_name, namespace="kube-system",
            service_account=EFS_CSI_SERVICE_ACCOUNT, role_arn=role.arn, opts=pulumi.ResourceOptions(parent=self))
        values = pulumi.Output.from_input(args.file_system_id).apply(efs_csi_values)
        self.efs_csi = self._release(name, CHARTS["aws-efs-csi-driver"], values,
                                     pulumi.ResourceOptions.merge(after, pulumi.ResourceOptions(depends_on=[association])))
        self.register_outputs({"charts": {c.name: c.version for c in CHARTS.values()},
                               "kueueCrds": [c.metadata.name for c in self.kueue_crds]})

    def _release(self, name: str, chart: Chart, values, opts: pulumi.ResourceOptions) -> k8s.helm.v3.Release:
        repo = k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository) if chart.repository else None
        return k8s.helm.v3.Release(
            f"{name}-{chart.name}", name=chart.name, chart=chart.source(), version=chart.version,
            namespace=chart.namespace, create_namespace=chart.namespace != "kube-system",
            repository_opts=repo, atomic=True, timeout=600, values=values, opts=opts)
