"""The elastic training job as plain manifests: an Indexed Job of N..M worker pods (nodes) admitted by the
team's Kueue queue (partial admission down to N; an elastic Job the scaler resizes when the job has
a scaler), or a CronJob creating that Job on a schedule, a headless Service for the workers, and the
rendezvous store as its own small Deployment + Service on the on-demand system nodes.
Pure: `tensile job render` prints these, the TrainingJob component declares them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml
from tensile import contract

from infra import cost
from infra.config.types import GpuPoolConfig, JobConfig
from infra.plan import checkpoint_window
from infra.plan.pools import GPU_TAINT, SYSTEM_NODE_LABEL
from infra.plan.system_capacity import SYSTEM_TOLERATION
from infra.plan.teams import (GPU, GPU_NAME_LABEL, LOCAL_QUEUE, METRICS_PORT, RDZV_PORT, RDZV_STORE_REQUESTS, SHARED_PVC,
                             TEAM_LABEL, TRAINER_SERVICE_ACCOUNT, team_prefix)

JOB_LABEL = "tensile.io/job"
ROLE_LABEL = "tensile.io/role"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"
COMPLETIONS_EQUAL_PARALLELISM = "kueue.x-k8s.io/job-completions-equal-parallelism"
ELASTIC_JOB = "kueue.x-k8s.io/elastic-job"
"""Kueue's elastic Job (workload slices): parallelism may change while it runs; immutable."""
DELETION_PROPAGATION = "pulumi.com/deletionPropagationPolicy"
"""How Pulumi deletes the object (pulumi-kubernetes >= 4.12): `foreground` waits for its pods."""
SCALED_LABEL = "tensile.dev/scaled"
SCHEDULE_LABEL = "tensile.dev/schedule"
"""On a CronJob's jobTemplate, so on each run's Job: the schedule's name, by which the scaler
finds the run it sizes (tensile.cluster.observe reads the same label)."""
"""On the Jobs the scaler manages (docs/design/scaler.md)."""
JOB_NAME_POD_LABEL = "batch.kubernetes.io/job-name"
"""Set by the Job controller on every pod of a Job: a CronJob's run names its rendezvous by it."""
CRON_STARTING_DEADLINE_SECONDS = 3600
"""A run that could not start within an hour of its time (controller down, the previous run still
going) is skipped until the next: later still is a resume too, but not the slot asked for; and
without a deadline the CronJob controller gives up after 100 missed starts."""
CRON_HISTORY = 3
EFA_RESOURCE = "vpc.amazonaws.com/efa"
CONFIG_DIR = "/etc/tensile"
WORK_DIR = "/var/lib/tensile"
GRACE_MARGIN_SECONDS = 30
"""Above the measured emergency-checkpoint time: torchrun's shutdown and the pod's own exit."""
HEADROOM = 0.75
"""Share of a node's vCPUs and memory a worker requests: the rest is kubelet, system reserve and
the daemonsets every GPU node runs (VPC CNI, kube-proxy, device plugin, DCGM, EFS CSI, monitoring)."""

# EFA interfaces per instance type (EC2 "Supported instance types" for EFA, read 2026-11-28).
EFA_INTERFACES: dict[str, int] = {"g6e.24xlarge": 2, "g6e.48xlarge": 4, "p4d.24xlarge": 4, "p4de.24xlarge": 4,
                                  "p5.48xlarge": 32, "p5e.48xlarge": 32, "p5en.48xlarge": 16}


