"""The written contract between the infra and the trainer (training/tensile/contract.py): a job the
infra renders is a job the trainer accepts, read by the trainer's own config loader and command
line; and the infra program imports and runs with torch unimportable."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from tensile import contract

from infra.config import stack as stack_config
from infra.plan import job as job_plan

# The trainer's side, as the trainer itself reads a pod's config and command line.
from tensile.cli import app as trainer_cli
from tensile.config import BatchConfig, ConfigError, ElasticConfig, TrainingConfig, config_from_dict, load_config
from tensile.elastic.api import NodeOutcome

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tensile-dev-ckpt-abc"


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request) -> dict:
    """Each stack's own job, rendered as `tensile job render` and the TrainingJob component render it."""
    stack = request.param
    _path, _text, document = stack_config.read_stack_document(stack)
    cfg = stack_config.parse_document(document, stack)
    job = cfg.jobs[0]
    raw = yaml.safe_load((REPO_ROOT / job.training_config).read_text())
    team = next(t for t in cfg.teams if t.name == job.team)
    objects = job_plan.job_objects(job, training_config=raw, team_models=team.gpu_models, pools=cfg.gpu_pools,
                                   bucket=BUCKET)
    return {"job": job, "raw": raw, "objects": {o["kind"] + "/" + o["metadata"]["name"]: o for o in objects}}


def _worker_job(rendered) -> dict:
    return rendered["objects"][f"Job/{rendered['job'].name}"]


def _trainer_container(rendered) -> dict:
    return _worker_job(rendered)["spec"]["template"]["spec"]["containers"][0]


def test_rendered_train_yaml_loads_with_the_trainers_own_config_loader(rendered, tmp_path, monkeypatch):
    monkeypatch.delenv(contract.ENV_CHECKPOINT_URL, raising=False)
    job = rendered["job"]
    text = rendered["objects"][f"ConfigMap/{job.name}-config"]["data"]["train.yaml"]
    (tmp_path / "train.yaml").write_text(text)
    cfg = load_config(tmp_path / "train.yaml")
    url = f"s3://{BUCKET}/teams/{job.team}/runs/{job.name}"
    assert (cfg.run.name, cfg.checkpoint.shared_dir) == (job.name, url)
    assert cfg.checkpoint.local_dir == "/var/lib/tensile/local"
    assert cfg.checkpoint.ledger_path == f"/mnt/shared/runs/{job.name}"
    assert cfg.data.url == "/var/lib/tensile/work/data"
    # The bounds Kueue admits (N..M pods) are the node bounds the trainer's rendezvous uses, and
    # each pod runs one process per GPU: the world size the trainer's batch plan is checked at.
    worker = _worker_job(rendered)
    if job.scaler is not None:  # elastic: created at the minimum, the scaler grows it to at most completions
        assert worker["spec"]["parallelism"] == cfg.elastic.min_nodes
    else:
        assert int(worker["metadata"]["annotations"][job_plan.MIN_PARALLELISM]) == cfg.elastic.min_nodes
        assert worker["spec"]["parallelism"] == cfg.elastic.max_nodes
    assert worker["spec"]["completions"] == cfg.elastic.max_nodes
    assert (cfg.elastic.min_nodes, cfg.elastic.max_nodes) == (rendered["raw"]["elastic"]["min_nodes"],
                                                              rendered["raw"]["elastic"]["max_nodes"])
    assert cfg.elastic.processes_per_node == job.gpus_per_worker
    # The variable the job sets names the same tier, and the trainer reads it.
    env = {e["name"]: e.get("value") for e in _trainer_container(rendered)["env"]}
    assert env[contract.ENV_CHECKPOINT_URL] == url
    monkeypatch.setenv(contract.ENV_CHECKPOINT_URL, "s3://elsewhere/runs/x")
    assert load_config(tmp_path / "train.yaml").checkpoint.shared_dir == "s3://elsewhere/runs/x"


def test_rendered_train_yaml_takes_the_trainers_defaults_for_what_the_config_leaves_out(tmp_path, monkeypatch):
    monkeypatch.delenv(contract.ENV_CHECKPOINT_URL, raising=False)
    _path, _text, document = stack_config.read_stack_document("dev")
    cfg = stack_config.parse_document(document, "dev")
    text, low, high = job_plan.training_config_document({}, job=cfg.jobs[0], bucket=BUCKET)
    (tmp_path / "train.yaml").write_text(text)
    loaded = load_config(tmp_path / "train.yaml")
    assert (low, high) == (loaded.elastic.min_nodes, loaded.elastic.max_nodes) == \
        (ElasticConfig().min_nodes, ElasticConfig().max_nodes)
    assert loaded.batch.global_batch_size == BatchConfig().global_batch_size == contract.DEFAULT_GLOBAL_BATCH_SIZE
    assert loaded.data.url == f"/var/lib/tensile/work/{contract.DEFAULT_DATA_URL}"


