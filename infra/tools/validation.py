"""Validate every Kubernetes object a stack renders: built-in kinds with kubernetes-validate
(strict, at the stack's Kubernetes version), custom resources against the vendored CRD schemas,
and the CRDs' CEL rules (x-kubernetes-validations) with cel-python. A kind with no schema is an
error; a CEL rule the library cannot evaluate is listed, never passed silently.

    python -m infra.tools.validation --stack dev --out build/manifests/dev
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from infra import mocks
from infra.config.stack import REPO_ROOT

CRD_DIRS = tuple(REPO_ROOT / "infra" / "crds" / d for d in ("karpenter", "kueue", "prometheus-operator"))
NOT_OBJECTS = ("kubernetes:helm.sh/",)
"""Helm releases are not objects in the cluster's API; their charts' objects are rendered by
tools/charts.py, validated with `validate` and ordered by tools/graph.py (tests/infra/test_release_order.py)."""


# ---------------------------------------------------------------------------------------------
# From mocked resources to manifests
# ---------------------------------------------------------------------------------------------


def normalise(value: Any) -> Any:
    """Mocks hand every number back as a float; Kubernetes integers must be integers again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def api_version_of(type_token: str) -> tuple[str, str]:
    """`kubernetes:core/v1:Namespace` -> ("v1", "Namespace"); `kubernetes:apps/v1:Deployment`
    -> ("apps/v1", ...); custom resources keep their group."""
    _, group_version, kind = type_token.split(":")
    group, _, version = group_version.rpartition("/")
    return (version if group == "core" else f"{group}/{version}"), kind


def manifests_from_run(resources: Iterable[dict]) -> list[dict]:
    out = []
    for r in resources:
        if not r["type"].startswith("kubernetes:") or not r.get("custom") or r["type"].startswith(NOT_OBJECTS):
            continue
        if r["type"] == "pulumi:providers:kubernetes":
            continue
        api_version, kind = api_version_of(r["type"])
        body = normalise(dict(r["inputs"]))
        body.pop("apiVersion", None)
        body.pop("kind", None)
        out.append({"apiVersion": api_version, "kind": kind, **body})
    return out


def write_manifests(manifests: list[dict], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    paths = []
    for i, m in enumerate(manifests):
        meta = m.get("metadata", {})
        name = "-".join(filter(None, [meta.get("namespace"), meta.get("name")])) or "unnamed"
        path = directory / f"{i:03d}-{m['kind'].lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(m, sort_keys=False))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# CRD schemas and CEL
# ---------------------------------------------------------------------------------------------


def load_crd_schemas(directories: Iterable[Path] = CRD_DIRS) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, for every served version of every vendored CRD."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")):
            crd = yaml.load(path.read_text(), Loader=loader)
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def to_json_schema(schema: dict) -> dict:
    """Structural OpenAPI v3 (Kubernetes flavour) to JSON Schema, strict: properties not in the
    schema are refused unless the schema preserves unknown fields."""
    out: dict = {}
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "type" in schema:
        out["type"] = [schema["type"], "null"] if schema.get("nullable") else schema["type"]
    for key in ("enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern",
                "required", "minProperties", "maxProperties", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema:
            out[key] = schema[key]
    if "properties" in schema:
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = to_json_schema(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [to_json_schema(s) for s in schema[key]]
    if "not" in schema:
        out["not"] = to_json_schema(schema["not"])
    return out


def _kubernetes_cel_functions() -> dict:
    """The few functions of Kubernetes' CEL extension libraries (strings, regex, lists) that
    the vendored CRDs use and cel-python lacks, with Kubernetes' semantics (`find` returns ""
    when nothing matches). Anything else a rule calls stays unevaluated and is listed."""
    import re

    from celpy import celtypes

    def split(text, separator):
        return celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(separator))])

    def find(text, pattern):
        match = re.search(str(pattern), str(text))
        return celtypes.StringType(match.group(0) if match else "")

    def find_all(text, pattern):
        return celtypes.ListType([celtypes.StringType(m.group(0)) for m in re.finditer(str(pattern), str(text))])

    def join(items, separator=celtypes.StringType("")):
        return celtypes.StringType(str(separator).join(str(i) for i in items))

    return {"split": split, "find": find, "findAll": find_all, "join": join,
            "lowerAscii": lambda t: celtypes.StringType(str(t).lower()),
            "upperAscii": lambda t: celtypes.StringType(str(t).upper())}


