"""Karpenter's interruption queue: EventBridge rules for spot interruption warnings, rebalance
recommendations, instance state changes, scheduled health events and capacity-reservation
interruption warnings, delivered to an encrypted SQS queue with a dead-letter queue."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# role -> EventBridge pattern (REFERENCE §3/§9; Karpenter's getting-started CloudFormation).
INTERRUPTION_EVENTS: dict[str, dict] = {
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"],
                         "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}},
    "capacity-reservation": {"source": ["aws.ec2"],
                             "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]},
}
MESSAGE_RETENTION_SECONDS = 300
"""A notice older than five minutes is useless: a spot instance has two minutes."""


def queue_policy(queue_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "EventBridgeSend", "Effect": "Allow",
         "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Sid": "DenyNonTLS", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": queue_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]})


@dataclass(frozen=True, kw_only=True)
class InterruptionQueueArgs:
    cluster_name: str


class InterruptionQueue(pulumi.ComponentResource):
    queue_name: pulumi.Output[str]
    queue_arn: pulumi.Output[str]

    def __init__(self, name: str, args: InterruptionQueueArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("tensile:infra:InterruptionQueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        dead_letters = aws.sqs.Queue(f"{name}-dlq", name=f"{args.cluster_name}-interruption-dlq",
                                     sqs_managed_sse_enabled=True, message_retention_seconds=1_209_600, opts=child)
        queue = aws.sqs.Queue(
            f"{name}-queue", name=f"{args.cluster_name}-interruption", sqs_managed_sse_enabled=True,
            message_retention_seconds=MESSAGE_RETENTION_SECONDS,
            redrive_policy=dead_letters.arn.apply(lambda arn: json.dumps({"deadLetterTargetArn": arn,
                                                                          "maxReceiveCount": 5})),
            opts=child)
        aws.sqs.QueuePolicy(f"{name}-policy", queue_url=queue.url, policy=queue.arn.apply(queue_policy), opts=child)
        for role, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{role}", description=f"{role} events for Karpenter",
                                            event_pattern=json.dumps(pattern), state="ENABLED", opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{role}-target", rule=rule.name, arn=queue.arn,
                                       target_id="karpenter-interruption-queue", opts=child)
        self.queue_name = queue.name
        self.queue_arn = queue.arn
        self.register_outputs({"queueName": self.queue_name, "queueArn": self.queue_arn,
                               "deadLetterQueueArn": dead_letters.arn})
