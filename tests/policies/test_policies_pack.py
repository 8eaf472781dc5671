"""The pack as a plugin: what it tells the CLI (`GetAnalyzerInfo`, `GetPluginInfo`), how
`Configure` levels and tunables work, its files (PulumiPolicy.yaml, pins, per-stack config), and
that no rule crashes on odd or unknown input."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re

import pytest
import yaml
from google.protobuf import json_format

from policies import pack, runner, taggable
from policies.framework import Resource, Stack, UNKNOWN_SENTINELS

from .conftest import REPO_ROOT, STACKS
from .test_policies_rules import CASES, TRAINING_JOB, U, edit

PACK_DIR = REPO_ROOT / "policies"


def test_analyzer_info_lists_every_rule_with_its_level_kind_and_config_schema(analyzer):
    info = analyzer.info()
    assert info.name == "tensile-policies" and info.supportsConfig
    assert [p.name for p in info.policies] == [r.name for r in pack.RULES]
    for policy, rule in zip(info.policies, pack.RULES):
        assert policy.enforcementLevel == runner.LEVELS["mandatory"]
        assert policy.description == rule.description
        assert policy.policy_type == (1 if rule.kind == "resource" else 2), rule.name
        schema = json_format.MessageToDict(policy.configSchema.properties)
        assert {k: v.get("default") for k, v in schema.items() if "default" in v} == rule.defaults()


def test_plugin_info_reports_the_pinned_policy_sdk(analyzer):
    pins = dict(line.split("==") for line in (PACK_DIR / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert analyzer.plugin_info().version == pins["pulumi-policy"] == importlib.metadata.version("pulumi-policy")
    infra_pins = dict(line.split("==") for line in (REPO_ROOT / "infra/requirements.txt").read_text().splitlines()
                      if "==" in line)
    assert pins["pulumi"] == infra_pins["pulumi"]


def test_configure_disabled_and_all_levels_reach_the_pack(analyzer):
    job = edit(TRAINING_JOB, "spec.template.spec.containers[0].image", "trainer:latest")

    def levels(config):
        analyzer.configure(config)
        return [d.enforcementLevel for d in analyzer.analyze(job).diagnostics if d.policyName == "no-latest-images"]

    assert levels(None) == [runner.LEVELS["mandatory"]]
    assert levels({"no-latest-images": "disabled"}) == []
    assert levels({"all": "advisory"}) == [runner.LEVELS["advisory"]]
    assert levels({"all": "advisory", "no-latest-images": {"enforcementLevel": "mandatory"}}) == [1]
    analyzer.configure(None)


@pytest.mark.parametrize("config, message", [
    ({"no-such-rule": "advisory"}, "names unknown policies: no-such-rule"),
    ({"ec2nodeclass-imdsv2": {"hopLimit": 3}}, "ec2nodeclass-imdsv2: config hopLimit not in its schema"),
])
def test_configure_refuses_config_outside_the_schema(analyzer, config, message):
    with pytest.raises(runner.PackError, match=message):
        analyzer.configure(config)


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_has_pack_config_that_fits_the_schema_and_repeats_its_price_overrides(analyzer, stack):
    config = runner.stack_config(stack)
    assert config, f"policies/config/{stack}.json is missing"
    sent = analyzer.policy_config(config)
    stack_prices = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"].get("tensile:prices", {})
    pack_prices = sent["worst-case-cost-within-budget"]["properties"]["prices"]
    # The pack cannot read stack config: a price the stack overrides must be repeated in its pack config.
    assert pack_prices == {name: p["usdPerHour"] for name, p in stack_prices.items()}


def test_pulumi_policy_yaml_runs_the_pack_with_python_from_the_repo_venv():
    document = yaml.safe_load((PACK_DIR / "PulumiPolicy.yaml").read_text())
    assert document["name"] == "tensile-policies"
    assert re.fullmatch(r"\d+\.\d+\.\d+", document["version"])
    assert document["runtime"] == {"name": "python", "options": {"virtualenv": "../.venv"}}


def test_main_holds_only_the_policy_pack_call():
    tree = ast.parse((PACK_DIR / "__main__.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "PolicyPack"]
    assert len(calls) == 1
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]


def test_taggable_type_list_matches_the_installed_pulumi_aws():
    header = taggable.LIST_FILE.read_text().splitlines()[0]
    assert f"pulumi-aws {importlib.metadata.version('pulumi-aws')}" in header
    assert sorted(taggable.taggable_types()) == taggable.generate()
    assert "aws:s3/bucket:Bucket" in taggable.taggable_types()
    assert "aws:s3/bucketVersioning:BucketVersioning" not in taggable.taggable_types()


def test_no_rule_crashes_on_empty_or_unknown_properties(stack_runs):
    """Whatever a provider sends (nothing, or unknown everywhere), rules report; they never raise."""
    resources = stack_runs["prod"].resources + [c.subject for c in CASES if isinstance(c.subject, dict)]
    for props in ({}, {"spec": U, "tags": U, "metadata": U, "inputs": U}):
        variants = [Resource(urn=r["urn"], type=r["type"], name=r["name"], props=props) for r in resources]
        for rule in pack.RULES:
            if rule.kind == "resource":
                for v in variants:
                    rule.evaluate(v)
            else:
                rule.evaluate(Stack(variants))


def test_every_sentinel_kind_counts_as_unknown():
    from policies.framework import is_unknown

    assert all(is_unknown(s) for s in UNKNOWN_SENTINELS) and len(UNKNOWN_SENTINELS) == 5
    assert not is_unknown("tensile-prod") and json.dumps(U)


def test_a_pack_that_cannot_start_is_a_clear_error(tmp_path):
    (tmp_path / "__main__.py").write_text("raise SystemExit('broken pack')\n")
    with pytest.raises(runner.PackError, match="did not print a port .*broken pack"):
        runner.Analyzer(pack_dir=tmp_path, start_timeout=30)
