"""The elastic runtime's values are a format (outcome.json, the ledger's states, exit codes that
Kubernetes and torchrun read): these pin them to their literal values, so a rename cannot move them."""

from __future__ import annotations

import json

from tensile.elastic.api import NodeDirectory, NodeOutcome, WorkerExit


def test_node_outcome_values_and_launcher_exit_codes_are_pinned():
    assert {outcome.value: outcome.exit_code for outcome in NodeOutcome} == {
        "completed": 0, "failed": 3, "budget-exhausted": 3, "incompatible": 3, "fenced": 4,
        "stopped": 143, "preempted": 143}


def test_worker_exit_codes_toward_torchrun_are_pinned():
    assert {code.name: int(code) for code in WorkerExit} == {"COMPLETED": 0, "FAILURE": 1, "REGROUP": 75}


def test_node_outcome_parse_reads_only_known_outcomes():
    assert NodeOutcome.parse("fenced") is NodeOutcome.FENCED
    assert NodeOutcome.parse("torchrun exited 1") is None and NodeOutcome.parse(None) is None
    # It reads as its value wherever a string was used before: comparisons, messages, JSON.
    assert NodeOutcome.STOPPED == "stopped" and f"{NodeOutcome.STOPPED}" == "stopped"
    assert json.dumps({"outcome": NodeOutcome.FENCED}) == '{"outcome": "fenced"}'


def test_node_directory_files_keep_their_names(tmp_path):
    node = NodeDirectory(tmp_path / "node")
    assert (node.outcome_file.name, node.leaving_marker.name, node.agent_ended_marker.name,
            node.round_marker(3).name) == ("outcome.json", "leaving", "agent-ended", "round.rank3")


def test_node_directory_outcome_is_written_as_before(tmp_path):
    node = NodeDirectory(tmp_path / "node")
    node.write_outcome(NodeOutcome.PREEMPTED, "stop agreed at step 5", left_rendezvous=True)
    assert node.outcome_file.read_text() == (
        '{"outcome": "preempted", "detail": "stop agreed at step 5", "left_rendezvous": true}')
    assert node.outcome_field() == "preempted" and node.outcome_field("left_rendezvous") is True


def test_node_directory_outcome_field_is_none_while_missing_or_torn(tmp_path):
    node = NodeDirectory(tmp_path / "node")
    assert node.outcome_field() is None
    node.path.mkdir()
    node.outcome_file.write_text('{"outcome": "pre')
    assert node.outcome_field() is None


def test_node_directory_outcome_is_replaced_whole_never_torn(tmp_path, monkeypatch):
    """A node's processes and its polling launcher share the file: a write that dies half way
    (here: before its rename) leaves the previous outcome readable, not a truncated one."""
    import os

    node = NodeDirectory(tmp_path / "node")
    node.write_outcome(NodeOutcome.STOPPED, "first")

    def interrupted(source, target):
        raise OSError("interrupted")

    monkeypatch.setattr(os, "replace", interrupted)
    try:
        node.write_outcome(NodeOutcome.FAILED, "second, never finished")
    except OSError:
        pass
    assert node.outcome_field() == "stopped" and node.outcome_field("detail") == "first"


def test_node_directory_clear_removes_what_an_earlier_start_left(tmp_path):
    node = NodeDirectory(tmp_path / "node")
    node.write_outcome(NodeOutcome.COMPLETED)
    node.leaving_marker.touch()
    node.agent_ended_marker.touch()
    node.round_marker(0).write_text("4")
    node.clear()
    assert [p.name for p in node.path.iterdir()] == ["round.rank0"], "the guard's round key stays"
