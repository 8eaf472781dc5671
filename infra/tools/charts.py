"""Render every Helm release a stack declares, offline, from the charts vendored in infra/charts/
with the exact values the program passes (the release's inputs as recorded under the mocks), so
the charts' objects are validated and ordered like the program's own (tools/graph.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from infra.config.stack import REPO_ROOT
from infra.tools.validation import normalise

PROGRAM_DIR = REPO_ROOT / "infra"
CHARTS_DIR = PROGRAM_DIR / "charts"
RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"


class ChartNotVendoredError(LookupError):
    """A release names a chart (or version) that infra/charts/ does not hold."""


@dataclass
class RenderedRelease:
    urn: str
    name: str
    namespace: str
    chart_dir: Path
    objects: list[dict] = field(default_factory=list)
    """Every object the chart's templates yield, in template order (NOTES.txt skipped)."""
    create_namespace: bool = False


def chart_directory(inputs: dict, charts_dir: Path = CHARTS_DIR, program_dir: Path = PROGRAM_DIR) -> Path:
    """The vendored directory of a release's chart. A local chart (a path, as the program passes
    for Kueue) is that directory, relative to the program's working directory (infra/); a
    repository or OCI chart is `<chart name>-<version>` under infra/charts/, and its Chart.yaml
    must carry the release's version (Karpenter's repository Chart.yaml is rewritten by its
    release job: infra/charts/README.md)."""
    chart, version = inputs["chart"], str(inputs.get("version", ""))
    if not chart.startswith("oci://") and "/" in chart:
        directory = (program_dir / chart).resolve()
        if not (directory / "Chart.yaml").is_file():
            raise ChartNotVendoredError(f"local chart {chart!r} has no Chart.yaml under {program_dir}")
        return directory
    name = chart.rstrip("/").rsplit("/", 1)[-1]
    directory = charts_dir / f"{name}-{version}"
    if not (directory / "Chart.yaml").is_file():
        raise ChartNotVendoredError(f"chart {chart} {version} is not vendored: expected {directory}")
    return directory


def _objects(rendered: dict[str, str]) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    objects = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.load_all(rendered[path], Loader=loader):
            if document:
                objects.append(document)
    return objects


def render_release(record: dict) -> RenderedRelease:
    """One release, rendered as Helm would install it (templates only: no chart's `crds/` is
    vendored, and every release that has one installs with `skipCrds`)."""
    import helm_python

    inputs = record["inputs"]
    directory = chart_directory(inputs)
    values = normalise(inputs.get("values") or {})
    with helm_python.Chart.load(str(directory)) as chart:
        rendered = chart.render(values, name=inputs["name"], namespace=inputs["namespace"])
    return RenderedRelease(urn=record["urn"], name=inputs["name"], namespace=inputs["namespace"], chart_dir=directory,
                           objects=_objects(rendered), create_namespace=bool(inputs.get("createNamespace")))


def render_releases(resources: Iterable[dict]) -> list[RenderedRelease]:
    return [render_release(r) for r in resources if r["type"] == RELEASE_TYPE]
