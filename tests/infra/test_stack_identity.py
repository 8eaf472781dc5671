"""Every deployed resource keeps its identity: each resource's URN (type token, name, parent
chain), its inputs and its options, and each stack's exports, under the mocks, match the record
in fixtures/stack-identity-<stack>.json exactly. A rename, a new parent without an alias, or a
changed input is a diff here before it is a replacement in the cloud.

The record is rewritten only for a change that means to alter the deployed stacks:
    .venv/bin/python tests/infra/test_stack_identity.py --record
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STACKS = ("dev", "prod")


def identity(run) -> dict:
    """What the engine keys and diffs a stack by, keyed by URN (registration order is not identity)."""
    resources = {}
    for r in run.resources:
        resources[r["urn"]] = {
            "type": r["type"], "name": r["name"], "parent": r["parent"], "custom": r["custom"],
            "provider": r["provider"], "dependencies": sorted(r["dependencies"]),
            "property_dependencies": {k: sorted(v) for k, v in sorted(r["property_dependencies"].items())},
            "ignore_changes": sorted(r["ignore_changes"]), "retain_on_delete": r["retain_on_delete"],
            "protect": r["protect"],
            "inputs": r["inputs"],
        }
    return {"stack": run.stack, "resources": resources, "outputs": run.outputs}


def fixture_path(stack: str) -> Path:
    return FIXTURES / f"stack-identity-{stack}.json"


def _differences(recorded: dict, current: dict) -> list[str]:
    lines = []
    gone = sorted(set(recorded["resources"]) - set(current["resources"]))
    new = sorted(set(current["resources"]) - set(recorded["resources"]))
    lines += [f"gone (would be deleted): {u}" for u in gone]
    lines += [f"new (would be created): {u}" for u in new]
    for urn in sorted(set(recorded["resources"]) & set(current["resources"])):
        before, after = recorded["resources"][urn], current["resources"][urn]
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                lines.append(f"changed {key} of {urn}:\n    was {json.dumps(before.get(key))[:600]}\n"
                             f"    now {json.dumps(after.get(key))[:600]}")
    if recorded["outputs"] != current["outputs"]:
        lines.append(f"exports changed:\n    was {recorded['outputs']}\n    now {current['outputs']}")
    return lines


@pytest.mark.parametrize("stack", STACKS)
def test_stack_identity_matches_the_recorded_urns_inputs_and_exports(stack, stack_runs):
    recorded = json.loads(fixture_path(stack).read_text())
    current = json.loads(json.dumps(identity(stack_runs[stack])))
    differences = _differences(recorded, current)
    assert not differences, f"{len(differences)} difference(s) in stack {stack}:\n" + "\n".join(differences[:40])
    assert recorded == current


def test_stack_identity_comparison_sees_a_changed_parent_and_input(stack_runs):
    """The comparison itself can fail: a moved parent or an edited input is reported."""
    current = json.loads(json.dumps(identity(stack_runs["dev"])))
    tampered = json.loads(json.dumps(current))
    urn, resource = next((u, r) for u, r in tampered["resources"].items() if r["parent"])
    resource["parent"] = None
    resource["inputs"]["tensile-test"] = "changed"
    renamed = tampered["resources"].pop(urn)
    tampered["resources"][urn.replace("::", "::x", 1)] = renamed
    lines = _differences(current, tampered)
    assert any(line.startswith("gone") for line in lines) and any(line.startswith("new") for line in lines)
    assert _differences(current, current) == []


def record() -> None:
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from infra.mocks import run_isolated

    FIXTURES.mkdir(exist_ok=True)
    for stack in STACKS:
        run = run_isolated(stack)
        if run.error:
            raise SystemExit(f"stack {stack} failed under mocks: {run.error}")
        fixture_path(stack).write_text(json.dumps(identity(run), indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(run.resources)} resources of {stack} in {fixture_path(stack)}")


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    record()
