"""The `tensile` command line: training commands here; infra commands need the infra install."""

from __future__ import annotations

import enum
import importlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tensile import contract

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tensile: elastic DeepSpeed training on spot capacity.")
console = Console()
errors = Console(stderr=True)


def _load(config: Path, overrides: dict | None = None):
    """The validated config; exits 2 listing every problem. Deprecated keys are noted on stderr."""
    from tensile.config import ConfigError, load_config

    notes: list[tuple[str, str]] = []
    try:
        cfg = load_config(config, overrides, notes=notes)
    except ConfigError as e:
        errors.print(f"[bold red]config error[/]: {e}", highlight=False)
        raise typer.Exit(2) from None
    for path, message in notes:
        errors.print(f"[yellow]note[/]: {config}: {path} {message}", highlight=False)
    return cfg


@app.command()
def validate(config: Path = typer.Argument(..., help="Training config (YAML).")) -> None:
    """Check a training config; every problem is listed with its field and the fix."""
    cfg = _load(config)
    elastic = cfg.elastic
    console.print(f"[green]ok[/]: {config} ({cfg.run.name}, ZeRO {cfg.zero.stage}, "
                  f"{elastic.min_nodes}..{elastic.max_nodes} node(s) × {elastic.processes_per_node} "
                  f"process(es) = world size {elastic.world_size(elastic.min_nodes)}..{elastic.max_world_size})")


@app.command()
def plan(config: Path = typer.Argument(..., help="Training config (YAML)."),
         nodes: Optional[int] = typer.Option(None, "--nodes", "--workers",
                                             help="Show the plan for this node count only (--workers: its old name).")) -> None:
    """List the node counts the job accepts, the world size (nodes × processes per node) and the
    batch split for each."""
    from tensile.batching import BatchPlanError, plan_batch

    cfg = _load(config)
    elastic, batch = cfg.elastic, cfg.batch
    counts = [nodes] if nodes else elastic.node_counts()
    table = Table(title=f"global batch {batch.global_batch_size}, micro-batch sizes {batch.micro_batch_sizes}, "
                        f"{elastic.processes_per_node} process(es) per node")
    for column in ("nodes", "world size", "micro-batch", "accumulation", "samples per process", "padded", "status"):
        table.add_column(column)
    for count in counts:
        world = str(elastic.world_size(count))
        if count < elastic.min_nodes:
            table.add_row(str(count), world, "-", "-", "-", "-",
                          f"parks: waits for {elastic.min_nodes - count} more node(s)")
            continue
        if count > elastic.max_nodes:
            table.add_row(str(count), world, "-", "-", "-", "-",
                          f"{count - elastic.max_nodes} node(s) wait as spares")
            continue
        try:
            p = plan_batch(batch.global_batch_size, batch.micro_batch_sizes, elastic.world_size(count))
        except BatchPlanError as e:
            table.add_row(str(count), world, "-", "-", "-", "-", f"invalid: {e}")
            continue
        table.add_row(str(count), world, str(p.micro_batch_size), str(p.accumulation_steps),
                      ",".join(map(str, sorted(set(p.shares)))), str(p.padded_samples), "valid")
    console.print(table)


@app.command()
def launch(config: Path = typer.Option(..., contract.LAUNCH_CONFIG, help="Training config (YAML)."),
           node_id: str = typer.Option(..., contract.LAUNCH_NODE_ID, help="This node's name in logs."),
           local_dir: Path = typer.Option(..., contract.LAUNCH_LOCAL_DIR, help="This node's own disk for checkpoint staging."),
           rdzv_endpoint: str = typer.Option(..., contract.LAUNCH_RDZV_ENDPOINT, help="host:port of the rendezvous store."),
           nproc_per_node: Optional[int] = typer.Option(
               None, contract.LAUNCH_NPROC_PER_NODE,
               help="Worker processes on this node (default: the config's elastic.processes_per_node, "
                    "which this overrides and is validated as).")) -> None:
    """Run this node's part of an elastic job under torchrun, until the run ends for it."""
    from tensile.elastic.launcher import NodeSpec, run_node

    cfg = _load(config, None if nproc_per_node is None else {"elastic.processes_per_node": nproc_per_node})
    spec = NodeSpec(config_path=config.resolve(), node_id=node_id, local_dir=local_dir.resolve(),
                    rdzv_endpoint=rdzv_endpoint, nproc_per_node=cfg.elastic.processes_per_node)
    outcome, code = run_node(cfg, spec)
    console.print(f"{node_id}: {outcome}")
    raise typer.Exit(code)


