"""The mocked program's in-cluster platform, per stack: team objects, queues and quotas from the
cost model, identities, network policies, the elastic job's pod spec, and the add-on releases."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from infra import cost
from infra.components import addons
from infra.config import stack as config
from infra.config.types import StackConfig
from infra.plan import teams as team_plan
from infra.plan.pools import GPU_TAINT

RELEASE = "kubernetes:helm.sh/v3:Release"
JOB = "kubernetes:batch/v1:Job"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _config(stack: str, raw_configs) -> StackConfig:
    return config.parse(raw_configs[stack], stack=stack)


def _k8s(run, kind: str, namespace: str | None = None) -> list[dict]:
    found = [r for r in run.resources if r["type"].startswith("kubernetes:") and r["type"].endswith(f":{kind}")]
    if namespace is not None:
        found = [r for r in found if r["inputs"]["metadata"].get("namespace") == namespace]
    return [r["inputs"] for r in found]


def test_each_team_gets_its_namespace_quota_limits_and_service_account(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    assert {n["metadata"]["name"] for n in _k8s(run, "Namespace")} == {t.name for t in cfg.teams} | {"tensile-system"}
    for team in cfg.teams:
        quota = team_plan.team_quota(team, cfg.gpu_pools, cfg.prices)
        (rq,) = _k8s(run, "ResourceQuota", team.name)
        assert rq["spec"]["hard"]["requests.nvidia.com/gpu"] == str(quota.nominal_gpus + quota.borrowing_gpus)
        # Kubernetes counts extended resources under requests. only: a limits. entry caps nothing.
        assert not any(key.startswith("limits.") and "/" in key for key in rq["spec"]["hard"])
        (limits,) = _k8s(run, "LimitRange", team.name)
        assert limits["spec"]["limits"][0]["defaultRequest"]
        (sa,) = _k8s(run, "ServiceAccount", team.name)
        assert sa["metadata"]["name"] == "trainer" and sa["automountServiceAccountToken"] is False


def test_cluster_queue_quota_is_what_the_cost_model_derives_from_the_budget(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    queues = {q["metadata"]["name"]: q for q in _k8s(run, "ClusterQueue")}
    assert set(queues) == {t.name for t in cfg.teams}
    for team in cfg.teams:
        types = [t for p in cfg.gpu_pools if p.gpu_model in team.gpu_models for t in p.instance_types]
        affordable = cost.max_gpus_within_budget(budget_monthly=team.monthly_budget_usd, instance_types=types,
                                                 prices=cfg.prices)
        spec = queues[team.name]["spec"]
        assert spec["cohortName"] == team_plan.COHORT
        flavors = spec["resourceGroups"][0]["flavors"]
        assert [f["name"] for f in flavors] == list(team.gpu_models)
        gpu = [next(r for r in f["resources"] if r["name"] == "nvidia.com/gpu") for f in flavors]
        nominal = sum(r["nominalQuota"] for r in gpu)
        borrowing = sum(r["borrowingLimit"] for r in gpu)
        assert nominal == min(team.gpu_quota, affordable)
        assert nominal + borrowing <= affordable  # borrowed capacity cannot break the budget
        # ... and priced per flavor at on-demand, the whole queue fits the team's budget.
        worst = sum((r["nominalQuota"] + r["borrowingLimit"]) * cost.worst_per_gpu_hour(
            [t for p in cfg.gpu_pools if p.gpu_model == f["name"] for t in p.instance_types], cfg.prices)
            * cost.HOURS_PER_MONTH for r, f in zip(gpu, flavors))
        assert worst <= team.monthly_budget_usd
        # Tensile's jobs name `training`; Kueue gives every unlabelled Job `default`: both feed
        # the team's one ClusterQueue.
        local = {q["metadata"]["name"]: q["spec"] for q in _k8s(run, "LocalQueue", team.name)}
        assert local == {team_plan.LOCAL_QUEUE: {"clusterQueue": team.name},
                          team_plan.DEFAULT_LOCAL_QUEUE: {"clusterQueue": team.name}}
    (cohort,) = _k8s(run, "Cohort")
    assert cohort["metadata"]["name"] == team_plan.COHORT


def test_flavors_key_on_the_gpu_model_never_on_capacity_type(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    flavors = {f["metadata"]["name"]: f["spec"] for f in _k8s(run, "ResourceFlavor")}
    assert set(flavors) == {m for t in cfg.teams for m in t.gpu_models}
    for model, spec in flavors.items():
        assert spec["nodeLabels"] == {"karpenter.k8s.aws/instance-gpu-name": model}
        assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    text = json.dumps(_k8s(run, "ResourceFlavor") + _k8s(run, "ClusterQueue"))
    assert "capacityType" not in text and "capacity-type" not in text


def _port(value) -> str:
    """Mocks hand numbers back as floats."""
    return str(int(value)) if isinstance(value, float) else str(value)


def test_network_policies_allow_exactly_what_training_needs(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    monitoring = raw_configs[run.stack]["tensile:platform"]["monitoringNamespace"]
    for team in cfg.teams:
        policies = {p["metadata"]["name"]: p["spec"] for p in _k8s(run, "NetworkPolicy", team.name)}
        allowed = set()
        for name, spec in policies.items():
            assert spec["podSelector"] == {}
            for rule in spec.get("egress", []):
                for peer in rule["to"]:
                    for port in rule.get("ports", [{"protocol": "any", "port": "any"}]):
                        allowed.add(("egress", json.dumps(peer, sort_keys=True), port["protocol"], _port(port["port"])))
            for rule in spec.get("ingress", []):
                for peer in rule["from"]:
                    for port in rule.get("ports", [{"protocol": "any", "port": "any"}]):
                        allowed.add(("ingress", json.dumps(peer, sort_keys=True), port["protocol"], _port(port["port"])))
        dns = json.dumps({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}, sort_keys=True)
        same = json.dumps({"podSelector": {}}, sort_keys=True)
        assert allowed == {
            ("egress", dns, "UDP", "53"), ("egress", dns, "TCP", "53"),
            ("egress", same, "any", "any"), ("ingress", same, "any", "any"),  # workers, rendezvous store, NCCL
            ("ingress", json.dumps({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}}},
                                   sort_keys=True), "TCP", "9400"),
            ("egress", json.dumps({"ipBlock": {"cidr": "169.254.170.23/32"}}, sort_keys=True), "TCP", "80"),
            ("egress", json.dumps({"ipBlock": {"cidr": "0.0.0.0/0"}}, sort_keys=True), "TCP", "443"),
        }
        assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_trainer_identity_reaches_only_its_team_prefix(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    associations = {a["inputs"]["namespace"]: a for a in run.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                    if a["name"].startswith("teams-")}
    assert set(associations) == {t.name for t in cfg.teams}
    for team in cfg.teams:
        assert associations[team.name]["inputs"]["serviceAccount"] == "trainer"
        policy = next(r for r in run.of_type("aws:iam/rolePolicy:RolePolicy") if r["name"] == f"teams-{team.name}-trainer-s3")
        doc = json.loads(policy["inputs"]["policy"])
        for statement in doc["Statement"]:
            if statement["Sid"] == "ListTeamPrefix":
                assert statement["Action"] == "s3:ListBucket"
                assert statement["Condition"] == {"StringLike": {"s3:prefix": [f"teams/{team.name}/*"]}}
            elif statement["Sid"] == "ListUnfinishedUploads":
                assert statement["Action"] == "s3:ListBucketMultipartUploads" and "Condition" not in statement
            elif any(a.startswith("s3:") for a in statement["Action"]):
                assert statement["Resource"].endswith(f"/teams/{team.name}/*")
            else:
                assert statement["Resource"].startswith("arn:aws:kms:")
        others = [t.name for t in cfg.teams if t.name != team.name]
        assert not any(f"teams/{o}/" in policy["inputs"]["policy"] for o in others)


def test_team_members_are_bound_through_access_entries_to_their_namespace_only(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    entries = {e["inputs"]["principalArn"]: e["inputs"] for e in run.of_type("aws:eks/accessEntry:AccessEntry")}
    for team in cfg.teams:
        entry = entries[team.member_role_arn]
        assert entry["kubernetesGroups"] == [f"tensile:team:{team.name}"]
        # The team's own (the scaler controller's, where a job is scaled, is tests/infra/test_scaled_jobs.py's).
        (binding,) = [b for b in _k8s(run, "RoleBinding", team.name) if b["metadata"]["name"] != "tensile-scaler"]
        assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                                        "name": f"tensile:team:{team.name}"}]
        (role,) = [r for r in _k8s(run, "Role", team.name) if r["metadata"]["name"] != "tensile-scaler"]
        writable = {res for rule in role["rules"] if "create" in rule["verbs"] for res in rule["resources"]}
        assert not writable & {"networkpolicies", "resourcequotas", "limitranges", "rolebindings", "roles"}
    # No cluster-wide access policy for team roles.
    team_arns = {t.member_role_arn for t in cfg.teams}
    for assoc in run.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation"):
        assert assoc["inputs"]["principalArn"] not in team_arns


def test_each_team_mounts_its_own_efs_access_point(run, raw_configs):
    cfg = _config(run.stack, raw_configs)
    volumes = {v["metadata"]["name"]: v["spec"] for v in _k8s(run, "PersistentVolume")}
    for team in cfg.teams:
        spec = volumes[f"efs-{team.name}"]
        assert spec["csi"]["driver"] == "efs.csi.aws.com"
        assert spec["csi"]["volumeHandle"].endswith(f"::storage-efs-{team.name}-id")
        assert spec["claimRef"] == {"namespace": team.name, "name": "team-shared"}


def _job_and_store(run):
    """The stack file's first example job (dev's has a scaler, prod's none) and its store."""
    name = _first_job(run)["name"]
    (job,) = [j for j in _k8s(run, "Job") if j["metadata"]["name"] == name]
    (store,) = [d for d in _k8s(run, "Deployment", job["metadata"]["namespace"])
                if d["metadata"]["name"] == f"{name}-rdzv"]
    return job, store


