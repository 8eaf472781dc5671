"""Scaled and scheduled training jobs (issue 18): the stack file's `jobs[].scaler` and
`jobs[].schedule` checked with their property paths, the elastic Job and the CronJob as
docs/design/scaler.md says, a job without either rendered exactly
as before (records taken from the code before them), and the scaler controller's config, RBAC,
IAM and Deployment."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from infra.components.job import read_training_config
from infra.config import stack as config
from infra.config.cron import schedule_problem
from infra.config.types import ConfigError
from infra.plan import job as job_plan
from infra.plan import scaler as scaler_plan
from infra.plan import teams as team_plan
from tensile.cluster.config import parse_controller_config
from tensile.cluster.observe import SCHEDULE_LABEL
from tests.infra.iam_eval import ALLOW, Request, evaluate
from tests.infra.test_stack_identity import identity

TODAY = dt.date(2026, 11, 28)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def _problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(raw, stack="dev", today=TODAY)
    return [str(p) for p in info.value.problems]


def _dev_with(raw_configs, **demo) -> dict:
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:jobs"][0] = {**raw["tensile:jobs"][0], **demo}
    return raw


def _parsed(stack: str):
    _path, _text, document = config.read_stack_document(stack, ROOT)
    return config.parse_document(document, stack)


def _objects(cfg, job) -> list[dict]:
    models = {t.name: t.gpu_models for t in cfg.teams}
    return job_plan.job_objects(job, training_config=read_training_config(job.training_config),
                                team_models=models[job.team], pools=cfg.gpu_pools, bucket="checkpoint-bucket")


# --- the stack file -------------------------------------------------------------------------


@pytest.mark.parametrize("scaler, expected", [
    ({"cooldown_min_s": -1}, "jobs[0].scaler.cooldown_min_s: must be a number > 0"),
    ({"grow_fast": True}, "jobs[0].scaler.grow_fast: unknown key"),
    ({"triggers": [{"action": "grow", "spot_price_above_usd_per_hour": 2.0}]}, "jobs[0].scaler.triggers[0].pool: a price"),
    ({"grow_below_budget_fraction": 0.97}, "jobs[0].scaler.grow_below_budget_fraction: 0.97 must be below"),
    # Kueue's waitForPodsReady (dev: 15m) would evict the whole job before the scaler gives up.
    ({"grow_ready_deadline_s": 900}, "jobs[0].scaler.grow_ready_deadline_s: 900 s is not below platform.podsReadyTimeout"),
    ("fast", "jobs[0].scaler: must be a mapping"),
])
def test_scaled_job_bad_scaler_section_is_refused_at_its_stack_path(raw_configs, scaler, expected):
    problems = _problems(_dev_with(raw_configs, scaler=scaler))
    assert any(p.startswith(expected) for p in problems), problems


def test_scaled_job_needs_one_non_efa_pool_and_the_controller_image(raw_configs):
    raw = _dev_with(raw_configs, enabled=True)
    del raw["tensile:scaler"]
    assert any(p.startswith("scaler.image: is required: job(s) demo have a scaler") for p in _problems(raw))
    # Disabled, a scaled job needs no controller.
    raw = _dev_with(raw_configs)
    del raw["tensile:scaler"]
    assert config.parse(raw, stack="dev", today=TODAY).scaler is None
    prod = copy.deepcopy(raw_configs["prod"])
    prod["tensile:jobs"][0]["scaler"] = {}
    with pytest.raises(ConfigError) as info:
        config.parse(prod, stack="prod", today=TODAY)
    assert any(str(p).startswith("jobs[0].scaler: pool h100 has EFA") for p in info.value.problems)


@pytest.mark.parametrize("schedule, expected", [
    ("0 2 * *", "jobs[0].schedule: '0 2 * *' has 4 field(s): a schedule is five fields"),
    ("0 25 * * *", "jobs[0].schedule: hour '25' is out of range: use 0-23"),
    ("@nightly", "jobs[0].schedule: '@nightly' is not a schedule macro"),
    ("TZ=Europe/Paris 0 2 * * *", "jobs[0].schedule: a time zone inside the schedule is refused"),
    ("*/0 * * * *", "jobs[0].schedule: minute '*/0': a step must be at least 1"),
])
def test_scheduled_job_bad_cron_is_refused_with_the_field_and_the_fix(raw_configs, schedule, expected):
    raw = _dev_with(raw_configs, schedule=schedule)
    del raw["tensile:jobs"][0]["scaler"]
    problems = _problems(raw)
    assert any(p.startswith(expected) for p in problems), problems
    assert any("such as '0 2 * * *'" in p or "e.g. '0 2 * * *'" in p or "UTC" in p for p in problems)


@pytest.mark.parametrize("schedule", ["0 2 * * *", "*/30 0-6 * * mon-fri", "15 3 1,15 * 0", "0 2 ? * 7", "@daily",
                                      "0 0 1 jan-jun/2 *"])
def test_scheduled_job_schedules_kubernetes_takes_are_accepted(schedule):
    assert schedule_problem(schedule) is None


def test_a_scheduled_scaled_job_runs_elastic_jobs_the_controller_finds_by_the_schedule_label(raw_configs):
    """Each night's Job is the elastic Job (created at min_nodes, sized by the scaler), labelled
    with the schedule's name, which is how the controller finds the run it sizes."""
    cfg = config.parse(_dev_with(raw_configs, schedule="0 2 * * *"), stack="dev", today=TODAY)
    demo = next(j for j in cfg.jobs if j.name == "demo")
    assert demo.scaler is not None and demo.schedule == "0 2 * * *"
    *_, cron = _objects(cfg, demo)
    template = cron["spec"]["jobTemplate"]
    assert template["metadata"]["labels"][job_plan.SCHEDULE_LABEL] == "demo" == cron["metadata"]["name"]
    assert template["metadata"]["labels"][job_plan.SCALED_LABEL] == "true"
    assert template["metadata"]["annotations"]["kueue.x-k8s.io/elastic-job"] == "true"
    low, high = job_plan.job_bounds(demo, read_training_config(demo.training_config))
    assert (template["spec"]["parallelism"], template["spec"]["completions"]) == (low, high)
    assert SCHEDULE_LABEL == job_plan.SCHEDULE_LABEL  # the label the controller looks for
    training = read_training_config(demo.training_config)
    quotas = {t.name: team_plan.team_quota(t, cfg.gpu_pools, cfg.prices) for t in cfg.teams}
    out = scaler_plan.scaler_config([scaler_plan.scaled_job(demo, training, min_nodes=low, max_nodes=high)],
                                    teams=cfg.teams, quotas=quotas, pools=cfg.gpu_pools, prices=cfg.prices,
                                    region="us-east-1", bucket="ckpt")
    (entry,) = parse_controller_config(out).jobs
    assert entry.scheduled and entry.name == "demo"


