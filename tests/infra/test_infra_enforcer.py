"""The team budget enforcer against a loopback stand-in for the Kubernetes API that records
every request, so each test checks the exact calls: paths, verbs, content types, bodies. The
stand-in accepts only its current tokens: `rotate()` writes a new one to the projected token
file, as the kubelet does, and expires the old one, which then gets 401."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra import enforcer

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CM = "/api/v1/namespaces/tensile-system/configmaps"
CQ = "/apis/kueue.x-k8s.io/v1beta2/clusterqueues"
TOKEN = "test-token"


class FakeKubernetes:
    """Objects by path; GET/POST/PATCH (JSON merge patch) like the API server, every request kept."""

    def __init__(self):
        self.valid_tokens = {TOKEN}
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str, str | None, object]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, self.headers.get("Content-Type"), body))
                if self.headers.get("Authorization") not in {f"Bearer {t}" for t in fake.valid_tokens}:
                    return self._reply(401, {"kind": "Status", "code": 401})
                if self.command == "GET":
                    obj = fake.objects.get(self.path)
                    return self._reply(200, obj) if obj else self._reply(404, {"kind": "Status", "code": 404})
                if self.command == "POST":
                    path = f"{self.path}/{body['metadata']['name']}"
                    fake.objects[path] = body
                    return self._reply(201, body)
                if self.command == "PATCH":
                    if self.headers.get("Content-Type") != enforcer.MERGE_PATCH or self.path not in fake.objects:
                        return self._reply(415 if self.path in fake.objects else 404, {"kind": "Status"})
                    fake.objects[self.path] = merge(fake.objects[self.path], body)
                    return self._reply(200, fake.objects[self.path])
                return self._reply(405, {})

            do_GET = do_POST = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def calls(self):
        return [(m, p) for m, p, _, _ in self.requests]

    def rotate(self, token_file) -> str:
        """The kubelet's rotation followed by the old token's expiry."""
        new = f"token-{len(self.requests)}"
        token_file.write_text(new + "\n")
        self.valid_tokens = {new}
        return new


def merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


@pytest.fixture
def kube():
    fake = FakeKubernetes()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


BUDGETS = {"teams": {"vision": {"clusterQueue": "vision", "monthlyBudgetUsd": 1000.0}},
           "gpuHourPrices": {"l40s": 4.0, "h100": 7.0}}


def _setup(kube, *, gpus=None, spend=None, stop_policy=None, annotations=None):
    kube.objects[f"{CM}/team-budgets"] = {"metadata": {"name": "team-budgets"},
                                          "data": {"budgets.json": json.dumps(BUDGETS)}}
    queue = {"metadata": {"name": "vision"}, "spec": {}, "status": {"flavorsUsage": [
        {"name": flavor, "resources": [{"name": "cpu", "total": "96"}, {"name": "nvidia.com/gpu", "total": str(n)}]}
        for flavor, n in (gpus or {}).items()]}}
    if stop_policy:
        queue["spec"]["stopPolicy"] = stop_policy
    if annotations:
        queue["metadata"]["annotations"] = annotations
    kube.objects[f"{CQ}/vision"] = queue
    if spend is not None:
        kube.objects[f"{CM}/team-spend"] = {"metadata": {"name": "team-spend"}, "data": {
            "vision": json.dumps({"month": spend[0], "spend_usd": spend[1], "last_seen": spend[2]})}}


def _enforcer(kube, now=NOW):
    return enforcer.Enforcer(enforcer.KubernetesApi(kube.url, token=TOKEN), clock=lambda: now)


def test_enforcer_first_tick_starts_metering_and_creates_the_spend_record(kube):
    _setup(kube, gpus={"l40s": 8})
    decisions = _enforcer(kube).tick()
    assert [d.action for d in decisions] == ["none"]
    assert kube.calls() == [("GET", f"{CM}/team-budgets"), ("GET", f"{CM}/team-spend"), ("GET", f"{CQ}/vision"),
                            ("POST", CM)]
    method, path, content_type, body = kube.requests[-1]
    assert content_type == "application/json"
    assert body == {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "team-spend", "namespace": "tensile-system"},
                    "data": {"vision": json.dumps({"last_seen": NOW.isoformat(), "month": "2026-11",
                                                   "spend_usd": 0.0}, sort_keys=True)}}


def test_enforcer_charges_admitted_gpus_times_price_for_the_elapsed_time(kube):
    # 8 L40S GPUs ($4/GPU-hour) + 1 H100 GPU ($7) for the 2 hours since the last tick: $78.
    _setup(kube, gpus={"l40s": 8, "h100": 1}, spend=("2026-11", 100.0, (NOW - dt.timedelta(hours=2)).isoformat()))
    [decision] = _enforcer(kube).tick()
    assert decision.spend_usd == pytest.approx(178.0) and decision.action == "none"
    assert kube.calls()[-1] == ("PATCH", f"{CM}/team-spend")
    assert kube.requests[-1][2] == "application/merge-patch+json"
    assert json.loads(kube.requests[-1][3]["data"]["vision"])["spend_usd"] == pytest.approx(178.0)
    assert not any(p.startswith(CQ) for m, p in kube.calls() if m == "PATCH")


def test_enforcer_holds_and_drains_the_queue_when_spend_reaches_the_budget(kube):
    _setup(kube, gpus={"l40s": 8}, spend=("2026-11", 990.0, (NOW - dt.timedelta(minutes=30)).isoformat()))
    [decision] = _enforcer(kube).tick()
    assert decision.action == "hold" and decision.spend_usd == pytest.approx(1006.0)
    patches = [(p, ct, b) for m, p, ct, b in kube.requests if m == "PATCH"]
    assert patches[0] == (f"{CQ}/vision", "application/merge-patch+json",
                          {"metadata": {"annotations": {"tensile.io/held-for-budget": "2026-11"}},
                           "spec": {"stopPolicy": "HoldAndDrain"}})
    assert kube.objects[f"{CQ}/vision"]["spec"]["stopPolicy"] == "HoldAndDrain"


def test_enforcer_does_not_patch_a_queue_already_on_hold(kube):
    _setup(kube, gpus={}, spend=("2026-11", 1200.0, NOW.isoformat()), stop_policy="HoldAndDrain",
           annotations={enforcer.HELD_ANNOTATION: "2026-11"})
    [decision] = _enforcer(kube).tick()
    assert decision.action == "none"
    assert [p for m, p in kube.calls() if m == "PATCH"] == [f"{CM}/team-spend"]


def test_enforcer_releases_the_queue_when_the_budget_is_raised(kube):
    _setup(kube, gpus={}, spend=("2026-11", 1200.0, NOW.isoformat()), stop_policy="HoldAndDrain",
           annotations={enforcer.HELD_ANNOTATION: "2026-11"})
    raised = {**BUDGETS, "teams": {"vision": {"clusterQueue": "vision", "monthlyBudgetUsd": 2000.0}}}
    kube.objects[f"{CM}/team-budgets"]["data"]["budgets.json"] = json.dumps(raised)
    [decision] = _enforcer(kube).tick()
    assert decision.action == "release"
    method, path, content_type, body = next(r for r in kube.requests if r[0] == "PATCH")
    assert (path, content_type, body) == (f"{CQ}/vision", "application/merge-patch+json",
                                          {"metadata": {"annotations": {"tensile.io/held-for-budget": None}},
                                           "spec": {"stopPolicy": "None"}})
    queue = kube.objects[f"{CQ}/vision"]
    assert queue["spec"]["stopPolicy"] == "None" and enforcer.HELD_ANNOTATION not in queue["metadata"]["annotations"]


def test_enforcer_never_releases_a_queue_someone_else_stopped(kube):
    _setup(kube, gpus={}, spend=("2026-11", 10.0, NOW.isoformat()), stop_policy="HoldAndDrain")
    [decision] = _enforcer(kube).tick()
    assert decision.action == "none"
    assert not any(p.startswith(CQ) for m, p in kube.calls() if m == "PATCH")


def test_enforcer_new_month_resets_spend_and_releases_its_hold(kube):
    _setup(kube, gpus={"l40s": 1}, spend=("2026-11", 1500.0, "2026-11-30T23:00:00+00:00"), stop_policy="HoldAndDrain",
           annotations={enforcer.HELD_ANNOTATION: "2026-11"})
    [decision] = _enforcer(kube, now=dt.datetime(2026, 12, 1, 1, 0, tzinfo=UTC)).tick()
    # Charged only from midnight: 1 GPU × $4 × 1 h.
    assert decision.spend_usd == pytest.approx(4.0) and decision.action == "release"


def test_enforcer_sends_the_service_account_token(kube):
    _setup(kube, gpus={})
    with pytest.raises(enforcer.ApiError, match="HTTP 401"):
        enforcer.Enforcer(enforcer.KubernetesApi(kube.url, token="wrong"), clock=lambda: NOW).tick()


def test_enforcer_exports_spend_and_budget_metrics(kube):
    _setup(kube, gpus={"l40s": 8}, spend=("2026-11", 100.0, (NOW - dt.timedelta(hours=1)).isoformat()))
    e = _enforcer(kube)
    e.tick()
    text = e.metrics()
    assert 'tensile_team_spend_usd{team="vision"} 132.000000' in text
    assert 'tensile_team_budget_usd{team="vision"} 1000.00' in text


@pytest.mark.parametrize("value, expected", [("8", 8.0), (8, 8.0), ("8000m", 8.0), ("1k", 1000.0), ("2Ki", 2048.0)])
def test_parse_quantity(value, expected):
    assert enforcer.parse_quantity(value) == expected


def test_budget_book_charges_an_unpriced_flavor_at_the_dearest_price():
    book = enforcer.BudgetBook.from_json(json.dumps(BUDGETS))
    assert book.price("l40s") == 4.0 and book.price("mystery") == 7.0


def test_budget_document_from_the_program_is_what_the_enforcer_reads():
    from infra.components import budgets
    from infra.config import types as config
    teams = (config.TeamConfig(name="vision", gpu_quota=8, borrowing_limit=0, monthly_budget_usd=5000.0,
                               gpu_models=("l40s",)),)
    book = enforcer.BudgetBook.from_json(budgets.team_budgets_document(teams, {"l40s": 3.77}))
    assert book.teams == (enforcer.TeamBudget(name="vision", cluster_queue="vision", monthly_budget_usd=5000.0),)
    assert book.gpu_hour_prices == {"l40s": 3.77}


def test_enforcer_serves_its_metrics_over_http(kube):
    import urllib.request

    _setup(kube, gpus={"l40s": 2}, spend=("2026-11", 10.0, (NOW - dt.timedelta(hours=1)).isoformat()))
    e = _enforcer(kube)
    e.tick()
    server = enforcer.metrics_server(e, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert 'tensile_team_spend_usd{team="vision"} 18.000000' in resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_enforcer_keeps_working_across_token_rotations(kube, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    _setup(kube, gpus={"l40s": 1})
    e = enforcer.Enforcer(enforcer.KubernetesApi(kube.url, token_file=str(token_file)), clock=lambda: NOW)
    e.tick()
    for _ in range(3):
        token = kube.rotate(token_file)
        e.tick()
        assert kube.requests[-1][:2] == ("PATCH", f"{CM}/team-spend")  # the pass completed
        assert {r[1] for r in kube.requests[-4:]} >= {f"{CM}/team-budgets", f"{CQ}/vision"}
    assert kube.valid_tokens == {token}


def test_enforcer_in_cluster_reads_the_projected_token_on_each_request(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("first\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.100.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(enforcer.ssl, "create_default_context", lambda cafile: ("context for", cafile))
    api = enforcer.KubernetesApi.in_cluster(str(tmp_path))
    assert api.base_url == "https://10.100.0.1:443" and api.bearer_token() == "first"
    (tmp_path / "token").write_text("rotated\n")
    assert api.bearer_token() == "rotated"


def test_enforcer_with_an_expired_token_fails_liveness_once_stale(kube, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    _setup(kube, gpus={})
    now = [1000.0]
    e = enforcer.Enforcer(enforcer.KubernetesApi(kube.url, token_file=str(token_file)), clock=lambda: NOW,
                          monotonic=lambda: now[0], stale_after_s=300)
    e.tick()
    kube.valid_tokens = {"only-the-kubelet-knows"}  # the file's token expired and was never rotated
    ticks = iter(range(3))
    enforcer.run_forever(e, interval_s=0, stop=lambda: next(ticks, None) is None)
    assert kube.calls()[-3:] == [("GET", f"{CM}/team-budgets")] * 3  # each pass stopped at its first 401
    now[0] += 299
    assert e.alive()
    now[0] += 2
    assert not e.alive()
    assert "tensile_enforcer_seconds_since_last_pass 301.0" in e.metrics()


def test_enforcer_healthz_answers_503_once_no_pass_completed_recently(kube):
    import urllib.error
    import urllib.request

    _setup(kube, gpus={})
    now = [0.0]
    e = enforcer.Enforcer(enforcer.KubernetesApi(kube.url, token=TOKEN), clock=lambda: NOW,
                          monotonic=lambda: now[0], stale_after_s=120)
    server = enforcer.metrics_server(e, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # just started: within the grace
            assert resp.status == 200
        now[0] = 121.0
        with pytest.raises(urllib.error.HTTPError) as stale:
            urllib.request.urlopen(url, timeout=5)
        assert stale.value.code == 503 and b"stale" in stale.value.read()
        e.tick()
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and resp.read().startswith(b"ok")
    finally:
        server.shutdown()
        server.server_close()


def test_enforcer_deployment_probes_liveness_on_healthz():
    from infra.components import enforcer_deploy

    [deployment] = [o for o in enforcer_deploy.enforcer_objects("source") if o["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
