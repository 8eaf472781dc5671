"""Run the Pulumi program offline under the SDK's mocks and record every resource it declares.

Mocks are process-global, so each stack runs in its own process: `run_isolated()` reads the
stack file, starts this file as a script (laid out as the language host lays out the program)
and reads back a JSON record. The engine of `tensile preview`, `make validate` and the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROGRAM_DIR = Path(__file__).resolve().parent
"""infra/, the program (`main: infra/`); its parent is the checkout whose stack files are read."""
PROJECT = "tensile"
MOCK_ACCOUNT_ID = "111122223333"


# ---------------------------------------------------------------------------------------------
# Mocks (imported lazily: the parent process of `run_isolated` never imports pulumi)
# ---------------------------------------------------------------------------------------------


def _fake_outputs(typ: str, name: str, inputs: dict, region: str) -> dict:
    """Outputs the real providers compute and the program reads (ARNs, endpoints, issuer)."""
    service = typ.split(":")[1].split("/")[0]
    outputs = {**inputs, "arn": f"arn:aws:{service}:{region}:{MOCK_ACCOUNT_ID}:{name}"}
    if typ == "aws:eks/cluster:Cluster":
        outputs.update({
            "endpoint": f"https://{name}.gr7.{region}.eks.amazonaws.com",
            "certificateAuthority": {"data": "bW9jay1jYQ=="},
            "identities": [{"oidcs": [{"issuer": f"https://oidc.eks.{region}.amazonaws.com/id/MOCK{name.upper()}"}]}],
            "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{name}-cluster"},
        })
    elif typ == "aws:sqs/queue:Queue":
        outputs["url"] = f"https://sqs.{region}.amazonaws.com/{MOCK_ACCOUNT_ID}/{inputs.get('name', name)}"
    elif typ == "aws:s3/bucket:Bucket":
        outputs["bucket"] = f"{inputs.get('bucketPrefix', name)}mock"
    elif typ == "aws:eks/nodeGroup:NodeGroup":
        # EKS names the group's Auto Scaling group itself: eks-<nodegroup>-<uuid>.
        outputs["resources"] = [{"autoscalingGroups": [{"name": f"eks-{name}-mock"}], "remoteAccessSecurityGroupId": ""}]
    elif typ == "aws:iam/role:Role":
        outputs.setdefault("name", name)
        outputs["arn"] = f"arn:aws:iam::{MOCK_ACCOUNT_ID}:role/{outputs['name']}"
    if "name" not in outputs and typ.startswith("aws:"):
        outputs["name"] = name
    return outputs


MOCK_ZONE_NUMBERS = {"a": 1, "b": 2, "c": 4, "d": 6, "e": 3, "f": 5}
"""This mock account's AZ ID number per zone letter: not in letter order, as in real accounts."""


def _zone_id_prefix(region: str) -> str:
    """`us-east-1` → `use1`, `ap-northeast-1` → `apne1`: how AWS writes a region in its AZ IDs."""
    short = {"north": "n", "south": "s", "east": "e", "west": "w", "central": "c", "northeast": "ne",
             "northwest": "nw", "southeast": "se", "southwest": "sw"}
    area, direction, number = region.split("-")
    return f"{area}{short.get(direction, direction[:2])}{number}"


def _availability_zones(region: str, filters: list) -> dict:
    zones = [(f"{region}{letter}", f"{_zone_id_prefix(region)}-az{n}") for letter, n in MOCK_ZONE_NUMBERS.items()]
    for f in filters:
        if f.get("name") == "zone-id":
            zones = [z for z in zones if z[1] in f.get("values", [])]
        elif f.get("name") == "zone-name":
            zones = [z for z in zones if z[0] in f.get("values", [])]
    zones.sort()  # by name, both lists in the same order, as the provider returns them
    return {"names": [z[0] for z in zones], "zoneIds": [z[1] for z in zones]}