# --- the elastic Job ---------------------------------------------------------------------------


def test_scaled_job_renders_the_contracts_elastic_job():
    cfg = _parsed("dev")
    demo = next(j for j in cfg.jobs if j.name == "demo")
    *_, job = _objects(cfg, demo)
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"][job_plan.SCALED_LABEL] == "true" and meta["labels"][job_plan.QUEUE_LABEL] == "training"
    # Replaced delete-first, the old Job goes once its pods have (foreground): no two groups at once.
    assert meta["annotations"] == {"kueue.x-k8s.io/elastic-job": "true", "pulumi.com/skipAwait": "true",
                                   "pulumi.com/deletionPropagationPolicy": "foreground"}
    assert job_plan.MIN_PARALLELISM not in meta["annotations"]
    assert job_plan.COMPLETIONS_EQUAL_PARALLELISM not in meta["annotations"]
    low, high = job_plan.job_bounds(demo, read_training_config(demo.training_config))
    assert (spec["parallelism"], spec["completions"], low < high) == (low, high, True)
    assert spec["successPolicy"] == {"rules": [{"succeededCount": 1}]}
    assert spec["completionMode"] == "Indexed"
    assert spec["template"]["metadata"]["labels"][job_plan.SCALED_LABEL] == "true"


def test_job_without_scaler_or_schedule_renders_byte_for_byte_as_before():
    """Against the records of the code before the scaler (fixtures/job-render-*.yaml)."""
    for stack, recorded in (("dev", "demo"), ("prod", "llm-pretrain")):
        cfg = _parsed(stack)
        job = next(j for j in cfg.jobs if j.name == recorded)
        docs = _objects(cfg, dataclasses.replace(job, scaler=None, scaler_pool=None, schedule=None))
        assert yaml.safe_dump_all(docs, sort_keys=False) == (FIXTURES / f"job-render-{stack}.yaml").read_text()