def _first_job(run) -> dict:
    return yaml.safe_load((REPO_ROOT / f"Pulumi.{run.stack}.yaml").read_text())["config"]["tensile:jobs"][0]


def test_job_pods_tolerate_gpus_stay_in_one_zone_and_one_model(run, raw_configs):
    job, _ = _job_and_store(run)
    raw_job = raw_configs[run.stack]["tensile:jobs"][0]
    pod = job["spec"]["template"]["spec"]
    assert {"key": GPU_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (zone,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"
    assert zone["labelSelector"]["matchLabels"] == {"tensile.io/job": raw_job["name"], "tensile.io/role": "worker"}
    assert job["spec"]["template"]["metadata"]["labels"].items() >= zone["labelSelector"]["matchLabels"].items()
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "karpenter.k8s.aws/instance-gpu-name", "operator": "In",
                                         "values": [raw_job["gpuModel"]]}]


def test_job_grace_period_covers_the_emergency_checkpoint_and_nothing_blocks_eviction(run, raw_configs):
    job, _ = _job_and_store(run)
    raw_job = raw_configs[run.stack]["tensile:jobs"][0]
    grace = job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert raw_job["emergencyCheckpointSeconds"] < grace <= 120  # inside the two-minute spot notice
    everything = json.dumps([r["inputs"] for r in run.resources if r["type"].startswith("kubernetes:")
                             and not r["type"].endswith("CustomResourceDefinition")])
    assert "do-not-disrupt" not in everything
    assert not [r for r in run.resources if r["type"].endswith(":PodDisruptionBudget")]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [143.0]}} in rules
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_job_is_queued_elastically_with_its_minimum_parallelism(run, raw_configs):
    job, _ = _job_and_store(run)
    training = yaml.safe_load((REPO_ROOT / raw_configs[run.stack]["tensile:jobs"][0]["trainingConfig"]).read_text())
    low, high = training["elastic"]["min_nodes"], training["elastic"]["max_nodes"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
    if "scaler" in raw_configs[run.stack]["tensile:jobs"][0]:
        # An elastic Job instead (tests/infra/test_scaled_jobs.py): created at the minimum.
        assert job["metadata"]["annotations"]["kueue.x-k8s.io/elastic-job"] == "true"
        assert (job["spec"]["parallelism"], job["spec"]["completions"]) == (low, high)
    else:
        assert job["metadata"]["annotations"]["kueue.x-k8s.io/job-min-parallelism"] == str(low)
        assert job["metadata"]["annotations"]["kueue.x-k8s.io/job-completions-equal-parallelism"] == "true"
        assert job["spec"]["parallelism"] == job["spec"]["completions"] == high
    assert job["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    assert job["spec"]["completionMode"] == "Indexed"
    assert "suspend" not in job["spec"]  # Kueue's webhook suspends it; Pulumi never fights Kueue
    record = next(r for r in run.of_type(JOB))
    assert set(record["ignore_changes"]) == {"spec.parallelism", "spec.completions", "spec.suspend"}


def test_job_requests_equal_limits_and_wire_checkpoints_and_metrics(run, raw_configs):
    job, _ = _job_and_store(run)
    raw_job = raw_configs[run.stack]["tensile:jobs"][0]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["requests"]["nvidia.com/gpu"] == str(raw_job["gpusPerWorker"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TENSILE_CHECKPOINT_URL"].startswith("s3://tensile-")
    assert env["TENSILE_CHECKPOINT_URL"].endswith(f"/teams/{raw_job['team']}/runs/{raw_job['name']}")
    assert container["ports"] == [{"name": "metrics", "containerPort": 9400.0, "protocol": "TCP"}]
    (config_map,) = [c for c in _k8s(run, "ConfigMap", raw_job["team"])
                     if c["metadata"]["name"] == f"{raw_job['name']}-config"]
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["checkpoint"]["shared_dir"] == env["TENSILE_CHECKPOINT_URL"]
    assert container["image"] == raw_job["image"] and not container["image"].endswith(":latest")


def test_efa_jobs_request_efa_interfaces_and_set_nccl_for_efa(prod, dev):
    (job,) = _k8s(prod, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["vpc.amazonaws.com/efa"] == "32"  # p5.48xlarge
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    (dev_job,) = _k8s(dev, "Job")
    assert "vpc.amazonaws.com/efa" not in dev_job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]


def test_rendezvous_store_runs_on_the_on_demand_system_nodes(run, raw_configs):
    job, store = _job_and_store(run)
    pod = store["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"tensile.io/node-role": "system"}
    # The system nodes' taint only, never the GPU taint: a store never lands on a GPU node.
    assert pod["tolerations"] == [{"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["command"][:2] == ["tensile", "rdzv-store"]
    services = {s["metadata"]["name"]: s["spec"] for s in _k8s(run, "Service")}
    name = job["metadata"]["name"]
    assert services[name]["clusterIP"] == "None"  # headless, for the workers
    assert services[f"{name}-rdzv"]["ports"][0]["port"] == 29400
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--rdzv-endpoint") + 1].startswith(f"{name}-rdzv.")


def test_addon_charts_are_pinned_with_explicit_values(run, raw_configs):
    releases = {r["inputs"]["name"]: r["inputs"] for r in run.of_type(RELEASE)}
    for chart in addons.CHARTS.values():
        release = releases[chart.name]
        assert release["version"] == chart.version and release["values"]
    assert {c.name: c.version for c in addons.CHARTS.values()} == {
        "kueue": "0.19.2", "nvidia-device-plugin": "0.20.0", "dcgm-exporter": "4.8.2",
        "metrics-server": "3.13.1", "aws-efs-csi-driver": "4.4.1"}
    # Karpenter handles interruptions; no node-termination-handler.
    assert not any("termination-handler" in r["chart"] for r in releases.values())
    kueue = yaml.safe_load(releases["kueue"]["values"]["managerConfig"]["controllerManagerConfigYaml"])
    assert kueue["integrations"]["frameworks"] == ["batch/job"]
    # Every Job in a team namespace is Kueue's, labelled or not; no other namespace's.
    assert kueue["manageJobsWithoutQueueName"] is True
    assert kueue["managedJobsNamespaceSelector"] == {
        "matchExpressions": [{"key": team_plan.TEAM_LABEL, "operator": "Exists"}]}
    ready = kueue["waitForPodsReady"]
    assert ready["timeout"] == raw_configs[run.stack]["tensile:platform"]["podsReadyTimeout"]
    assert ready["recoveryTimeout"] == "0s"
    assert "vpc.amazonaws.com/efa" in kueue["resources"]["excludeResourcePrefixes"]
    plugin = releases["nvidia-device-plugin"]["values"]
    expr = plugin["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert expr["matchExpressions"][0]["key"] == "karpenter.k8s.aws/instance-gpu-count"  # no NFD labels needed
    dcgm = releases["dcgm-exporter"]["values"]
    assert dcgm["serviceMonitor"]["enabled"] is raw_configs[run.stack]["tensile:platform"]["prometheusOperator"]
    efs = releases["aws-efs-csi-driver"]["values"]
    assert efs["useHelmHooksForCSIDriver"] is False
    assert efs["storageClasses"][0]["parameters"]["fileSystemId"] == "storage-efs-id"


def test_the_program_alone_owns_every_kueue_crd_and_kueue_objects_wait_for_them(run):
    crds = {r["inputs"]["metadata"]["name"]: r for r in run.resources if r["type"].endswith("CustomResourceDefinition")
            and r["inputs"]["spec"]["group"] == "kueue.x-k8s.io"}
    vendored = sorted(p.name for p in (REPO_ROOT / "infra" / "crds" / "kueue").glob("*.yaml"))
    assert len(crds) == len(vendored) == 11
    for crd in crds.values():
        assert crd["retain_on_delete"]
        # No Helm ownership metadata: the chart (vendored without templates/crd/) never adopts them.
        assert not any(k.startswith("meta.helm.sh/") for k in crd["inputs"]["metadata"].get("annotations") or {})
    # The kinds Kueue converts (and injects a caBundle for) convert through the release's webhook.
    converted = {n for n, c in crds.items() if c["inputs"]["spec"].get("conversion", {}).get("strategy") == "Webhook"}
    assert converted == {f"{p}.kueue.x-k8s.io" for p in addons.KUEUE_CONVERTED_CRDS}
    assert not (REPO_ROOT / "infra" / "charts" / "kueue-0.19.2" / "templates" / "crd").exists()
    urns = {c["urn"] for c in crds.values()}
    for r in run.resources:
        if r["type"].startswith("kubernetes:kueue.x-k8s.io/"):
            assert urns <= set(r["dependencies"]), r["name"]


def test_budget_enforcer_runs_on_system_nodes_with_least_privilege(run):
    (deployment,) = [d for d in _k8s(run, "Deployment", "tensile-system") if d["metadata"]["name"] == "tensile-enforcer"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"tensile.io/node-role": "system"}
    assert pod["containers"][0]["command"][:2] == ["python", "/opt/tensile/enforcer.py"]
    assert not pod["containers"][0]["image"].endswith(":latest")
    (code,) = [c for c in _k8s(run, "ConfigMap", "tensile-system") if c["metadata"]["name"] == "tensile-enforcer-code"]
    assert code["data"]["enforcer.py"] == (REPO_ROOT / "infra" / "enforcer.py").read_text()
    (cluster_role,) = [c for c in _k8s(run, "ClusterRole") if c["metadata"]["name"] == "tensile-enforcer"]
    assert cluster_role["rules"] == [{"apiGroups": ["kueue.x-k8s.io"], "resources": ["clusterqueues"],
                                      "verbs": ["get", "list", "patch"]}]
    (role,) = [r for r in _k8s(run, "Role", "tensile-system") if r["metadata"]["name"] == "tensile-enforcer"]
    named = next(r for r in role["rules"] if "resourceNames" in r)
    assert set(named["resourceNames"]) == {"team-budgets", "team-spend"} and "delete" not in named["verbs"]


# Pod Security "baseline" (enforced on team namespaces) allows adding only these capabilities.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def test_team_pods_pass_pod_security_baseline_and_run_hardened(run):
    for namespace in _k8s(run, "Namespace"):
        if namespace["metadata"]["labels"].get("tensile.io/team"):
            assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    pods = [j["spec"]["template"]["spec"] for j in _k8s(run, "Job") + _k8s(run, "Deployment")]
    pods += [c["spec"]["jobTemplate"]["spec"]["template"]["spec"] for c in _k8s(run, "CronJob")]
    for pod in pods:
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert set(security["capabilities"].get("add", [])) <= BASELINE_CAPABILITIES
            assert not security.get("privileged")