@pytest.mark.parametrize("global_batch, max_nodes, gpus", [
    (16, 4, 8), (16, 2, 8), (32, 4, 8), (3, 3, 1), (3, 4, 1), (12, 3, 4), (11, 3, 4),
])
def test_renderer_refuses_exactly_the_batches_the_trainer_refuses_to_split(global_batch, max_nodes, gpus):
    raw = {"batch": {"global_batch_size": global_batch}, "elastic": {"min_nodes": 1, "max_nodes": max_nodes}}
    job = dataclasses.replace(stack_config.parse_document(stack_config.read_stack_document("prod")[2], "prod").jobs[0],
                              gpus_per_worker=gpus)
    try:
        text, _low, _high = job_plan.training_config_document(raw, job=job, bucket=BUCKET)
        rendered = yaml.safe_load(text)
    except job_plan.JobPlanError:
        rendered = None
    try:
        config_from_dict({**raw, "elastic": {**raw["elastic"], "processes_per_node": gpus}})
        trainer_accepts = True
    except ConfigError:
        trainer_accepts = False
    assert (rendered is not None) == trainer_accepts
    if rendered is not None:
        config_from_dict({k: v for k, v in rendered.items() if k != "checkpoint"})  # what the pods load


def _parse_with_the_trainers_cli(command: list[str]):
    """The pod's command as the trainer's own command line parses it (unknown flags fail here)."""
    group = typer.main.get_command(trainer_cli)
    assert command[0] == "tensile"
    return group.commands[command[1]].make_context(command[1], list(command[2:]))


def test_rendered_commands_parse_with_the_trainers_own_command_line(rendered):
    launch = _parse_with_the_trainers_cli(_trainer_container(rendered)["command"])
    assert launch.params["config"] == Path("/etc/tensile/train.yaml")
    assert launch.params["nproc_per_node"] == rendered["job"].gpus_per_worker
    store = rendered["objects"][f"Deployment/{rendered['job'].name}-rdzv"]
    params = _parse_with_the_trainers_cli(store["spec"]["template"]["spec"]["containers"][0]["command"]).params
    assert (params["host"], params["port"]) == ("0.0.0.0", 29400)


def test_trainer_cli_parse_refuses_a_flag_it_does_not_have():
    with pytest.raises(Exception, match="No such option: --workers"):
        _parse_with_the_trainers_cli(["tensile", "launch", "--config", "x", "--node-id", "n", "--local-dir", "l",
                                      "--rdzv-endpoint", "h:1", "--workers", "2"])


def test_ignored_exit_code_is_the_one_the_trainer_exits_with_when_stopped(rendered):
    rules = _worker_job(rendered)["spec"]["podFailurePolicy"]["rules"]
    ignored = [r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r]
    assert ignored == [[NodeOutcome.PREEMPTED.exit_code]] == [[NodeOutcome.STOPPED.exit_code]] \
        == [[contract.EXIT_STOPPED]]


def test_contract_config_keys_are_fields_of_the_trainers_config():
    sections = {f.name: f.type for f in dataclasses.fields(TrainingConfig)}
    hints = {name: typ for name, typ in TrainingConfig.__annotations__.items()}
    for section, key in contract.RENDERED_KEYS:
        assert section in sections, section
        section_type = next(c for c in _config_classes() if c.__name__ == str(hints[section]).split(".")[-1])
        assert key in {f.name for f in dataclasses.fields(section_type)}, (section, key)
    assert (ElasticConfig().min_nodes, ElasticConfig().max_nodes, ElasticConfig().processes_per_node) == \
        (contract.DEFAULT_MIN_NODES, contract.DEFAULT_MAX_NODES, contract.DEFAULT_PROCESSES_PER_NODE)


def _config_classes() -> list[type]:
    import tensile.config as trainer_config

    return [v for v in vars(trainer_config).values() if dataclasses.is_dataclass(v) and isinstance(v, type)]


# ---------------------------------------------------------------------------------------------
# The infra without torch
# ---------------------------------------------------------------------------------------------

NO_TORCH = """
import importlib, json, pkgutil, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "deepspeed"):
            raise ImportError(f"{name} is unimportable here: the infra must not need it")
        return None

sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, sys.argv[1])
result = {"blocked": False, "imported": []}
try:
    import tensile.checkpoint.engine  # imports torch: proves the blocker works
except ImportError:
    result["blocked"] = True
import infra
for info in pkgutil.walk_packages(infra.__path__, "infra."):
    if info.name != "infra.__main__":
        importlib.import_module(info.name)
        result["imported"].append(info.name)
from infra import mocks
from infra.config.stack import read_stack_config
config, _ = read_stack_config("dev")
run = mocks.run_in_this_process("dev", config)  # the program itself, as the language host runs it
result.update(error=run.error, resources=len(run.resources),
              torch_loaded=[m for m in sys.modules if m.split(".")[0] in ("torch", "deepspeed")])
print(json.dumps(result))
"""


def test_infra_program_imports_and_runs_with_torch_unimportable():
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(REPO_ROOT)], cwd=REPO_ROOT / "infra",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"], "the torch blocker did not block: this test would prove nothing"
    assert {"infra.plan.job", "infra.tools.job_render", "infra.tools.preview"} <= set(result["imported"])
    assert result["error"] is None and result["resources"] > 100 and result["torch_loaded"] == []
