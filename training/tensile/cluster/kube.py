"""The Kubernetes API calls the scaler makes, on lightkube: reads of Jobs, pods, Kueue's
Workloads and queues and the spend ConfigMap; two merge patches (a Job's `spec.parallelism`, a
Workload's `spec.active`); decision Events on the Job; watches that wake the loop. Nothing else:
the contract's RBAC (tensile/cluster/rbac.json) allows exactly these.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, Pod
from lightkube.types import PatchType

from tensile.cluster.observe import JOB_NAME_LABEL, SCALED_LABEL

log = logging.getLogger(__name__)

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
Workload = create_namespaced_resource(KUEUE_GROUP, KUEUE_VERSION, "Workload", "workloads")
LocalQueue = create_namespaced_resource(KUEUE_GROUP, KUEUE_VERSION, "LocalQueue", "localqueues")
ClusterQueue = create_global_resource(KUEUE_GROUP, KUEUE_VERSION, "ClusterQueue", "clusterqueues")
COMPONENT = "tensile-scaler"

__all__ = ["ApiError", "KubeApi"]


def _dict(obj: Any) -> dict:
    return obj.to_dict()


class KubeApi:
    """One lightkube client; every read returns plain dicts (what tensile.cluster.observe judges)."""

    def __init__(self, client: Client, *, instance: str | None = None):
        self.client = client
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        """Names this replica in its Events (reportingInstance)."""

    @classmethod
    def in_cluster(cls) -> "KubeApi":
        # The service-account token is re-read from its projected file when refused (rotation).
        return cls(Client(config=KubeConfig.from_service_account(), field_manager=COMPONENT))

    @classmethod
    def at(cls, url: str, token: str = "") -> "KubeApi":
        """An API server at `url` (a `kubectl proxy`, or a test's), with a bearer token if given."""
        config = KubeConfig.from_one(cluster=Cluster(server=url), user=User(token=token or None))
        return cls(Client(config=config, field_manager=COMPONENT))

    # ---- reads ------------------------------------------------------------------------------
    def job(self, namespace: str, name: str) -> dict:
        return _dict(self.client.get(Job, name, namespace=namespace))

    def jobs_labelled(self, namespace: str, labels: dict[str, str]) -> list[dict]:
        return [_dict(j) for j in self.client.list(Job, namespace=namespace, labels=labels)]

    def job_pods(self, namespace: str, name: str) -> list[dict]:
        return [_dict(p) for p in self.client.list(Pod, namespace=namespace, labels={JOB_NAME_LABEL: name})]

    def workloads(self, namespace: str) -> list[dict]:
        return [_dict(w) for w in self.client.list(Workload, namespace=namespace)]

    def local_queues(self, namespace: str) -> list[dict]:
        return [_dict(q) for q in self.client.list(LocalQueue, namespace=namespace)]

    def cluster_queue(self, name: str) -> dict:
        return _dict(self.client.get(ClusterQueue, name))

    def configmap_data(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.client.get(ConfigMap, name, namespace=namespace).data or {})

    # ---- writes: exactly two fields, by JSON merge patch -------------------------------------
    def set_parallelism(self, namespace: str, name: str, parallelism: int) -> None:
        self.client.patch(Job, name, {"spec": {"parallelism": parallelism}}, namespace=namespace,
                          patch_type=PatchType.MERGE)

    def set_active(self, namespace: str, workload: str, active: bool) -> None:
        self.client.patch(Workload, workload, {"spec": {"active": active}}, namespace=namespace,
                          patch_type=PatchType.MERGE)

    def job_event(self, job: dict, *, reason: str, message: str, warning: bool, now: dt.datetime) -> None:
        metadata = job["metadata"]
        self.client.create(Event(
            metadata=ObjectMeta(generateName=f"{metadata['name']}.", namespace=metadata["namespace"]),
            involvedObject=ObjectReference(apiVersion="batch/v1", kind="Job", name=metadata["name"],
                                           namespace=metadata["namespace"], uid=metadata.get("uid")),
            reason=reason, message=message[:1024], type="Warning" if warning else "Normal",
            source=EventSource(component=COMPONENT), reportingComponent=f"tensile.dev/{COMPONENT}",
            reportingInstance=self.instance, firstTimestamp=now, lastTimestamp=now, count=1))

    # ---- watches: any change of a scaled Job or a Workload wakes the loop --------------------
    def watch_namespace(self, namespace: str, wake: Callable[[], None], stop: threading.Event, *,
                        server_timeout_s: int = 300, backoff_s: Callable[[int], float] = lambda n: min(60.0, 2.0 ** n)
                        ) -> list[threading.Thread]:
        """Two daemon threads (scaled Jobs, Workloads of the namespace) calling `wake` on every
        event; a broken watch is reopened after a backoff (an API server restart, a 410 Gone)."""

        def follow(resource, labels) -> None:
            failures = 0
            while not stop.is_set():
                try:
                    for _ in self.client.watch(resource, namespace=namespace, labels=labels,
                                               server_timeout=server_timeout_s):
                        failures = 0
                        wake()
                        if stop.is_set():
                            return
                except Exception as e:  # noqa: BLE001 - a background watch: log, back off, reopen
                    failures += 1
                    log.warning("watch of %s in %s failed (%s); reopening in %.0f s", resource.__name__,
                                namespace, e, backoff_s(failures))
                    stop.wait(backoff_s(failures))

        threads = [threading.Thread(target=follow, args=(Job, {SCALED_LABEL: "true"}), daemon=True,
                                    name=f"watch-jobs-{namespace}"),
                   threading.Thread(target=follow, args=(Workload, None), daemon=True,
                                    name=f"watch-workloads-{namespace}")]
        for thread in threads:
            thread.start()
        return threads