def _make_mocks(region: str):
    import pulumi
    from pulumi.runtime.mocks import MockMonitor

    class TensileMocks(pulumi.runtime.Mocks):
        def call(self, args: pulumi.runtime.MockCallArgs):
            if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
                return {"accountId": MOCK_ACCOUNT_ID, "arn": f"arn:aws:iam::{MOCK_ACCOUNT_ID}:user/mock",
                        "userId": "MOCK"}
            if args.token == "aws:index/getRegion:getRegion":
                return {"region": region, "name": region}
            if args.token == "aws:index/getPartition:getPartition":
                return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
            if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                return _availability_zones(region, args.args.get("filters") or [])
            raise NotImplementedError(f"unmocked invoke {args.token}: add it to infra/mocks.py")

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            if not args.custom:
                return f"{args.name}-id", {}
            return f"{args.name}-id", _fake_outputs(args.typ, args.name, dict(args.inputs), region)

    class RecordingMonitor(MockMonitor):
        """Keeps what the engine would see for each registration: type, name, parent, inputs."""

        def __init__(self, mocks):
            super().__init__(mocks)
            self.records: list[dict] = []
            self.component_outputs: dict[str, dict] = {}

        def RegisterResource(self, request):
            from pulumi.runtime import rpc

            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                inputs = rpc.deserialize_properties(request.object)
                self.records.append({
                    "urn": response.urn, "type": request.type, "name": request.name,
                    "parent": request.parent or None, "custom": bool(request.custom),
                    "provider": request.provider or None, "dependencies": list(request.dependencies),
                    # How the policy pack joins resources (issue 7): by URN, never by ID.
                    "property_dependencies": {k: list(v.urns) for k, v in request.propertyDependencies.items()},
                    "ignore_changes": list(request.ignoreChanges),
                    "retain_on_delete": bool(request.retainOnDelete),
                    # How a replacement would go (a Job turned elastic is replaced, deleted first).
                    "replace_on_changes": list(request.replaceOnChanges),
                    "delete_before_replace": bool(request.deleteBeforeReplace),
                    "protect": bool(request.protect),
                    # The URNs this resource was known by before (a rename with an alias is no
                    # replacement): what the engine would match against its state.
                    "aliases": [self._alias_urn(request, alias) for alias in request.aliases],
                    "inputs": json.loads(json.dumps(inputs, default=str)),
                })
            return response

        def _alias_urn(self, request, alias) -> str:
            if alias.urn:
                return alias.urn
            spec = alias.spec
            parent = "" if spec.noParent else (spec.parentUrn or request.parent)
            return self.make_urn(parent, spec.type or request.type, spec.name or request.name)

        def RegisterResourceOutputs(self, request):
            from pulumi.runtime import rpc

            outputs = rpc.deserialize_properties(request.outputs)
            self.component_outputs[request.urn] = json.loads(json.dumps(outputs, default=str))
            return super().RegisterResourceOutputs(request)

    return TensileMocks(), RecordingMonitor


