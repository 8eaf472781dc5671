"""The trainer's S3 policy (plan/teams.checkpoint_policy) judged by the offline IAM evaluator
against the requests the checkpoint tier makes, with the condition keys AWS sends for each
(issue 17 item 8): ListBucketMultipartUploads carries no s3:prefix, so a prefix condition on it
denied every listing of unfinished uploads."""

from __future__ import annotations

import json

import pytest

from infra.plan import teams as team_plan
from tests.infra.iam_eval import ALLOW, Request, evaluate

BUCKET = "arn:aws:s3:::tensile-prod-ckpt-x"
KEY = "arn:aws:kms:us-east-1:111122223333:key/k"
POLICY = json.loads(team_plan.checkpoint_policy(team="llm", bucket_arn=BUCKET, kms_key_arn=KEY))


@pytest.mark.parametrize("request_, allowed", [
    # ListObjectsV2 under the team's prefix, and under another team's.
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/llm/ckpt-7/"}), True),
    (Request("s3:ListBucket", BUCKET, {"s3:prefix": "teams/vision/"}), False),
    (Request("s3:ListBucket", BUCKET, {}), False),
    # ListMultipartUploads(Prefix=...): the prefix is a request parameter, not a condition key.
    (Request("s3:ListBucketMultipartUploads", BUCKET, {}), True),
    (Request("s3:AbortMultipartUpload", f"{BUCKET}/teams/llm/ckpt-7/shard-0"), True),
    (Request("s3:AbortMultipartUpload", f"{BUCKET}/teams/vision/ckpt-1/shard-0"), False),
    (Request("s3:ListMultipartUploadParts", f"{BUCKET}/teams/vision/ckpt-1/shard-0"), False),
    (Request("s3:GetObject", f"{BUCKET}/teams/llm/ckpt-7/manifest.json"), True),
    (Request("s3:GetObject", f"{BUCKET}/teams/vision/ckpt-1/manifest.json"), False),
    (Request("s3:PutObject", f"{BUCKET}/teams/llm/ckpt-8/shard-0"), True),
    (Request("kms:GenerateDataKey", KEY), True),
])
def test_trainer_policy_allows_its_own_prefix_and_unfinished_upload_listing_only(request_, allowed):
    assert (evaluate(POLICY, request_).effect == ALLOW) is allowed
