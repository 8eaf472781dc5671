"""Stack config for the platform: team member roles, `platform` and `jobs` sections; each bad
value is refused with its property path and the fix."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from infra.config import stack as config
from infra.config.types import ConfigError

TODAY = dt.date(2026, 11, 28)


def _problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(raw, stack="dev", today=TODAY)
    return [str(p) for p in info.value.problems]


def test_platform_and_jobs_parse_from_both_stack_files(raw_configs):
    dev = config.parse(raw_configs["dev"], stack="dev", today=TODAY)
    prod = config.parse(raw_configs["prod"], stack="prod", today=TODAY)
    assert (dev.platform.prometheus_operator, prod.platform.prometheus_operator) == (False, True)
    assert [j.name for j in dev.jobs] == ["demo", "demo-nightly"] and prod.jobs[0].gpus_per_worker == 8
    # Shipped as examples: validated like any entry, deployed by neither stack.
    assert [j.enabled for j in dev.jobs + prod.jobs] == [False, False, False]
    assert all(t.member_role_arn.startswith("arn:aws:iam::") for t in dev.teams + prod.teams)


def test_platform_section_is_optional_with_defaults(raw_configs):
    raw = copy.deepcopy(raw_configs["dev"])
    del raw["tensile:platform"]
    cfg = config.parse(raw, stack="dev", today=TODAY)
    assert (cfg.platform.pods_ready_timeout, cfg.platform.monitoring_namespace) == ("15m", "monitoring")


@pytest.mark.parametrize("key, change, expected", [
    ("team", {"memberRoleArn": "ml-sandbox"}, "teams[0].memberRoleArn: must be an IAM role ARN"),
    ("team", {"memberRoleArn": None}, "teams[0].memberRoleArn: is required"),
    ("job", {"team": "nobody"}, "jobs[0].team: no team 'nobody' (teams: sandbox)"),
    ("job", {"image": "tensile-training:latest"}, "jobs[0].image: must pin a version, not :latest"),
    ("job", {"image": "tensile-training"}, "jobs[0].image: must be registry/repository:tag or @sha256:digest"),
    ("job", {"gpuModel": "h100"}, "jobs[0].gpuModel: team sandbox may use l4, not 'h100'"),
    ("job", {"gpusPerWorker": 16}, "jobs[0].gpusPerWorker: no instance of l4 has 16 GPUs (largest: 4)"),
    ("job", {"emergencyCheckpointSeconds": 150},
     "jobs[0].emergencyCheckpointSeconds: must be 1..90: the save must fit inside the two-minute spot notice"),
    ("job", {"name": "Demo_Run"}, "jobs[0].name: must be a DNS label of at most 40 characters"),
    ("job", {"enabled": "false"}, "jobs[0].enabled: must be true or false, got 'false'"),
    ("job", {"enabled": 0}, "jobs[0].enabled: must be true or false, got 0"),
    # A disabled example is still checked: it must work the day someone turns it on.
    ("job", {"enabled": False, "gpuModel": "h100"}, "jobs[0].gpuModel: team sandbox may use l4, not 'h100'"),
    ("platform", {"podsReadyTimeout": "soon"}, "platform.podsReadyTimeout: must be a duration such as 15m"),
    ("platform", {"prometheusOperator": "yes"}, "platform.prometheusOperator: must be true or false"),
    ("platform", {"scrapeEverything": True}, "platform.scrapeEverything: unknown setting"),
])
def test_bad_platform_settings_are_refused_with_their_path(raw_configs, key, change, expected):
    raw = copy.deepcopy(raw_configs["dev"])
    target = {"team": raw["tensile:teams"][0], "job": raw["tensile:jobs"][0], "platform": raw["tensile:platform"]}[key]
    for k, v in change.items():
        if v is None:
            del target[k]
        else:
            target[k] = v
    problems = _problems(raw)
    assert any(p.startswith(expected) for p in problems), problems
