"""The checkpointer's pure parts: when to save and why (SavePolicy), and the group's lease on
the commit log (GroupLease), as tables."""

from __future__ import annotations

import pytest

from tensile.checkpoint import LAYOUT_DEEPSPEED, LAYOUT_SHARDED, CommitRecord, Manifest
from tensile.checkpoint.catalog import ResumePoint
from tensile.checkpoint.engine import GroupLease, SavePolicy

POLICY = SavePolicy(every_steps=5, asynchronous=True)


@pytest.mark.parametrize(("step", "final", "stopping", "asked", "reason"), [
    (3, False, False, False, None),
    (5, False, False, False, "periodic"),
    (10, False, False, True, "rebalance"),
    (7, False, False, True, "rebalance"),
    (7, False, True, True, "stop"),        # a stop outranks a rebalance notice
    (10, False, True, False, "stop"),      # and a periodic save
    (12, True, True, True, "final"),       # the last step's save is the final one
    (15, True, False, False, "final"),
])
def test_save_reason(step, final, stopping, asked, reason):
    assert POLICY.reason(step, final=final, stopping=stopping, asked=asked) == reason


@pytest.mark.parametrize(("asynchronous", "reason", "layout", "background"), [
    (True, "periodic", LAYOUT_SHARDED, True),
    (True, "rebalance", LAYOUT_SHARDED, True),
    (True, "stop", LAYOUT_SHARDED, False),      # must be durable before the process exits
    (True, "final", LAYOUT_SHARDED, False),
    (True, "periodic", LAYOUT_DEEPSPEED, False),  # ZeRO-0: DeepSpeed's own files, no host snapshot
    (False, "periodic", LAYOUT_SHARDED, False),
])
def test_save_in_background(asynchronous, reason, layout, background):
    assert SavePolicy(every_steps=5, asynchronous=asynchronous).in_background(reason, layout) is background


def _manifest(checkpoint_id: str, branch: str = "") -> Manifest:
    return Manifest(checkpoint_id=checkpoint_id, parent_id=None, step=10, world_size=2, zero_stage=2, files=(),
                    config_hash="c", data_version="d", branch=branch)


def test_a_fresh_run_leases_the_first_seq_with_no_parent():
    lease = GroupLease.for_round("t" * 32, ResumePoint(next_seq=1))
    assert lease == GroupLease(token="t" * 32, next_seq=1, parent_id=None, branch="")


@pytest.mark.parametrize(("pinned", "saved_branch", "branch"), [
    (None, "", ""),                                   # the original line
    (None, "step-00000004-aaaaaaaa", "step-00000004-aaaaaaaa"),  # descendants inherit the branch
    ("step-00000010-bbbbbbbb", "", "step-00000010-bbbbbbbb"),    # resuming a pin starts a branch
])
def test_a_resumed_run_descends_from_its_checkpoint(pinned, saved_branch, branch):
    point = ResumePoint(next_seq=8, record=CommitRecord(seq=7, checkpoint_id="step-00000010-bbbbbbbb", step=10,
                                                        group_token="g"),
                        manifest=_manifest("step-00000010-bbbbbbbb", saved_branch), pinned=pinned)
    lease = GroupLease.for_round("t" * 32, point)
    assert (lease.next_seq, lease.parent_id, lease.branch) == (8, "step-00000010-bbbbbbbb", branch)


def test_a_publish_moves_the_lease_on_and_leaves_the_old_one_as_it_was():
    lease = GroupLease(token="t" * 32, next_seq=3, parent_id="a", branch="b")
    moved = lease.after_publish("step-00000020-tttttttt")
    assert moved == GroupLease(token="t" * 32, next_seq=4, parent_id="step-00000020-tttttttt", branch="b")
    assert lease.next_seq == 3 and lease.parent_id == "a"
