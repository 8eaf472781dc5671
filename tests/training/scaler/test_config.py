"""The scaler's config section: triggers as data, every problem reported together with its
property path and the fix."""

from __future__ import annotations

import pytest
import yaml

from tensile.config import ConfigError
from tensile.scaler import ScalerConfig, Trigger, TriggerAction, load_scaler_config

EXAMPLE = """
grow_below_budget_fraction: 0.8
cooldown_recovery_multiple: 4
triggers:
  - {action: grow, team_queue_empty: true, spend_below_fraction: 0.8}
  - {action: shrink_to_min, spot_price_above_usd_per_hour: 20.0, pool: a100-spot}
"""


def test_load_scaler_config_reads_the_documented_example():
    config = load_scaler_config(yaml.safe_load(EXAMPLE))
    assert config.cooldown_recovery_multiple == 4
    assert config.triggers == (
        Trigger(action=TriggerAction.GROW, team_queue_empty=True, spend_below_fraction=0.8),
        Trigger(action=TriggerAction.SHRINK_TO_MIN, spot_price_above_usd_per_hour=20.0, pool="a100-spot"))


def test_load_scaler_config_defaults_when_absent():
    assert load_scaler_config(None) == ScalerConfig()
    assert load_scaler_config({}) == ScalerConfig()


def test_load_scaler_config_reports_every_problem_together():
    data = {
        "cooldown_min_s": -1, "collapse_fraction": 2, "grow_on_demand": "yes", "grow_below_budget_fraction": 0.9,
        "shrink_at_budget_fraction": 0.9, "cooldown": 10,
        "triggers": [
            {"action": "scale", "spend_below_fraction": 0.5},
            {"action": "grow"},
            {"action": "shrink_to_min", "spot_price_above_usd_per_hour": 20.0},
            {"action": "grow", "pool": "a100", "team_queue_empty": True},
            {"action": "shrink_to_min", "spend_above_fraction": 0.9, "spend_below_fraction": 0.5},
            {"action": "grow", "team_queue_empty": "no", "spot_price_below_usd_per_hour": 0, "pool": "a"},
            "grow when cheap",
            {"action": "grow", "spend_below": 0.5},
        ]}
    with pytest.raises(ConfigError) as raised:
        load_scaler_config(data)
    paths = [path for path, _ in raised.value.problems]
    assert paths == [
        "scaler.cooldown", "scaler.cooldown_min_s", "scaler.collapse_fraction", "scaler.grow_on_demand",
        "scaler.grow_below_budget_fraction",
        "scaler.triggers[0].action",
        "scaler.triggers[1]",
        "scaler.triggers[2].pool",
        "scaler.triggers[3].pool",
        "scaler.triggers[4]",
        "scaler.triggers[5].team_queue_empty", "scaler.triggers[5].spot_price_below_usd_per_hour",
        "scaler.triggers[6]",
        "scaler.triggers[7].spend_below", "scaler.triggers[7]",
    ], raised.value.problems
    message = str(raised.value)
    # Each problem names the fix, not only the fault.
    for fix in ("known keys: ", "must be one of grow, shrink_to_min", "give at least one of", "set `pool`",
                "remove it or add a spot_price condition", "would never fire", "lower it or raise the other"):
        assert fix in message, message


@pytest.mark.parametrize("data", [{"grow_below_budget_fraction": 0.97}, {"shrink_at_budget_fraction": 0.5}])
def test_load_scaler_config_checks_one_budget_fraction_against_the_others_default(data):
    """Grow 0.97 against the default shrink 0.95 (or shrink 0.5 against the default grow 0.8)
    would grow and shrink at the same spend."""
    with pytest.raises(ConfigError) as raised:
        load_scaler_config(data)
    assert [path for path, _ in raised.value.problems] == ["scaler.grow_below_budget_fraction"]


def test_load_scaler_config_refuses_a_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match="scaler: must be a mapping"):
        load_scaler_config(["grow"])
