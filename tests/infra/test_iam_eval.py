"""The offline IAM evaluator (tests/infra/iam_eval.py) against a table of requests whose AWS
outcome is documented: each operator's match, miss and absent-key case, wildcards, deny wins."""

from __future__ import annotations

import pytest

from tests.infra.iam_eval import (ALLOW, DENY, IMPLICIT_DENY, Request, UnsupportedPolicy, evaluate, pattern_covers,
                                  request_tags, resource_tags)


def doc(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(condition: dict | None = None, *, action="*", resource="*", **extra) -> dict:
    statement = {"Effect": "Allow", "Action": action, "Resource": resource, **extra}
    if condition:
        statement["Condition"] = condition
    return statement


INSTANCE = "arn:aws:ec2:us-east-1:111122223333:instance/i-0abc"
CASES = [
    # (name, document, request, expected)
    ("no statement matches", doc(allow(action="ec2:TerminateInstances")),
     Request("ec2:RunInstances", INSTANCE), IMPLICIT_DENY),
    ("action wildcard, case-insensitive", doc(allow(action="EC2:Run*")), Request("ec2:RunInstances", INSTANCE), ALLOW),
    ("action ? is one character", doc(allow(action="ec2:RunInstance?")), Request("ec2:RunInstances", INSTANCE), ALLOW),
    ("NotAction excludes", doc({"Effect": "Allow", "NotAction": "ec2:Run*", "Resource": "*"}),
     Request("ec2:RunInstances", INSTANCE), IMPLICIT_DENY),
    ("NotAction allows the rest", doc({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}),
     Request("ec2:RunInstances", INSTANCE), ALLOW),
    ("resource wildcard spans the account field", doc(allow(resource="arn:aws:ec2:us-east-1:*:instance/*")),
     Request("ec2:RunInstances", INSTANCE), ALLOW),
    ("resource in another region", doc(allow(resource="arn:aws:ec2:us-west-2:*:instance/*")),
     Request("ec2:RunInstances", INSTANCE), IMPLICIT_DENY),
    ("resource match is case-sensitive", doc(allow(resource="arn:aws:ec2:us-east-1:*:Instance/*")),
     Request("ec2:RunInstances", INSTANCE), IMPLICIT_DENY),
    ("NotResource", doc({"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:ec2:*:*:volume/*"}),
     Request("ec2:RunInstances", INSTANCE), ALLOW),
    ("explicit deny wins over allow", doc(allow(), {"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}),
     Request("ec2:RunInstances", INSTANCE), DENY),
    ("StringEquals on a request tag", doc(allow({"StringEquals": {"aws:RequestTag/team": "ml"}})),
     Request("ec2:RunInstances", INSTANCE, request_tags({"team": "ml"})), ALLOW),
    ("StringEquals, other value", doc(allow({"StringEquals": {"aws:RequestTag/team": "ml"}})),
     Request("ec2:RunInstances", INSTANCE, request_tags({"team": "speech"})), IMPLICIT_DENY),
    ("StringEquals, key absent: the request tag is not the resource tag",
     doc(allow({"StringEquals": {"aws:RequestTag/team": "ml"}})),
     Request("ec2:RunInstances", INSTANCE, resource_tags({"team": "ml"})), IMPLICIT_DENY),
    ("StringEquals, any listed value", doc(allow({"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateFleet"]}})),
     Request("ec2:CreateTags", INSTANCE, {"ec2:CreateAction": "CreateFleet"}), ALLOW),
    ("StringEquals is case-sensitive in the value", doc(allow({"StringEquals": {"aws:ResourceTag/a": "owned"}})),
     Request("ec2:RunInstances", INSTANCE, resource_tags({"a": "Owned"})), IMPLICIT_DENY),
    ("condition key names are case-insensitive", doc(allow({"StringEquals": {"AWS:RequestedRegion": "us-east-1"}})),
     Request("ec2:RunInstances", INSTANCE, {"aws:requestedregion": "us-east-1"}), ALLOW),
    ("all operators of a statement must hold", doc(allow({"StringEquals": {"aws:ResourceTag/a": "1"},
                                                          "StringLike": {"aws:ResourceTag/b": "*"}})),
     Request("ec2:RunInstances", INSTANCE, resource_tags({"a": "1"})), IMPLICIT_DENY),
    ("StringLike * matches an empty value", doc(allow({"StringLike": {"aws:ResourceTag/b": "*"}})),
     Request("ec2:RunInstances", INSTANCE, resource_tags({"b": ""})), ALLOW),
    ("StringLike * still needs the key", doc(allow({"StringLike": {"aws:ResourceTag/b": "*"}})),
     Request("ec2:RunInstances", INSTANCE, {}), IMPLICIT_DENY),
    ("StringLike with a prefix", doc(allow({"StringLike": {"aws:ResourceTag/b": "gpu-*"}})),
     Request("ec2:RunInstances", INSTANCE, resource_tags({"b": "cpu-1"})), IMPLICIT_DENY),
    ("IfExists holds for an absent key", doc(allow({"StringEqualsIfExists": {"aws:RequestTag/c": "x"}})),
     Request("ec2:CreateTags", INSTANCE, {}), ALLOW),
    ("IfExists still tests a present key", doc(allow({"StringEqualsIfExists": {"aws:RequestTag/c": "x"}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"c": "y"})), IMPLICIT_DENY),
    ("Null true: key absent", doc(allow({"Null": {"aws:RequestTag/c": "true"}})),
     Request("ec2:CreateTags", INSTANCE, {}), ALLOW),
    ("Null true: key present", doc(allow({"Null": {"aws:RequestTag/c": "true"}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"c": "1"})), IMPLICIT_DENY),
    ("Null false: key present", doc(allow({"Null": {"aws:RequestTag/c": "false"}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"c": "1"})), ALLOW),
    ("ForAllValues: every key listed", doc(allow({"ForAllValues:StringEquals": {"aws:TagKeys": ["Name", "x"]}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"Name": "n"})), ALLOW),
    ("ForAllValues: one key not listed", doc(allow({"ForAllValues:StringEquals": {"aws:TagKeys": ["Name"]}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"Name": "n", "owner": "o"})), IMPLICIT_DENY),
    ("ForAllValues: an absent key holds (AWS's documented trap)",
     doc(allow({"ForAllValues:StringEquals": {"aws:TagKeys": ["Name"]}})),
     Request("ec2:CreateTags", INSTANCE, {}), ALLOW),
    ("ForAnyValue: one key listed", doc(allow({"ForAnyValue:StringEquals": {"aws:TagKeys": ["Name"]}})),
     Request("ec2:CreateTags", INSTANCE, request_tags({"Name": "n", "owner": "o"})), ALLOW),
    ("ForAnyValue: an absent key fails", doc(allow({"ForAnyValue:StringEquals": {"aws:TagKeys": ["Name"]}})),
     Request("ec2:CreateTags", INSTANCE, {}), IMPLICIT_DENY),
    ("ArnLike", doc(allow({"ArnLike": {"aws:SourceArn": "arn:aws:events:*:*:rule/*"}})),
     Request("sqs:SendMessage", "arn:aws:sqs:us-east-1:1:q", {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/r"}),
     ALLOW),
    ("ArnLike, other service", doc(allow({"ArnLike": {"aws:SourceArn": "arn:aws:events:*:*:rule/*"}})),
     Request("sqs:SendMessage", "arn:aws:sqs:us-east-1:1:q", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:t"}),
     IMPLICIT_DENY),
    ("Bool deny on plain HTTP", doc(allow(action="sqs:*"), {"Effect": "Deny", "Action": "sqs:*", "Resource": "*",
                                                             "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
     Request("sqs:ReceiveMessage", "arn:aws:sqs:us-east-1:1:q", {"aws:SecureTransport": "false"}), DENY),
    ("Bool deny passes TLS", doc(allow(action="sqs:*"), {"Effect": "Deny", "Action": "sqs:*", "Resource": "*",
                                                          "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
     Request("sqs:ReceiveMessage", "arn:aws:sqs:us-east-1:1:q", {"aws:SecureTransport": "true"}), ALLOW),
]


@pytest.mark.parametrize("name, document, request_, expected", CASES, ids=[c[0] for c in CASES])
def test_evaluate_decides_as_aws_documents(name, document, request_, expected):
    assert evaluate(document, request_).effect == expected


@pytest.mark.parametrize("document, reason", [
    (doc(allow({"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}})), "NumericLessThan"),
    (doc(allow({"ForAllValues:StringLike": {"aws:TagKeys": ["x*"]}})), "ForAllValues:StringLike"),
    (doc(allow({"StringNotEquals": {"aws:RequestTag/a": "b"}})), "StringNotEquals"),
    (doc(allow(resource="arn:aws:s3:::${aws:username}/*")), "policy variables"),
    (doc(allow({"StringEquals": {"aws:TagKeys": "Name"}})), "multivalued"),
    (doc({"Effect": "Allow", "Resource": "*"}), "Action/NotAction"),
    ({"Version": "2008-10-17", "Statement": []}, "version"),
])
def test_evaluate_refuses_what_it_does_not_model(document, reason):
    with pytest.raises(UnsupportedPolicy, match=reason):
        evaluate(document, Request("ec2:RunInstances", INSTANCE, request_tags({"a": "c", "Name": "n"})))


def test_evaluate_names_the_deciding_statements():
    document = doc(allow(Sid="A"), allow(Sid="B", resource="arn:aws:ec2:*:*:instance/*"), allow(Sid="C", action="iam:*"))
    assert evaluate(document, Request("ec2:RunInstances", INSTANCE)).statements == ("A", "B")


@pytest.mark.parametrize("pattern, value, covers", [
    ("arn:aws:ec2:us-east-1:*:subnet/*", "arn:aws:ec2:us-east-1:*:subnet/*", True),
    ("arn:aws:ec2:us-east-1:*:*", "arn:aws:ec2:us-east-1:*:subnet/*", True),
    ("*", "arn:aws:ssm:us-east-1::parameter/aws/service/*", True),
    ("arn:aws:ec2:us-east-1:111122223333:subnet/*", "arn:aws:ec2:us-east-1:*:subnet/*", False),
    ("arn:aws:ec2:us-east-1:*:subnet/subnet-1", "arn:aws:ec2:us-east-1:*:subnet/*", False),
    ("arn:aws:ssm:us-east-1::parameter/aws/service/*", "*", False),
])
def test_pattern_covers_only_when_every_match_is_matched(pattern, value, covers):
    assert pattern_covers(pattern, value) is covers
