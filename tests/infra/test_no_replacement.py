"""No change replaces a resource that holds data or identity (cluster, node groups, bucket, EFS,
its access points and mount targets, KMS keys, VPC, subnets, IAM roles, the OIDC provider,
access entries, pod identity associations) unless it is listed, with its migration, in
fixtures/migrations.yaml.

The running Jobs of each stack's example jobs (enabled) are checked the same way against
fixtures/no-replacement-<stack>-examples.json (a Job replaced is a run stopped and resumed).

fixtures/no-replacement-<stack>.json holds, per such resource, its URN and the inputs that force
replacement (no_replacement.FORCING_INPUTS), as first recorded from the code before issue 17:
it stands for what is deployed. Unlike the identity record (test_stack_identity.py, re-recorded
whenever a change means to alter the stacks), this record is NOT re-recorded to make a change
pass: re-recording would bless the very replacement it exists to catch. A change that must
replace something is listed in migrations.yaml (urn, change, what, steps); only once that
migration has been carried out on every deployed stack are the record and the entry updated
together:
    .venv/bin/python tests/infra/test_no_replacement.py --record-after-migration
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import no_replacement as nr  # noqa: E402

STACKS = ("dev", "prod")


def _findings(stack: str, run) -> list[nr.Replacement]:
    recorded = json.loads(nr.record_path(stack).read_text())
    current, aliases = nr.current_of(run.resources)
    return nr.replacements(stack, recorded, current, aliases)


@pytest.mark.parametrize("stack", STACKS)
def test_no_replacement_of_data_or_identity_unless_listed(stack, stack_runs):
    found = _findings(stack, stack_runs[stack])
    unlisted = nr.unlisted(found, nr.load_migrations())
    assert not unlisted, (f"{len(unlisted)} change(s) in stack {stack} would replace a resource that holds data "
                          "or identity; keep its URN (or add an alias) and its forcing inputs, or list it with its "
                          "migration in tests/infra/fixtures/migrations.yaml:\n"
                          + "\n".join(str(r) for r in unlisted[:40]))


def _example_findings(stack: str, example_runs) -> list[nr.Replacement]:
    """The stack with its example jobs enabled: their Jobs, against the record from before the scaler."""
    recorded = json.loads(nr.record_path(f"{stack}-examples").read_text())
    current, aliases = nr.current_of(example_runs[stack].resources, nr.JOB_FORCING_INPUTS)
    return nr.replacements(f"{stack}-examples", recorded, current, aliases)


@pytest.mark.parametrize("stack", STACKS)
def test_no_replacement_of_a_running_example_job_unless_listed(stack, example_runs):
    found = _example_findings(stack, example_runs)
    unlisted = nr.unlisted(found, nr.load_migrations())
    assert not unlisted, (f"{len(unlisted)} change(s) would replace a Job of stack {stack}'s examples, stopping its "
                          "run; list it with its migration in tests/infra/fixtures/migrations.yaml:\n"
                          + "\n".join(str(r) for r in unlisted))


def test_no_replacement_sees_a_job_turned_elastic(example_runs):
    """dev's example `demo` gained a scaler: its Job's elastic annotation is a replacement."""
    found = _example_findings("dev", example_runs)
    assert [(r.urn.rsplit("::", 1)[1], r.change) for r in found] == [
        ("job-sandbox-demo-job-workers", f"input:{nr.ELASTIC_ANNOTATION_PATH}")]


def test_no_replacement_listed_migrations_are_all_still_needed(stack_runs, example_runs):
    found = [r for stack in STACKS for r in _findings(stack, stack_runs[stack]) + _example_findings(stack, example_runs)]
    stale = nr.stale(found, nr.load_migrations(), STACKS + tuple(f"{s}-examples" for s in STACKS))
    assert not stale, "migrations.yaml lists changes that no longer happen; remove them:\n" + "\n".join(
        f"{m.stack}: {m.urn}: {m.change}" for m in stale)


def test_no_replacement_record_covers_every_kind_of_stateful_resource():
    recorded = {stack: json.loads(nr.record_path(stack).read_text()) for stack in STACKS}
    kinds = {r["type"] for record in recorded.values() for r in record.values()}
    assert kinds == set(nr.FORCING_INPUTS), f"never recorded: {set(nr.FORCING_INPUTS) - kinds}"
    examples = {r["type"] for s in STACKS for r in json.loads(nr.record_path(f"{s}-examples").read_text()).values()}
    assert examples == set(nr.JOB_FORCING_INPUTS)
    prod = recorded["prod"]
    assert sum(r["type"] == "aws:efs/accessPoint:AccessPoint" for r in prod.values()) == 2
    assert sum(r["type"] == "aws:ec2/subnet:Subnet" for r in prod.values()) == 6


def _tamper(run_resources: list[dict]) -> list[dict]:
    return json.loads(json.dumps(run_resources))


def test_no_replacement_check_sees_a_changed_forcing_input_a_gone_urn_and_honours_an_alias(stack_runs):
    """The check itself can fail: on a tampered copy of prod it reports a new access point uid and
    a subnet renamed without an alias, and accepts a subnet renamed with one."""
    recorded = nr.record_of(stack_runs["prod"].resources)
    resources = _tamper(stack_runs["prod"].resources)
    access_point = next(r for r in resources if r["type"] == "aws:efs/accessPoint:AccessPoint")
    access_point["inputs"]["posixUser"]["uid"] = 50_007.0
    subnets = [r for r in resources if r["type"] == "aws:ec2/subnet:Subnet"]
    renamed, aliased = subnets[0], subnets[1]
    renamed_from, aliased_from = renamed["urn"], aliased["urn"]
    renamed["urn"] += "-renamed"
    aliased["urn"] += "-renamed"
    aliased["aliases"] = [aliased_from]
    current, aliases = nr.current_of(resources)
    found = nr.replacements("prod", recorded, current, aliases)
    assert {(r.urn, r.change) for r in found} == {(access_point["urn"], "input:posixUser"), (renamed_from, "gone")}
    listed = [nr.Migration("prod", access_point["urn"], "input:posixUser", "test", ("step",))]
    assert [r.urn for r in nr.unlisted(found, listed)] == [renamed_from]
    assert nr.stale(found, listed, ("prod",)) == []
    assert nr.replacements("prod", recorded, nr.record_of(stack_runs["prod"].resources), {}) == []
    assert aliased_from not in {r.urn for r in found}


def test_no_replacement_check_sees_a_forcing_change_in_the_program(stack_runs):
    """Run end to end: dev with another VPC CIDR replaces the VPC, every subnet and mount target."""
    import yaml

    from infra import mocks

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "Pulumi.dev.yaml").read_text())["config"]
    config["tensile:network"] = {**config["tensile:network"], "cidr": "10.41.0.0/16"}
    run = mocks.run_isolated("dev", config=config)
    assert run.error is None, run.error
    changes = {(r.urn.rsplit("::", 1)[1], r.change) for r in _findings("dev", run)}
    assert ("network-vpc", "input:cidrBlock") in changes
    assert ("network-private-us-east-1a", "input:cidrBlock") in changes


def test_no_replacement_migrations_need_what_and_steps(tmp_path):
    path = tmp_path / "migrations.yaml"
    path.write_text("migrations:\n  - {stack: dev, urn: 'urn:x', change: gone, what: moved}\n")
    with pytest.raises(ValueError, match="steps"):
        nr.load_migrations(path)


def record_after_migration() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from infra.mocks import run_isolated

    for stack in STACKS:
        run = run_isolated(stack)
        if run.error:
            raise SystemExit(f"stack {stack} failed under mocks: {run.error}")
        record = nr.record_of(run.resources)
        nr.record_path(stack).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(record)} stateful resources of {stack} in {nr.record_path(stack)}")
        config = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text())["config"]
        jobs = [dict(job, enabled=True) for job in config.get("tensile:jobs") or []]
        examples = run_isolated(stack, config={**config, "tensile:jobs": jobs})
        if examples.error:
            raise SystemExit(f"stack {stack} with its example jobs failed under mocks: {examples.error}")
        record = nr.record_of(examples.resources, nr.JOB_FORCING_INPUTS)
        nr.record_path(f"{stack}-examples").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--record-after-migration"]:
    record_after_migration()
