"""Bring your own model: a Hugging Face causal LM (built from a config in code) trains elastically,
checkpoints, and resumes at another worker count on the trajectory of an undisturbed run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from harness import SLOW_STEPS, Script, final_weights, rounds, run_nodes, step_losses, write_job

from tensile.config import load_config
from tensile.elastic.ledger import RunLedger

pytest.importorskip("transformers")

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "training" / "tensile" / "configs" / "hf-llama.yaml"
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def hf_job(run_dir: Path, dataset: str) -> Path:
    """The example config's model (shrunk to the test corpus) in the tiny test job, ZeRO-2."""
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text())["model"]
    model = {**example, "seq_len": 32, "factory_args": {**example["factory_args"], "hidden_size": 32,
                                                        "intermediate_size": 64, "num_hidden_layers": 2}}
    path = write_job(run_dir, dataset, run={"steps": 8}, zero={"stage": 2})
    config = yaml.safe_load(path.read_text())
    config["model"] = model  # the tiny job's default-model fields would be refused beside factory_args
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_example_config_is_valid():
    config = load_config(EXAMPLE_CONFIG)
    assert config.model.factory == "tensile.examples.hf_causal_lm:build"
    assert config.model.factory_args["architecture"] == "llama"


@pytest.mark.full  # 25 s; make test builds and trains the example in tests/training/test_model_factory.py
def test_a_hugging_face_model_resumes_2_to_1_workers_on_the_undisturbed_trajectory(tmp_path, dataset):
    reference = tmp_path / "reference"
    assert set(run_nodes(reference, hf_job(reference, dataset), ["node0", "node1"]).values()) == {0}

    run_dir = tmp_path / "rescaled"
    config = hf_job(run_dir, dataset)

    def stop_everyone(cluster):
        for node_id in list(cluster.nodes):
            cluster.terminate(node_id)

    def stepped(events):
        return any(e["event"] == "step" for e in events)

    codes = run_nodes(run_dir, config, ["node0", "node1"], env=SLOW_STEPS, driver=Script((stepped, stop_everyone)))
    assert set(codes.values()) == {143}, codes  # agreed stop, checkpoint, exit
    assert run_nodes(run_dir, config, ["node2"]) == {"node2": 0}

    shared, reference_shared = run_dir / "shared", reference / "shared"
    ledger = RunLedger(shared)
    assert [r["world_size"] for r in rounds(shared)] == [2, 1]
    assert [(e["from_world_size"], e["to_world_size"]) for e in ledger.events() if e["event"] == "reshard"] == [(2, 1)]
    losses, expected = step_losses(shared), step_losses(reference_shared)
    assert sorted(losses) == sorted(expected), "every step exactly once"
    worst = max(abs(losses[s] - expected[s]) / expected[s] for s in expected)
    weights, reference_weights = final_weights(shared), final_weights(reference_shared)
    assert any(".layers.1." in name for name in weights), sorted(weights)[:5]  # the Hugging Face model's own names
    worst_weight = max((weights[k] - reference_weights[k]).abs().max().item() for k in reference_weights)
    print(f"HF Llama ZeRO-2 2→1: max relative loss difference {worst:.2e}, max abs weight difference {worst_weight:.2e}")
    assert worst <= LOSS_RTOL and worst_weight <= WEIGHT_ATOL, (worst, worst_weight)
    assert losses[max(losses)] < losses[min(losses)]  # it learns