class JobPlanError(ValueError):
    """The job cannot be planned on this stack (no pool fits, a bad training config)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerShape:
    gpu_models: tuple[str, ...]
    gpus: int
    cpu: int
    memory_gib: int
    efa_interfaces: int


def worker_shape(job: JobConfig, team_models: tuple[str, ...], pools: tuple[GpuPoolConfig, ...]) -> WorkerShape:
    """Requests that fit every instance size of the job's GPU model(s) that has enough GPUs, so
    Karpenter may pick any of them (spot diversification)."""
    models = (job.gpu_model,) if job.gpu_model else team_models
    types = [t for p in pools if p.gpu_model in models for t in p.instance_types
             if cost.lookup(t).gpus >= job.gpus_per_worker]
    if not types:
        raise JobPlanError(f"no pool of {', '.join(models)} has a node with {job.gpus_per_worker} GPUs")
    cpu = min(math.floor(cost.lookup(t).vcpus / cost.lookup(t).gpus * job.gpus_per_worker * HEADROOM) for t in types)
    memory = min(math.floor(cost.lookup(t).memory_gib / cost.lookup(t).gpus * job.gpus_per_worker * HEADROOM)
                 for t in types)
    efa_pools = [p for p in pools if p.gpu_model in models and p.efa]
    efa = 0
    if efa_pools and len(efa_pools) == len([p for p in pools if p.gpu_model in models]):
        # A whole-node EFA worker asks for every interface of the smallest EFA host that fits.
        efa = min(EFA_INTERFACES.get(t, 0) for p in efa_pools for t in p.instance_types
                  if cost.lookup(t).gpus >= job.gpus_per_worker)
    return WorkerShape(gpu_models=tuple(models), gpus=job.gpus_per_worker, cpu=max(1, cpu),
                       memory_gib=max(1, memory), efa_interfaces=efa)


def termination_grace_seconds(job: JobConfig) -> int:
    return job.emergency_checkpoint_seconds + GRACE_MARGIN_SECONDS


SHARED_MOUNT = "/mnt/shared"
"""Where the team's EFS share is mounted in every training pod."""


def checkpoint_url(bucket: str, job: JobConfig) -> str:
    return f"s3://{bucket}/{team_prefix(job.team)}runs/{job.name}"


def training_config_document(raw: dict, *, job: JobConfig, bucket: str) -> tuple[str, int, int]:
    """The trainer's config as the pods see it: checkpoints in the team's S3 prefix, the run's
    ledger on the team's EFS share, node-local staging on the pod's disk, relative data paths
    under the work directory, one process per GPU of the pod. Returns the YAML text and the
    elastic bounds in nodes (pods: min, max)."""
    if not isinstance(raw, dict):
        raise JobPlanError(f"{job.training_config}: the training config must be a YAML mapping")
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    elastic, low, high = _elastic_section(doc, job)
    doc[contract.ELASTIC] = elastic
    checkpoint = dict(doc.get(contract.CHECKPOINT) or {})
    checkpoint[contract.SHARED_DIR] = checkpoint_url(bucket, job)
    checkpoint[contract.LOCAL_DIR] = f"{WORK_DIR}/local"
    # Rounds, failures and status need appends and exclusive creates: the team's EFS share.
    checkpoint[contract.LEDGER_DIR] = f"{SHARED_MOUNT}/runs/{job.name}"
    doc[contract.CHECKPOINT] = checkpoint
    data = dict(doc.get(contract.DATA) or {})
    url = str(data.get(contract.URL, contract.DEFAULT_DATA_URL))
    if "://" not in url and not url.startswith("/"):
        data[contract.URL] = str(PurePosixPath(WORK_DIR) / "work" / url)
    doc[contract.DATA] = data
    run = dict(doc.get(contract.RUN) or {})
    run[contract.NAME] = job.name
    doc[contract.RUN] = run
    return yaml.safe_dump(doc, sort_keys=False), low, high


