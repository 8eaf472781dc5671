"""Upgrades and lifecycle (issue 17 item 6): the system node group follows the control plane's
version, the upgrade policy keeps EKS from upgrading the cluster behind the stack, the end of
standard support warns (with the date and the command) instead of refusing every `up`, and the
kubeconfig's token is signed as the AWS provider signs."""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from infra import mocks
from infra.components.cluster import kubeconfig
from infra.config import stack as stack_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import no_replacement as nr  # noqa: E402

TODAY = dt.date(2026, 11, 28)
ROLE = "arn:aws:iam::111122223333:role/platform-deployer"


def _dev(raw_configs, version="1.35", **cluster):
    raw = copy.deepcopy(raw_configs["dev"])
    raw["tensile:cluster"] = {**raw["tensile:cluster"], "kubernetesVersion": version, **cluster}
    return raw


def test_system_node_group_runs_the_clusters_version_and_policy_is_extended(run, raw_configs):
    version = raw_configs[run.stack]["tensile:cluster"]["kubernetesVersion"]
    cluster = run.named("cluster-eks")["inputs"]
    assert run.named("cluster-system")["inputs"]["version"] == cluster["version"] == version
    assert cluster["upgradePolicy"] == {"supportType": "EXTENDED"}


@pytest.mark.parametrize("today, support, expected", [
    # 1.34's standard support ends 2026-12-02: 4 days left on TODAY.
    (TODAY, "EXTENDED", "cluster.kubernetesVersion: 1.34 leaves EKS standard support on 2026-12-02 (4 days): "
                        "upgrade to 1.35: refresh cluster.addonVersions (aws eks describe-addon-versions "
                        "--kubernetes-version 1.35), then pulumi config set --path "
                        "'tensile:cluster.kubernetesVersion' 1.35 and pulumi up (docs/upgrades.md)"),
    (dt.date(2026, 12, 20), "EXTENDED", "cluster.kubernetesVersion: 1.34 left EKS standard support on 2026-12-02: "
                                        "the control plane is in extended support, $0.60/h instead of $0.10/h; "
                                        "upgrade to 1.35"),
    (dt.date(2026, 12, 20), "STANDARD", "cluster.kubernetesVersion: 1.34 left EKS standard support on 2026-12-02: "
                                        "EKS upgrades the control plane itself (supportType STANDARD)"),
])
def test_end_of_standard_support_warns_with_the_date_and_the_command(raw_configs, today, support, expected):
    cfg = stack_config.parse(_dev(raw_configs, "1.34", supportType=support), stack="dev", today=today)
    assert any(w.startswith(expected) for w in cfg.warnings), cfg.warnings
    assert cfg.cluster.kubernetes_version == "1.34" and cfg.cluster.support_type == support


def test_a_version_far_from_its_end_warns_nothing_and_an_unknown_one_is_refused(raw_configs):
    cfg = stack_config.parse(_dev(raw_configs, "1.35"), stack="dev", today=TODAY)
    assert not any("kubernetesVersion" in w for w in cfg.warnings)
    with pytest.raises(stack_config.ConfigError, match="'1.29' is not a known EKS version"):
        stack_config.parse(_dev(raw_configs, "1.29"), stack="dev", today=TODAY)


def test_program_previews_a_stack_at_the_end_of_support_with_the_warning(raw_configs):
    """An emergency fix on a cluster at (or past) the end of 1.34's standard support still ships:
    the program runs and warns; before issue 17 validation refused it."""
    run = mocks.run_isolated("dev", config=_dev(raw_configs, "1.34"))
    assert run.error is None, run.error
    assert any(w.startswith("cluster.kubernetesVersion: 1.34 le") and "EKS standard support on 2026-12-02" in w
               for w in run.warnings), run.warnings


@pytest.mark.parametrize("profile, role, args_tail, env", [
    ("", "", [], None),
    ("platform", "", [], [{"name": "AWS_PROFILE", "value": "platform"}]),
    ("", ROLE, ["--role-arn", ROLE], None),
    ("platform", ROLE, ["--role-arn", ROLE], [{"name": "AWS_PROFILE", "value": "platform"}]),
])
def test_kubeconfig_signs_with_the_providers_profile_and_role(profile, role, args_tail, env):
    config = json.loads(kubeconfig("c", "https://e", "Y2E=", "us-east-1", profile=profile, role_arn=role))
    (user,) = config["users"]
    exec_config = user["user"]["exec"]
    assert exec_config["args"] == ["eks", "get-token", "--cluster-name", "c", "--region", "us-east-1", *args_tail]
    assert exec_config.get("env") == env


@pytest.mark.parametrize("roles, expected, warned", [
    ([], "", False),
    ([{"roleArn": ROLE}], ROLE, False),
    ([{"roleArn": "arn:aws:iam::111122223333:role/hop"}, {"roleArn": ROLE, "sessionName": "up"}], ROLE, True),
])
def test_provider_role_is_read_from_assume_roles(raw_configs, roles, expected, warned):
    raw = {**raw_configs["dev"], "aws:profile": "platform", "aws:assumeRoles": roles}
    cfg = stack_config.parse(raw, stack="dev", today=TODAY)
    assert (cfg.aws_profile, cfg.aws_role_arn) == ("platform", expected)
    assert any(w.startswith("aws:assumeRoles: a chain of 2 roles") for w in cfg.warnings) is warned


def test_provider_credentials_that_are_not_a_profile_or_roles_are_refused(raw_configs):
    raw = {**raw_configs["dev"], "aws:profile": 3, "aws:assumeRoles": [{"sessionName": "x"}]}
    with pytest.raises(stack_config.ConfigError) as info:
        stack_config.parse(raw, stack="dev", today=TODAY)
    assert {p.path for p in info.value.problems} == {"aws:profile", "aws:assumeRoles"}


def test_program_kubeconfig_and_kubernetes_provider_use_the_providers_identity(raw_configs):
    raw = {**raw_configs["dev"], "aws:profile": "platform", "aws:assumeRoles": [{"roleArn": ROLE}]}
    run = mocks.run_isolated("dev", config=raw)
    assert run.error is None, run.error
    exported = json.loads(run.outputs["kubeconfig"])["users"][0]["user"]["exec"]
    assert exported["args"][-2:] == ["--role-arn", ROLE] and exported["env"] == [{"name": "AWS_PROFILE",
                                                                                    "value": "platform"}]
    (provider,) = run.of_type("pulumi:providers:kubernetes")
    assert json.loads(provider["inputs"]["kubeconfig"]) == json.loads(run.outputs["kubeconfig"])
    # Only the provider's kubeconfig and the export differ: nothing stateful is replaced.
    recorded = json.loads(nr.record_path("dev").read_text())
    assert nr.replacements("dev", recorded, *nr.current_of(run.resources)) == []
