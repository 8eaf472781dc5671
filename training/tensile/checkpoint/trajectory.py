"""What a checkpoint was trained toward beyond its model and optimizer: the seed, the global batch
size and `run.steps` (the learning-rate schedule's length), saved with the trainer's own state and
compared when a job resumes. A change would bend the run silently (another data order, another
schedule), so it is refused by name, except "train longer": `run.extend_from_steps`, which is
recorded in every later checkpoint and in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tensile.checkpoint.api import CheckpointIncompatible


@dataclass(frozen=True, slots=True)
class Trajectory:
    seed: int
    global_batch_size: int
    steps: int | None
    """run.steps the run trains toward; None for a checkpoint written before it was saved."""
    extensions: tuple[tuple[int, int, int], ...] = ()
    """Every "train longer" of the run's line so far, as (from_steps, to_steps, at_step)."""

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "steps": self.steps,
                "extensions": [list(e) for e in self.extensions]}

    @classmethod
    def saved_in(cls, client_state: dict[str, Any]) -> "Trajectory":
        """The trajectory a trainer state was saved with; a state older than the `trajectory` key
        still names its seed and batch size in its sampler's state."""
        saved = client_state.get("trajectory")
        if saved is not None:
            return cls(seed=int(saved["seed"]), global_batch_size=int(saved["global_batch_size"]),
                       steps=None if saved.get("steps") is None else int(saved["steps"]),
                       extensions=tuple(tuple(int(x) for x in e) for e in saved.get("extensions", ())))
        sampler = client_state.get("sampler", {})
        return cls(seed=sampler.get("seed"), global_batch_size=sampler.get("global_batch_size"), steps=None)


def continue_trajectory(saved: Trajectory, wanted: Trajectory, *, extend_from_steps: int, step: int,
                        where: str) -> Trajectory:
    """The trajectory the resumed run follows: `wanted`, carrying the saved line's extensions
    (and a new one when this resume trains longer). CheckpointIncompatible names what differs."""
    if saved.seed is not None and saved.seed != wanted.seed:
        raise CheckpointIncompatible(
            f"{where} was trained with run.seed {saved.seed}, this config says {wanted.seed}: resuming would "
            f"change the data order and dropout; set run.seed to {saved.seed}, or use a new run directory")
    if saved.global_batch_size is not None and saved.global_batch_size != wanted.global_batch_size:
        raise CheckpointIncompatible(
            f"{where} was trained with batch.global_batch_size {saved.global_batch_size}, this config says "
            f"{wanted.global_batch_size}: resuming would change every step's update and the data order; set "
            f"batch.global_batch_size to {saved.global_batch_size}, or use a new run directory")
    carried = Trajectory(wanted.seed, wanted.global_batch_size, wanted.steps, saved.extensions)
    if saved.steps is None or saved.steps == wanted.steps:
        return carried
    if extend_from_steps == saved.steps and wanted.steps > saved.steps:
        return Trajectory(wanted.seed, wanted.global_batch_size, wanted.steps,
                          saved.extensions + ((saved.steps, wanted.steps, step),))
    hint = (f"to train longer, set run.extend_from_steps: {saved.steps} (the cosine schedule is then "
            f"recomputed over {wanted.steps} steps from step {step}); " if wanted.steps > saved.steps else "")
    raise CheckpointIncompatible(
        f"{where} was trained toward run.steps {saved.steps}, this config says {wanted.steps}"
        + (f" and run.extend_from_steps {extend_from_steps}" if extend_from_steps else "")
        + f": the learning-rate schedule would bend silently; {hint}"
        f"or set run.steps back to {saved.steps}")
