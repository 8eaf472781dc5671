"""Stop and checkpoint requests at step boundaries."""

from __future__ import annotations

from tensile.elastic.signals import CheckpointRequest


def test_a_checkpoint_request_that_arrives_during_the_save_it_asked_for_is_kept():
    request = CheckpointRequest()
    assert not request.requested
    request.request("rebalance")
    voted = request.generation  # the step's vote saw one request
    request.request("rebalance")  # a second notice while that checkpoint is written
    request.served(voted)
    assert request.requested, "the second notice gets its own checkpoint"
    request.served(request.generation)
    assert not request.requested


def test_serving_an_older_generation_never_reopens_a_newer_one():
    request = CheckpointRequest()
    request.request("rebalance")
    request.served(request.generation)
    request.served(0)
    assert not request.requested and request.reason == "rebalance"
