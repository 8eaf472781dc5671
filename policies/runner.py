"""Drive the pack the way the Pulumi CLI does, without the CLI: start it as the CLI's
`pulumi-analyzer-policy-python` shim does (`python -u -m pulumi.policy ENGINE_ADDRESS policies/`),
read the port it prints, and call the `pulumirpc.Analyzer` service over gRPC: `GetAnalyzerInfo`,
`Configure` (every policy's level and config over the schema defaults, as the CLI sends them),
`ConfigureStack`, `Analyze` per resource and `AnalyzeStack` once. Used by `tensile preview` and tests.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

PACK_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACK_DIR / "config"
LEVELS = {"advisory": 0, "mandatory": 1, "disabled": 2, "remediate": 3}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}


class PackError(RuntimeError):
    """The pack did not start, or its config does not fit its schema."""


@dataclass(frozen=True)
class Diagnostic:
    policy: str
    level: str
    message: str
    urn: str = ""


@dataclass
class PackResult:
    diagnostics: list[Diagnostic] = field(default_factory=list)
    not_applicable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, policy: str) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.policy == policy]

    @property
    def mandatory(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "mandatory"]

    @property
    def advisory(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "advisory"]


def stack_config(stack: str, directory: Path = CONFIG_DIR) -> dict:
    """The `--policy-pack-config` file for a stack (policies/config/<stack>.json), or {}."""
    path = directory / f"{stack}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class Analyzer:
    """A running pack process and a gRPC client for it. Use as a context manager."""

    def __init__(self, pack_dir: Path = PACK_DIR, python: str = sys.executable, start_timeout: float = 60.0):
        self.pack_dir = Path(pack_dir)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        # A file, not a pipe, for stderr: nobody reads it while the pack runs, and a full pipe would block it.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        # The CLI passes its engine's address; the pack only logs through it, so any address will do here.
        self.process = subprocess.Popen(
            [python, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(self.pack_dir)], cwd=self.pack_dir, env=env,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], start_timeout)
        line = self.process.stdout.readline().strip() if ready else ""
        if not line.isdigit():
            self.process.kill()
            self.process.wait(timeout=10)
            self._stderr.seek(0)
            raise PackError(f"policy pack did not print a port within {start_timeout:.0f} s (got {line!r}): "
                            f"{self._stderr.read()[-3000:]}")
        self.port = int(line)

        import grpc
        from pulumi.runtime.proto import analyzer_pb2_grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                             options=[("grpc.max_receive_message_length", 400 * 1024 * 1024)])
        grpc.channel_ready_future(self.channel).result(timeout=start_timeout)
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)
        self._info = None

    def __enter__(self) -> "Analyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.stdout.close()
        self._stderr.close()

    # -- the Analyzer service ------------------------------------------------------------------

    def info(self):
        if self._info is None:
            from google.protobuf import empty_pb2

            self._info = self.stub.GetAnalyzerInfo(empty_pb2.Empty())
        return self._info

    def plugin_info(self):
        from google.protobuf import empty_pb2

        return self.stub.GetPluginInfo(empty_pb2.Empty())

    def policy_config(self, config: Mapping[str, Any] | None = None) -> dict[str, dict]:
        """What the CLI sends for a `--policy-pack-config` document: for every policy its level
        (the file's, else `all`'s, else the policy's own) and its properties over the schema defaults."""
        from google.protobuf import json_format

        config = dict(config or {})
        unknown = sorted(set(config) - {p.name for p in self.info().policies} - {"all"})
        if unknown:
            raise PackError(f"policy pack config names unknown policies: {', '.join(unknown)}")
        everything = config.get("all")
        result = {}
        for policy in self.info().policies:
            entry = config.get(policy.name, {})
            entry = {"enforcementLevel": entry} if isinstance(entry, str) else dict(entry)
            level = entry.pop("enforcementLevel", None) or everything or LEVEL_NAMES[policy.enforcementLevel]
            schema = json_format.MessageToDict(policy.configSchema.properties) if policy.configSchema else {}
            undeclared = sorted(set(entry) - set(schema))
            if undeclared:
                raise PackError(f"{policy.name}: config {', '.join(undeclared)} not in its schema")
            properties = {k: v["default"] for k, v in schema.items() if "default" in v}
            properties.update(entry)
            result[policy.name] = {"enforcementLevel": level, "properties": properties}
        return result

    def configure(self, config: Mapping[str, Any] | None = None) -> None:
        from google.protobuf import struct_pb2
        from pulumi.runtime.proto import analyzer_pb2

        request = analyzer_pb2.ConfigureAnalyzerRequest()
        for name, entry in self.policy_config(config).items():
            properties = struct_pb2.Struct()
            properties.update(entry["properties"])
            request.policyConfig[name].CopyFrom(analyzer_pb2.PolicyConfig(
                enforcementLevel=LEVELS[entry["enforcementLevel"]], properties=properties))
        self.stub.Configure(request)

    def configure_stack(self, stack: str, project: str = "tensile", dry_run: bool = True) -> None:
        """What the CLI says about the stack before analysis (the Python SDK keeps only its tags)."""
        from pulumi.runtime.proto import analyzer_pb2

        self.stub.ConfigureStack(analyzer_pb2.AnalyzerStackConfigureRequest(
            stack=stack, project=project, organization="organization", dry_run=dry_run))

    def analyze(self, resource: Mapping[str, Any]):
        from pulumi.runtime.proto import analyzer_pb2

        return self.stub.Analyze(analyzer_pb2.AnalyzeRequest(
            type=resource["type"], properties=_struct(resource.get("inputs", {})), urn=resource["urn"],
            name=resource["name"]))

    def analyze_stack(self, resources: Iterable[Mapping[str, Any]]):
        from pulumi.runtime.proto import analyzer_pb2

        request = analyzer_pb2.AnalyzeStackRequest()
        for r in resources:
            message = analyzer_pb2.AnalyzerResource(
                type=r["type"], properties=_struct(r.get("inputs", {})), urn=r["urn"], name=r["name"],
                parent=r.get("parent") or "", dependencies=list(r.get("dependencies", [])))
            for prop, urns in (r.get("property_dependencies") or {}).items():
                message.propertyDependencies[prop].urns.extend(urns)
            request.resources.append(message)
        return self.stub.AnalyzeStack(request)

    # -- a whole stack -------------------------------------------------------------------------

    def run(self, resources: list[Mapping[str, Any]], config: Mapping[str, Any] | None = None,
            analyze_only: Iterable[str] | None = None) -> PackResult:
        """What `pulumi preview --policy-pack` asks of the pack for these resources: each resource
        before it is created (or only those in `analyze_only`, by URN), then the stack."""
        started = time.perf_counter()
        self.configure(config)
        if resources:
            self.configure_stack(resources[0]["urn"].split("::")[0].rsplit(":", 1)[-1])
        result = PackResult()
        only = None if analyze_only is None else set(analyze_only)
        responses = [self.analyze(r) for r in resources
                     if not r["type"].startswith("pulumi:providers:") and (only is None or r["urn"] in only)]
        responses.append(self.analyze_stack(resources))
        for response in responses:
            for d in response.diagnostics:
                result.diagnostics.append(Diagnostic(policy=d.policyName, level=LEVEL_NAMES[d.enforcementLevel],
                                                     message=d.message, urn=d.urn))
            result.not_applicable.extend((n.policy_name, n.reason) for n in response.not_applicable)
        result.seconds = time.perf_counter() - started
        return result


def _struct(values: Mapping[str, Any]):
    from google.protobuf import struct_pb2

    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(values, default=str)))
    return message


def summary_lines(result: PackResult, policy_count: int) -> list[str]:
    """How `tensile preview` shows the pack's result."""
    failing = sorted({d.policy for d in result.mandatory})
    lines = [f"policy pack tensile-policies: {policy_count} policies, {len(result.mandatory)} mandatory and "
             f"{len(result.advisory)} advisory finding(s) in {result.seconds:.1f} s"]
    for d in sorted(result.diagnostics, key=lambda d: (d.level != "mandatory", d.policy, d.urn)):
        # The SDK prefixes the policy's description (violations) or "can't run policy ... during
        # preview:" (unknowns); the rule's own message is what a reader needs.
        message = d.message.split("\n", 1)[-1].split(" during preview: ", 1)[-1]
        where = f" [{d.urn.rsplit('::', 1)[-1]}]" if d.urn else ""
        lines.append(f"  {d.level}: {d.policy}{where}: {message}")
    lines.append("policy result: " + (f"FAILED ({', '.join(failing)})" if failing else "passed every mandatory policy"))
    return lines
