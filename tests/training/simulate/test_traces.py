"""Spot traces: the generator's interruption bands, the reader, and a study over the real shared
traces (read from ../shared beside the checkout, never copied; skipped where it is absent)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tensile.scaler.traces import (INTERRUPTION_BANDS, SpotTrace, TraceError, generate_trace, interruptions,
                                   read_trace)
from tensile.simulate.api import SimJob, SimPool, TimeCosts
from tensile.simulate.study import TraceSource, study

SHARED_TRACES = Path(__file__).resolve().parents[3].parent / "shared" / "traces" / "skypilot-spot-traces"


@pytest.mark.parametrize("band", list(INTERRUPTION_BANDS))
def test_generate_trace_reclaims_at_its_bands_monthly_rate(band):
    # 20 slots over two years: ~480 instance-months, enough to tell 5%-wide bands apart
    trace = generate_trace(band, seed=11, nodes=20, duration_s=2 * 365 * 86400)
    reclaimed, held_months = interruptions(trace)
    monthly = 1 - math.exp(-reclaimed / held_months)  # the share of instances held a month that are reclaimed
    low, high = INTERRUPTION_BANDS[band]
    assert low <= monthly <= high, f"{band}: {reclaimed} reclaims over {held_months:.0f} instance-months = {monthly:.3f}"


def test_generate_trace_is_seeded_and_in_the_readers_format(tmp_path):
    one = generate_trace("10-15%", seed=4, nodes=4, duration_s=30 * 86400)
    assert one == generate_trace("10-15%", seed=4, nodes=4, duration_s=30 * 86400)
    assert one != generate_trace("10-15%", seed=5, nodes=4, duration_s=30 * 86400)
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(one.to_json()))
    back = read_trace(path)
    assert (back.tick_s, back.nodes_available) == (300.0, one.nodes_available)
    assert max(one.nodes_available) <= 4


def test_read_trace_names_a_file_not_in_the_format(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [1, 2]}))
    with pytest.raises(TraceError, match="not a spot-traces file"):
        read_trace(path)
    with pytest.raises(TraceError, match="unknown interruption band"):
        generate_trace("30%", seed=1, nodes=1, duration_s=3600)


def test_spot_trace_repeats_past_its_end():
    trace = SpotTrace(300.0, (1, 0, 2), "t")
    assert [trace.available_at(t) for t in (0, 299, 300, 600, 900, 1200)] == [1, 1, 0, 2, 1, 0]


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason=f"{SHARED_TRACES} absent (the data set is not shipped)")
def test_study_over_the_shared_4_node_preemption_traces():
    files = sorted((SHARED_TRACES / "preemption" / "4-node").rglob("*.json"))
    assert files, "the 4-node V100 preemption traces"
    job = SimJob(name="j", steps=20_000, min_nodes=1, max_nodes=4, processes_per_node=8, samples_per_step=512,
                 step_s_by_nodes={1: 6.0, 2: 3.1, 3: 2.1, 4: 1.6}, checkpoint_every_steps=200)
    pool = SimPool(name="h100", gpu_model="h100", instance_type="p5.48xlarge", on_demand_usd_per_node_hour=55.04,
                   spot_usd_per_node_hour=30.27)
    for path in files:
        trace = read_trace(path)
        assert trace.tick_s == 300 and max(trace.nodes_available) == 4
        began = time.perf_counter()
        result = study(job, pool, TimeCosts(), TraceSource(trace=trace), seeds=5, unwarned_fraction=0.1)
        elapsed = time.perf_counter() - began
        assert result.on_demand.completed == 5 and result.on_demand.on_demand_share == 1.0
        assert result.spot.cost_usd.median <= result.on_demand.cost_usd.median + 1e-6, path.name
        assert result.spot_no_fallback.completion_h.median >= result.spot.completion_h.median, path.name
        assert elapsed < 30, f"{path.name}: {elapsed:.1f} s"
