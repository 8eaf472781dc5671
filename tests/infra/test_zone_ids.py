"""AZ IDs in the stack file (issue 17 item 2): `use1-az1` names one physical zone in every
account, `us-east-1a` does not. IDs are resolved to this account's names (aws.get_availability_zones
with a zone-id filter, mocked), so a stack written with IDs declares what the same stack written
with names declares, and stacks written with names keep their subnets' inputs."""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from infra import mocks
from infra.config import stack as stack_config
from infra.config.types import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import no_replacement as nr  # noqa: E402
from test_stack_identity import identity  # noqa: E402

TODAY = dt.date(2026, 11, 28)
ACCOUNT_ZONES = {"use1-az1": "us-east-1a", "use1-az2": "us-east-1b", "use1-az4": "us-east-1c"}
"""The mock account's zones (infra/mocks.py); another account may map these IDs to other names."""


def _with_ids(raw: dict) -> dict:
    raw = copy.deepcopy(raw)
    by_name = {name: zone_id for zone_id, name in ACCOUNT_ZONES.items()}
    raw["tensile:network"]["availabilityZones"] = [by_name[z] for z in raw["tensile:network"]["availabilityZones"]]
    for pool in raw["tensile:gpuPools"]:
        if "zones" in pool:
            pool["zones"] = [by_name[z] for z in pool["zones"]]
    return raw


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_zone_ids_resolve_to_the_names_the_stack_would_list(stack, raw_configs):
    by_names = stack_config.parse(raw_configs[stack], stack=stack, today=TODAY)
    by_ids = stack_config.parse(_with_ids(raw_configs[stack]), stack=stack, today=TODAY, zone_names=ACCOUNT_ZONES)
    assert by_ids.network == by_names.network and by_ids.gpu_pools == by_names.gpu_pools


def test_zone_ids_resolve_per_account_and_offline_readers_keep_them(raw_configs):
    raw = _with_ids(raw_configs["dev"])
    other_account = {"use1-az1": "us-east-1c", "use1-az2": "us-east-1a"}
    cfg = stack_config.parse(raw, stack="dev", today=TODAY, zone_names=other_account)
    assert cfg.network.availability_zones == ("us-east-1c", "us-east-1a")
    offline = stack_config.parse(raw, stack="dev", today=TODAY)
    assert offline.network.availability_zones == ("use1-az1", "use1-az2")


def test_zone_ids_the_account_does_not_have_are_refused_with_the_command(raw_configs):
    raw = _with_ids(raw_configs["dev"])
    raw["tensile:network"]["availabilityZones"][1] = "use1-az9"
    with pytest.raises(ConfigError) as info:
        stack_config.parse(raw, stack="dev", today=TODAY, zone_names={"use1-az1": "us-east-1a"})
    assert any(str(p).startswith("network.availabilityZones[1]: use1-az9 is no AZ ID of this account's zones in us-east-1")
               and "aws ec2 describe-availability-zones --region us-east-1" in str(p) for p in info.value.problems)


@pytest.mark.parametrize("config, expected", [
    ({"tensile:network": {"availabilityZones": ["us-east-1a", "us-east-1b"]}}, []),
    ({"tensile:network": {"availabilityZones": ["use1-az2", "us-east-1b", "use1-az1"]},
      "tensile:gpuPools": [{"zones": ["use1-az1", "use1-az6"]}, {"name": "no zones"}]}, ["use1-az2", "use1-az1", "use1-az6"]),
    ({"tensile:network": "broken", "tensile:gpuPools": {"not": "a list"}}, []),
    ({"tensile:network": {"availabilityZones": ["apne1-az4", "use1-bos1-az1", 3]}}, ["apne1-az4", "use1-bos1-az1"]),
])
def test_zone_ids_in_the_config_are_found_once_in_order(config, expected):
    assert stack_config.zone_ids_in(config) == expected


@pytest.mark.parametrize("region, filters, expected", [
    ("us-east-1", [{"name": "zone-id", "values": ["use1-az4", "use1-az1"]}], (["us-east-1a", "us-east-1c"], ["use1-az1", "use1-az4"])),
    ("us-west-2", [{"name": "zone-id", "values": ["usw2-az2"]}], (["us-west-2b"], ["usw2-az2"])),
    ("ap-northeast-1", [{"name": "zone-id", "values": ["apne1-az1", "use1-az1"]}], (["ap-northeast-1a"], ["apne1-az1"])),
])
def test_zone_ids_mock_answers_like_the_provider(region, filters, expected):
    zones = mocks._availability_zones(region, filters)
    assert (zones["names"], zones["zoneIds"]) == expected


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_zone_ids_stack_declares_exactly_what_the_stack_with_names_does(stack, stack_runs, raw_configs):
    """End to end through the mocked invoke: the identity (every URN, input, option, export) and
    the no-replacement record of the stack written with IDs equal the shipped stack's."""
    run = mocks.run_isolated(stack, config=_with_ids(raw_configs[stack]))
    assert run.error is None, run.error
    shipped = json.loads(json.dumps(identity(stack_runs[stack])))
    assert json.loads(json.dumps(identity(run))) == shipped
    recorded = json.loads(nr.record_path(stack).read_text())
    assert nr.replacements(stack, recorded, *nr.current_of(run.resources)) == []