@app.command("rdzv-store")
def rdzv_store(host: str = typer.Option(contract.DEFAULT_RDZV_STORE_HOST, contract.RDZV_STORE_HOST),
               port: int = typer.Option(contract.DEFAULT_RDZV_PORT, contract.RDZV_STORE_PORT)) -> None:
    """Host the rendezvous store (it must outlive every worker node)."""
    from tensile.elastic.rendezvous import serve

    serve(host, port)


class DemoScenario(str, enum.Enum):
    market = "market"


@app.command()
def demo(run_dir: Optional[Path] = typer.Option(None, help="Where the run is left for inspection "
                                                          "[default: runs/demo, runs/demo-<scenario>]."),
         scenario: Optional[DemoScenario] = typer.Option(
             None, help="market: the scaler sizes the job against a scripted spot market (1 → 3, a price "
                        "spike, capacity gone and back), final weights checked against an undisturbed run.")) -> None:
    """A local elastic job: 2 nodes, one lost mid-run, one added back, vs an uninterrupted run."""
    if scenario is DemoScenario.market:
        _market_demo((run_dir or Path("runs/demo-market")).resolve())
        return
    from tensile.local.demo import run_demo

    result = run_demo((run_dir or Path("runs/demo")).resolve(), progress=lambda m: console.print(f"[cyan]demo[/] {m}"))
    _print_demo(result)
    if not result["status"] or result["status"]["state"] != "completed":
        raise typer.Exit(1)


