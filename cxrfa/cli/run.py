"""Commands that run experiments: ``train`` (one cell) and ``ablate`` (a matrix)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrfa.cli._common import (
    ArrayParallelismOpt,
    BackbonesOpt,
    CpusPerTaskOpt,
    DataOpt,
    ExperimentOpt,
    GpusPerTaskOpt,
    LauncherOpt,
    MatrixOpt,
    NoCacheOpt,
    PartitionOpt,
    TimeOpt,
    TrackingUriOpt,
    WaitOpt,
    check_launcher,
    command_line,
    console,
    print_next,
    slurm_options,
    store_options,
    user_errors,
)
from cxrfa.errors import CxrfaError

if TYPE_CHECKING:
    from cxrfa.ablate import AblationSummary
    from cxrfa.config import AblationMatrix, ExternalSet, RunConfig
    from cxrfa.launch import SlurmOptions
    from cxrfa.tracking import Tracker

log = logging.getLogger("cxrfa")

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="CXRFA_STORAGE",
        show_envvar=True,
        help="Queue database shared by the workers: sqlite:///…/queue.db (default: with a local store's "
        "side files) or postgresql://….",
    ),
]
ExternalOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--external",
        metavar="[NAME=]MANIFEST",
        help="A further test set (manifest CSV) every run is evaluated on, over the labels it shares with "
        "the training data; logged as external/<NAME>/… (NAME defaults to the file's stem). Repeatable.",
    ),
]


def _overrides(data: Path | None, no_cache: bool) -> dict[str, object]:
    out: dict[str, object] = {}
    if data is not None:
        out["data.manifest"] = str(data.resolve())
    if no_cache:
        out["train.feature_cache"] = False
    return out


def _workers(value: str) -> int | None:
    """``--workers``: a positive count, or None for ``auto`` (:func:`cxrfa.tuning.queue.auto_layout`)."""
    if value.strip().lower() == "auto":
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise CxrfaError(f"--workers {value!r}: give a number of worker processes (1, 2, ...) or auto")
    return int(value)


def _auto_workers(
    runs: int, devices: tuple[str, ...], threads: int | None, worker: bool
) -> tuple[int, tuple[str, ...], int | None]:
    """``--workers auto``: (count, devices, threads) of the measured best layout, said in one log line."""
    if worker:  # one queue worker of a larger ablation: the machine's layout is its caller's choice
        return 1, devices, threads
    from cxrfa.tuning.queue import auto_layout

    layout = auto_layout(runs)
    log.info("workers auto: %d worker process(es), %s", layout.count, layout.reason)
    return layout.count, devices or layout.devices, threads or layout.threads


def _external(specs: list[str] | None) -> list[ExternalSet]:
    """``--external [NAME=]PATH`` values as external sets."""
    from cxrfa.config import ExternalSet, validate

    out = []
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        if not Path(path).is_file():
            raise CxrfaError(
                f"--external {spec!r}: no manifest file {path!r}; build one with `cxrfa data index`"
            )
        fields = {"path": str(Path(path).resolve()), **({"name": name} if name else {})}
        out.append(validate(ExternalSet, fields, f"--external {spec!r}"))
    return out


def _check_external(runs: list[RunConfig]) -> None:
    """Read every external test set the runs name (the matrix's and --external's), so a missing or broken
    manifest fails now, naming its file and row, not after the first run trained."""
    from cxrfa.data.manifest import read_manifest

    for path in sorted({e.path for cfg in runs for e in cfg.data.external}):
        if not Path(path).is_file():
            raise CxrfaError(f"external test set {path!r}: no such manifest file; fix its path")
        read_manifest(path)


def _fractions(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise CxrfaError(
            f"--fractions {text!r}: expected comma-separated fractions, e.g. 0.01,0.1,1"
        ) from None


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CxrfaError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        why = "no seed given" if not seeds else "a seed is listed twice"
        raise CxrfaError(f"--seeds {text!r}: {why}; expected distinct comma-separated integers, e.g. 0,1,2")
    return seeds


def _announce_demo(data: Path | None) -> None:
    if data is None:
        from cxrfa.io import cxrfa_home

        console.print(
            f"[bold]demo:[/] no --data given, so cxrfa synthesises chest X-rays and pretrains stand-in backbones on "
            f"them (once; cached under {cxrfa_home()})."
        )


@user_errors
def train(
    matrix: MatrixOpt = "full",
    cell: Annotated[str, typer.Option("--cell", "-c", help="Cell of the matrix to train.")] = "align-clip",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the run.")] = 0,
    data: DataOpt = None,
    backbones: BackbonesOpt = "demo",
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    no_feature_cache: NoCacheOpt = False,
    external: ExternalOpt = None,
) -> None:
    """Train one cell x seed of a matrix and log it as one complete MLflow run.

    Example:  cxrfa train --matrix full --cell align-clip --seed 0
    """
    from cxrfa.cell import checkpoint_dir, run_cell
    from cxrfa.config import expand, load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.preflight import check_checkpoints, preflight
    from cxrfa.tracking import Tracker
    from cxrfa.train import NonFiniteLoss

    m = load_matrix(matrix)
    (cfg,) = expand(
        m,
        load_backbones(backbones),
        seeds=[seed],
        overrides=_overrides(data, no_feature_cache),
        cells=[cell],
        external=_external(external),
    )
    preflight([cfg])  # missing weights, a bad manifest: exit 2 in seconds, before the store is opened
    _check_external([cfg])
    tracker = Tracker(tracking_uri, experiment or m.name)
    check_checkpoints([cfg], checkpoint_dir(tracker))  # a planted checkpoint: exit 2 before the run
    _announce_demo(data)
    try:
        result = run_cell(cfg, tracker)
    except NonFiniteLoss as err:
        console.print(f"[bold red]failed:[/] {cfg.cell}/seed={cfg.seed}: {err.reason} (run marked FAILED)")
        raise typer.Exit(1) from None
    console.print(
        f"[green]finished[/] {cfg.cell}/seed={cfg.seed} run {result.run_id}: "
        f"test/macro_auc {result.metrics.get('test/macro_auc', float('nan')):.4f}  test/map {result.metrics.get('test/map', float('nan')):.4f}"
    )
    store = store_options(tracking_uri)
    print_next(
        command_line("evaluate", run=result.run_id, tracking_uri=store["tracking_uri"]),
        command_line("ui", tracking_uri=store["tracking_uri"]),
    )


@user_errors
def ablate(
    matrix: MatrixOpt = "full",
    data: DataOpt = None,
    backbones: BackbonesOpt = "demo",
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="Comma-separated seeds replacing the matrix's, e.g. 0,1,2.")
    ] = None,
    cells: Annotated[str | None, typer.Option("--cells", help="Comma-separated subset of cells.")] = None,
    experiment: ExperimentOpt = None,
    tracking_uri: TrackingUriOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the expanded matrix (and what already finished) and exit."),
    ] = False,
    no_feature_cache: NoCacheOpt = False,
    tuned: Annotated[
        bool, typer.Option("--tuned", help="Apply tuned overlays from ablations/tuned/<matrix>/<cell>.yaml.")
    ] = False,
    explore: Annotated[
        str,
        typer.Option(
            "--explore",
            help="Exploration logged per text-branch cell: comma list of gap,similarity,umap; '' for none.",
        ),
    ] = "gap,similarity",
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            help="Worker processes on this machine (each its own device/threads): N, or auto = one per GPU, "
            "else one per core with one thread each (longest runs first).",
        ),
    ] = "auto",
    worker: Annotated[
        bool,
        typer.Option(
            "--worker", help="Join the ablation's queue as one worker (any machine sharing the stores)."
        ),
    ] = False,
    devices: Annotated[
        str | None, typer.Option("--devices", help="Device per worker, e.g. cuda:0,cuda:1 or cpu (cycled).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads per worker (default: 1 without a GPU, so results never depend on the layout; "
            "cores / workers with GPUs).",
        ),
    ] = None,
    storage: StorageOpt = None,
    fractions: Annotated[
        str | None,
        typer.Option(
            "--fractions",
            help="Label efficiency: run every cell at each share of the train patients, e.g. 0.01,0.1,1 "
            "(cells named <cell>@<fraction>; replaces the matrix's fractions).",
        ),
    ] = None,
    external: ExternalOpt = None,
    launcher: LauncherOpt = "local",
    partition: PartitionOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    time: TimeOpt = "4:00:00",
    array_parallelism: ArrayParallelismOpt = 256,
    wait: WaitOpt = False,
) -> None:
    """Run every cell x seed of an ablation matrix as MLflow child runs under one parent — resumably.

    Re-running the same command skips finished runs and re-runs unfinished ones (from their last epoch
    checkpoint). One failing cell never stops the others; the exit status is 1 if any failed. Any number of
    processes share the work through a queue, each cell x seed running exactly once: --workers N here, and the
    same command with --worker on other machines (with a shared --tracking-uri and --storage).

    Examples:
      cxrfa ablate --matrix full                     # the offline demo
      cxrfa ablate --matrix smoke --dry-run
      cxrfa ablate --matrix full --workers 2         # two processes on this machine
      cxrfa ablate --matrix full --data nih.csv --backbones real --workers 2 --devices cuda:0,cuda:1 \\
          --tracking-uri http://mlflow:5000 --storage postgresql://cxrfa@db/cxrfa   # on every GPU machine
      cxrfa ablate --matrix full --launcher slurm --partition gpu --gpus-per-task 1 --time 4:00:00 \
          --array-parallelism 8 --tracking-uri http://mlflow:5000 --storage postgresql://cxrfa@db/cxrfa
    """
    import os

    from rich.table import Table

    from cxrfa.ablate import Workers, plan
    from cxrfa.ablate import ablate as run_ablation
    from cxrfa.config import expand, load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tracking import Tracker
    from cxrfa.tuning.queue import cpu_threads, device_env

    count = _workers(workers)  # a typo fails before anything is read
    check_launcher(launcher, dry_run)
    m = load_matrix(matrix)
    chosen = [c.strip() for c in cells.split(",")] if cells else None
    extra_sets = _external(external)
    runs = expand(
        m,
        load_backbones(backbones),
        seeds=_seeds(seeds),
        overrides=_overrides(data, no_feature_cache),
        cells=chosen,
        fractions=_fractions(fractions),
        external=extra_sets,
    )
    if tuned:
        from cxrfa.tuning import apply_overlays

        runs = apply_overlays(m, runs)
    from cxrfa.preflight import check_checkpoints, preflight

    device_list = tuple(d.strip() for d in devices.split(",") if d.strip()) if devices else ()
    if not dry_run:
        preflight(runs)  # missing weights, a bad manifest: exit 2 in seconds, before the store is opened
        _check_external(runs)
    tracker = Tracker(tracking_uri, experiment or m.name)
    from cxrfa.cell import checkpoint_dir

    slurm = slurm_options(launcher, partition, gpus_per_task, cpus_per_task, time, array_parallelism, tracker)
    if dry_run:
        table = Table(title=f"matrix {m.name}: {len(runs)} runs (experiment {tracker.experiment})")
        for col in ("cell", "seed", "axes", "config hash", "finished run"):
            table.add_column(col)
        for item in plan(runs, tracker):
            axes = ", ".join(f"{k}={v}" for k, v in item.cfg.axes.items()) or "–"
            table.add_row(
                item.cfg.cell, str(item.cfg.seed), axes, item.cfg.config_hash(), item.finished_run or "–"
            )
        console.print(table)
        if slurm is not None:
            _print_sbatch(slurm, m.name, sum(item.finished_run is None for item in plan(runs, tracker)))
        return
    check_checkpoints(runs, checkpoint_dir(tracker))  # a planted checkpoint: exit 2 before any run
    if slurm is not None:  # the cluster's tasks are the workers: no local layout
        _announce_demo(data)
        _submit(m, runs, tracker, slurm, backbones, data, storage, explore, wait, tracking_uri)
        return
    if count is None:  # the layout is the first line a checked ablation logs (bad input stays one line)
        count, device_list, threads = _auto_workers(len(runs), device_list, threads, worker)
    _announce_demo(data)
    args = ["ablate", "--matrix", matrix, "--backbones", backbones, "--experiment", tracker.experiment]
    args += ["--explore", explore, *(["--data", str(data.resolve())] if data is not None else [])]
    args += [*(["--seeds", seeds] if seeds else []), *(["--cells", cells] if cells else [])]
    args += ["--no-feature-cache"] * no_feature_cache + ["--tuned"] * tuned
    args += [
        *(["--fractions", fractions] if fractions else []),
        # the same sets, paths made absolute: a worker's configs (and their hashes) equal this process's
        *(a for e in extra_sets for a in ("--external", f"{e.name}={e.path}" if e.name else e.path)),
    ]
    pool = Workers(
        count=1 if worker else count,
        devices=device_list,
        threads=threads or cpu_threads(count),
        storage=storage,
        args=tuple(args),
        env={"MLFLOW_TRACKING_URI": tracker.uri, **({"CXRFA_STORAGE": storage} if storage else {})},
        logs=checkpoint_dir(tracker).parent / "workers",
    )
    if worker and device_list:
        os.environ.update(device_env(device_list, 0))
    summary = run_ablation(
        m,
        runs,
        tracker,
        backbones=backbones,
        data=str(data) if data else None,
        explore=[e for e in explore.split(",") if e],
        progress=not worker,
        workers=pool,
        build=not worker,  # a worker builds only what its own cells find missing
    )
    if worker:
        console.print(
            f"worker done: ran {len(summary.ran_here)} of {len(summary.results)} runs "
            f"({len(summary.failed)} failed overall) in {summary.seconds:.0f} s",
            highlight=False,
        )
        raise typer.Exit(1 if summary.failed else 0)
    _report(summary, tracking_uri, tracker.experiment)


def _report(summary: AblationSummary, tracking_uri: str | None, experiment: str) -> None:
    """The ablation's table of runs and what to do next; exit status 1 if a cell failed."""
    from rich.table import Table

    table = Table(
        title=f"{summary.matrix}: {len(summary.results)} runs in {summary.seconds:.0f} s "
        f"(parent {summary.parent_id})"
    )
    for col in ("cell", "seed", "status", "test/macro_auc", "test/map", "run id / reason"):
        table.add_column(col)
    for r in summary.results:
        auc, ap = r.metrics.get("test/macro_auc"), r.metrics.get("test/map")
        shown = ["–" if v is None else f"{v:.4f}" for v in (auc, ap)]
        table.add_row(r.cfg.cell, str(r.cfg.seed), r.status, *shown, r.reason or r.run_id or "")
    console.print(table)
    store = store_options(tracking_uri, experiment)
    print_next(command_line("compare", **store), command_line("ui", tracking_uri=store["tracking_uri"]))
    if summary.failed:
        raise typer.Exit(1)


