"""A worker's unexpected error is a membership change only if the group saw one: the error's
text says which errors to ask about, never the answer."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from tensile.elastic.classify import Evidence, classify
from tensile.elastic.control import PeerFailed, PhaseTimeout
from tensile.elastic.membership import Judgement, Verdict

LEFT = Verdict(Judgement.LEFT, "peer 10.0.0.2:22 has not heartbeat for 4.0 s")
STAYED = Verdict(Judgement.STAYED, "every peer heartbeat after the error")
UNKNOWN = Verdict(Judgement.UNKNOWN, "no rendezvous")


def evidence(verdict: Verdict, *, failure_on_record=False, stop_agreed=False, asked=None) -> Evidence:
    def membership() -> Verdict:
        if asked is not None:
            asked.append(True)
        return verdict
    return Evidence(failure_on_record=lambda wait_s: failure_on_record, stop_agreed=stop_agreed,
                    membership=membership)


DETERMINISTIC = [RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1234, invalid usage"),
                 RuntimeError("NCCL error: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 0"),
                 dist.DistBackendError("NCCL error: invalid argument")]


@pytest.mark.parametrize("error", DETERMINISTIC)
def test_a_deterministic_nccl_error_while_every_peer_stayed_is_a_failure(error):
    assert not classify(error, evidence(STAYED)).membership_change


@pytest.mark.parametrize("error", [RuntimeError("[gloo] Connection closed by peer"),
                                   PhaseTimeout("save: no word from rank(s) 1"),
                                   dist.DistBackendError("NCCL communicator was aborted: watchdog timed out")])
def test_a_communication_error_is_a_membership_change_only_when_a_peer_left(error):
    assert classify(error, evidence(LEFT)).membership_change
    assert not classify(error, evidence(STAYED)).membership_change


@pytest.mark.parametrize("kwargs", [{"failure_on_record": True}, {"stop_agreed": True}])
def test_a_communication_error_after_a_peer_failed_or_a_stop_was_agreed_spends_nothing(kwargs):
    asked: list[bool] = []
    assert classify(RuntimeError("[gloo] Connection reset by peer"), evidence(STAYED, asked=asked, **kwargs)).membership_change
    assert not asked, "decided without waiting on the rendezvous"


def test_a_communication_error_while_every_agent_stayed_waits_for_a_crashed_peers_record():
    recorded_after_s = 2.0

    def on_record(wait_s: float) -> bool:
        return wait_s >= recorded_after_s

    found = Evidence(failure_on_record=on_record, stop_agreed=False, membership=lambda: STAYED, peer_failure_wait_s=5)
    assert classify(RuntimeError("[gloo] Connection closed by peer"), found).membership_change
    missed = Evidence(failure_on_record=on_record, stop_agreed=False, membership=lambda: STAYED, peer_failure_wait_s=1)
    assert not classify(RuntimeError("[gloo] Connection closed by peer"), missed).membership_change


def test_an_error_of_this_workers_own_code_is_a_failure_whatever_the_membership():
    asked: list[bool] = []
    assert not classify(ValueError("shapes do not match"), evidence(LEFT, asked=asked)).membership_change
    assert not classify(RuntimeError("CUDA out of memory"), evidence(LEFT, asked=asked)).membership_change
    assert not asked


def test_another_ranks_announced_failure_is_a_membership_change_here():
    assert classify(PeerFailed("save: rank 1 failed: OSError"), evidence(STAYED)).membership_change


def test_without_a_rendezvous_a_communication_error_is_judged_by_its_kind():
    assert classify(RuntimeError("[gloo] Connection closed by peer"), evidence(UNKNOWN)).membership_change
