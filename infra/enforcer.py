"""Team budget enforcement: meter each team's admitted GPU usage (its Kueue ClusterQueue's
`status.flavorsUsage`) × the GPU-hour price into month-to-date spend, export it as metrics, and
put the queue on hold-and-drain (`spec.stopPolicy: HoldAndDrain`) when spend reaches the budget.

Why metering: teams share the GPU NodePools, so their instances carry no team tag and a
tag-filtered AWS Budget cannot see a team's GPU spend. HoldAndDrain evicts admitted workloads
(their pods get SIGTERM and checkpoint) and admits nothing new until the budget is raised (the
stack's `teams[].monthlyBudgetUsd`, delivered in the `team-budgets` ConfigMap) or the month
turns. Only queues this enforcer held are released by it. Plain Python: no Pulumi, no client
library; it talks to the API server over HTTPS with the pod's service-account token, read from
its projected file on every request (the kubelet rotates it; the old one expires), and its
liveness endpoint fails once the loop has not completed a pass for a while, so a stuck or
failing enforcer is restarted instead of serving its last numbers forever.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

log = logging.getLogger("tensile.enforcer")

GPU_RESOURCE = "nvidia.com/gpu"
CLUSTER_QUEUES = "/apis/kueue.x-k8s.io/v1beta2/clusterqueues"
HELD_ANNOTATION = "tensile.io/held-for-budget"
"""Set (to the month) on a ClusterQueue this enforcer put on hold; its absence means hands off."""
NAMESPACE = "tensile-system"
BUDGETS_CONFIGMAP = "team-budgets"
SPEND_CONFIGMAP = "team-spend"
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")


class NotFound(ApiError):
    pass


class KubernetesApi:
    """The few Kubernetes API calls the enforcer makes, over plain HTTP(S)."""

    def __init__(self, base_url: str, *, token: str | None = None, token_file: str | None = None,
                 ca_file: str | None = None, timeout: float = 10.0):
        if token is not None and token_file is not None:
            raise ValueError("give a token or a token file, not both")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.token_file = token_file
        """Read on every request: a projected service-account token is rotated by the kubelet
        well before it expires, and a token read once at start is refused after its hour."""
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=ca_file) if base_url.startswith("https") else None

    @classmethod
    def in_cluster(cls, service_account_dir: str = SERVICE_ACCOUNT_DIR) -> "KubernetesApi":
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}", token_file=f"{service_account_dir}/token",
                   ca_file=f"{service_account_dir}/ca.crt")

    def bearer_token(self) -> str | None:
        if self.token_file is None:
            return self.token
        with open(self.token_file) as f:
            return f.read().strip()

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> dict:
        data = None if body is None else json.dumps(body, sort_keys=True).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        token = self.bearer_token()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            error = NotFound if e.code == 404 else ApiError
            raise error(e.code, method, path, e.read().decode(errors="replace")) from e
        return json.loads(text) if text else {}

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self.request("PATCH", path, patch, MERGE_PATCH)


# ---------------------------------------------------------------------------------------------
# Pure parts: quantities, metering, decisions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamBudget:
    name: str
    cluster_queue: str
    monthly_budget_usd: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetBook:
    teams: tuple[TeamBudget, ...]
    gpu_hour_prices: Mapping[str, float]
    """USD per admitted GPU-hour, by ResourceFlavor (one flavor per GPU model)."""

    @classmethod
    def from_json(cls, text: str) -> "BudgetBook":
        doc = json.loads(text)
        teams = tuple(TeamBudget(name=name, cluster_queue=t["clusterQueue"], monthly_budget_usd=float(t["monthlyBudgetUsd"]))
                      for name, t in sorted(doc["teams"].items()))
        return cls(teams=teams, gpu_hour_prices={k: float(v) for k, v in doc["gpuHourPrices"].items()})

    def price(self, flavor: str) -> float:
        # An unpriced flavor is charged at the dearest known price: never undercount.
        return self.gpu_hour_prices.get(flavor, max(self.gpu_hour_prices.values(), default=0.0))


@dataclass(frozen=True, kw_only=True, slots=True)
class TeamSpend:
    month: str
    """`YYYY-MM`: spend is month to date."""
    spend_usd: float
    last_seen: str
    """ISO time of the last metering; usage is charged for the time since."""


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (GPUs are whole, but `total` may read "8" or "8000m")."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "Ki": 1024.0, "Mi": 1024.0 ** 2}
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def admitted_gpus_by_flavor(cluster_queue: Mapping) -> dict[str, float]:
    """GPUs in use by admitted workloads, per flavor, from the ClusterQueue's status."""
    out: dict[str, float] = {}
    for flavor in (cluster_queue.get("status") or {}).get("flavorsUsage") or []:
        for resource in flavor.get("resources") or []:
            if resource.get("name") == GPU_RESOURCE:
                gpus = parse_quantity(resource.get("total", 0))
                if gpus:
                    out[flavor["name"]] = out.get(flavor["name"], 0.0) + gpus
    return out