def _job_identity(run) -> dict:
    by_urn = {r["urn"]: r for r in run.resources}
    return {u: {**r, "replace_on_changes": by_urn[u]["replace_on_changes"],
                "delete_before_replace": by_urn[u]["delete_before_replace"]}
            for u, r in json.loads(json.dumps(identity(run)))["resources"].items() if "tensile:infra:TrainingJob" in u}


def test_job_without_scaler_keeps_its_resources_inputs_and_options(prod):
    """prod's example job has neither: every resource of it, inputs and options, as recorded."""
    assert _job_identity(prod) == json.loads((FIXTURES / "job-identity-prod.json").read_text())


def test_job_turned_elastic_replaces_only_its_job_delete_first_keeping_config_store_and_services(dev):
    """dev's example `demo` gained a scaler: against the record from before, its ConfigMap (the
    checkpoint dir, the run name), rendezvous store and Services are unchanged; the Job keeps its
    URN and name, and is replaced (Kueue refuses a change of the elastic annotation) deleting the
    old one first, ignoring the parallelism the scaler sets."""
    recorded = json.loads((FIXTURES / "job-identity-dev.json").read_text())
    current = _job_identity(dev)
    changed = sorted(u.rsplit("::", 1)[1] for u in recorded if recorded[u] != current.get(u))
    assert changed == ["job-sandbox-demo-job-workers"]
    urn = next(u for u in recorded if u.endswith("::job-sandbox-demo-job-workers"))
    job = current[urn]
    assert job["inputs"]["metadata"]["name"] == recorded[urn]["inputs"]["metadata"]["name"] == "demo"
    assert job["replace_on_changes"] == ['metadata.annotations["kueue.x-k8s.io/elastic-job"]']
    assert job["delete_before_replace"] is True
    assert "spec.parallelism" in job["ignore_changes"]


# --- the CronJob -------------------------------------------------------------------------------


def test_scheduled_job_is_a_cronjob_of_the_same_job_resuming_the_same_run():
    cfg = _parsed("dev")
    nightly = next(j for j in cfg.jobs if j.name == "demo-nightly")
    config_map, store, store_service, headless, cron = _objects(cfg, nightly)
    plain = _objects(cfg, dataclasses.replace(nightly, schedule=None))[-1]
    assert cron["kind"] == "CronJob"
    spec = cron["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 2 * * *", "Etc/UTC", "Forbid")
    assert spec["startingDeadlineSeconds"] == 3600
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
    template = spec["jobTemplate"]
    # Kueue manages the CronJob's Jobs by the queue label on the template.
    assert template["metadata"]["labels"][job_plan.QUEUE_LABEL] == "training"
    assert template["metadata"]["annotations"] == {k: v for k, v in plain["metadata"]["annotations"].items()
                                                   if not k.startswith("pulumi.com/")}
    # The same Job but for the rendezvous id: each run's Job names its own rendezvous in the one store.
    pod, plain_pod = template["spec"]["template"]["spec"], plain["spec"]["template"]["spec"]
    env = pod["containers"][0].pop("env")
    plain_env = plain_pod["containers"][0].pop("env")
    assert template["spec"] == plain["spec"]
    assert env[:-1] == plain_env and env[-1] == {"name": "TENSILE_RDZV_ID", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}}
    # Every run reads the one config: the same run name and checkpoint dir, so each run resumes.
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert (train["run"]["name"], train["checkpoint"]["shared_dir"]) == (
        "demo-nightly", "s3://checkpoint-bucket/teams/sandbox/runs/demo-nightly")
    assert store["kind"] == "Deployment" and store_service["metadata"]["name"] == "demo-nightly-rdzv"


