"""A resume keeps the trajectory the checkpoint was trained toward: another seed, global batch
or run.steps is refused by name; "train longer" is an explicit, recorded extension."""

from __future__ import annotations

import pytest

from tensile.checkpoint import CheckpointIncompatible
from tensile.checkpoint.trajectory import Trajectory, continue_trajectory
from tensile.errors import NotRetryable

SAVED = Trajectory(seed=11, global_batch_size=12, steps=12)


def resume(wanted: Trajectory, saved: Trajectory = SAVED, extend_from_steps: int = 0) -> Trajectory:
    return continue_trajectory(saved, wanted, extend_from_steps=extend_from_steps, step=12, where="checkpoint c")


@pytest.mark.parametrize("wanted, named", [
    (Trajectory(seed=12, global_batch_size=12, steps=12), "run.seed 11"),
    (Trajectory(seed=11, global_batch_size=24, steps=12), "batch.global_batch_size 12"),
    (Trajectory(seed=11, global_batch_size=12, steps=18), "run.extend_from_steps: 12"),
    (Trajectory(seed=11, global_batch_size=12, steps=6), "set run.steps back to 12"),
])
def test_a_changed_trajectory_is_refused_naming_the_field_and_the_fix(wanted, named):
    with pytest.raises(CheckpointIncompatible, match="checkpoint c") as caught:
        resume(wanted)
    assert named in str(caught.value)
    assert isinstance(caught.value, NotRetryable), "ends the run, spends nothing"


def test_train_longer_is_accepted_and_recorded_in_the_trajectory():
    longer = resume(Trajectory(seed=11, global_batch_size=12, steps=18), extend_from_steps=12)
    assert longer.steps == 18 and longer.extensions == ((12, 18, 12),)
    # A later resume of the extended line carries the record and needs no new extension.
    again = resume(Trajectory(seed=11, global_batch_size=12, steps=18), saved=longer, extend_from_steps=12)
    assert again.extensions == ((12, 18, 12),)
    assert Trajectory.saved_in({"trajectory": longer.state_dict()}) == longer


def test_train_longer_from_other_steps_than_the_checkpoints_is_refused():
    with pytest.raises(CheckpointIncompatible, match="run.extend_from_steps 10"):
        resume(Trajectory(seed=11, global_batch_size=12, steps=18), extend_from_steps=10)


def test_a_checkpoint_saved_before_trajectories_checks_seed_and_batch_from_its_sampler():
    old_state = {"step": 6, "sampler": {"consumed_samples": 72, "seed": 11, "num_samples": 600,
                                        "global_batch_size": 12}, "config_hash": "x"}
    saved = Trajectory.saved_in(old_state)
    assert saved == Trajectory(seed=11, global_batch_size=12, steps=None)
    assert resume(Trajectory(seed=11, global_batch_size=12, steps=40), saved=saved).steps == 40
    with pytest.raises(CheckpointIncompatible, match="run.seed"):
        resume(Trajectory(seed=3, global_batch_size=12, steps=12), saved=saved)