def _elastic_section(doc: dict, job: JobConfig) -> tuple[dict, int, int]:
    """The elastic section by its current names, with processes_per_node = the pod's GPUs, and
    its node bounds; refused (every problem together, naming the file and key) where the global
    batch cannot be split over max nodes × GPUs per node, which the trainer would refuse at
    every round's start."""
    where = job.training_config
    given = dict(doc.get(contract.ELASTIC) or {})
    elastic, problems, _notes = contract.adopt_legacy_node_keys(given)
    # Each bound is named as the file names it (an old name is still read).
    name = {new: f"{contract.ELASTIC}.{old if old in given and new not in given else new}"
            for old, new in contract.LEGACY_NODE_KEYS.items()}
    messages = [f"{path} {message}" for path, message in problems]
    low = elastic.get(contract.MIN_NODES, contract.DEFAULT_MIN_NODES)
    high = elastic.get(contract.MAX_NODES, contract.DEFAULT_MAX_NODES)
    batch = doc.get(contract.BATCH) if isinstance(doc.get(contract.BATCH), dict) else {}
    global_batch = batch.get(contract.GLOBAL_BATCH_SIZE, contract.DEFAULT_GLOBAL_BATCH_SIZE)
    processes = elastic.get(contract.PROCESSES_PER_NODE, job.gpus_per_worker)
    whole = {name[contract.MIN_NODES]: low, name[contract.MAX_NODES]: high,
             f"{contract.BATCH}.{contract.GLOBAL_BATCH_SIZE}": global_batch}
    for key, value in whole.items():
        if isinstance(value, bool) or not isinstance(value, int):
            messages.append(f"{key} must be an integer, got {value!r}")
    if not messages and not 1 <= low <= high:
        messages.append(f"elastic bounds must satisfy 1 <= {name[contract.MIN_NODES]} <= {name[contract.MAX_NODES]} "
                        f"(got {low}..{high})")
    if processes != job.gpus_per_worker:
        messages.append(f"{contract.ELASTIC}.{contract.PROCESSES_PER_NODE} is {processes!r}, but the job gives each "
                        f"pod {job.gpus_per_worker} GPU(s) (gpusPerWorker) and runs one process per GPU: "
                        f"set it to {job.gpus_per_worker} or leave it out")
    world = high * job.gpus_per_worker if not messages else 0
    if world and global_batch < world:
        fits = global_batch // job.gpus_per_worker
        lower = f" or lower {name[contract.MAX_NODES]} to {fits}" if fits >= low else ""
        messages.append(f"{contract.BATCH}.{contract.GLOBAL_BATCH_SIZE} ({global_batch}) cannot be split over "
                        f"{name[contract.MAX_NODES]} ({high}) × {job.gpus_per_worker} GPU(s) per node "
                        f"= world size {world}: every process needs at least one sample; raise "
                        f"{contract.BATCH}.{contract.GLOBAL_BATCH_SIZE} to {world}{lower}")
    if messages:
        raise JobPlanError(f"training config {where} of job {job.name}: " + "; ".join(messages))
    elastic[contract.PROCESSES_PER_NODE] = job.gpus_per_worker
    return elastic, low, high


def _labels(job: JobConfig, role: str) -> dict:
    return {JOB_LABEL: job.name, ROLE_LABEL: role, TEAM_LABEL: job.team}