@dataclass(frozen=True, slots=True)
class CelRule:
    kind: str
    path: str
    rule: str


@dataclass
class CelOutcome:
    evaluated: int = 0
    failed: list[tuple[CelRule, str]] = field(default_factory=list)
    unevaluated: dict[CelRule, str] = field(default_factory=dict)
    """Rules cel-python could not evaluate, with the reason: listed, never passed silently."""
    transition: set[CelRule] = field(default_factory=set)
    """Rules on `oldSelf` apply to updates only; on create there is nothing to compare."""


def _cel_rules(kind: str, schema: dict, value: Any, path: str, outcome: CelOutcome) -> None:
    import celpy

    for rule_spec in schema.get("x-kubernetes-validations", []):
        rule = CelRule(kind, path or "<root>", rule_spec["rule"])
        if "oldSelf" in rule.rule:
            outcome.transition.add(rule)
            continue
        try:
            env = celpy.Environment()
            program = env.program(env.compile(rule.rule), functions=_kubernetes_cel_functions())
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # noqa: BLE001 - any library gap is recorded as "not evaluated"
            outcome.unevaluated[rule] = f"{type(e).__name__}: {str(e)[:120]}"
            continue
        if isinstance(result, celpy.CELEvalError):
            outcome.unevaluated[rule] = f"CELEvalError: {str(result)[:120]}"
            continue
        outcome.evaluated += 1
        if not bool(result):
            outcome.failed.append((rule, rule_spec.get("message", "")))
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                _cel_rules(kind, sub, value[key], f"{path}.{key}", outcome)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not schema.get("properties"):
            for key, sub_value in value.items():
                _cel_rules(kind, extra, sub_value, f"{path}[*]", outcome)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _cel_rules(kind, schema["items"], item, f"{path}[]", outcome)


class AdmissionPolicyError(RuntimeError):
    """A ValidatingAdmissionPolicy expression cel-python cannot evaluate: the API server would
    apply the policy's failurePolicy; a test must not read it as "allowed"."""


def evaluate_admission_policy(policy: dict, obj: dict, *, namespace_object: dict | None = None,
                              operation: str = "CREATE") -> list[str]:
    """What the API server's CEL evaluation of a ValidatingAdmissionPolicy says about `obj`: the
    message of every failed validation (empty: admitted). Variables are evaluated in order and
    seen as `variables.<name>`, as the API server composes them; matchConstraints are the
    caller's business (the policy is evaluated as if it matched)."""
    import celpy

    env = celpy.Environment()
    functions = _kubernetes_cel_functions()

    def run(expression: str, activation: dict):
        try:
            result = env.program(env.compile(expression), functions=functions).evaluate(activation)
        except Exception as e:  # noqa: BLE001 - any library gap is an error here, never a pass
            raise AdmissionPolicyError(f"{expression!r}: {type(e).__name__}: {e}") from e
        if isinstance(result, celpy.CELEvalError):
            raise AdmissionPolicyError(f"{expression!r}: {result}")
        return result

    activation = {"object": celpy.json_to_cel(obj), "oldObject": None,
                  "namespaceObject": celpy.json_to_cel(namespace_object) if namespace_object else None,
                  "request": celpy.json_to_cel({"operation": operation})}
    variables = celpy.celtypes.MapType({})
    activation["variables"] = variables
    for variable in policy["spec"].get("variables", []):
        variables[celpy.celtypes.StringType(variable["name"])] = run(variable["expression"], activation)
    refused = []
    for validation in policy["spec"]["validations"]:
        if not bool(run(validation["expression"], activation)):
            message = validation.get("message")
            if "messageExpression" in validation:
                message = str(run(validation["messageExpression"], activation))
            refused.append(message or validation["expression"])
    return refused


