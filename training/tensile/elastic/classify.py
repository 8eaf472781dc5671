"""How a worker's round ends after an error it did not expect: a membership change (exit 75,
nothing spent) or this worker's own failure (exit 1, one failure for the round).

Decided by what happened, not by the error's text: an error out of a collective, the store or a
control-plane phase is a membership change only if the group saw one — this round already spent
a failure (a peer's own code failed first and said so), the group had agreed to stop, or the
rendezvous shows a peer gone (tensile.elastic.membership). The same error while every peer
stayed — an NCCL "invalid usage", a duplicate GPU, a peer's deterministic crash — is a failure,
so it cannot loop for free until torchrun's restart backstop. The text only says which errors are
worth asking about, and decides alone only where no rendezvous can be read (no launcher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tensile.elastic.control import PhaseTimeout
from tensile.elastic.membership import Judgement, Verdict
from tensile.errors import MembershipChange

COMMUNICATION_HINTS = ("gloo", "connection reset", "connection closed", "broken pipe", "timed out", "nccl")


def from_communication(error: BaseException) -> bool:
    """The error came out of a collective, the store or a phase's wait: a peer may be the cause."""
    import torch.distributed as dist

    if isinstance(error, (PhaseTimeout, dist.DistBackendError, dist.DistNetworkError, dist.DistStoreError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(hint in text for hint in COMMUNICATION_HINTS)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the worker knows of its group when the error reaches it."""

    failure_on_record: Callable[[float], bool]
    """Whether this round spends a failure already (a peer's own code failed first), waiting up
    to the given seconds for it to appear."""
    stop_agreed: bool
    """The group had agreed to stop at a step (its members are leaving)."""
    membership: Callable[[], Verdict]
    """Reads the rendezvous (may wait up to the heartbeat expiry): asked only when needed."""
    peer_failure_wait_s: float = 0.0
    """How long a peer that crashed may take to put its failure on record (its guard first
    judges the crash by membership, as this worker does)."""


@dataclass(frozen=True, slots=True)
class Classification:
    membership_change: bool
    why: str


def classify(error: BaseException, evidence: Evidence) -> Classification:
    if isinstance(error, MembershipChange):
        return Classification(True, f"{type(error).__name__}: {error}")
    if not from_communication(error):
        return Classification(False, "this worker's own code failed")
    if evidence.failure_on_record(0.0):
        return Classification(True, "this round already spent a failure (a peer failed first)")
    if evidence.stop_agreed:
        return Classification(True, "the group had agreed to stop")
    verdict = evidence.membership()
    if verdict.judgement == Judgement.UNKNOWN:
        # No rendezvous to read (outside a launcher, or its store is gone with the agents):
        # the error's kind is all there is.
        return Classification(True, f"membership unknown ({verdict.reason}); judged by the error's kind")
    if verdict.peer_left:
        return Classification(True, verdict.reason)
    # Every agent stayed: this worker's own error, or a peer whose worker crashed (its agent
    # stays too). The crashed peer's guard puts its failure on record; wait for it a while.
    if evidence.failure_on_record(evidence.peer_failure_wait_s):
        return Classification(True, "a peer's crash was put on record as this round's failure")
    return Classification(False, f"a communication error while every peer stayed ({verdict.reason})")
