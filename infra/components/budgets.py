"""Budgets: an AWS Budget for the stack with actual and forecast notifications to SNS and email,
and the team budgets the in-cluster spend enforcer (infra/enforcer.py) reads."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.components import tagging
from infra.config.types import BudgetConfig, TeamConfig
from infra.plan import budgets as budget_plan

ENFORCER_NAMESPACE = "tensile-system"
TEAM_BUDGETS_CONFIGMAP = "team-budgets"


def alerts_key_policy(account_id: str) -> str:
    """AWS Budgets publishes to the encrypted topic, so it needs the key too."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Account", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Budgets", "Effect": "Allow", "Principal": {"Service": "budgets.amazonaws.com"},
         "Action": ["kms:GenerateDataKey*", "kms:Decrypt"], "Resource": "*"},
    ]})


def topic_policy(topic_arn: str, account_id: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "BudgetsPublish", "Effect": "Allow", "Principal": {"Service": "budgets.amazonaws.com"},
        "Action": "SNS:Publish", "Resource": topic_arn,
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}},
    }]})


def team_budgets_document(teams: tuple[TeamConfig, ...], gpu_hour_prices: dict[str, float]) -> str:
    """The enforcer's input: each team's ClusterQueue and budget, and the price of an admitted
    GPU-hour per GPU model (= Kueue ResourceFlavor name, Kubernetes issue)."""
    return json.dumps({
        "teams": {t.name: {"clusterQueue": t.name, "monthlyBudgetUsd": t.monthly_budget_usd} for t in teams},
        "gpuHourPrices": {model: round(price, 6) for model, price in sorted(gpu_hour_prices.items())},
    }, sort_keys=True)


@dataclass(frozen=True, kw_only=True)
class BudgetsArgs:
    config: BudgetConfig
    stack: str
    teams: tuple[TeamConfig, ...]
    gpu_hour_prices: dict[str, float]
    provider: k8s.Provider


class Budgets(pulumi.ComponentResource):
    def __init__(self, name: str, args: BudgetsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:Budgets", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args.config
        account_id = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id

        # Protected: a deleted key cannot decrypt what the topic holds; `pulumi destroy` stops here.
        key = aws.kms.Key(f"{name}-alerts-key", description="budget alert topic", enable_key_rotation=True,
                          policy=account_id.apply(alerts_key_policy),
                          opts=pulumi.ResourceOptions(parent=self, protect=True))
        topic = aws.sns.Topic(f"{name}-alerts", kms_master_key_id=key.arn, opts=child)
        aws.sns.TopicPolicy(f"{name}-alerts-policy", arn=topic.arn,
                            policy=pulumi.Output.all(topic.arn, account_id).apply(lambda v: topic_policy(*v)),
                            opts=child)
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                **n, subscriber_sns_topic_arns=[topic.arn], subscriber_email_addresses=list(cfg.emails) or None)
            for n in budget_plan.budget_notifications(cfg.actual_thresholds, cfg.forecast_thresholds)
        ]
        budget = aws.budgets.Budget(
            f"{name}-stack", name=f"tensile-{args.stack}", budget_type="COST", time_unit="MONTHLY",
            limit_amount=f"{cfg.monthly_usd:.2f}", limit_unit="USD",
            # Cost allocation tag: activate `tensile.io/stack` in the Billing console once per account.
            cost_filters=[aws.budgets.BudgetCostFilterArgs(
                name="TagKeyValue", values=[f"user:{tagging.STACK_TAG}${args.stack}"])],
            notifications=notifications, opts=child)

        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace", metadata={"name": ENFORCER_NAMESPACE, "labels": {"tensile.io/system": "true"}},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider))
        self.team_budgets = k8s.core.v1.ConfigMap(
            f"{name}-team-budgets", metadata={"name": TEAM_BUDGETS_CONFIGMAP, "namespace": ENFORCER_NAMESPACE},
            data={"budgets.json": team_budgets_document(args.teams, args.gpu_hour_prices)},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace]))
        self.namespace = namespace
        self.topic_arn = topic.arn
        self.budget_name = budget.name
        self.register_outputs({"topicArn": topic.arn, "budgetName": budget.name,
                               "monthlyUsd": cfg.monthly_usd})
