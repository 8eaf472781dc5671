"""`tensile team add` and `tensile job render` (infra/tools/team_add.py, infra/tools/job_render.py): the happy path and the refusals,
with the stack file untouched whenever the command refuses."""

from __future__ import annotations

import difflib
import io
import shutil
from pathlib import Path

import pytest
import yaml

from infra.config import stack as config
from infra.tools import job_render as render_tool
from infra.tools import team_add as team_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::111122223333:role/ml-speech"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for stack in ("dev", "prod"):
        shutil.copy(REPO_ROOT / f"Pulumi.{stack}.yaml", tmp_path / f"Pulumi.{stack}.yaml")
    (tmp_path / "training" / "tensile" / "configs").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "training/tensile/configs/demo.yaml", tmp_path / "training/tensile/configs/demo.yaml")
    return tmp_path


def _add(root, stack="prod", name="speech", gpus=4, budget=12000, families=("l40s",), role=ROLE):
    out, err = io.StringIO(), io.StringIO()
    code = team_tool.team_add(stack, name, gpus, budget, list(families), role, root=root, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_team_add_writes_one_entry_and_keeps_the_rest_of_the_file(root):
    before = (root / "Pulumi.prod.yaml").read_text()
    code, out, err = _add(root)
    assert (code, err) == (0, "")
    after = (root / "Pulumi.prod.yaml").read_text()
    # Every original line (comments included) is still there, in order; only the entry is new,
    # inserted in one place: at the end of the teams list.
    ops = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines()).get_opcodes()
    changes = [op for op in ops if op[0] != "equal"]
    assert [(tag, i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in changes] == [("insert", 0, 7)]
    assert after.splitlines()[changes[0][3]] == "    - name: speech"
    assert after.splitlines()[changes[0][3] - 1] == "      efsUid: 50001"
    cfg = config.parse(yaml.safe_load(after)["config"], stack="prod")
    team = next(t for t in cfg.teams if t.name == "speech")
    assert (team.gpu_quota, team.monthly_budget_usd, team.gpu_models, team.member_role_arn) == (4, 12000.0, ("l40s",), ROLE)
    # Its own uid, above every uid in use: no existing team's access point can be taken.
    assert team.efs_uid == 50002 and "efsUid" in after.splitlines()[changes[0][4] - 1]
    assert "added team speech" in out and "the cost model allows 4 GPUs" in out


def test_team_add_accepts_an_instance_family_for_its_gpu_model(root):
    code, _, err = _add(root, stack="dev", name="speech", gpus=1, budget=900, families=["g6"])
    assert code == 0, err
    cfg = config.parse(yaml.safe_load((root / "Pulumi.dev.yaml").read_text())["config"], stack="dev")
    assert next(t for t in cfg.teams if t.name == "speech").gpu_models == ("l4",)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "llm"}, "team 'llm' already exists in Pulumi.prod.yaml"),
    ({"families": ["tpu"]}, "unknown GPU family 'tpu'"),
    ({"gpus": 200, "budget": 60000}, "teams[2].gpuQuota: quota 200 + borrowing 0 exceeds the 32 GPUs its pools allow"),
    ({"budget": 500}, "teams[2].monthlyBudgetUsd: team speech: worst-case monthly cost"),
    ({"budget": 20000}, "teams: team budgets add up to $255,000, more than budget.monthlyUsd $250,000"),
    ({"families": ["a10g"]}, "teams[2].gpuModels[0]: no GPU pool offers 'a10g'"),
    ({"role": "ml-speech"}, "--member-role-arn must be an IAM role ARN"),
    ({"name": "Speech_Team"}, "team name must be a DNS label"),
    ({"gpus": 0}, "--gpus must be a positive integer"),
])
def test_team_add_refuses_and_leaves_the_file_untouched(root, kwargs, message):
    before = (root / "Pulumi.prod.yaml").read_bytes()
    code, out, err = _add(root, **kwargs)
    assert code == 2 and out == ""
    assert message in err
    assert "Traceback" not in err
    assert (root / "Pulumi.prod.yaml").read_bytes() == before


def test_team_add_on_a_missing_stack_is_a_clear_error(root):
    code, _, err = _add(root, stack="staging")
    assert code == 2 and "no stack 'staging'" in err and "dev, prod" in err


def test_team_add_creates_the_list_when_a_stack_has_no_teams(root):
    text = (root / "Pulumi.dev.yaml").read_text()
    # No teams, hence no jobs either; the file ends without a newline.
    (root / "Pulumi.dev.yaml").write_text(text[:text.index("  tensile:teams:")].rstrip("\n"))
    assert _add(root, stack="dev", gpus=1, budget=900, families=["l4"])[0] == 0
    cfg = config.parse(yaml.safe_load((root / "Pulumi.dev.yaml").read_text())["config"], stack="dev")
    assert [t.name for t in cfg.teams] == ["speech"]