def _print_sbatch(slurm: SlurmOptions, name: str, tasks: int) -> None:
    """``--dry-run --launcher slurm``: the sbatch script of the array that would be submitted."""
    from cxrfa.launch import executor, sbatch_script

    console.print(f"[bold]sbatch script[/] of {tasks} task(s) (nothing submitted):", highlight=False)
    print(
        sbatch_script(executor(slurm, f"cxrfa-{name}", script_only=True), tasks)
    )  # plain, so it can be saved and read


def _submit(
    m: AblationMatrix,
    runs: list[RunConfig],
    tracker: Tracker,
    slurm: SlurmOptions,
    backbones: str,
    data: Path | None,
    storage: str | None,
    explore: str,
    wait: bool,
    tracking_uri: str | None,
) -> None:
    """``--launcher slurm``: submit the array, say where it and its logs are, and with ``--wait`` report."""
    from cxrfa.ablate import submit_to_slurm

    out = submit_to_slurm(
        m,
        runs,
        tracker,
        slurm,
        backbones=backbones,
        data=str(data) if data else None,
        storage=storage,
        explore=[e for e in explore.split(",") if e],
        wait=wait,
    )
    if out.array is None:
        console.print("nothing to submit: every unit is finished, running or queued", highlight=False)
    else:
        console.print(
            f"submitted Slurm job array {out.array}: {out.tasks} task(s); logs in {out.logs}/{out.array}_*/; "
            f"watch with `squeue -j {out.array}` or `cxrfa ui`",
            highlight=False,
        )
    if out.summary is not None:
        _report(out.summary, tracking_uri, tracker.experiment)


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(ablate)