def _hardened_container() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "runAsUser": 10001, "runAsGroup": 10001, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def rendezvous_objects(job: JobConfig) -> list[dict]:
    """The c10d rendezvous store: its own pod on the on-demand system nodes, so it outlives any
    spot worker; a ClusterIP Service gives workers a stable address."""
    name = f"{job.name}-rdzv"
    labels = _labels(job, "rdzv")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": job.team, "labels": labels},
        "spec": {
            "replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {JOB_LABEL: job.name, ROLE_LABEL: "rdzv"}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": dict(SYSTEM_NODE_LABEL), "tolerations": [dict(SYSTEM_TOLERATION)],
                "serviceAccountName": TRAINER_SERVICE_ACCOUNT, "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "store", "image": job.image, "imagePullPolicy": "IfNotPresent",
                    "command": [*contract.RDZV_STORE_COMMAND, contract.RDZV_STORE_HOST, "0.0.0.0",
                                contract.RDZV_STORE_PORT, str(RDZV_PORT)],
                    "ports": [{"name": "rdzv", "containerPort": RDZV_PORT, "protocol": "TCP"}],
                    "resources": {"requests": dict(RDZV_STORE_REQUESTS), "limits": {"cpu": "1", "memory": "1Gi"}},
                    "readinessProbe": {"tcpSocket": {"port": RDZV_PORT}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": RDZV_PORT}, "periodSeconds": 20, "failureThreshold": 6},
                    "securityContext": _hardened_container(),
                }],
            }},
        },
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": job.team, "labels": labels},
               "spec": {"type": "ClusterIP", "selector": {JOB_LABEL: job.name, ROLE_LABEL: "rdzv"},
                        "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}]}}
    return [deployment, service]


def worker_job(job: JobConfig, shape: WorkerShape, *, min_nodes: int, max_nodes: int, bucket: str) -> dict:
    """The Indexed Job of worker pods (one pod is one node: Kueue's parallelism counts pods);
    an elastic one when the job has a scaler, its template in a CronJob when it has a schedule."""
    labels = _labels(job, "worker")
    rdzv = f"{job.name}-rdzv.{job.team}.svc.cluster.local:{RDZV_PORT}"
    requests = {"cpu": str(shape.cpu), "memory": f"{shape.memory_gib}Gi", GPU: str(shape.gpus)}
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": contract.ENV_METRICS_PORT, "value": str(METRICS_PORT)},
        {"name": contract.ENV_CHECKPOINT_URL, "value": checkpoint_url(bucket, job)},
    ]
    if job.schedule:
        # One store serves every scheduled run, but a run that ended (completed, or failed)
        # leaves its rendezvous closed in it: each run's Job names its own rendezvous.
        env.append({"name": contract.ENV_RDZV_ID,
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_POD_LABEL}']"}}})
    if shape.efa_interfaces:
        requests[EFA_RESOURCE] = str(shape.efa_interfaces)
        # libfabric's EFA provider; GPUDirect RDMA where the host supports it (p4d, p5).
        env += [{"name": "FI_PROVIDER", "value": "efa"}, {"name": "FI_EFA_USE_DEVICE_RDMA", "value": "1"},
                {"name": "FI_EFA_FORK_SAFE", "value": "1"}, {"name": "NCCL_DEBUG", "value": "WARN"}]
        # EFA pins memory within the container's memlock limit, which EKS AMIs' containerd leaves
        # unlimited: no IPC_LOCK (the namespaces enforce Pod Security "baseline", which refuses it).
    container_security = _hardened_container()
    volumes = [
        {"name": "config", "configMap": {"name": f"{job.name}-config"}},
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{min(64, max(1, shape.memory_gib // 4))}Gi"}},
        {"name": "shared", "persistentVolumeClaim": {"claimName": SHARED_PVC}},
    ]
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "shared", "mountPath": SHARED_MOUNT}]
    pod_spec = {
        "restartPolicy": "Never",
        "subdomain": job.name,
        "serviceAccountName": TRAINER_SERVICE_ACCOUNT,
        # The trainer never calls the Kubernetes API (Pod Identity needs no token mount).
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(job),
        "tolerations": [{"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}],
        "affinity": {
            # One GPU model per job: Kueue's flavor (chosen at admission) narrows this to one.
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [{"key": GPU_NAME_LABEL, "operator": "In", "values": list(shape.gpu_models)}]}]}},
            # One zone per job: the first worker's zone binds the rest (a restarted job may move).
            "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {JOB_LABEL: job.name, ROLE_LABEL: "worker"}},
                "topologyKey": "topology.kubernetes.io/zone"}]},
        },
        "securityContext": {"runAsNonRoot": True, "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "trainer", "image": job.image, "imagePullPolicy": "IfNotPresent",
            "command": [*contract.LAUNCH_COMMAND, contract.LAUNCH_CONFIG, f"{CONFIG_DIR}/train.yaml",
                        contract.LAUNCH_NODE_ID, "$(POD_NAME)", contract.LAUNCH_LOCAL_DIR, f"{WORK_DIR}/local",
                        contract.LAUNCH_RDZV_ENDPOINT, rdzv, contract.LAUNCH_NPROC_PER_NODE, str(shape.gpus)],
            "env": env,
            "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
            "resources": {"requests": dict(requests), "limits": dict(requests)},
            "volumeMounts": mounts,
            "securityContext": container_security,
        }],
        "volumes": volumes,
    }
    if job.scaler is not None:
        return _elastic_job(job, labels, pod_spec, min_nodes=min_nodes, max_nodes=max_nodes)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job.name, "namespace": job.team, "labels": {**labels, QUEUE_LABEL: LOCAL_QUEUE},
                     "annotations": {
                         # Partial admission: Kueue may start the job with N..M workers.
                         MIN_PARALLELISM: str(min_nodes),
                         # An Indexed Job's completions follow its admitted parallelism.
                         COMPLETIONS_EQUAL_PARALLELISM: "true",
                         # Pulumi must not wait for a training run to finish.
                         "pulumi.com/skipAwait": "true"}},
        "spec": {
            "completionMode": "Indexed", "parallelism": max_nodes, "completions": max_nodes,
            **_failure_policy(max_nodes),
            "template": _pod_template(labels, pod_spec),
        },
    }


