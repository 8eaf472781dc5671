"""The system-capacity check over a program run: every Deployment, StatefulSet and DaemonSet the
program declares or its charts render (Helm, offline), CoreDNS from its add-on's configuration,
room for the teams' rendezvous stores and the EKS add-on DaemonSets, against the system node group."""

from __future__ import annotations

import json

from infra import mocks
from infra.plan import system_capacity as plan
from infra.plan import teams as team_plan
from infra.tools import charts

NODE_GROUP_TYPE = "aws:eks/nodeGroup:NodeGroup"
ADDON_TYPE = "aws:eks/addon:Addon"
_PROGRAM_WORKLOAD_TYPES = {f"kubernetes:apps/v1:{kind}": kind for kind in plan.WORKLOAD_KINDS}


def _manifest(record: dict, kind: str) -> dict:
    inputs = record["inputs"]
    return {"kind": kind, "metadata": inputs.get("metadata") or {}, "spec": inputs.get("spec") or {}}


def _coredns(run: mocks.ProgramRun) -> dict | None:
    """CoreDNS as the add-on deploys it: the values the program passes in configurationValues."""
    for record in run.of_type(ADDON_TYPE):
        if record["inputs"].get("addonName") == "coredns":
            values = json.loads(record["inputs"].get("configurationValues") or "{}")
            return {"kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
                    "spec": {"replicas": values.get("replicaCount", 2), "template": {"spec": {
                        "nodeSelector": values.get("nodeSelector") or {}, "tolerations": values.get("tolerations") or [],
                        "containers": [{"name": "coredns", "resources": values.get("resources") or {}}]}}}}
    return None


def team_namespaces(run: mocks.ProgramRun) -> list[str]:
    return sorted(r["inputs"]["metadata"]["name"] for r in run.of_type("kubernetes:core/v1:Namespace")
                  if team_plan.TEAM_LABEL in (r["inputs"]["metadata"].get("labels") or {}))


def workloads(run: mocks.ProgramRun) -> list[plan.Workload]:
    """Everything the program puts on nodes, except what runs in team namespaces: a team's
    rendezvous stores are counted by its reserve (`reserves`), deployed or not."""
    teams = set(team_namespaces(run))
    manifests = [_manifest(r, kind) for r in run.resources for t, kind in _PROGRAM_WORKLOAD_TYPES.items()
                 if r["type"] == t]
    for release in charts.render_releases(run.resources):
        for obj in release.objects:
            if obj.get("kind") in plan.WORKLOAD_KINDS:
                obj = {**obj, "metadata": {"namespace": release.namespace, **(obj.get("metadata") or {})}}
                manifests.append(obj)
    coredns = _coredns(run)
    if coredns:
        manifests.append(coredns)
    return [plan.workload(m) for m in manifests if (m.get("metadata") or {}).get("namespace") not in teams]


def reserves(run: mocks.ProgramRun) -> list[plan.Reserve]:
    store_cpu = plan.cpu_millicores(team_plan.RDZV_STORE_REQUESTS["cpu"])
    store_memory = plan.memory_bytes(team_plan.RDZV_STORE_REQUESTS["memory"])
    found = [plan.Reserve(name=f"rendezvous stores of team {team} (×{team_plan.MAX_TEAM_DEPLOYMENTS})",
                          cpu_millicores=team_plan.MAX_TEAM_DEPLOYMENTS * store_cpu,
                          memory_bytes=team_plan.MAX_TEAM_DEPLOYMENTS * store_memory, per_node=False)
             for team in team_namespaces(run)]
    addons = {r["inputs"].get("addonName") for r in run.of_type(ADDON_TYPE)}
    found += [plan.Reserve(name=f"EKS add-on {name}", cpu_millicores=cpu, memory_bytes=memory_mib * 2**20,
                           per_node=True)
              for name, (cpu, memory_mib) in plan.EKS_ADDON_DAEMONSETS.items() if name in addons]
    return found


def check(run: mocks.ProgramRun) -> plan.SystemCapacity:
    group = run.of_type(NODE_GROUP_TYPE)
    if len(group) != 1:
        raise LookupError(f"expected one system node group, found {len(group)}")
    inputs = group[0]["inputs"]
    return plan.system_capacity(workloads(run), reserves(run), instance_type=inputs["instanceTypes"][0],
                                desired_size=int(inputs["scalingConfig"]["desiredSize"]))
