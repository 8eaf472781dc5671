"""The one error tree of the trainer: what a retry can fix and what it cannot. Every part's
errors derive from one of these, so the worker decides a round's exit by class, not by text.

A membership change and an error no retry can fix spend nothing; anything else a worker raises
is judged by what happened (tensile.elastic.classify): a communication error while a peer left
is a membership change, one while every peer stayed is this worker's failure.
"""

from __future__ import annotations


class NotRetryable(Exception):
    """No retry can fix it (the config, the dataset or the resume checkpoint do not fit this
    job): the run ends with the reason and spends no failure budget."""


class MembershipChange(Exception):
    """The group must re-form (a stop was agreed, a newer group began, another rank failed and
    spends its own failure): the worker leaves for a new round and spends nothing."""