def month_of(now: dt.datetime) -> str:
    return now.strftime("%Y-%m")


def accrue(previous: TeamSpend | None, gpus_by_flavor: Mapping[str, float], book: BudgetBook,
           now: dt.datetime) -> TeamSpend:
    """Charge the usage seen now for the time since the last metering (a tick's usage is assumed
    to have held since the previous tick); a new month starts from zero."""
    month = month_of(now)
    if previous is None or previous.month != month:
        start = dt.datetime(now.year, now.month, 1, tzinfo=now.tzinfo)
        last = max(dt.datetime.fromisoformat(previous.last_seen), start) if previous else now
        spend = 0.0
    else:
        last = dt.datetime.fromisoformat(previous.last_seen)
        spend = previous.spend_usd
    hours = max(0.0, (now - last).total_seconds() / 3600.0)
    rate = sum(gpus * book.price(flavor) for flavor, gpus in gpus_by_flavor.items())
    return TeamSpend(month=month, spend_usd=round(spend + rate * hours, 6), last_seen=now.isoformat())


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    team: str
    action: str
    """"hold", "release" or "none"."""
    spend_usd: float
    budget_usd: float


def decide(team: TeamBudget, spend: TeamSpend, cluster_queue: Mapping) -> Decision:
    stop_policy = (cluster_queue.get("spec") or {}).get("stopPolicy", "None")
    held_by_us = HELD_ANNOTATION in ((cluster_queue.get("metadata") or {}).get("annotations") or {})
    action = "none"
    if spend.spend_usd >= team.monthly_budget_usd and stop_policy != "HoldAndDrain":
        action = "hold"
    elif spend.spend_usd < team.monthly_budget_usd and held_by_us and stop_policy == "HoldAndDrain":
        action = "release"
    return Decision(team=team.name, action=action, spend_usd=spend.spend_usd, budget_usd=team.monthly_budget_usd)


def hold_patch(month: str) -> dict:
    return {"metadata": {"annotations": {HELD_ANNOTATION: month}}, "spec": {"stopPolicy": "HoldAndDrain"}}