@app.command()
def report(run: str = typer.Argument(..., help="The run: its directory, its ledger directory "
                                     "(checkpoint.ledger_dir), or a shared tier (a directory or s3://bucket/prefix)."),
           reference: Optional[str] = typer.Option(None, help="Another run whose loss curve is drawn beside it."),
           prices: Optional[Path] = typer.Option(None, help="YAML/JSON: usd_per_node_hour (or pools + pool), "
                                                 "processes_per_node; draws the cost over time."),
           stack: Optional[str] = typer.Option(None, help="Or the prices of a stack's pool (with --job: the "
                                               "pool and node type of that job in Pulumi.<stack>.yaml)."),
           job: Optional[str] = typer.Option(None, help="The stack's job (tensile:jobs, enabled or not) the run is."),
           capacity: Optional[str] = typer.Option(None, help="With --stack: spot or on-demand (default: the pool's)."),
           format: str = typer.Option("html", "--format", help="html (one self-contained page) or png (matplotlib)."),
           out: Optional[Path] = typer.Option(None, help="Where it goes (default: RUN/report.<format>).")) -> None:
    """A run as one page of plots: loss, world size and disruptions, replays, recovery, checkpoints, goodput, cost."""
    from tensile.report import ReportSourceError, load_prices, stack_prices, write_report

    if prices and stack:
        errors.print("[red]cannot report[/]: --prices and --stack both price the run: give one")
        raise typer.Exit(2)
    if bool(stack) != bool(job):
        errors.print("[red]cannot report[/]: --stack and --job go together (the job names the pool and node type)")
        raise typer.Exit(2)
    try:
        if stack:
            try:
                inputs = _infra("simulation_inputs")(stack, job_name=job)
            except ValueError as e:  # the stack's errors name the field and the fix
                raise ReportSourceError(str(e)) from e
            run_prices = stack_prices(inputs["pool"], processes_per_node=inputs["job"]["gpus_per_worker"],
                                      capacity=capacity)
        else:
            run_prices = load_prices(prices) if prices else None
        path = write_report(run, reference=reference, prices=run_prices, fmt=format, out=out)
    except ReportSourceError as e:
        errors.print(f"[red]cannot report[/]: {e}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"report: {path}")


def _market_demo(run_dir: Path) -> None:
    from tensile.local.scenario import run_market_scenario

    result = run_market_scenario(run_dir, progress=lambda m: console.print(f"[cyan]scaler[/] {m}", highlight=False))
    s = result["summary"]
    console.rule("Tensile demo: the scaler against a spot market")
    console.print(f"steps done: {s.steps_done}   status: {result['status']['state']}   failures spent: "
                  f"{result['failures_spent']}   node exit codes: {result['exit_codes']}")
    console.print("worker-count timeline: " + " → ".join(f"{w} (from step {r})" for _, w, r in s.timeline))
    console.print(_events_table(s.events, "each resize: the agreed stop and the round after it",
                                ("decision", "node", "at step", "resumed at", "steps lost", "first step after (s)",
                                 "world size after")))
    within = result["max_weight_diff"] <= result["weight_tolerance"]
    console.print(f"final weights vs the undisturbed run: max absolute difference {result['max_weight_diff']:.2e} "
                  f"({'within' if within else '[bold red]beyond[/]'} the tolerance {result['weight_tolerance']:.0e}, "
                  f"in {result['max_weight_diff_in']}); relative L2 {result['weight_rel_l2']:.2e}; "
                  f"max per-step loss difference {result['max_loss_diff']:.2e}", highlight=False)
    console.print(f"scenario {result['scenario_s']:.0f} s, whole demo {result['total_s']:.0f} s; run directory: "
                  f"{result['run_dir']}")
    lost = [e for e in s.events if e.steps_lost]
    if not result["status"] or result["status"]["state"] != "completed" or not within or lost:
        raise typer.Exit(1)


def _print_demo(result: dict) -> None:
    s, ref = result["summary"], result["reference"]
    console.rule("Tensile demo")
    console.print(f"steps done: {s.steps_done}   restarts: {s.restarts}   "
                  f"failures spent: {s.failures_spent}   status: {result['status']['state']}")
    timeline = " → ".join(f"{w} (from step {r})" for _, w, r in s.timeline)
    console.print(f"worker-count timeline: {timeline}")
    console.print(_events_table(s.events, "disruptions", ("event", "node", "at step", "resumed at", "steps lost",
                                                          "recovery (s)", "world size after")))
    console.print(f"final loss: elastic {s.final_loss:.5f}   uninterrupted reference {ref.final_loss:.5f}   "
                  f"max per-step loss difference {result['max_loss_diff']:.2e}")
    console.print(f"final weights vs reference: relative L2 difference {result['weight_rel_l2']:.2e}, "
                  f"max absolute {result['max_weight_diff']:.2e}")
    console.print(f"elastic run {result['elastic_s']:.0f} s, whole demo {result['total_s']:.0f} s; "
                  f"run directory: {result['run_dir']}")
    console.print(f"report of the run: {result['report']}")


def _events_table(events: list, title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for e in events:
        table.add_row(e.kind, e.node or "-", str(e.at_step), str(e.resumed_step), str(e.steps_lost),
                      f"{e.recovery_s:.1f}" if e.recovery_s is not None else "-", str(e.new_world_size))
    return table


INFRA_COMMANDS = {"run_preview": "infra.tools.preview", "team_add": "infra.tools.team_add",
                  "job_render": "infra.tools.job_render", "simulation_inputs": "infra.tools.simulation_inputs"}


def _infra(function_name: str):
    """An infra entry point: needs the checkout (infra/ beside Pulumi.yaml) and the infra install."""
    repo_root = _repo_root()
    if repo_root is None:
        errors.print("[red]infra commands run from a Tensile checkout[/]: cd to the repository "
                     "(the directory with Pulumi.yaml) and run them there")
        raise typer.Exit(2)
    try:  # an installed package (`make install-infra` puts the checkout's infra/ and policies/ on the path)
        module = importlib.import_module(INFRA_COMMANDS[function_name])
    except ImportError as e:
        errors.print(f"[red]infra commands need the infra install[/] ({e.name} is missing): "
                     "run `make install-infra` from the repository root")
        raise typer.Exit(2) from None
    return getattr(module, function_name)


@app.command()
def preview(stack: str = typer.Option(..., help="Stack name: Pulumi.<stack>.yaml.")) -> None:
    """Run the infra program offline under Pulumi's mocks, then the policy pack; print both."""
    raise typer.Exit(_infra("run_preview")(stack))


team_app = typer.Typer(no_args_is_help=True, help="Teams of a stack (Pulumi.<stack>.yaml).")
job_app = typer.Typer(no_args_is_help=True, help="Training runs on the cluster.")
@app.command()
def simulate(stack: str = typer.Option(..., help="Stack name: Pulumi.<stack>.yaml."),
             job: str = typer.Option(..., help="The job: a tensile:jobs entry (enabled or not) or the --job-file's."),
             trace: Optional[Path] = typer.Option(None, help="A spot-traces file (../shared/traces/...); default: "
                                                            "a generated trace of --band."),
             band: str = typer.Option("5-10%", help="Interruption band per month when no --trace: <5%, 5-10%, "
                                                    "10-15%, 15-20%, >20%."),
             seeds: int = typer.Option(20, min=1, help="Runs (trace offsets or generated traces) per scenario."),
             unwarned: float = typer.Option(0.1, min=0.0, max=1.0, help="Share of reclaims without the 2-min notice."),
             job_file: Optional[Path] = typer.Option(None, help="A YAML file with `job:` (a tensile:jobs entry) "
                                                                "and optionally `scaler:`."),
             costs: Optional[Path] = typer.Option(None, help="A run's shared directory: its ledger's measured costs."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Simulate a job on a stack's pools over spot traces: completion time, cost, goodput, replays."""
    from tensile.scaler.traces import TraceError
    from tensile.simulate.api import SimulationError
    from tensile.simulate.command import main as simulate_main

    module_inputs = _infra("simulation_inputs")
    try:
        inputs = module_inputs(stack, job_name=job, job_file=job_file)
        console.print(simulate_main(inputs, trace=trace, band=band, seeds=seeds, unwarned_fraction=unwarned,
                                    costs_run=costs, as_json=as_json), highlight=False, markup=False, soft_wrap=True)
    except (ValueError, TraceError, SimulationError) as e:  # the inputs' errors name the field and the fix
        errors.print(f"[red]cannot simulate[/]: {e}", highlight=False)
        raise typer.Exit(2) from None


app.add_typer(team_app, name="team")
app.add_typer(job_app, name="job")


@team_app.command("add")
def team_add(name: str = typer.Argument(..., help="Team name (its namespace)."),
             stack: str = typer.Option(..., help="Stack name: Pulumi.<stack>.yaml."),
             gpus: int = typer.Option(..., help="GPU quota."),
             budget: float = typer.Option(..., help="Monthly budget, USD."),
             gpu_family: list[str] = typer.Option(..., "--gpu-family",
                                                  help="GPU model (h100) or instance family (p5); repeatable."),
             member_role_arn: str = typer.Option(..., help="IAM role of the team's members.")) -> None:
    """Add a team to the stack file (validated; the file is left untouched on error)."""
    raise typer.Exit(_infra("team_add")(stack, name, gpus, budget, gpu_family, member_role_arn))


@job_app.command("render")
def job_render(name: str = typer.Argument(..., help="Run name."),
               stack: str = typer.Option(..., help="Stack name: Pulumi.<stack>.yaml."),
               team: str = typer.Option(..., help="Team whose queue admits the run."),
               config: str = typer.Option(..., help="Trainer config (relative to the repo root, or absolute)."),
               image: str = typer.Option(..., help="Training image."),
               bucket: str = typer.Option(..., help="Checkpoint bucket (pulumi stack output checkpointBucket)."),
               gpu_model: Optional[str] = typer.Option(None, help="Pin one GPU model."),
               gpus_per_worker: int = typer.Option(1, help="GPUs per worker pod."),
               emergency_checkpoint_seconds: int = typer.Option(60, help="Measured emergency-save time."),
               schedule: Optional[str] = typer.Option(None, help="Cron schedule (UTC): a CronJob of the run.")) -> None:
    """Print a training run's Kubernetes objects (for kubectl apply -f -)."""
    raise typer.Exit(_infra("job_render")(
        stack, name=name, team=team, training_config=config, image=image, bucket=bucket,
        gpu_model=gpu_model, gpus_per_worker=gpus_per_worker,
        emergency_checkpoint_seconds=emergency_checkpoint_seconds, schedule=schedule))


scaler_app = typer.Typer(no_args_is_help=True, help="The in-cluster scaler of elastic jobs (docs/design/scaler.md).")
app.add_typer(scaler_app, name="scaler")


@scaler_app.command("run")
def scaler_run(config: Path = typer.Option(..., "--config", help="The controller's config (JSON, schema version 1)."),
               metrics_host: str = typer.Option("0.0.0.0", help="Address the /metrics endpoint listens on."),
               api_server: Optional[str] = typer.Option(None, help="Kubernetes API URL (default: in-cluster, "
                                                                   "with the pod's service account)."),
               once: bool = typer.Option(False, "--once", help="One decision pass over every job, then exit.")) -> None:
    """Size every configured elastic Job by the policy core: grow and shrink its parallelism,
    suspend and resume its Kueue Workload. Exits 2 listing every problem of a bad config."""
    import logging
    import signal
    import threading

    from tensile.cluster.config import load_controller_config
    from tensile.config import ConfigError

    try:
        cfg = load_controller_config(config)
    except ConfigError as e:
        errors.print(f"[bold red]config error[/]: {e}", highlight=False)
        raise typer.Exit(2) from None
    try:
        from tensile.cluster.controller import ScalerController
        from tensile.cluster.kube import KubeApi
    except ImportError as e:
        errors.print(f"[red]the scaler needs the cluster extra[/] ({e.name} is missing): pip install 'training[cluster]'")
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    controller = ScalerController(cfg, KubeApi.at(api_server) if api_server else KubeApi.in_cluster())
    if once:
        controller.decide_all()
        return
    controller.metrics.serve(cfg.metrics_port, metrics_host)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    controller.run(stop)


checkpoint_app = typer.Typer(no_args_is_help=True, help="A run's checkpoints on its shared tier.")
app.add_typer(checkpoint_app, name="checkpoint")
SHARED = typer.Argument(..., help="The run's shared tier (checkpoint.shared_dir): a directory or s3://bucket/prefix.")
CHECKPOINT_ID = typer.Option(None, help="Checkpoint id (default: the resume point).")


def _checkpoint_errors(function, *args):
    from tensile.checkpoint import CheckpointError

    try:
        return function(*args)
    except CheckpointError as e:
        errors.print(f"[red]checkpoint error[/]: {e}", highlight=False)
        raise typer.Exit(1) from None


@checkpoint_app.command("ls")
def checkpoint_ls(shared_dir: str = SHARED,
                  verify: bool = typer.Option(False, help="Check every file's sha256 too."),
                  all_commits: bool = typer.Option(False, "--all", help="Include commits whose checkpoint retention deleted.")) -> None:
    """The commit log, newest first: lineage, steps, sizes, world size, stage, validity."""
    from tensile.checkpoint.tools import list_checkpoints

    rows = list_checkpoints(shared_dir, verify=verify)
    table = Table(title=f"checkpoints in {shared_dir}")
    for column in ("seq", "checkpoint", "step", "world size", "ZeRO", "size", "parent", "branch", "reason", "state"):
        table.add_column(column)
    for row in rows:
        if row.problem == "deleted by retention" and not all_commits:
            continue
        m = row.manifest
        state = row.problem or ("valid" if verify else "committed")
        if row.pinned:
            state += " (pinned)"
        table.add_row(str(row.seq), row.checkpoint_id, str(m.step) if m else "-", str(m.world_size) if m else "-",
                      str(m.zero_stage) if m else "-", f"{row.size_bytes / 1e6:.1f} MB",
                      (m.parent_id or "-") if m else "-", (m.branch or "-") if m else "-",
                      m.reason if m else "-", state)
    console.print(table)


@checkpoint_app.command("verify")
def checkpoint_verify(shared_dir: str = SHARED) -> None:
    """Check every committed checkpoint against its manifest; exit 1 if the resume point is bad."""
    from tensile.checkpoint import Catalog, open_tier
    from tensile.checkpoint.tools import list_checkpoints

    rows = list_checkpoints(shared_dir, verify=True)
    for row in rows:
        console.print(f"{row.checkpoint_id}: {row.problem or 'valid'}")
    point = _checkpoint_errors(Catalog(open_tier(shared_dir)).find_resume_point)
    if point.manifest is None:
        errors.print("[red]no valid checkpoint to resume from[/]")
        raise typer.Exit(1)
    console.print(f"a restart resumes from {point.manifest.checkpoint_id} (step {point.manifest.step})")


@checkpoint_app.command("export")
def checkpoint_export(shared_dir: str = SHARED,
                      out: Path = typer.Option(..., help="Output .safetensors file."),
                      checkpoint: Optional[str] = CHECKPOINT_ID) -> None:
    """Consolidated fp32 weights as safetensors, whatever the ZeRO stage and worker count."""
    from tensile.checkpoint.tools import export_weights

    manifest, count = _checkpoint_errors(export_weights, shared_dir, checkpoint, out)
    console.print(f"exported {count} tensors of {manifest.checkpoint_id} (step {manifest.step}) to {out}")


@checkpoint_app.command("reshard")
def checkpoint_reshard(shared_dir: str = SHARED,
                       world_size: int = typer.Option(..., help="The world size the job will resume at: "
                                                                     "nodes × elastic.processes_per_node."),
                       checkpoint: Optional[str] = CHECKPOINT_ID) -> None:
    """Prepare a checkpoint for another world size ahead of a planned resize."""
    from tensile.checkpoint.tools import reshard_ahead

    manifest, seconds = _checkpoint_errors(reshard_ahead, shared_dir, checkpoint, world_size)
    if seconds:
        console.print(f"{manifest.checkpoint_id}: universal layout ready for world size {world_size} ({seconds:.1f} s)")
    else:
        console.print(f"{manifest.checkpoint_id}: loads at world size {world_size} as it is")


@checkpoint_app.command("rollback")
def checkpoint_rollback(shared_dir: str = SHARED,
                        checkpoint: str = typer.Argument(..., help="The checkpoint id to resume from.")) -> None:
    """Pin an earlier checkpoint as the resume point; training continues from it on a new branch."""
    from tensile.checkpoint.tools import rollback

    manifest = _checkpoint_errors(rollback, shared_dir, checkpoint)
    console.print(f"pinned {manifest.checkpoint_id} (step {manifest.step}): the next start resumes from it; "
                  f"retention keeps it and its lineage")


data_app = typer.Typer(no_args_is_help=True, help="Token datasets: bring your own.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(src: Path = typer.Argument(..., help="Pre-tokenised input: .npy, a raw memmap, parquet or arrow "
                                            "file(s), a saved Hugging Face dataset, or a Megatron .bin/.idx."),
                 dest: str = typer.Argument(..., help="Where the dataset goes (a directory); the held-out split "
                                            "goes to DEST/heldout."),
                 seq_len: int = typer.Option(..., help="Tokens a sample trains on (model.max_seq_len or less)."),
                 format: Optional[str] = typer.Option(None, "--format", help="npy, raw, parquet, arrow, hf or "
                                                      "megatron (default: from the name)."),
                 dtype: Optional[str] = typer.Option(None, help="raw only: the memmap's element type (uint16, int32...)."),
                 token_column: str = typer.Option("input_ids", help="parquet/arrow/hf: the token-list column."),
                 mask_column: Optional[str] = typer.Option(None, help="parquet/arrow/hf: per-token loss flags "
                                                           "(nonzero: counts), or labels with --ignore-index."),
                 ignore_index: Optional[int] = typer.Option(None, help="A label value that masks its token (e.g. -100)."),
                 split: str = typer.Option("train", help="hf: the split of a saved DatasetDict."),
                 held_out: str = typer.Option("0", help="Samples held out for evaluation: a fraction (0.01) or a count (500)."),
                 eos_id: Optional[int] = typer.Option(None, help="Appended after each document (none: documents abut)."),
                 vocab_size: Optional[int] = typer.Option(None, help="The tokenizer's vocabulary (default: largest id + 1)."),
                 seed: int = typer.Option(0, help="Keys which samples are held out."),
                 samples_per_shard: Optional[int] = typer.Option(None, help="Default: about 64 MB of tokens a shard.")) -> None:
    """Convert pre-tokenised data into Tensile's shard format: packed samples, loss masks, a held-out split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tensile.data.prepare import HeldOut, prepare
    from tensile.data.sources import SourceError, SourceSpec, guess_format

    if dest.startswith("s3://"):
        errors.print("[red]prepare writes to a directory[/] (s3fs cannot be installed beside Tensile's botocore); "
                     f"write there, then upload it: aws s3 sync <directory> {dest}", highlight=False)
        raise typer.Exit(2)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                  TimeRemainingColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task({"scan": "scanning", "pack": "packing"}[phase], total=total)
            bar.update(tasks[phase], completed=done, total=total)
        try:
            spec = SourceSpec(path=src, format=format or guess_format(src), dtype=dtype, token_column=token_column,
                              mask_column=mask_column, ignore_index=ignore_index, split=split)
            result = prepare(spec, dest, seq_len=seq_len, vocab_size=vocab_size, eos_id=eos_id,
                             held_out=HeldOut.parse(held_out), seed=seed, samples_per_shard=samples_per_shard,
                             progress=progress)
        except (SourceError, ValueError) as e:
            errors.print(f"[red]cannot prepare {src}[/]: {e}", highlight=False)
            raise typer.Exit(2) from None
    console.print(f"[green]wrote[/] {result.url}: {result.samples} samples of {seq_len} + 1 tokens "
                  f"({result.documents} documents, {result.tokens} tokens, {result.dropped_tokens} left over), "
                  f"vocabulary {result.vocab_size}, loss masks {'yes' if result.loss_mask else 'no'}")
    if result.held_out_url:
        console.print(f"held out {result.held_out_samples} samples: {result.held_out_url}")


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
