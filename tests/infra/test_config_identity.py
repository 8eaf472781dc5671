"""Stack-config checks against who runs `up` (issue 15): the creator listed as an admin, example
account ids in role ARNs, and the spot service-linked role's warning and setting."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from infra import mocks
from infra.config import stack as stack_config
from infra.config.types import CallerIdentity, ConfigError

TODAY = dt.date(2026, 11, 28)
REAL = CallerIdentity(account_id="210987654321", arn="arn:aws:sts::210987654321:assumed-role/ml-platform-admin/alice")
"""A real deployer: an assumed-role session, as `aws sts get-caller-identity` shows it."""


def _problems(raw, stack, caller) -> list[str]:
    with pytest.raises(ConfigError) as info:
        stack_config.parse(raw, stack=stack, today=TODAY, caller=caller)
    return [str(p) for p in info.value.problems]


def _with_real_accounts(raw):
    raw = copy.deepcopy(raw)
    raw["tensile:cluster"]["adminRoleArns"] = ["arn:aws:iam::210987654321:role/platform/ops-admin"]
    for team in raw["tensile:teams"]:
        team["memberRoleArn"] = team["memberRoleArn"].replace("111122223333", "210987654321")
    return raw


def test_stack_files_as_shipped_refuse_every_example_account_with_its_command(raw_configs):
    problems = _problems(raw_configs["prod"], "prod", REAL)
    assert [p.split(":")[0] for p in problems] == [
        "cluster.adminRoleArns[0]", "teams[0].memberRoleArn", "teams[1].memberRoleArn"], problems
    assert "pulumi config set --path 'tensile:teams[1].memberRoleArn' arn:aws:iam::210987654321:role/YOUR-LLM-ROLE" \
        in problems[2]
    assert "names the example account 111122223333" in problems[1]
    assert _problems(raw_configs["dev"], "dev", REAL) == [
        "teams[0].memberRoleArn: arn:aws:iam::111122223333:role/ml-sandbox names the example account 111122223333: "
        "set the role team sandbox assumes with pulumi config set --path 'tensile:teams[0].memberRoleArn' "
        "arn:aws:iam::210987654321:role/YOUR-SANDBOX-ROLE"]


def test_stack_files_with_real_accounts_parse(raw_configs):
    for stack in ("dev", "prod"):
        cfg = stack_config.parse(_with_real_accounts(raw_configs[stack]), stack=stack, today=TODAY, caller=REAL)
        assert cfg.teams


@pytest.mark.parametrize("admin", [
    "arn:aws:iam::210987654321:role/ml-platform-admin",          # the session's role
    "arn:aws:iam::210987654321:role/team/ml-platform-admin",     # with a path STS does not report
])
def test_admin_role_equal_to_the_deployer_is_refused_with_the_reason(raw_configs, admin):
    raw = _with_real_accounts(raw_configs["prod"])
    raw["tensile:cluster"]["adminRoleArns"] = ["arn:aws:iam::210987654321:role/other-admin", admin]
    [problem] = _problems(raw, "prod", REAL)
    assert problem.startswith("cluster.adminRoleArns[1]: is the identity running pulumi "
                              "(arn:aws:sts::210987654321:assumed-role/ml-platform-admin/alice)")
    assert "ResourceInUseException" in problem and "pulumi config rm --path 'tensile:cluster.adminRoleArns[1]'" in problem


def test_admin_role_equal_to_an_iam_user_deployer_is_refused(raw_configs):
    user = CallerIdentity(account_id="210987654321", arn="arn:aws:iam::210987654321:user/ops")
    raw = _with_real_accounts(raw_configs["prod"])
    assert stack_config.parse(raw, stack="prod", today=TODAY, caller=user)
    raw["tensile:cluster"]["adminRoleArns"].append("arn:aws:iam::210987654321:user/ops")
    problems = _problems(raw, "prod", user)
    assert any(p.startswith("cluster.adminRoleArns[1]: is the identity running pulumi") for p in problems), problems


def test_a_role_of_the_same_name_in_another_account_is_not_the_deployer(raw_configs):
    raw = _with_real_accounts(raw_configs["prod"])
    raw["tensile:cluster"]["adminRoleArns"] = ["arn:aws:iam::999988887777:role/ml-platform-admin"]
    assert stack_config.parse(raw, stack="prod", today=TODAY, caller=REAL).cluster.admin_role_arns


def test_identity_problems_are_reported_with_the_others(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:budget"]["monthlyUsd"] = -1
    problems = _problems(raw, "dev", REAL)
    assert {p.split(":")[0] for p in problems} >= {"budget.monthlyUsd", "teams[0].memberRoleArn"}


def test_the_mocked_program_passes_the_mocked_identity(dev):
    """The program asks get_caller_identity; the mocks answer with the documentation account,
    which is why the shipped stack files preview offline."""
    assert dev.error is None
    assert mocks.MOCK_ACCOUNT_ID in stack_config.PLACEHOLDER_ACCOUNTS


def test_program_refuses_placeholders_for_a_real_account(raw_configs):
    """The same check through the program: the caller comes from the get_caller_identity invoke."""
    run = mocks.run_isolated("dev", config={**raw_configs["dev"], "tensile:teams": [
        {**raw_configs["dev"]["tensile:teams"][0], "memberRoleArn": "arn:aws:iam::123456789012:role/ml-sandbox"}]})
    assert run.error_kind == "config" and len(run.problems) == 1
    assert any(p.startswith("teams[0].memberRoleArn: arn:aws:iam::123456789012:role/ml-sandbox names the example "
                            "account 123456789012") for p in run.problems), run.problems


def test_spot_pools_without_the_spot_role_warn_with_the_command(raw_configs):
    cfg = stack_config.parse(raw_configs["prod"], stack="prod", today=TODAY)
    [warning] = [w for w in cfg.warnings if w.startswith("gpuPools ")]
    assert warning.startswith("gpuPools l40s, a100, h100 allow spot")
    assert stack_config.SPOT_ROLE_COMMAND in warning and "createSpotServiceLinkedRole" in warning
    raw = copy.deepcopy(raw_configs["prod"])
    raw["tensile:karpenter"]["createSpotServiceLinkedRole"] = True
    assert not [w for w in stack_config.parse(raw, stack="prod", today=TODAY).warnings if w.startswith("gpuPools ")]
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:gpuPools"][0]["spot"] = False
    assert not [w for w in stack_config.parse(raw, stack="dev", today=TODAY).warnings if w.startswith("gpuPools ")]


def test_spot_role_setting_must_be_a_boolean(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:karpenter"]["createSpotServiceLinkedRole"] = "yes"
    assert any(p.startswith("karpenter.createSpotServiceLinkedRole") for p in _problems(raw, "dev", None))


def test_spot_role_setting_creates_the_role_kept_on_delete_before_the_node_pools(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:karpenter"]["createSpotServiceLinkedRole"] = True
    run = mocks.run_isolated("dev", config=raw)
    assert run.error is None, run.error
    [role] = run.of_type("aws:iam/serviceLinkedRole:ServiceLinkedRole")
    assert role["inputs"]["awsServiceName"] == "spot.amazonaws.com" and role["retain_on_delete"]
    pools = run.of_type("kubernetes:karpenter.sh/v1:NodePool")
    assert pools and all(role["urn"] in p["dependencies"] for p in pools)
    assert not any("spot service-linked role" in w for w in run.warnings)


def test_stack_files_leave_the_spot_role_to_the_documented_command(dev, prod):
    for run in (dev, prod):
        assert not run.of_type("aws:iam/serviceLinkedRole:ServiceLinkedRole")
        assert any(stack_config.SPOT_ROLE_COMMAND in w for w in run.warnings), run.warnings