def release_patch() -> dict:
    # null deletes the annotation in a JSON merge patch.
    return {"metadata": {"annotations": {HELD_ANNOTATION: None}}, "spec": {"stopPolicy": "None"}}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class Enforcer:
    def __init__(self, api: KubernetesApi, *, namespace: str = NAMESPACE,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 monotonic: Callable[[], float] = time.monotonic, stale_after_s: float = 300.0):
        self.api = api
        self.namespace = namespace
        self.clock = clock
        self.monotonic = monotonic
        self.stale_after_s = stale_after_s
        """Liveness fails when no pass has completed for this long (the start counts as one)."""
        self.last_decisions: list[Decision] = []
        self.last_pass = monotonic()

    def seconds_since_last_pass(self) -> float:
        return self.monotonic() - self.last_pass

    def alive(self) -> bool:
        return self.seconds_since_last_pass() <= self.stale_after_s

    def _configmap_path(self, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self.namespace}/configmaps"
        return f"{base}/{name}" if name else base

    def tick(self) -> list[Decision]:
        now = self.clock()
        book = BudgetBook.from_json(self.api.get(self._configmap_path(BUDGETS_CONFIGMAP))["data"]["budgets.json"])
        try:
            stored = self.api.get(self._configmap_path(SPEND_CONFIGMAP)).get("data") or {}
            spend_exists = True
        except NotFound:
            stored, spend_exists = {}, False

        decisions, new_state = [], {}
        for team in book.teams:
            try:
                queue = self.api.get(f"{CLUSTER_QUEUES}/{team.cluster_queue}")
            except NotFound:
                log.warning("team %s: ClusterQueue %s not found; not metered", team.name, team.cluster_queue)
                continue
            previous = TeamSpend(**json.loads(stored[team.name])) if team.name in stored else None
            spend = accrue(previous, admitted_gpus_by_flavor(queue), book, now)
            decision = decide(team, spend, queue)
            if decision.action == "hold":
                log.warning("team %s spent $%.2f of $%.2f: holding and draining %s", team.name, spend.spend_usd,
                            team.monthly_budget_usd, team.cluster_queue)
                self.api.merge_patch(f"{CLUSTER_QUEUES}/{team.cluster_queue}", hold_patch(spend.month))
            elif decision.action == "release":
                log.info("team %s is within budget again: releasing %s", team.name, team.cluster_queue)
                self.api.merge_patch(f"{CLUSTER_QUEUES}/{team.cluster_queue}", release_patch())
            new_state[team.name] = json.dumps(asdict(spend), sort_keys=True)
            decisions.append(decision)

        if spend_exists:
            self.api.merge_patch(self._configmap_path(SPEND_CONFIGMAP), {"data": new_state})
        else:
            self.api.request("POST", self._configmap_path(), {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": SPEND_CONFIGMAP, "namespace": self.namespace}, "data": new_state})
        self.last_decisions = decisions
        self.last_pass = self.monotonic()
        return decisions

    def metrics(self) -> str:
        """Prometheus text exposition of the last tick."""
        lines = ["# HELP tensile_team_spend_usd Month-to-date metered GPU spend per team.",
                 "# TYPE tensile_team_spend_usd gauge"]
        lines += [f'tensile_team_spend_usd{{team="{d.team}"}} {d.spend_usd:.6f}' for d in self.last_decisions]
        lines += ["# HELP tensile_team_budget_usd Monthly budget per team.", "# TYPE tensile_team_budget_usd gauge"]
        lines += [f'tensile_team_budget_usd{{team="{d.team}"}} {d.budget_usd:.2f}' for d in self.last_decisions]
        lines += ["# HELP tensile_enforcer_seconds_since_last_pass Age of the numbers above.",
                  "# TYPE tensile_enforcer_seconds_since_last_pass gauge",
                  f"tensile_enforcer_seconds_since_last_pass {self.seconds_since_last_pass():.1f}"]
        return "\n".join(lines) + "\n"


def metrics_server(enforcer: Enforcer, host: str, port: int):
    """An HTTP server answering GET /metrics with the last tick's gauges and GET /healthz with 200
    while the loop completes passes, 503 once it has not for `stale_after_s` (start it in a thread)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # one line per scrape would drown the decisions
            pass

        def do_GET(self):
            if self.path == "/healthz":
                alive = enforcer.alive()
                body = (f"{'ok' if alive else 'stale'}: last pass {enforcer.seconds_since_last_pass():.0f}s ago, "
                        f"limit {enforcer.stale_after_s:.0f}s\n").encode()
                self.send_response(200 if alive else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = enforcer.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return ThreadingHTTPServer((host, port), Handler)


def run_forever(enforcer: Enforcer, interval_s: float, stop: Callable[[], bool] = lambda: False) -> None:
    while not stop():
        try:
            enforcer.tick()
        except Exception:  # noqa: BLE001 - a background loop: log, keep metering on the next tick
            log.exception("enforcer tick failed")
        time.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Meter team GPU spend and hold-and-drain queues over budget.")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks")
    parser.add_argument("--once", action="store_true", help="one tick, print decisions, exit")
    parser.add_argument("--metrics-port", type=int, default=9102, help="port for GET /metrics and /healthz")
    parser.add_argument("--stale-after", type=float, default=None,
                        help="seconds without a completed pass before /healthz fails (default: 5 intervals)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stale_after = args.stale_after if args.stale_after is not None else 5 * args.interval
    enforcer = Enforcer(KubernetesApi.in_cluster(), stale_after_s=stale_after)
    if args.once:
        for decision in enforcer.tick():
            print(json.dumps(asdict(decision)))
        return 0
    import threading

    server = metrics_server(enforcer, "0.0.0.0", args.metrics_port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run_forever(enforcer, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
