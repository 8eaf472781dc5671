"""The Pulumi program: load and validate the stack config, then compose the components.
Nothing else lives here; decisions are in infra/plan/, infra/config/ and infra/cost.py."""

import sys
from pathlib import Path

# The language host runs this directory with runpy (infra/ on sys.path, not the repo root);
# put the repo root first so `infra.*` imports resolve the same under `pulumi up` and in tests.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import pulumi  # noqa: E402

from infra.components import tagging  # noqa: E402
from infra.components.addons import Addons, AddonsArgs  # noqa: E402
from infra.components.budgets import Budgets, BudgetsArgs  # noqa: E402
from infra.components.cluster import Cluster, ClusterArgs  # noqa: E402
from infra.components.enforcer_deploy import BudgetEnforcer, BudgetEnforcerArgs  # noqa: E402
from infra.components.gpu_pools import GpuNodePools, GpuNodePoolsArgs  # noqa: E402
from infra.components.interruption import InterruptionQueue, InterruptionQueueArgs  # noqa: E402
from infra.components.job import TrainingJob, TrainingJobArgs  # noqa: E402
from infra.components.job import read_training_config  # noqa: E402
from infra.components.karpenter import Karpenter, KarpenterArgs  # noqa: E402
from infra.components.scaler_deploy import ScalerController, ScalerControllerArgs  # noqa: E402
from infra.components.network import Network, NetworkArgs  # noqa: E402
from infra.components.storage import Storage, StorageArgs  # noqa: E402
from infra.components.teams import Teams, TeamsArgs  # noqa: E402
from infra.config import stack as stack_config  # noqa: E402
from infra.config.checks import cost_estimate  # noqa: E402
from infra.plan import job as job_plan  # noqa: E402
from infra.plan import scaler as scaler_plan  # noqa: E402
from infra.plan import teams as team_plan  # noqa: E402
from infra.plan.budgets import team_gpu_hour_prices  # noqa: E402

cfg = stack_config.load_from_pulumi()  # raises ConfigError, listing every problem, before any resource
for warning in cfg.warnings:
    pulumi.log.warn(warning)

tags = tagging.stack_tags(stack=cfg.stack, environment=cfg.environment, cost_centre=cfg.cost_centre)
tagging.register(tags)

network = Network("network", NetworkArgs(config=cfg.network, region=cfg.region, cluster_name=cfg.cluster_name))
cluster = Cluster("cluster", ClusterArgs(config=cfg.cluster, cluster_name=cfg.cluster_name, region=cfg.region,
                                         private_subnet_ids=network.private_subnet_ids, tags=tags,
                                         aws_profile=cfg.aws_profile, aws_role_arn=cfg.aws_role_arn))
interruptions = InterruptionQueue("interruption", InterruptionQueueArgs(cluster_name=cfg.cluster_name))
karpenter = Karpenter("karpenter", KarpenterArgs(
    cluster_name=cluster.name, cluster_endpoint=cluster.endpoint, region=cfg.region,
    chart_version=cfg.karpenter.chart_version, node_role_arn=cluster.karpenter_node_role_arn,
    queue_name=interruptions.queue_name, queue_arn=interruptions.queue_arn, provider=cluster.provider,
    depends_on=(cluster.system_nodes,)))
gpu_pools = GpuNodePools("gpu", GpuNodePoolsArgs(
    pools=cfg.gpu_pools, karpenter=cfg.karpenter, cluster_name=cfg.cluster_name,
    node_role_name=cluster.karpenter_node_role_name, vpc_id=network.vpc_id, tags=tags,
    provider=cluster.provider, crds=karpenter.crds, controller=karpenter.release))
storage = Storage("storage", StorageArgs(
    config=cfg.storage, cluster_name=cfg.cluster_name, teams=cfg.teams, vpc_id=network.vpc_id,
    private_subnet_ids=network.private_subnet_ids, availability_zones=cfg.network.availability_zones,
    cluster_security_group_id=cluster.security_group_id))
budgets = Budgets("budgets", BudgetsArgs(
    config=cfg.budget, stack=cfg.stack, teams=cfg.teams,
    gpu_hour_prices=team_gpu_hour_prices(cfg.gpu_pools, cfg.prices), provider=cluster.provider))
addons = Addons("addons", AddonsArgs(
    platform=cfg.platform, cluster_name=cluster.name, file_system_id=storage.file_system_id, provider=cluster.provider,
    depends_on=(cluster.system_nodes, karpenter.release)))
