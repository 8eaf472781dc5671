"""Phases whose length follows the bytes (verifying the resume checkpoint at round start,
loading it, a synchronous save) run past the per-step collective timeout without the group
taking the wait for a lost peer. A version-2 checkpoint is hashed whole by rank 0 at round start;
a version-3 one by every rank, chunk by chunk, as it loads. The shared tier is slowed on purpose
(TENSILE_FAULT_TIER_BYTES_PER_S) so each phase takes several collective timeouts, and the
job declares that slowest rate (`elastic.min_tier_mb_per_s`), as a job on a slow network would.

Before phases had deadlines of their own, the round start of the ZeRO-2 case re-formed forever:
rank 0 hashed the checkpoint while rank 1 timed out in the broadcast, left as `peer-lost`, and
the next round hashed again."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from harness import run_nodes, step_losses, write_job

from tensile.data import generate_corpus
from tensile.elastic.ledger import RunLedger

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COLLECTIVE_TIMEOUT_S = 3
TIER_BYTES_PER_S = 40_000
"""The fixtures hold about 470 KB: verifying one takes ~12 s, four collective timeouts."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    spec = json.loads((FIXTURES / "format-v2" / "zero2-sharded-2workers" / "expected.json").read_text())["dataset"]
    url = str(tmp_path_factory.mktemp("phase-data") / "corpus")
    generate_corpus(url, **spec)
    return url


@pytest.mark.timeout(420)
@pytest.mark.parametrize("fixture", ["format-v2/zero2-sharded-2workers", "format-v2/zero0-deepspeed-1worker",
                                     "format-v3/zero2-sharded-2workers"])
def test_slow_phases_outlast_the_collective_timeout_without_a_regroup(tmp_path, corpus, fixture):
    expected = json.loads((FIXTURES / fixture / "expected.json").read_text())
    shutil.copytree(FIXTURES / fixture / "shared", tmp_path / "shared")
    sections = {**expected["job"]}
    sections["elastic"] = {"collective_timeout_s": COLLECTIVE_TIMEOUT_S, "min_tier_mb_per_s": 0.02,
                           "max_failures": 0}
    config = write_job(tmp_path, corpus, **sections)
    codes = run_nodes(tmp_path, config, ["node-a", "node-b"], timeout_s=300,
                      env={"TENSILE_FAULT_TIER_BYTES_PER_S": str(TIER_BYTES_PER_S)})
    assert codes == {"node-a": 0, "node-b": 0}
    events = RunLedger(tmp_path / "shared").events()
    starts = [e for e in events if e["event"] == "round-start"]
    assert [(e["resumed_step"], e["world_size"]) for e in starts] == [(6, 2)], "one round, no re-form"
    assert not [e for e in events if e["event"] in ("peer-lost", "hang", "failure")]
    losses = step_losses(tmp_path / "shared")
    for step, loss in expected["losses"].items():
        assert math.isclose(losses[int(step)], loss, rel_tol=1e-6), (step, losses[int(step)], loss)