@dataclass
class ProgramRun:
    """What one mocked run of the program declared, or why it failed."""

    stack: str
    resources: list[dict] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    """The stack's exports, resolved."""
    component_outputs: dict = field(default_factory=dict)
    """What each component passed to register_outputs, resolved, by URN."""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    """"stack-file" (missing/unreadable), "config" (validation) or "program" (a bug)."""
    problems: list[str] = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    """How the child process was laid out (sys.path[0], cwd) before the program ran."""
    seconds: float = 0.0
    """Wall time of the run in its process (imports, program, mocks)."""
    cpu_seconds: float = 0.0
    """CPU time of the same: what the run costs, whatever else the machine is doing."""

    def of_type(self, typ: str) -> list[dict]:
        return [r for r in self.resources if r["type"] == typ]

    def named(self, name: str) -> dict:
        matches = [r for r in self.resources if r["name"] == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_in_this_process(stack: str, config: dict[str, str], program_dir: Path = PROGRAM_DIR) -> ProgramRun:
    """Run the program the way the language host does (runpy over infra/), under mocks. Only once
    per process: the mocks and the root stack are global."""
    import pulumi

    started = time.perf_counter()
    run = ProgramRun(stack=stack)
    region = config.get("aws:region") or "us-east-1"
    mocks, monitor_class = _make_mocks(region)
    monitor = monitor_class(mocks)
    collector = _Collect()
    logger = logging.getLogger(f"tensile.mocks.{stack}")
    logger.addHandler(collector)
    logger.propagate = False
    pulumi.runtime.set_all_config(dict(config))
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, logger=logger, monitor=monitor)

    captured: dict = {}

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(program_dir), run_name="__main__")
        root = pulumi.runtime.get_root_resource()
        return pulumi.Output.from_input(dict(root.outputs)).apply(captured.update)

    try:
        program()
    except Exception as e:  # noqa: BLE001 - reported to the caller with its type, not swallowed
        # Imported only now: the program itself must be what makes `infra` importable.
        from infra.config.types import ConfigError

        if isinstance(e, ConfigError):
            run.error, run.error_kind, run.problems = str(e), "config", [str(p) for p in e.problems]
        else:
            run.error, run.error_kind = f"{type(e).__name__}: {e}", "program"
    run.resources = monitor.records
    run.component_outputs = monitor.component_outputs
    run.outputs = json.loads(json.dumps(captured, default=str))
    run.warnings = collector.messages
    run.seconds = time.perf_counter() - started
    return run


def run_isolated(stack: str, *, config: dict[str, Any] | None = None, root: Path = PROGRAM_DIR.parent,
                 timeout: float = 120.0) -> ProgramRun:
    """Run the program for `stack` in a fresh Python process laid out as the language host lays
    it out for `main: infra/`: working directory infra/, only infra/ on sys.path (this file runs
    as a script), the program run from ".". `config` (fully qualified keys, decoded values)
    replaces the stack file, for tests of deliberately broken configs."""
    # Only this (parent) side reads the stack file: the child has nothing of infra importable
    # until the program itself makes it so, which is what its layout record proves.
    from infra.config.stack import StackFileError, read_stack_config

    if config is None:
        try:
            config, _secrets = read_stack_config(stack, root)
        except StackFileError as e:
            return ProgramRun(stack=stack, error=str(e), error_kind="stack-file")
    with tempfile.TemporaryDirectory(prefix="tensile-mocks-") as tmp:
        out = Path(tmp) / "run.json"
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        command = [sys.executable, str(Path(__file__).resolve()), "--stack", stack, "--out", str(out),
                   "--config-json", str(config_path), "--program-dir", "."]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PULUMI_CONFIG")}
        proc = subprocess.run(command, cwd=PROGRAM_DIR, env=env, capture_output=True, text=True, timeout=timeout)
        if not out.exists():
            return ProgramRun(stack=stack, error=f"mock run crashed (exit {proc.returncode}): {proc.stderr[-2000:]}",
                              error_kind="program")
        data = json.loads(out.read_text())
    return ProgramRun(**data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Tensile Pulumi program under mocks (one stack).")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config-json", required=True, type=Path,
                        help="the stack's config, fully qualified keys (run_isolated reads the stack file)")
    parser.add_argument("--program-dir", type=Path, default=PROGRAM_DIR)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    # Evidence that the program, not this runner, makes `infra.*` importable.
    layout = {"sys_path0": str(Path(sys.path[0]).resolve()), "cwd": str(Path.cwd()),
              "infra_imported_before_program": "infra" in sys.modules}
    raw = json.loads(args.config_json.read_text())
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    run = run_in_this_process(args.stack, config, args.program_dir)
    run.layout = layout
    run.seconds = time.perf_counter() - started
    run.cpu_seconds = time.process_time()
    args.out.write_text(json.dumps(asdict(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
