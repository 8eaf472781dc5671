"""Each team's EFS uid is its own (issue 17 item 1): removing, reordering or adding teams changes
no other team's access point, checked on the parsed config, on the planned access points and,
end to end, by the no-replacement check over a reordered and a shortened team list."""

from __future__ import annotations

import copy
import datetime as dt
import sys
from pathlib import Path

import pytest

from infra import mocks
from infra.config import stack as stack_config
from infra.config.types import ConfigError
from infra.plan import storage as storage_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import no_replacement as nr  # noqa: E402

TODAY = dt.date(2026, 11, 28)
SPEECH = {"name": "speech", "gpuQuota": 4, "borrowingLimit": 0, "monthlyBudgetUsd": 12000, "gpuModels": ["l40s"],
          "memberRoleArn": "arn:aws:iam::111122223333:role/ml-speech", "efsUid": 50002}


def _with_teams(raw: dict, order: list[str], extra: tuple[dict, ...] = ()) -> dict:
    raw = copy.deepcopy(raw)
    by_name = {t["name"]: t for t in raw["tensile:teams"]}
    raw["tensile:teams"] = [by_name[name] for name in order] + list(extra)
    raw["tensile:jobs"] = [job for job in raw.get("tensile:jobs") or [] if job["team"] in order]
    return raw


def _uids(raw: dict) -> dict[str, int]:
    cfg = stack_config.parse(raw, stack="prod", today=TODAY)
    return {name: (spec.uid, spec.gid, spec.path) for name, spec in storage_plan.team_access_points(cfg.teams).items()}


@pytest.mark.parametrize("order, extra", [
    (["vision", "llm"], ()),
    (["llm", "vision"], ()),
    (["llm"], ()),
    (["vision"], ()),
    (["llm", "vision"], (SPEECH,)),
    ([], (SPEECH,)),
])
def test_team_efs_uid_is_the_teams_own_whatever_the_list(raw_configs, order, extra):
    shipped = _uids(raw_configs["prod"])
    assert shipped == {"vision": (50000, 50000, "/teams/vision"), "llm": (50001, 50001, "/teams/llm")}
    changed = _uids(_with_teams(raw_configs["prod"], order, extra))
    assert {name: changed[name] for name in order} == {name: shipped[name] for name in order}


def test_team_efs_uid_defaults_to_the_teams_old_place_with_a_warning(raw_configs):
    raw = copy.deepcopy(raw_configs["prod"])
    for team in raw["tensile:teams"]:
        del team["efsUid"]
    cfg = stack_config.parse(raw, stack="prod", today=TODAY)
    assert [t.efs_uid for t in cfg.teams] == [50000, 50001]
    assert any(w.startswith("teams[1].efsUid: not set, so team llm keeps 50001") and "write efsUid: 50001" in w
               for w in cfg.warnings)
    assert not any("efsUid" in w for w in stack_config.parse(raw_configs["prod"], stack="prod", today=TODAY).warnings)


@pytest.mark.parametrize("uid, expected", [
    (50000, "teams[1].efsUid: 50000 is team vision's too: two teams with one uid can write each other's files"),
    (0, "teams[1].efsUid: must be a uid from 1000 to 2147483647, got 0"),
    ("50001", "teams[1].efsUid: must be an integer"),
])
def test_team_efs_uid_refuses_a_shared_or_bad_uid(raw_configs, uid, expected):
    raw = copy.deepcopy(raw_configs["prod"])
    raw["tensile:teams"][1]["efsUid"] = uid
    with pytest.raises(ConfigError) as info:
        stack_config.parse(raw, stack="prod", today=TODAY)
    assert any(str(p).startswith(expected) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("uids, expected", [((), 50000), ((50000,), 50001), ((50000, 50007, 50003), 50008),
                                            ((1200,), 50000)])
def test_team_efs_uid_for_a_new_team_is_above_every_uid_in_use(uids, expected):
    from infra.config.types import TeamConfig

    teams = tuple(TeamConfig(name=f"t{i}", gpu_quota=1, borrowing_limit=0, monthly_budget_usd=1.0, gpu_models=("l4",),
                             efs_uid=uid) for i, uid in enumerate(uids))
    assert storage_plan.next_efs_uid(teams) == expected


def test_team_efs_uid_reordered_or_removed_teams_replace_nothing_of_the_others(raw_configs):
    """The no-replacement check over prod with its teams reversed (nothing replaced) and with
    vision removed (only vision's own resources go)."""
    reordered = mocks.run_isolated("prod", config=_with_teams(raw_configs["prod"], ["llm", "vision"]))
    assert reordered.error is None, reordered.error
    recorded = __import__("json").loads(nr.record_path("prod").read_text())
    assert nr.replacements("prod", recorded, *nr.current_of(reordered.resources)) == []

    removed = mocks.run_isolated("prod", config=_with_teams(raw_configs["prod"], ["llm"]))
    assert removed.error is None, removed.error
    found = nr.replacements("prod", recorded, *nr.current_of(removed.resources))
    assert found and all(r.change == "gone" and "vision" in r.urn.rsplit("::", 1)[1] for r in found), found
