"""The `tensile` command line: training commands here; infra commands need the infra install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tensile: elastic DeepSpeed training on spot capacity.")
console = Console()
errors = Console(stderr=True)


def _load(config: Path):
    from tensile.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as e:
        errors.print(f"[bold red]config error[/]: {e}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def validate(config: Path = typer.Argument(..., help="Training config (YAML).")) -> None:
    """Check a training config; every problem is listed with its field and the fix."""
    cfg = _load(config)
    console.print(f"[green]ok[/]: {config} ({cfg.run.name}, ZeRO {cfg.zero.stage}, "
                  f"{cfg.elastic.min_workers}..{cfg.elastic.max_workers} workers)")


@app.command()
def plan(config: Path = typer.Argument(..., help="Training config (YAML)."),
         workers: Optional[int] = typer.Option(None, help="Show the plan for this count only.")) -> None:
    """List the worker counts the job accepts and the batch split for each."""
    from tensile.batching import BatchPlanError, plan_batch

    cfg = _load(config)
    elastic, batch = cfg.elastic, cfg.batch
    counts = [workers] if workers else range(elastic.min_workers, elastic.max_workers + 1)
    table = Table(title=f"global batch {batch.global_batch_size}, micro-batch sizes {batch.micro_batch_sizes}")
    for column in ("workers", "micro-batch", "accumulation", "samples per worker", "padded", "status"):
        table.add_column(column)
    for count in counts:
        if count < elastic.min_workers:
            table.add_row(str(count), "-", "-", "-", "-",
                          f"parks: waits for {elastic.min_workers - count} more worker(s)")
            continue
        if count > elastic.max_workers:
            table.add_row(str(count), "-", "-", "-", "-",
                          f"{count - elastic.max_workers} node(s) wait as spares")
            continue
        try:
            p = plan_batch(batch.global_batch_size, batch.micro_batch_sizes, count)
        except BatchPlanError as e:
            table.add_row(str(count), "-", "-", "-", "-", f"invalid: {e}")
            continue
        table.add_row(str(count), str(p.micro_batch_size), str(p.accumulation_steps),
                      ",".join(map(str, sorted(set(p.shares)))), str(p.padded_samples), "valid")
    console.print(table)


@app.command()
def launch(config: Path = typer.Option(..., help="Training config (YAML)."),
           node_id: str = typer.Option(..., help="This node's name in logs."),
           local_dir: Path = typer.Option(..., help="This node's own disk for checkpoint staging."),
           rdzv_endpoint: str = typer.Option(..., help="host:port of the rendezvous store."),
           nproc_per_node: int = typer.Option(1, help="Worker processes on this node.")) -> None:
    """Run this node's part of an elastic job under torchrun, until the run ends for it."""
    from tensile.launcher import NodeSpec, run_node

    cfg = _load(config)
    spec = NodeSpec(config_path=config.resolve(), node_id=node_id, local_dir=local_dir.resolve(),
                    rdzv_endpoint=rdzv_endpoint, nproc_per_node=nproc_per_node)
    outcome, code = run_node(cfg, spec)
    console.print(f"{node_id}: {outcome}")
    raise typer.Exit(code)


@app.command("rdzv-store")
def rdzv_store(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(29400)) -> None:
    """Host the rendezvous store (it must outlive every worker node)."""
    from tensile.rdzv_store import serve

    serve(host, port)


@app.command()
def demo(run_dir: Path = typer.Option(Path("runs/demo"), help="Where the run is left for inspection.")) -> None:
    """A local elastic job: 2 nodes, one lost mid-run, one added back, vs an uninterrupted run."""
    from tensile.demo import run_demo

    result = run_demo(run_dir.resolve(), progress=lambda m: console.print(f"[cyan]demo[/] {m}"))
    _print_demo(result)
    if not result["status"] or result["status"]["state"] != "completed":
        raise typer.Exit(1)


def _print_demo(result: dict) -> None:
    s, ref = result["summary"], result["reference"]
    console.rule("Tensile demo")
    console.print(f"steps done: {s.steps_done}   restarts: {s.restarts}   "
                  f"failures spent: {s.failures_spent}   status: {result['status']['state']}")
    timeline = " → ".join(f"{w} (from step {r})" for _, w, r in s.timeline)
    console.print(f"worker-count timeline: {timeline}")
    table = Table(title="disruptions")
    for column in ("event", "node", "at step", "resumed at", "steps lost", "recovery (s)", "workers after"):
        table.add_column(column)
    for e in s.events:
        table.add_row(e.kind, e.node, str(e.at_step), str(e.resumed_step), str(e.steps_lost),
                      f"{e.recovery_s:.1f}" if e.recovery_s is not None else "-", str(e.new_world_size))
    console.print(table)
    console.print(f"final loss: elastic {s.final_loss:.5f}   uninterrupted reference {ref.final_loss:.5f}   "
                  f"max per-step loss difference {result['max_loss_diff']:.2e}   "
                  f"max final weight difference {result['max_weight_diff']:.2e}")
    console.print(f"elastic run {result['elastic_s']:.0f} s, whole demo {result['total_s']:.0f} s; "
                  f"run directory: {result['run_dir']}")


@app.command()
def preview(stack: str = typer.Option(..., help="Stack name: Pulumi.<stack>.yaml.")) -> None:
    """Run the infra program offline under Pulumi's mocks and print what it would create."""
    repo_root = _repo_root()
    if repo_root is None:
        errors.print("[red]infra commands run from a Tensile checkout[/]: cd to the repository "
                     "(the directory with Pulumi.yaml) and run them there")
        raise typer.Exit(2)
    sys.path.insert(0, str(repo_root))
    try:
        from infra.preview import run_preview
    except ImportError as e:
        errors.print(f"[red]infra commands need the infra install[/] ({e.name} is missing): "
                     "run `make install-infra` (or `pip install -r infra/requirements.txt`) "
                     "from the repository root, and run tensile from there")
        raise typer.Exit(2) from None
    raise typer.Exit(run_preview(stack))


def _repo_root() -> Path | None:
    """The checkout holding Pulumi.yaml and infra/: the working directory or one above it."""
    for directory in (Path.cwd(), *Path.cwd().parents):
        if (directory / "Pulumi.yaml").exists() and (directory / "infra").is_dir():
            return directory
    return None


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
