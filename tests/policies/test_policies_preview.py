"""`tensile preview` runs the pack (as the CLI would) and shows its result; a mandatory failure
exits 3."""

from __future__ import annotations

import copy
import io

import yaml

from infra.tools import preview

from .conftest import REPO_ROOT


def test_preview_shows_the_pack_result_for_dev(stack_runs):
    lines, mandatory = preview._policy_lines(stack_runs["dev"], REPO_ROOT)
    assert mandatory == 0
    assert lines[0].startswith("policy pack tensile-policies: 33 policies, 0 mandatory and 0 advisory finding(s)")
    assert lines[-1] == "policy result: passed every mandatory policy"


def test_preview_without_a_pack_in_the_checkout_says_so(stack_runs, tmp_path):
    assert preview._policy_lines(stack_runs["dev"], tmp_path) == (["policy pack: none in this checkout"], 0)


def test_preview_end_to_end_exits_3_when_a_mandatory_policy_fails(tmp_path):
    """The whole command on a dev stack whose budget is below its worst case: the program only warns
    (dev), the pack refuses."""
    config = copy.deepcopy(yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text()))
    config["config"]["tensile:budget"]["monthlyUsd"] = 3000
    (tmp_path / "Pulumi.tight.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "policies").symlink_to(REPO_ROOT / "policies")
    out, err = io.StringIO(), io.StringIO()
    assert preview.run_preview("tight", root=tmp_path, out=out, err=err, plain=True) == preview.EXIT_POLICY_VIOLATION
    text = out.getvalue()
    assert "  mandatory: worst-case-cost-within-budget: worst-case monthly cost at the NodePools' GPU limits, " \
           "all on-demand, is $4,264, above the budget $3,000 × 1.0 = $3,000" in text
    # Exactly the rule meant for this break fails.
    assert "policy result: FAILED (worst-case-cost-within-budget)\n" in text
    assert text.count("  mandatory: ") == 1
    assert err.getvalue() == ""