def test_job_render_prints_the_objects_of_one_run(root):
    out, err = io.StringIO(), io.StringIO()
    code = render_tool.job_render("dev", name="trial", team="sandbox", training_config="training/tensile/configs/demo.yaml",
                          image="111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0",
                          bucket="tensile-dev-ckpt-abc", gpu_model="l4", root=root, out=out, err=err)
    assert code == 0, err.getvalue()
    objects = list(yaml.safe_load_all(out.getvalue()))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service", "Service", "Job"]
    job = objects[-1]
    assert job["metadata"]["namespace"] == "sandbox"
    assert job["spec"]["template"]["spec"]["containers"][0]["env"][3]["value"] == \
        "s3://tensile-dev-ckpt-abc/teams/sandbox/runs/trial"


def test_job_render_with_a_schedule_prints_a_cronjob_of_the_run(root):
    out, err = io.StringIO(), io.StringIO()
    code = render_tool.job_render("dev", name="trial", team="sandbox", training_config="training/tensile/configs/demo.yaml",
                                  image="111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0",
                                  bucket="b", gpu_model="l4", schedule="30 1 * * *", root=root, out=out, err=err)
    assert code == 0, err.getvalue()
    objects = list(yaml.safe_load_all(out.getvalue()))
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service", "Service", "CronJob"]
    assert objects[-1]["spec"]["schedule"] == "30 1 * * *"


@pytest.mark.parametrize("kwargs, message", [
    ({"schedule": "30 1 * *"}, "schedule: '30 1 * *' has 4 field(s)"),
    ({"team": "nobody"}, "team: no team 'nobody'"),
    ({"image": "tensile-training:latest"}, "image: must pin a version, not :latest"),
    ({"gpu_model": "h100"}, "gpuModel: team sandbox may use l4, not 'h100'"),
    ({"gpus_per_worker": 16}, "gpusPerWorker: no instance of l4 has 16 GPUs"),
    ({"emergency_checkpoint_seconds": 200}, "emergencyCheckpointSeconds: must be 1..90"),
    ({"bucket": None}, "pass the checkpoint bucket"),
    ({"training_config": "missing.yaml"}, "cannot read training config missing.yaml"),
])
def test_job_render_refuses_bad_input_without_a_traceback(root, kwargs, message):
    args = dict(name="trial", team="sandbox", training_config="training/tensile/configs/demo.yaml",
                image="111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0", bucket="b")
    args.update(kwargs)
    out, err = io.StringIO(), io.StringIO()
    assert render_tool.job_render("dev", **args, root=root, out=out, err=err) == 2
    assert message in err.getvalue() and "Traceback" not in err.getvalue() and out.getvalue() == ""


def test_job_render_refuses_a_batch_that_cannot_split_over_max_nodes_times_gpus(root):
    """8 samples over 3 pods × 4 GPUs (world size 12): the trainer would refuse it at every
    round's start, so the renderer refuses it first, naming the training config and its keys."""
    (root / "training/tensile/configs/small.yaml").write_text(
        "batch: {global_batch_size: 8}\nelastic: {min_nodes: 1, max_nodes: 3}\n")
    out, err = io.StringIO(), io.StringIO()
    code = render_tool.job_render("dev", name="trial", team="sandbox", training_config="training/tensile/configs/small.yaml",
                                  image="111122223333.dkr.ecr.us-east-1.amazonaws.com/tensile-training:0.1.0",
                                  bucket="b", gpus_per_worker=4, root=root, out=out, err=err)
    assert code == 2 and out.getvalue() == "" and "Traceback" not in err.getvalue()
    assert "training config training/tensile/configs/small.yaml of job trial" in err.getvalue()
    assert "batch.global_batch_size (8) cannot be split over elastic.max_nodes (3) × 4 GPU(s) per node" in err.getvalue()
    assert "lower elastic.max_nodes to 2" in err.getvalue()


def test_team_add_refuses_a_flow_style_team_list_rather_than_rewrite_it(root):
    path = root / "Pulumi.dev.yaml"
    text = path.read_text()
    path.write_text(text[:text.index("  tensile:teams:")] + "  tensile:teams: []\n")
    before = path.read_bytes()
    code, _, err = _add(root, stack="dev", gpus=1, budget=900, families=["l4"])
    assert code == 2 and "flow style" in err and path.read_bytes() == before
