"""An in-memory Kubernetes API with Kueue's rules as far as the scaler's design relies on them,
served over real HTTP on loopback so the controller's own lightkube client talks to it. Not a
mock that accepts anything: it refuses what Kueue's webhooks refuse, admits slices only within
quota and in the flavor first assigned, gates a scale-up's pods until its slice is admitted,
evicts a slice whose pods miss `waitForPodsReady`, and records every request.

Time is a FakeClock shared with the controller: `advance()` moves it and reconciles.
"""

from __future__ import annotations

import calendar
import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ELASTIC = "kueue.x-k8s.io/elastic-job"
MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
SLICE_OF = "kueue.x-k8s.io/workload-slice-replacement-for"
JOB_NAME = "batch.kubernetes.io/job-name"
GPU = "nvidia.com/gpu"

# (API group, resource) of each path the stand-in serves; cluster-scoped ones have no namespace.
ROUTES = [
    (re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|configmaps|events)(?:/([^/]+))?$"), ""),
    (re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/(jobs)(?:/([^/]+))?$"), "batch"),
    (re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta2/namespaces/([^/]+)/(workloads|localqueues)(?:/([^/]+))?$"), "kueue.x-k8s.io"),
    (re.compile(r"^/apis/kueue\.x-k8s\.io/v1beta2/()(clusterqueues)(?:/([^/]+))?$"), "kueue.x-k8s.io"),
    (re.compile(r"^/apis/events\.k8s\.io/v1/namespaces/([^/]+)/(events)(?:/([^/]+))?$"), "events.k8s.io"),
]


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Refused(Exception):
    def __init__(self, code: int, reason: str, message: str):
        self.code, self.reason = code, reason
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    """One request as the API server saw it, with RBAC's view of it."""
    method: str
    path: str
    query: dict
    content_type: str | None
    body: object
    verb: str
    group: str
    resource: str
    namespace: str
    name: str


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _condition(obj, kind):
    return next((c for c in obj.setdefault("status", {}).setdefault("conditions", []) if c["type"] == kind), None)


def _set_condition(obj, kind, status, reason, now):
    condition = _condition(obj, kind)
    if condition is None:
        condition = {"type": kind}
        obj["status"]["conditions"].append(condition)
    if condition.get("status") != status:
        condition["lastTransitionTime"] = _stamp(now)
    condition.update(status=status, reason=reason, message=reason)


def _true(obj, kind):
    condition = _condition(obj, kind)
    return condition is not None and condition["status"] == "True"


def _pod_gpus(template) -> int:
    return sum(int(c.get("resources", {}).get("requests", {}).get(GPU, 0)) for c in template["spec"]["containers"])


@dataclass
class Store:
    objects: dict = field(default_factory=dict)
    """(resource, namespace, name) -> object."""
    history: list = field(default_factory=list)
    """(resourceVersion, resource, namespace, type, object) for watches."""


class KubeStandIn:
    def __init__(self, clock: FakeClock, *, pods_ready_timeout_s: float | None = None,
                 priority_classes: dict[str, int] | None = None):
        self.clock = clock
        self.pods_ready_timeout_s = pods_ready_timeout_s
        self.priority_classes = priority_classes or {}
        self.capacity: dict[str, int] = {}
        """Nodes Karpenter can bring up per flavor: a pod gets one (and becomes ready) while any is free."""
        self.store = Store()
        self.requests: list[Request] = []
        self.evictions: list[tuple[str, str]] = []
        """(workload, reason) of every eviction."""
        self.lock = threading.Condition(threading.RLock())
        self._rv = itertools.count(1)
        self._closing = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.block_on_close = False  # keep-alive connections of the client hold threads
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "KubeStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            self._closing = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.clock.t += seconds
            self.reconcile()

    # ---- set-up by the test (what Pulumi and Kueue's own objects would be) --------------------
    def put(self, resource: str, obj: dict) -> dict:
        with self.lock:
            meta = obj["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _stamp(self.clock()))
            self._save(resource, obj, "ADDED")
            self.reconcile()
            return obj

    def create(self, resource: str, namespace: str, body: dict) -> dict:
        """A create as a deployer (Pulumi) makes it: through the same webhooks, not recorded."""
        with self.lock:
            return self._create(resource, namespace, copy.deepcopy(body))

    def cluster_queue(self, name: str, flavors: dict[str, tuple[int, int | None]]) -> None:
        groups = [{"coveredResources": [GPU], "flavors": [
            {"name": f, "resources": [{"name": GPU, "nominalQuota": str(q), **({} if b is None else {"borrowingLimit": str(b)})}]}
            for f, (q, b) in flavors.items()]}]
        self.put("clusterqueues", {"metadata": {"name": name}, "spec": {"resourceGroups": groups}, "status": {}})

    def local_queue(self, namespace: str, name: str, cluster_queue: str) -> None:
        self.put("localqueues", {"metadata": {"name": name, "namespace": namespace}, "spec": {"clusterQueue": cluster_queue}})

    def get(self, resource: str, namespace: str, name: str) -> dict:
        return self.store.objects[(resource, namespace, name)]

    def all(self, resource: str, namespace: str | None = None) -> list[dict]:
        return [o for (r, ns, _), o in self.store.objects.items() if r == resource and namespace in (None, ns)]

    def job_pods(self, namespace: str, job: str) -> list[dict]:
        return [p for p in self.all("pods", namespace) if p["metadata"]["labels"].get(JOB_NAME) == job]

    def job_workloads(self, namespace: str, job: str) -> list[dict]:
        uid = self.get("jobs", namespace, job)["metadata"]["uid"]
        return [w for w in self.all("workloads", namespace)
                if any(r["uid"] == uid for r in w["metadata"].get("ownerReferences", []))]

    # ---- storage -------------------------------------------------------------------------------
    def _save(self, resource: str, obj: dict, kind: str = "MODIFIED") -> None:
        meta = obj["metadata"]
        rv = next(self._rv)
        meta["resourceVersion"] = str(rv)
        key = (resource, meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self.store.objects.pop(key, None)
        else:
            self.store.objects[key] = obj
        self.store.history.append((rv, resource, key[1], kind, copy.deepcopy(obj)))
        self.lock.notify_all()

    def _delete(self, resource: str, obj: dict) -> None:
        self._save(resource, obj, "DELETED")

    # ---- Kueue's webhooks and the Job controller -----------------------------------------------
    def _create(self, resource: str, namespace: str, body: dict) -> dict:
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        if not meta.get("name"):
            meta["name"] = meta.get("generateName", "obj-") + uuid.uuid4().hex[:5]
        if (resource, namespace, meta["name"]) in self.store.objects:
            raise Refused(409, "AlreadyExists", f"{resource} {meta['name']} already exists")
        if resource == "jobs":
            annotations = meta.get("annotations", {})
            if annotations.get(ELASTIC) == "true" and MIN_PARALLELISM in annotations:
                raise Refused(422, "Invalid", 'admission webhook "vjob.kb.io" denied the request: metadata.annotations['
                                              f'{MIN_PARALLELISM}]: Forbidden: partial admission and elastic job cannot be used together')
            if meta.get("labels", {}).get(QUEUE_LABEL):
                body["spec"]["suspend"] = True  # Kueue's webhook: the queue starts it
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _stamp(self.clock())
        self._save(resource, body, "ADDED")
        if resource == "jobs" and meta.get("labels", {}).get(QUEUE_LABEL):
            self._new_workload(body, body["spec"]["parallelism"])
        self.reconcile()
        return body

    def _new_workload(self, job: dict, count: int, replaces: str | None = None) -> dict:
        meta = job["metadata"]
        annotations = {SLICE_OF: replaces} if replaces else {}
        workload = {"metadata": {"name": f"job-{meta['name']}-{uuid.uuid4().hex[:5]}", "namespace": meta["namespace"],
                                 "uid": str(uuid.uuid4()), "creationTimestamp": _stamp(self.clock()),
                                 "annotations": annotations,
                                 "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                      "uid": meta["uid"], "controller": True}]},
                    "spec": {"active": True, "queueName": meta["labels"][QUEUE_LABEL],
                             "priority": self.priority_classes.get(meta["labels"].get(PRIORITY_LABEL), 0),
                             "podSets": [{"name": "main", "count": count, "template": job["spec"]["template"]}]},
                    "status": {"conditions": []}}
        self._save("workloads", workload, "ADDED")
        return workload

    def _patch(self, resource: str, namespace: str, name: str, body: dict, content_type: str | None) -> dict:
        if content_type != "application/merge-patch+json" and resource in ("workloads", "clusterqueues", "localqueues"):
            raise Refused(415, "UnsupportedMediaType", f"{content_type} is not supported for custom resources")
        current = self.store.objects.get((resource, namespace, name))
        if current is None:
            raise Refused(404, "NotFound", f"{resource} {name} not found")
        patched = merge_patch(current, body)
        if resource == "jobs":
            self._validate_job_update(current, patched)
        before = copy.deepcopy(current)
        self._save(resource, patched)
        if resource == "jobs":
            self._job_changed(before, patched)
        if resource == "workloads":
            self._workload_changed(before, patched)
        self.reconcile()
        return patched

    def _validate_job_update(self, old: dict, new: dict) -> None:
        old_a, new_a = old["metadata"].get("annotations", {}), new["metadata"].get("annotations", {})
        if old_a.get(ELASTIC) != new_a.get(ELASTIC):
            raise Refused(422, "Invalid", f"metadata.annotations[{ELASTIC}]: Invalid value: field is immutable")
        if (MIN_PARALLELISM in new_a and not old["spec"].get("suspend")
                and old["spec"]["parallelism"] != new["spec"]["parallelism"]):
            raise Refused(422, "Invalid", "spec.parallelism: Forbidden: cannot change when partial admission is "
                                          "enabled and the job is not suspended")

    def _admitted(self, workloads):
        return [w for w in workloads if w["status"].get("admission") and not _true(w, "Finished")]

    def _job_changed(self, old: dict, job: dict) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        new_count, old_count = job["spec"]["parallelism"], old["spec"]["parallelism"]
        if new_count == old_count:
            return
        workloads = [w for w in self.job_workloads(ns, name) if not _true(w, "Finished")]
        admitted = self._admitted(workloads)
        pending = [w for w in workloads if not w["status"].get("admission")]
        if not admitted:  # suspended or queued: the workload follows the Job's size
            for w in pending:
                w["spec"]["podSets"][0]["count"] = new_count
                self._save("workloads", w)
            return
        current = admitted[-1]
        admitted_count = current["spec"]["podSets"][0]["count"]
        for w in pending:  # a newer size replaces any slice still waiting
            self._delete("workloads", w)
        if new_count > admitted_count:
            self._new_workload(job, new_count, replaces=current["metadata"]["name"])
            self._sync_pods(job, gated_from=admitted_count)
        else:
            current["spec"]["podSets"][0]["count"] = new_count
            current["status"]["admission"]["podSetAssignments"][0]["count"] = new_count
            self._save("workloads", current)
            self._sync_pods(job)

    def _workload_changed(self, old: dict, workload: dict) -> None:
        if old["spec"].get("active", True) and workload["spec"].get("active") is False:
            if workload["status"].get("admission"):
                self._evict(workload, "Deactivated")
            _set_condition(workload, "Evicted", "True", "Deactivated", self.clock())
            self._save("workloads", workload)
        elif old["spec"].get("active") is False and workload["spec"].get("active", True):
            _set_condition(workload, "Evicted", "False", "Reactivated", self.clock())
            self._save("workloads", workload)

    def _evict(self, workload: dict, reason: str) -> None:
        """Quota released, the Job suspended, its pods deleted (SIGTERM), the workload requeued."""
        self.evictions.append((workload["metadata"]["name"], reason))
        workload["status"].pop("admission", None)
        now = self.clock()
        for kind in ("QuotaReserved", "Admitted", "PodsReady"):
            _set_condition(workload, kind, "False", reason, now)
        _set_condition(workload, "Evicted", "True", reason, now)
        self._save("workloads", workload)
        ref = workload["metadata"]["ownerReferences"][0]
        job = self.get("jobs", workload["metadata"]["namespace"], ref["name"])
        job["spec"]["suspend"] = True
        self._save("jobs", job)
        self._sync_pods(job)

    def _sync_pods(self, job: dict, gated_from: int | None = None) -> None:
        """The Job controller: `parallelism` pods while not suspended; extra ones go unready and
        gated first, then the newest; new ones past `gated_from` carry Kueue's elastic gate."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pods = self.job_pods(ns, name)
        want = 0 if job["spec"].get("suspend") else job["spec"]["parallelism"]
        ranked = sorted(pods, key=lambda p: (not p["spec"].get("schedulingGates"), _true(p, "Ready"),
                                             -int(p["metadata"]["resourceVersion"])))
        for pod in ranked[:max(0, len(pods) - want)]:
            self._delete("pods", pod)
        used = {p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] for p in ranked[max(0, len(pods) - want):]}
        index = 0
        for _ in range(want - len(used)):
            while str(index) in used:
                index += 1
            used.add(str(index))
            gated = gated_from is not None
            self._save("pods", {
                "metadata": {"name": f"{name}-{index}-{uuid.uuid4().hex[:5]}", "namespace": ns, "uid": str(uuid.uuid4()),
                             "creationTimestamp": _stamp(self.clock()),
                             "labels": {JOB_NAME: name, "batch.kubernetes.io/job-completion-index": str(index)}},
                "spec": {**copy.deepcopy(job["spec"]["template"]["spec"]),
                         **({"schedulingGates": [{"name": ELASTIC}]} if gated else {})},
                "status": {"phase": "Pending", "conditions": []}}, "ADDED")

    # ---- Kueue's scheduler, Karpenter and the kubelet, one step --------------------------------
    def reconcile(self) -> None:
        with self.lock:
            self._admit()
            self._run_pods()
            self._pods_ready()
            self._queue_status()

    def _usage(self, cluster_queue: str) -> dict[str, int]:
        usage: dict[str, int] = {}
        for w in self.all("workloads"):
            admission = w["status"].get("admission")
            if admission and admission["clusterQueue"] == cluster_queue and not _true(w, "Finished"):
                flavor = admission["podSetAssignments"][0]["flavors"][GPU]
                pod_set = w["spec"]["podSets"][0]
                usage[flavor] = usage.get(flavor, 0) + pod_set["count"] * _pod_gpus(pod_set["template"])
        return usage

    def _cluster_queue_of(self, workload: dict) -> dict | None:
        queue = self.store.objects.get(("localqueues", workload["metadata"]["namespace"], workload["spec"]["queueName"]))
        return queue and self.store.objects.get(("clusterqueues", "", queue["spec"]["clusterQueue"]))

    def _admit(self) -> None:
        waiting = [w for w in self.all("workloads") if w["spec"].get("active", True)
                   and not w["status"].get("admission") and not _true(w, "Finished")]
        for workload in sorted(waiting, key=lambda w: (-w["spec"]["priority"], int(w["metadata"]["resourceVersion"]))):
            cq = self._cluster_queue_of(workload)
            if cq is None:
                continue
            usage = self._usage(cq["metadata"]["name"])
            pod_set = workload["spec"]["podSets"][0]
            need = pod_set["count"] * _pod_gpus(pod_set["template"])
            replaced = workload["metadata"].get("annotations", {}).get(SLICE_OF)
            old = self.store.objects.get(("workloads", workload["metadata"]["namespace"], replaced)) if replaced else None
            flavors = cq["spec"]["resourceGroups"][0]["flavors"]
            if old is not None:  # a scale-up slice: only the flavor first assigned, counting what the old one holds
                flavor = old["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU]
                flavors = [f for f in flavors if f["name"] == flavor]
                need -= old["spec"]["podSets"][0]["count"] * _pod_gpus(pod_set["template"])
            for entry in flavors:
                resource = entry["resources"][0]
                limit = int(resource["nominalQuota"]) + int(resource.get("borrowingLimit", 0))
                if usage.get(entry["name"], 0) + need <= limit:
                    self._admit_in(workload, cq, entry["name"], old)
                    break

    def _admit_in(self, workload: dict, cq: dict, flavor: str, old: dict | None) -> None:
        now = self.clock()
        workload["status"]["admission"] = {"clusterQueue": cq["metadata"]["name"], "podSetAssignments": [
            {"name": "main", "flavors": {GPU: flavor}, "count": workload["spec"]["podSets"][0]["count"]}]}
        for kind in ("QuotaReserved", "Admitted"):
            _set_condition(workload, kind, "True", "Admitted", now)
        _set_condition(workload, "PodsReady", "False", "WaitingForPods", now)
        _set_condition(workload, "Evicted", "False", "Admitted", now)
        self._save("workloads", workload)
        ref = workload["metadata"]["ownerReferences"][0]
        job = self.get("jobs", workload["metadata"]["namespace"], ref["name"])
        if old is not None:
            _set_condition(old, "Finished", "True", "WorkloadSliceReplaced", now)
            self._save("workloads", old)
            for pod in self.job_pods(job["metadata"]["namespace"], ref["name"]):
                if pod["spec"].pop("schedulingGates", None):
                    self._save("pods", pod)
        else:
            job["spec"]["suspend"] = False
            self._save("jobs", job)
            self._sync_pods(job)

    def _flavor_of_pod(self, pod: dict) -> str | None:
        job = self.store.objects.get(("jobs", pod["metadata"]["namespace"], pod["metadata"]["labels"][JOB_NAME]))
        for w in self._admitted(self.job_workloads(job["metadata"]["namespace"], job["metadata"]["name"])) if job else []:
            return w["status"]["admission"]["podSetAssignments"][0]["flavors"][GPU]
        return None

    def _run_pods(self) -> None:
        for pod in self.all("pods"):
            if pod["spec"].get("schedulingGates") or _true(pod, "Ready"):
                continue
            flavor = self._flavor_of_pod(pod)
            busy = sum(1 for p in self.all("pods") if _true(p, "Ready") and self._flavor_of_pod(p) == flavor)
            if flavor is not None and busy < self.capacity.get(flavor, 0):
                pod["status"]["phase"] = "Running"
                _set_condition(pod, "Ready", "True", "Ready", self.clock())
                self._save("pods", pod)

    def _pods_ready(self) -> None:
        for workload in self._admitted(self.all("workloads")):
            ref = workload["metadata"]["ownerReferences"][0]
            ready = sum(1 for p in self.job_pods(workload["metadata"]["namespace"], ref["name"]) if _true(p, "Ready"))
            if ready >= workload["spec"]["podSets"][0]["count"]:
                if not _true(workload, "PodsReady"):
                    _set_condition(workload, "PodsReady", "True", "PodsReady", self.clock())
                    self._save("workloads", workload)
                continue
            admitted_at = calendar.timegm(time.strptime(_condition(workload, "Admitted")["lastTransitionTime"],
                                                        "%Y-%m-%dT%H:%M:%SZ"))
            if (self.pods_ready_timeout_s is not None and not _true(workload, "PodsReady")
                    and self.clock() - admitted_at >= self.pods_ready_timeout_s):
                self._evict(workload, "PodsReadyTimeout")

    def _queue_status(self) -> None:
        for cq in self.all("clusterqueues"):
            usage = self._usage(cq["metadata"]["name"])
            status = {"flavorsUsage": [{"name": f["name"], "resources": [{"name": GPU, "total": str(usage.get(f["name"], 0))}]}
                                       for f in cq["spec"]["resourceGroups"][0]["flavors"]]}
            if cq.get("status") != status:
                cq["status"] = status
                self._save("clusterqueues", cq)

    # ---- HTTP ----------------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                for pattern, group in ROUTES:
                    match = pattern.match(url.path)
                    if match:
                        break
                else:
                    return self._reply(404, _status(404, "NotFound", f"no route {url.path}"))
                namespace, resource, name = match.group(1), match.group(2), match.group(3) or ""
                watching = query.get("watch") in ("true", "1")
                verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create",
                        "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
                content_type = self.headers.get("Content-Type")
                with standin.lock:
                    standin.requests.append(Request(method, url.path, query, content_type, body, verb, group,
                                                    resource, namespace, name))
                if group == "events.k8s.io":
                    resource = "events.k8s.io/events"
                if watching:
                    return self._watch(resource, namespace, query)
                try:
                    with standin.lock:
                        self._reply(*standin._call(verb, resource, namespace, name, body, query, content_type))
                except Refused as e:
                    self._reply(e.code, _status(e.code, e.reason, str(e)))

            def _watch(self, resource, namespace, query) -> None:
                selector = _selector(query.get("labelSelector"))
                deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with standin.lock:
                    sent = len(standin.store.history)
                    backlog = [("ADDED", o) for (r, ns, _), o in standin.store.objects.items()
                               if r == resource and ns == namespace and "resourceVersion" not in query]
                try:
                    while True:
                        for kind, obj in backlog:
                            if _labels_match(obj, selector):
                                line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                        self.wfile.flush()
                        with standin.lock:
                            while len(standin.store.history) == sent and not standin._closing:
                                left = deadline - time.monotonic()
                                if left <= 0:
                                    break
                                standin.lock.wait(min(left, 0.5))
                            if standin._closing or time.monotonic() >= deadline:
                                break
                            new, sent = standin.store.history[sent:], len(standin.store.history)
                        backlog = [(kind, obj) for _, r, ns, kind, obj in new if r == resource and ns == namespace]
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PATCH(self):
                self._serve("PATCH")

            def do_PUT(self):
                self._serve("PUT")

            def do_DELETE(self):
                self._serve("DELETE")

        return Handler

    def _call(self, verb, resource, namespace, name, body, query, content_type):
        if verb == "get":
            obj = self.store.objects.get((resource, namespace, name))
            if obj is None:
                raise Refused(404, "NotFound", f'{resource} "{name}" not found')
            return 200, obj
        if verb == "list":
            selector = _selector(query.get("labelSelector"))
            items = [o for (r, ns, _), o in self.store.objects.items()
                     if r == resource and (ns == namespace or not namespace) and _labels_match(o, selector)]
            return 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(len(self.store.history))},
                         "items": items}
        if verb == "create":
            return 201, self._create(resource, namespace, body)
        if verb == "patch":
            return 200, self._patch(resource, namespace, name, body, content_type)
        raise Refused(405, "MethodNotAllowed", f"{verb} is not served by the stand-in")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _selector(text: str | None) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",")) if text else {}


def _labels_match(obj: dict, selector: dict[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