# ---------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    objects: int = 0
    builtin: int = 0
    custom: int = 0
    errors: list[str] = field(default_factory=list)
    cel: CelOutcome = field(default_factory=CelOutcome)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.cel.failed


def validate(manifests: list[dict], kubernetes_version: str, crd_schemas: dict | None = None) -> Report:
    import jsonschema
    import kubernetes_validate

    crd_schemas = crd_schemas if crd_schemas is not None else load_crd_schemas()
    version = kubernetes_version if kubernetes_version.count(".") == 2 else f"{kubernetes_version}.0"
    report = Report(objects=len(manifests))
    compiled: dict = {}
    for m in manifests:
        key = (m["apiVersion"], m["kind"])
        where = f"{m['kind']} {m.get('metadata', {}).get('namespace', '')}/{m.get('metadata', {}).get('name')}"
        if key in crd_schemas:
            report.custom += 1
            if key not in compiled:
                compiled[key] = jsonschema.Draft7Validator(to_json_schema(crd_schemas[key]))
            for error in compiled[key].iter_errors(m):
                report.errors.append(f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message[:200]}")
            _cel_rules(m["kind"], crd_schemas[key], m, "", report.cel)
            continue
        report.builtin += 1
        try:
            kubernetes_validate.validate(m, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            report.errors.append(f"{where}: no schema for {m['apiVersion']} {m['kind']} in Kubernetes {version} "
                                 "nor in the vendored CRDs")
        except kubernetes_validate.ValidationError as e:
            report.errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message[:200]}")
    return report


def render_stack(stack: str, *, examples: bool = False) -> tuple[list[dict], str]:
    """The stack's objects from a mocked run (own process) and its Kubernetes version; with
    `examples`, its example jobs enabled (what a team that turns one on deploys: the jobs and, for
    a scaled one, the scaler controller)."""
    config = None
    if examples:
        config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        config = {**config, "tensile:jobs": [dict(job, enabled=True) for job in config.get("tensile:jobs") or []]}
    run = mocks.run_isolated(stack, config=config)
    if run.error:
        raise RuntimeError(f"stack {stack} failed under mocks: {run.error}")
    cluster = next(r for r in run.resources if r["type"] == "aws:eks/cluster:Cluster")
    return manifests_from_run(run.resources), cluster["inputs"]["version"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a stack's Kubernetes objects and validate them.")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", type=Path, help="write each object as YAML here (for checkov)")
    parser.add_argument("--examples", action="store_true", help="with the stack file's example jobs enabled")
    args = parser.parse_args(argv)
    manifests, version = render_stack(args.stack, examples=args.examples)
    if args.out:
        write_manifests(manifests, args.out)
    report = validate(manifests, version)
    print(f"{args.stack}: {report.objects} objects ({report.builtin} built-in, {report.custom} custom) "
          f"at Kubernetes {version}; CEL rules evaluated {report.cel.evaluated}, "
          f"not evaluable {len(report.cel.unevaluated)}, transition-only {len(report.cel.transition)}")
    for rule, why in sorted(report.cel.unevaluated.items(), key=lambda kv: (kv[0].kind, kv[0].path)):
        print(f"  CEL not evaluated: {rule.kind} {rule.path}: {rule.rule!r} ({why})")
    for error in report.errors:
        print(f"  ERROR {error}")
    for rule, message in report.cel.failed:
        print(f"  CEL FAILED {rule.kind} {rule.path}: {rule.rule!r}: {message}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