def _pod_template(labels: dict, pod_spec: dict) -> dict:
    return {"metadata": {"labels": labels,
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
            "spec": pod_spec}


def _failure_policy(max_nodes: int) -> dict:
    # Preemptions (SIGTERM after a save, node drains) do not use up the failure budget; the Job
    # controller recreates the worker and Karpenter finds it a node.
    return {"backoffLimit": 3 * max_nodes,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                                     "values": [contract.EXIT_STOPPED]}},
            ]}}


def _elastic_job(job: JobConfig, labels: dict, pod_spec: dict, *, min_nodes: int, max_nodes: int) -> dict:
    """A Kueue elastic Job (docs/design/scaler.md): admitted at exactly its parallelism, created at
    the minimum and grown by workload slices as the scaler raises `parallelism`. Kueue refuses the
    elastic annotation with partial admission, and completions stay at the maximum (removing pods
    by `parallelism` takes the not-ready ones first, not the highest indexes)."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job.name, "namespace": job.team,
                     "labels": {**labels, QUEUE_LABEL: LOCAL_QUEUE, SCALED_LABEL: "true"},
                     "annotations": {ELASTIC_JOB: "true", "pulumi.com/skipAwait": "true",
                                     # When `up` replaces it (delete first), the Job goes only once
                                     # its pods have (SIGTERM, the agreed save): the new Job's
                                     # workers never meet the old ones on the run's checkpoints.
                                     DELETION_PROPAGATION: "foreground"}},
        "spec": {
            "completionMode": "Indexed", "parallelism": min_nodes, "completions": max_nodes,
            # Every node ends at the same final step: the first success means the run is done,
            # and the indexes never started (completions = max) must not be started then.
            "successPolicy": {"rules": [{"succeededCount": 1}]},
            **_failure_policy(max_nodes),
            "template": _pod_template({**labels, SCALED_LABEL: "true"}, pod_spec),
        },
    }


def scheduled_job(job: JobConfig, worker: dict) -> dict:
    """A CronJob whose every run is the worker Job (the same template: Kueue admits each by the
    queue label on it). Each run resumes the same run from its newest checkpoint (one
    checkpoint.shared_dir, one run name); one run at a time."""
    metadata = worker["metadata"]
    # Pulumi's own annotations mean nothing on the Jobs the CronJob creates.
    annotations = {k: v for k, v in metadata["annotations"].items() if not k.startswith("pulumi.com/")}
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": job.name, "namespace": job.team, "labels": _labels(job, "schedule")},
        "spec": {
            "schedule": job.schedule, "timeZone": "Etc/UTC",
            # Never two runs of one run: both would write its checkpoints (the lease fences one).
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": CRON_STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": CRON_HISTORY, "failedJobsHistoryLimit": CRON_HISTORY,
            "jobTemplate": {"metadata": {"labels": {**metadata["labels"], SCHEDULE_LABEL: job.name},
                                         "annotations": annotations},
                            "spec": worker["spec"]},
        },
    }


def headless_service(job: JobConfig) -> dict:
    """Stable DNS names for the workers (`<job>-<index>.<job>.<team>.svc`) for NCCL and logs."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": job.name, "namespace": job.team, "labels": _labels(job, "worker")},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {JOB_LABEL: job.name, ROLE_LABEL: "worker"},
                     "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"}]}}