teams = Teams("teams", TeamsArgs(
    teams=cfg.teams, pools=cfg.gpu_pools, prices=cfg.prices, platform=cfg.platform, cluster_name=cluster.name,
    bucket_arn=storage.bucket_arn, kms_key_arn=storage.kms_key_arn, file_system_id=storage.file_system_id,
    access_point_ids=storage.access_point_ids, provider=cluster.provider, kueue=(*addons.kueue_crds, addons.kueue)))
enforcer_deploy = BudgetEnforcer("enforcer", BudgetEnforcerArgs(
    provider=cluster.provider, depends_on=(budgets.namespace, budgets.team_budgets, *addons.kueue_crds)))
team_models = {t.name: t.gpu_models for t in cfg.teams}
for job in (j for j in cfg.jobs if j.enabled):  # a disabled entry is an example: validated, not deployed
    TrainingJob(f"job-{job.team}-{job.name}", TrainingJobArgs(
        job=job, team_models=team_models[job.team], pools=cfg.gpu_pools, bucket_name=storage.bucket_name,
        # After Kueue is ready and the job's queue exists: created before Kueue's webhook, the
        # Job would run unsuspended (Karpenter buying GPU nodes) until Kueue suspends it.
        provider=cluster.provider, depends_on=(teams.namespaces[job.team], addons.kueue,
                                               teams.local_queues[job.team][team_plan.LOCAL_QUEUE])))
scaled = [scaler_plan.scaled_job(j, training, min_nodes=low, max_nodes=high)
          for j in cfg.jobs if j.enabled and j.scaler is not None  # `scaler: {}` is every default
          for training in [read_training_config(j.training_config)]
          for low, high in [job_plan.job_bounds(j, training)]]
if scaled:  # the controller exists only while there is a scaled job to resize
    quotas = {t.name: team_plan.team_quota(t, cfg.gpu_pools, cfg.prices) for t in cfg.teams}
    scaler_config = storage.bucket_name.apply(lambda bucket: scaler_plan.scaler_config(
        scaled, teams=cfg.teams, quotas=quotas, pools=cfg.gpu_pools, prices=cfg.prices, region=cfg.region,
        bucket=bucket, decide_every_s=cfg.scaler.decide_every_s))
    scaler_namespaces = tuple(sorted({s.job.team for s in scaled}))
    scaler_controller = ScalerController("scaler", ScalerControllerArgs(
        config=scaler_config, image=cfg.scaler.image, team_namespaces=scaler_namespaces,
        scaled_jobs=tuple(s.job for s in scaled), cluster_name=cluster.name, bucket_arn=storage.bucket_arn,
        kms_key_arn=storage.kms_key_arn, provider=cluster.provider,
        depends_on=(budgets.namespace, *addons.kueue_crds, *(teams.namespaces[t] for t in scaler_namespaces))))
    pulumi.export("scalerServiceAccount", scaler_controller.service_account)
    pulumi.export("scalerRoleArn", scaler_controller.role_arn)

estimate = cost_estimate(pools=cfg.gpu_pools, cluster=cfg.cluster, network=cfg.network, prices=cfg.prices)
pulumi.export("clusterName", cluster.name)
pulumi.export("vpcId", network.vpc_id)
pulumi.export("checkpointBucket", storage.bucket_name)
pulumi.export("fileSystemId", storage.file_system_id)
pulumi.export("interruptionQueue", interruptions.queue_name)
pulumi.export("nodePools", gpu_pools.node_pool_names)
pulumi.export("budgetTopicArn", budgets.topic_arn)
# What an operator needs after `up` (docs/upgrades.md): reach the cluster, and the identities
# to grant or audit. The enforcer has no IAM role (it calls only the Kubernetes API).
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("clusterEndpoint", cluster.endpoint)
pulumi.export("clusterCertificateAuthority", cluster.certificate_authority)
pulumi.export("trainerRoleArns", teams.trainer_role_arns)
pulumi.export("karpenterControllerRoleArn", karpenter.controller_role_arn)
pulumi.export("karpenterNodeRoleArn", cluster.karpenter_node_role_arn)
pulumi.export("enforcerServiceAccount", enforcer_deploy.service_account)
pulumi.export("costUsd", {
    "hourlyAtMin": round(estimate.hourly_at_min, 2),
    "hourlyAtMaxAllSpot": round(estimate.hourly_at_max_all_spot, 2),
    "hourlyAtMaxAllOnDemand": round(estimate.hourly_at_max_all_on_demand, 2),
    "monthlyAtMin": round(estimate.monthly_at_min, 2),
    "monthlyAtMaxAllSpot": round(estimate.monthly_at_max_all_spot, 2),
    "monthlyAtMaxAllOnDemand": round(estimate.monthly_at_max_all_on_demand, 2),
    "monthlyBudget": cfg.budget.monthly_usd,
})
