"""World size = nodes × processes per node, everywhere: `tensile validate` and `tensile plan`
accept exactly the configs whose batch plan the trainer (Trainer.__init__: plan_batch at its
world size) can make at every node count in range."""

from __future__ import annotations

import itertools
import re

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from tensile import cli
from tensile.batching import BatchPlanError, plan_batch
from tensile.config import ConfigError, config_from_dict

GLOBAL_BATCHES = (1, 3, 8, 12, 16, 32)
MICRO_BATCH_SIZES = ((1,), (3, 5), (1, 2, 4, 8))
NODE_BOUNDS = ((1, 1), (1, 2), (2, 3), (1, 4), (4, 4))
PROCESSES_PER_NODE = (1, 2, 3, 8)
GRID = list(itertools.product(GLOBAL_BATCHES, MICRO_BATCH_SIZES, NODE_BOUNDS, PROCESSES_PER_NODE))


def _data(global_batch: int, micro: tuple[int, ...], bounds: tuple[int, int], processes: int) -> dict:
    return {"batch": {"global_batch_size": global_batch, "micro_batch_sizes": list(micro)},
            "elastic": {"min_nodes": bounds[0], "max_nodes": bounds[1], "processes_per_node": processes}}


def _trainer_accepts_every_node_count(global_batch: int, micro: tuple[int, ...], bounds: tuple[int, int],
                                      processes: int) -> bool:
    try:
        for nodes in range(bounds[0], bounds[1] + 1):
            plan = plan_batch(global_batch, list(micro), nodes * processes)
            assert sum(plan.shares) == global_batch and len(plan.shares) == nodes * processes
    except BatchPlanError:
        return False
    return True


def _validation_accepts(data: dict) -> bool:
    try:
        config_from_dict(data)
    except ConfigError as e:
        assert [path for path, _ in e.problems] == ["elastic.max_nodes"], e
        return False
    return True


def test_validation_accepts_exactly_what_the_batch_plan_accepts_at_every_world_size():
    verdicts = {case: _validation_accepts(_data(*case)) for case in GRID}
    disagree = [case for case, accepted in verdicts.items() if accepted != _trainer_accepts_every_node_count(*case)]

    assert not disagree, f"validation and the trainer disagree on {len(disagree)} config(s), e.g. {disagree[:5]}"
    # The grid holds both kinds, including the multi-GPU case that passed validation before.
    assert True in verdicts.values() and False in verdicts.values()
    assert verdicts[(16, (1, 2, 4, 8), (1, 4), 8)] is False


@pytest.fixture
def cli_runner(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=300))
    monkeypatch.setattr(cli, "errors", Console(width=300, stderr=True))
    return CliRunner()


CLI_GRID = [case for case in GRID if case[1] == (1, 2, 4, 8) and case[0] in (3, 16)]


@pytest.mark.parametrize("case", CLI_GRID, ids=[f"batch{c[0]}-nodes{c[2][0]}..{c[2][1]}x{c[3]}" for c in CLI_GRID])
def test_cli_validate_and_plan_agree_with_the_trainer(tmp_path, cli_runner, case):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_data(*case)))
    accepted = _trainer_accepts_every_node_count(*case)

    validate = cli_runner.invoke(cli.app, ["validate", str(path)])
    plan = cli_runner.invoke(cli.app, ["plan", str(path)])

    assert (validate.exit_code == 0) == accepted, validate.output
    assert (plan.exit_code == 0) == accepted, plan.output
    if accepted:
        global_batch, micro, (low, high), processes = case
        rows = re.findall(r"^│ (\d+)\s+│ (\d+)\s+│ (\d+)\s+│ (\d+)\s+│.*│ (\S+)\s+│$", plan.output, flags=re.MULTILINE)
        expected = []
        for nodes in range(low, high + 1):
            p = plan_batch(global_batch, list(micro), nodes * processes)
            expected.append((str(nodes), str(nodes * processes), str(p.micro_batch_size),
                             str(p.accumulation_steps), "valid"))
        assert [(n, w, m, a, status) for n, w, m, a, status in rows] == expected
    else:
        assert "elastic.max_nodes" in validate.output and "elastic.max_nodes" in plan.output