def model_parameters(job: JobConfig, training_config: dict) -> int:
    """The model's size: the job's `modelParameters`, else computed from the config's `model:`
    section (Tensile's CausalLM); a factory model without `modelParameters` is refused."""
    if job.model_parameters:
        return job.model_parameters
    model = training_config.get("model") if isinstance(training_config.get("model"), dict) else {}
    if model.get("factory"):
        raise JobPlanError(f"job {job.name}: model.factory {model['factory']!r} in {job.training_config} builds a model "
                           f"whose size the renderer cannot compute; set jobs[].modelParameters in the stack file "
                           f"(its parameter count) so the emergency checkpoint can be checked against the spot notice")
    return checkpoint_window.causal_lm_parameters(model)


def check_emergency_save(job: JobConfig, training_config: dict, *, min_nodes: int,
                         pools: tuple[GpuPoolConfig, ...], shape: WorkerShape) -> list[checkpoint_window.SaveEstimate]:
    """Every instance type the job may land on must save its share of the checkpoint (staged to
    the node's disk, then uploaded to S3) inside the spot notice and the pod's grace period."""
    raid0 = {t: checkpoint_window.uses_instance_store(p.instance_types) for p in pools for t in p.instance_types
             if p.gpu_model in shape.gpu_models}
    types = [t for t in raid0 if cost.lookup(t).gpus >= job.gpus_per_worker]
    estimates = checkpoint_window.estimate_saves(
        parameters=model_parameters(job, training_config), precision=checkpoint_window.precision_of(training_config),
        min_nodes=min_nodes, processes=job.gpus_per_worker, instance_types=types, raid0=raid0,
        emergency_checkpoint_seconds=job.emergency_checkpoint_seconds)
    problems = [checkpoint_window.save_problem(e, job=job.name, min_nodes=min_nodes) for e in estimates if not e.fits]
    if problems:
        raise JobPlanError("; ".join(problems))
    return estimates


def job_objects(job: JobConfig, *, training_config: dict, team_models: tuple[str, ...],
                pools: tuple[GpuPoolConfig, ...], bucket: str) -> list[dict]:
    """Every object of one run, in apply order."""
    text, low, high = training_config_document(training_config, job=job, bucket=bucket)
    shape = worker_shape(job, team_models, pools)
    check_emergency_save(job, training_config, min_nodes=low, pools=pools, shape=shape)
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": f"{job.name}-config", "namespace": job.team, "labels": _labels(job, "config")},
                  "data": {"train.yaml": text}}
    worker = worker_job(job, shape, min_nodes=low, max_nodes=high, bucket=bucket)
    return [config_map, *rendezvous_objects(job), headless_service(job),
            scheduled_job(job, worker) if job.schedule else worker]


def job_bounds(job: JobConfig, training_config: dict) -> tuple[int, int]:
    """The job's node bounds (min, max) as its rendered config says them."""
    _text, low, high = training_config_document(training_config, job=job, bucket="bucket")
    return low, high
