"""`tensile preview`: the tree, counts and cost range; clear errors with exit code 2 for a
wrong stack name or a broken stack file."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infra.tools import preview

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_preview_renders_dev_as_plain_text(dev):
    out = io.StringIO()
    preview._render_plain(dev, out, REPO_ROOT)
    text = out.getvalue()
    # dev with its examples: the scaled `demo`, the scheduled `demo-nightly` and the scaler controller.
    assert "Stack dev: 174 resources (mocked, no cloud)" in text
    assert ("    - kubernetes:karpenter.sh/v1:NodePool  gpu-l4  [capacity=spot>on-demand gpu=l4 "
            "types=g6.xlarge,g6.2xlarge,g6.4xlarge,g6.12xlarge zones=us-east-1a,us-east-1b limit=4 GPUs]") in text
    assert "  - tensile:infra:GpuNodePools  gpu\n" in text
    assert re.search(r"^\s+4\s+aws:ec2/subnet:Subnet$", text, re.M)
    assert "at max, all on-demand (hard ceiling): $5.84/h  $4,264/month" in text
    assert "stack budget: $5,000/month" in text


def test_preview_renders_prod_with_rich(prod):
    pytest.importorskip("rich")
    out = io.StringIO()
    preview._render_rich(prod, out, REPO_ROOT)
    text = out.getvalue()
    assert "capacity=reserved>spot>on-demand gpu=h100 types=p5.48xlarge zones=us-east-1a limit=16 GPUs" in text
    assert "at max, all on-demand (hard ceiling): $319.89/h  $233,519/month" in text


def test_prod_program_runs_within_the_preview_time_target(prod):
    # CPU time, not wall time: other jobs on a shared CI machine must not fail this test.
    assert 0 < prod.cpu_seconds < 10.0


def test_preview_unknown_stack_is_a_clear_error_with_exit_code_2():
    out, err = io.StringIO(), io.StringIO()
    assert preview.run_preview("staging", out=out, err=err) == 2
    assert err.getvalue() == "error: no stack 'staging': Pulumi.staging.yaml not found (stacks here: dev, prod)\n"
    assert out.getvalue() == ""


@pytest.mark.parametrize("text, message", [
    ("config: {tensile:network: [\n", "error: Pulumi.broken.yaml is not valid YAML"),
    ("config:\n  aws:region: us-east-1\n", "error: Pulumi.broken.yaml has "),
])
def test_preview_broken_stack_file_is_a_clear_error_with_exit_code_2(tmp_path, text, message):
    (tmp_path / "Pulumi.broken.yaml").write_text(text)
    err = io.StringIO()
    assert preview.run_preview("broken", root=tmp_path, out=io.StringIO(), err=err) == 2
    assert err.getvalue().startswith(message)


def test_preview_lists_every_config_problem(tmp_path):
    stack = (REPO_ROOT / "Pulumi.dev.yaml").read_text().replace("maxGpus: 4", "maxGpus: 0")
    (tmp_path / "Pulumi.bad.yaml").write_text(stack.replace("natGateways: single", "natGateways: none"))
    err = io.StringIO()
    assert preview.run_preview("bad", root=tmp_path, out=io.StringIO(), err=err) == 2
    assert "  - gpuPools[0].maxGpus: must be > 0 (got 0)\n" in err.getvalue()
    assert "  - network.natGateways: must be one of per-az, single (got 'none')\n" in err.getvalue()


def test_preview_command_line_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "infra.tools.preview", "--stack", "nope"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: no stack 'nope'" in proc.stderr


def test_preview_end_to_end_shows_the_tree_and_the_over_budget_warning(tmp_path):
    """The whole command on a copy of the dev stack with a budget below its worst case (warn mode)."""
    stack = (REPO_ROOT / "Pulumi.dev.yaml").read_text()
    assert "monthlyUsd: 5000" in stack and "onWorstCaseOverBudget: warn" in stack
    (tmp_path / "Pulumi.tight.yaml").write_text(
        stack.replace("monthlyUsd: 5000", "monthlyUsd: 4000").replace("monthlyBudgetUsd: 3000", "monthlyBudgetUsd: 2900"))
    out, err = io.StringIO(), io.StringIO()
    assert preview.run_preview("tight", root=tmp_path, out=out, err=err, plain=True) == 0
    assert ("warning: budget.monthlyUsd: stack tight: worst-case monthly cost $4,264 exceeds the budget $4,000; "
            "lower the GPU limits/quotas or raise the budget") in out.getvalue()
    assert "Stack tight: 148 resources (mocked, no cloud)" in out.getvalue()
    assert "kubernetes:karpenter.sh/v1:NodePool  gpu-l4  [capacity=spot>on-demand" in out.getvalue()
    assert re.search(r"previewed in [0-9.]+ s \(program [0-9.]+ s\)", out.getvalue())
    assert err.getvalue() == ""