def test_scheduled_job_is_declared_as_a_cronjob_behind_kueue_and_its_queue(dev):
    cron = next(r for r in dev.resources if r["type"] == "kubernetes:batch/v1:CronJob")
    assert cron["name"] == "job-sandbox-demo-nightly-cronjob-workers"
    kueue = next(r["urn"] for r in dev.resources if r["type"] == "kubernetes:helm.sh/v3:Release"
                 and r["name"].endswith("kueue"))
    assert kueue in cron["dependencies"]
    assert not dev.of_type("kubernetes:batch/v1:Job") or all(
        r["inputs"]["metadata"]["name"] != "demo-nightly" for r in dev.of_type("kubernetes:batch/v1:Job"))


# --- the scaler controller ---------------------------------------------------------------------


CONTRACT_JOB_KEYS = {"namespace", "name", "team", "pool", "gpus_per_node", "min_nodes", "max_nodes", "priority",
                     "steps", "global_batch_size", "ledger", "scaler", "scheduled"}


def test_scaler_config_is_schema_v1_of_the_contract():
    cfg = _parsed("dev")
    demo = dataclasses.replace(next(j for j in cfg.jobs if j.name == "demo"), enabled=True)
    quotas = {t.name: team_plan.team_quota(t, cfg.gpu_pools, cfg.prices) for t in cfg.teams}
    training = read_training_config(demo.training_config)
    low, high = job_plan.job_bounds(demo, training)
    out = scaler_plan.scaler_config([scaler_plan.scaled_job(demo, training, min_nodes=low, max_nodes=high)],
                                    teams=cfg.teams, quotas=quotas, pools=cfg.gpu_pools, prices=cfg.prices,
                                    region="us-east-1", bucket="ckpt", decide_every_s=30)
    assert set(out) == {"version", "region", "decide_every_s", "metrics_port", "jobs", "teams", "pools", "spend"}
    assert (out["version"], out["region"], out["decide_every_s"], out["metrics_port"]) == (1, "us-east-1", 30, 9464)
    (entry,) = out["jobs"]
    assert set(entry) == CONTRACT_JOB_KEYS
    assert entry == {"namespace": "sandbox", "name": "demo", "team": "sandbox", "pool": "l4", "gpus_per_node": 1,
                     "min_nodes": low, "max_nodes": high, "priority": 0, "steps": training["run"]["steps"],
                     "global_batch_size": training["batch"]["global_batch_size"],
                     "ledger": "s3://ckpt/teams/sandbox/runs/demo", "scaler": demo.scaler, "scheduled": False}
    # The section exactly as written: the controller parses it with tensile.scaler.config.
    assert entry["scaler"]["triggers"][1] == {"action": "shrink_to_min", "spot_price_above_usd_per_hour": 1.5,
                                              "pool": "l4"}
    assert out["teams"] == {"sandbox": {"namespace": "sandbox", "quota_gpus": quotas["sandbox"].nominal_gpus,
                                        "borrowing_gpus": quotas["sandbox"].borrowing_gpus,
                                        "monthly_budget_usd": 3000.0, "cluster_queue": "sandbox"}}
    pool = out["pools"]["l4"]
    assert pool["capacity_type"] == "spot" and pool["instance_types"] == ["g6.xlarge", "g6.2xlarge", "g6.4xlarge",
                                                                          "g6.12xlarge"]
    assert pool["on_demand_usd_per_hour"] == max(cfg.prices.on_demand_per_hour(t) for t in pool["instance_types"])
    assert pool["gpu_limit"] == next(p.max_gpus for p in cfg.gpu_pools if p.name == "l4")  # the NodePool's limit
    assert out["spend"] == {"namespace": "tensile-system", "configmap": "team-spend"}
    # What the controller reads at start: its own parser takes the rendered file, every field.
    parsed = parse_controller_config(json.loads(json.dumps(out)))
    (job,) = parsed.jobs
    assert (job.key, job.steps, job.global_batch_size, job.checkpoints) == (
        "sandbox/demo", training["run"]["steps"], training["batch"]["global_batch_size"], entry["ledger"])
    assert parsed.spend_configmap == "team-spend" and set(parsed.pools) == {"l4"}
    assert parsed.pools["l4"].gpu_limit == pool["gpu_limit"]


