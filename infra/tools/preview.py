"""`tensile preview --stack NAME`: run the program under the SDK's mocks in its own process (no
cloud, no CLI) and print the resource tree, counts by type and the cost range.

When the checkout has the policy pack (policies/), it runs it the way `pulumi preview
--policy-pack policies --policy-pack-config policies/config/<stack>.json` would and shows its result.

Exit codes: 0 previewed, 1 the program failed (a bug), 2 no such stack or a broken stack file,
3 previewed but a mandatory policy failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, TextIO

from infra import mocks
from infra.config.stack import REPO_ROOT, StackFileError, read_stack_config

EXIT_OK, EXIT_PROGRAM_ERROR, EXIT_BAD_STACK, EXIT_POLICY_VIOLATION = 0, 1, 2, 3


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def _requirement(spec: dict, key: str) -> list:
    for req in spec.get("template", {}).get("spec", {}).get("requirements", []):
        if req.get("key") == key:
            return req.get("values", [])
    return []


# What to show for each type: the properties a reviewer checks first.
_KEY_PROPERTIES: dict[str, Callable[[dict], str]] = {
    "aws:ec2/vpc:Vpc": lambda i: f"cidr={i.get('cidrBlock')}",
    "aws:ec2/subnet:Subnet": lambda i: f"az={i.get('availabilityZone')} cidr={i.get('cidrBlock')}",
    "aws:ec2/vpcEndpoint:VpcEndpoint": lambda i: f"{i.get('vpcEndpointType')} {i.get('serviceName')}",
    "aws:eks/cluster:Cluster": lambda i: (
        f"version={i.get('version')} private={i.get('vpcConfig', {}).get('endpointPrivateAccess')} "
        f"publicCidrs={_join(i.get('vpcConfig', {}).get('publicAccessCidrs') or []) or 'none'}"),
    "aws:eks/nodeGroup:NodeGroup": lambda i: (
        f"{i.get('capacityType')} {_join(i.get('instanceTypes', []))} "
        f"min={i.get('scalingConfig', {}).get('minSize'):.0f} max={i.get('scalingConfig', {}).get('maxSize'):.0f}"),
    "aws:eks/addon:Addon": lambda i: f"{i.get('addonName')}@{i.get('addonVersion')}",
    "kubernetes:karpenter.sh/v1:NodePool": lambda i: (
        f"capacity={'>'.join(_requirement(i['spec'], 'karpenter.sh/capacity-type'))} "
        f"gpu={_join(_requirement(i['spec'], 'karpenter.k8s.aws/instance-gpu-name'))} "
        f"types={_join(_requirement(i['spec'], 'node.kubernetes.io/instance-type'))} "
        f"zones={_join(_requirement(i['spec'], 'topology.kubernetes.io/zone'))} "
        f"limit={i['spec'].get('limits', {}).get('nvidia.com/gpu')} GPUs"),
    "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass": lambda i: (
        f"imds={i['spec']['metadataOptions']['httpTokens']} hop={i['spec']['metadataOptions']['httpPutResponseHopLimit']:.0f} "
        f"root={i['spec']['blockDeviceMappings'][0]['ebs']['volumeSize']} "
        f"placement={i['spec'].get('placementGroupSelector', {}).get('name', '-')}"),
    "kubernetes:helm.sh/v3:Release": lambda i: f"{i.get('chart')}@{i.get('version')} skipCrds={i.get('skipCrds', False)}",
    "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition": lambda i: i.get("metadata", {}).get("name", ""),
    "aws:sqs/queue:Queue": lambda i: f"{i.get('name')} sse={i.get('sqsManagedSseEnabled')}",
    "aws:cloudwatch/eventRule:EventRule": lambda i: i.get("description", ""),
    "aws:s3/bucket:Bucket": lambda i: f"prefix={i.get('bucketPrefix')}",
    "aws:efs/fileSystem:FileSystem": lambda i: f"encrypted={i.get('encrypted')}",
    "aws:efs/mountTarget:MountTarget": lambda i: f"subnet={i.get('subnetId')}",
    "aws:budgets/budget:Budget": lambda i: (
        f"${float(i.get('limitAmount', 0)):,.0f}/month, {len(i.get('notifications', []))} notifications"),
}


def key_properties(resource: dict) -> str:
    describe = _KEY_PROPERTIES.get(resource["type"])
    if describe is None:
        return ""
    try:
        return describe(resource["inputs"])
    except (KeyError, TypeError, ValueError, IndexError):
        return "(properties not shown)"


def _children(run: mocks.ProgramRun) -> tuple[list[dict], dict[str, list[dict]]]:
    known = {r["urn"] for r in run.resources}
    children: dict[str, list[dict]] = {}
    roots = []
    for r in run.resources:
        if r["parent"] in known:
            children.setdefault(r["parent"], []).append(r)
        else:
            roots.append(r)
    order = lambda r: (r["type"], r["name"])  # noqa: E731 - a sort key
    for kids in children.values():
        kids.sort(key=order)
    return sorted(roots, key=order), children


def _cost_lines(run: mocks.ProgramRun) -> list[str]:
    c = run.outputs.get("costUsd")
    if not c:
        return ["cost: not exported"]
    return [
        f"at min (GPU pools scaled to zero): ${c['hourlyAtMin']:,.2f}/h  ${c['monthlyAtMin']:,.0f}/month",
        f"at max, all spot (assumed discounts): ${c['hourlyAtMaxAllSpot']:,.2f}/h  ${c['monthlyAtMaxAllSpot']:,.0f}/month",
        f"at max, all on-demand (hard ceiling): ${c['hourlyAtMaxAllOnDemand']:,.2f}/h  "
        f"${c['monthlyAtMaxAllOnDemand']:,.0f}/month",
        f"stack budget: ${c['monthlyBudget']:,.0f}/month",
    ]


def _policy_lines(run: mocks.ProgramRun, root: Path) -> tuple[list[str], int]:
    """The pack's result for this run (started as the CLI starts it, over gRPC) and how many
    mandatory findings it had; a one-line note when the checkout has no pack."""
    pack_dir = root / "policies"
    if not (pack_dir / "__main__.py").exists():
        return ["policy pack: none in this checkout"], 0
    try:
        from policies import runner
    except ImportError as e:
        return [f"policy pack: not run ({e.name} is missing: pip install -r policies/requirements.txt)"], 0
    try:
        with runner.Analyzer(pack_dir=pack_dir) as analyzer:
            result = analyzer.run(run.resources, runner.stack_config(run.stack, pack_dir / "config"))
            return runner.summary_lines(result, len(analyzer.info().policies)), len(result.mandatory)
    except runner.PackError as e:
        return [f"policy pack: not run ({e})"], 0


def _render_plain(run: mocks.ProgramRun, out: TextIO, root: Path, policy_lines: list[str] = ()) -> None:
    roots, children = _children(run)
    print(f"Stack {run.stack}: {len(run.resources)} resources (mocked, no cloud)", file=out)

    def walk(resource: dict, depth: int) -> None:
        props = key_properties(resource)
        print(f"{'  ' * depth}- {resource['type']}  {resource['name']}" + (f"  [{props}]" if props else ""), file=out)
        for child in children.get(resource["urn"], []):
            walk(child, depth + 1)

    for r in roots:
        walk(r, 1)
    print("\nCounts by type:", file=out)
    for typ, n in sorted(Counter(r["type"] for r in run.resources).items()):
        print(f"  {n:4d}  {typ}", file=out)
    print("\nCost range:", file=out)
    for line in _cost_lines(run):
        print(f"  {line}", file=out)
    for warning in run.warnings:
        print(f"warning: {warning}", file=out)
    for line in policy_lines:
        print(line, file=out)


def _render_rich(run: mocks.ProgramRun, out: TextIO, root: Path, policy_lines: list[str] = ()) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.tree import Tree

    console = Console(file=out, width=220)  # wide: a NodePool's line holds its whole plan
    roots, children = _children(run)
    tree = Tree(f"[bold]Stack {run.stack}[/]: {len(run.resources)} resources (mocked, no cloud)")

    def walk(resource: dict, node) -> None:
        props = key_properties(resource)
        label = f"[cyan]{escape(resource['type'])}[/]  {escape(resource['name'])}"
        branch = node.add(label + (f"  [dim]{escape(props)}[/]" if props else ""))
        for child in children.get(resource["urn"], []):
            walk(child, branch)

    for r in roots:
        walk(r, tree)
    console.print(tree)
    table = Table(title="Counts by type")
    table.add_column("count", justify="right")
    table.add_column("type")
    for typ, n in sorted(Counter(r["type"] for r in run.resources).items()):
        table.add_row(str(n), typ)
    console.print(table)
    console.print("[bold]Cost range[/]")
    for line in _cost_lines(run):
        console.print(f"  {escape(line)}")
    for warning in run.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    for line in policy_lines:
        console.print(escape(line))


def run_preview(stack: str, *, root: Path = REPO_ROOT, out: TextIO | None = None, err: TextIO | None = None,
                plain: bool | None = None) -> int:
    """Preview `stack` offline; returns the exit code. `plain` forces text without rich."""
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.perf_counter()
    try:
        read_stack_config(stack, root)
    except StackFileError as e:
        print(f"error: {e}", file=err)
        return EXIT_BAD_STACK
    run = mocks.run_isolated(stack, root=root)
    if run.error_kind == "config":
        print(f"error: Pulumi.{stack}.yaml has {len(run.problems)} problem(s):", file=err)
        for problem in run.problems:
            print(f"  - {problem}", file=err)
        return EXIT_BAD_STACK
    if run.error_kind == "stack-file":
        print(f"error: {run.error}", file=err)
        return EXIT_BAD_STACK
    if run.error:
        print(f"error: the program failed under mocks: {run.error}", file=err)
        return EXIT_PROGRAM_ERROR
    if plain is None:
        plain = importlib.util.find_spec("rich") is None
    policy_lines, mandatory = _policy_lines(run, root)
    (_render_plain if plain else _render_rich)(run, out, root, policy_lines)
    print(f"previewed in {time.perf_counter() - started:.1f} s (program {run.seconds:.1f} s)", file=out)
    return EXIT_POLICY_VIOLATION if mandatory else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tensile preview", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="stack name: Pulumi.<stack>.yaml at the repo root")
    parser.add_argument("--plain", action="store_true", help="plain text even if rich is installed")
    args = parser.parse_args(argv)
    return run_preview(args.stack, plain=True if args.plain else None)


if __name__ == "__main__":
    sys.exit(main())