@pytest.mark.parametrize("pool, expected", [
    (dict(capacity_reservation_ids=("cr-1",), spot=True), "reserved"),
    (dict(capacity_reservation_ids=(), spot=True), "spot"),
    (dict(capacity_reservation_ids=(), spot=False), "on-demand"),
])
def test_scaler_config_pool_capacity_type_is_what_karpenter_tries_first(pool, expected):
    base = _parsed("dev").gpu_pools[0]
    assert scaler_plan.capacity_type(dataclasses.replace(base, **pool)) == expected


def _rbac_allows(roles: list[dict], *, group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """Kubernetes RBAC: any rule of any bound role that names the group, resource and verb (and,
    with resourceNames, the object)."""
    for role in roles:
        for rule in role["rules"]:
            if (group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
                    and (not rule.get("resourceNames") or name in rule["resourceNames"])):
                return True
    return False


@pytest.fixture(scope="module")
def controller_objects(dev) -> dict:
    from infra.tools import validation

    return {(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m
            for m in validation.manifests_from_run(dev.resources) if m["metadata"]["name"] == "tensile-scaler"}


READ = ("get", "list", "watch")
NEEDED = ([("batch", "jobs", v) for v in (*READ, "patch")] + [("kueue.x-k8s.io", "workloads", v) for v in (*READ, "patch")]
          + [("", "pods", v) for v in READ] + [("kueue.x-k8s.io", "localqueues", v) for v in READ]
          + [(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")])
REFUSED = [("", "pods", "delete"), ("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("batch", "jobs", "update"),
           ("", "secrets", "get"), ("", "secrets", "list"), ("", "pods", "create"), ("", "pods/exec", "create"),
           ("kueue.x-k8s.io", "workloads", "delete"), ("", "configmaps", "get"), ("", "events", "delete"),
           ("rbac.authorization.k8s.io", "roles", "create"), ("batch", "cronjobs", "patch")]


def test_scaler_rbac_is_exactly_the_contracts_in_the_scaled_namespace(controller_objects):
    team_role = [controller_objects[("Role", "sandbox", "tensile-scaler")]]
    for group, resource, verb in NEEDED:
        assert _rbac_allows(team_role, group=group, resource=resource, verb=verb), (group, resource, verb)
    for group, resource, verb in REFUSED:
        assert not _rbac_allows(team_role, group=group, resource=resource, verb=verb), (group, resource, verb)
    binding = controller_objects[("RoleBinding", "sandbox", "tensile-scaler")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tensile-scaler", "namespace": "tensile-system"}]
    # Only namespaces with a scaled job get a Role.
    assert {ns for kind, ns, _ in controller_objects if kind == "Role"} == {"sandbox", "tensile-system"}


def test_scaler_rbac_cluster_wide_reads_clusterqueues_only_and_the_spend_configmap_by_name(controller_objects):
    cluster = [controller_objects[("ClusterRole", None, "tensile-scaler")]]
    for verb in READ:
        assert _rbac_allows(cluster, group="kueue.x-k8s.io", resource="clusterqueues", verb=verb)
    for group, resource, verb in [("kueue.x-k8s.io", "clusterqueues", "patch"), ("batch", "jobs", "get"),
                                  ("", "pods", "list"), ("", "secrets", "get"), ("", "configmaps", "get")]:
        assert not _rbac_allows(cluster, group=group, resource=resource, verb=verb)
    system = [controller_objects[("Role", "tensile-system", "tensile-scaler")]]
    assert _rbac_allows(system, group="", resource="configmaps", verb="get", name="team-spend")
    assert not _rbac_allows(system, group="", resource="configmaps", verb="get", name="team-budgets")
    assert not _rbac_allows(system, group="", resource="configmaps", verb="patch", name="team-spend")


def test_scaler_deployment_runs_the_controller_hardened_on_the_system_nodes(controller_objects, dev):
    deployment = controller_objects[("Deployment", "tensile-system", "tensile-scaler")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert container["command"] == ["tensile", "scaler", "run", "--config", "/etc/tensile-scaler/config.json"]
    assert container["image"] == "111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0"
    assert pod["nodeSelector"] == {"tensile.io/node-role": "system"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["port"] == container["livenessProbe"]["httpGet"]["port"] == 9464
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    service = controller_objects[("Service", "tensile-system", "tensile-scaler")]
    assert service["spec"]["ports"][0]["port"] == 9464
    text = controller_objects[("ConfigMap", "tensile-system", "tensile-scaler")]["data"]["config.json"]
    data = json.loads(text)
    assert data["version"] == 1 and [j["name"] for j in data["jobs"]] == ["demo"]
    # The config's hash on the pods: a new config restarts the controller.
    assert spec["template"]["metadata"]["annotations"]["tensile.dev/config-sha256"] == \
        hashlib.sha256(text.encode()).hexdigest()[:16]
    association = next(r for r in dev.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                       if r["name"] == "scaler-identity")
    assert (association["inputs"]["namespace"], association["inputs"]["serviceAccount"]) == (
        "tensile-system", "tensile-scaler")


def test_scaler_controller_is_absent_from_the_stacks_as_shipped(stack_runs):
    for run in stack_runs.values():
        assert not [r for r in run.resources if "tensile-scaler" in json.dumps(r["inputs"])]


BUCKET = "arn:aws:s3:::tensile-dev-ckpt"
KEY = "arn:aws:kms:us-east-1:111122223333:key/k"


@pytest.mark.parametrize("request_, allowed", [
    # What the controller asks AWS for.
    (Request("ec2:DescribeSpotPriceHistory", "*"), True),
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/sandbox/runs/demo/"}), True),
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/sandbox/runs/demo"}), True),
    (Request("s3:GetObject", f"{BUCKET}/teams/sandbox/runs/demo/step-00000040/manifest.json"), True),
    (Request("kms:Decrypt", KEY), True),
    # And nothing else: another run or team, any write, any other EC2 call.
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/sandbox/runs/other/"}), False),
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/"}), False),
    (Request("s3:ListBucket", BUCKET, {}), False),
    (Request("s3:GetObject", f"{BUCKET}/teams/sandbox/runs/demo-nightly/manifest.json"), False),
    (Request("s3:GetObject", f"{BUCKET}/teams/vision/runs/demo/manifest.json"), False),
    (Request("s3:PutObject", f"{BUCKET}/teams/sandbox/runs/demo/x"), False),
    (Request("s3:DeleteObject", f"{BUCKET}/teams/sandbox/runs/demo/x"), False),
    (Request("ec2:RunInstances", "*"), False),
    (Request("ec2:DescribeInstances", "*"), False),
    (Request("kms:Encrypt", KEY), False),
])
def test_scaler_iam_allows_what_the_controller_requests_and_refuses_the_rest(request_, allowed):
    cfg = _parsed("dev")
    demo = next(j for j in cfg.jobs if j.name == "demo")
    policy = json.loads(scaler_plan.scaler_iam_policy(bucket_arn=BUCKET, kms_key_arn=KEY, jobs=[demo]))
    assert (evaluate(policy, request_).effect == ALLOW) is allowed


def test_scaler_controller_is_deployed_for_a_scaler_section_of_defaults_only(raw_configs):
    """`scaler: {}` (every setting at its default) scales the job: it gets the controller too."""
    from infra import mocks

    raw = _dev_with(raw_configs, enabled=True, scaler={})
    run = mocks.run_isolated("dev", config=raw)
    assert run.error is None, run.error
    (config_map,) = [r for r in run.of_type("kubernetes:core/v1:ConfigMap") if r["name"] == "scaler-configmap"]
    assert json.loads(config_map["inputs"]["data"]["config.json"])["jobs"][0]["scaler"] == {}
