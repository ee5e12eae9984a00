"""``cxrfa tune``: an Optuna study over one cell's loss weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

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
    typed,
    user_errors,
)

if TYPE_CHECKING:
    from cxrfa.config import AblationMatrix, RunConfig
    from cxrfa.launch import SlurmOptions
    from cxrfa.tracking import Tracker
    from cxrfa.tuning import TuneSettings


@user_errors
def tune(
    cell: Annotated[
        str, typer.Option("--cell", "-c", help="Cell to tune (cell\\[axis=value] for a matrix with axes).")
    ],
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            "-n",
            min=1,
            help="Finished (complete + pruned) trials the study should hold in total.",
        ),
    ],
    matrix: MatrixOpt = "full",
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            envvar="CXRFA_STORAGE",
            show_envvar=True,
            help="Optuna storage: a journal file (default optuna.journal with the tracking store's side files, "
            "safe for many workers) or an SQLAlchemy URL (sqlite:///s.db, postgresql://…).",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (default <matrix>.<cell>).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=1, help="Stop starting trials after this many seconds.")
    ] = None,
    sampler: Annotated[Literal["tpe", "random", "cmaes"], typer.Option("--sampler", help="Sampler.")] = "tpe",
    pruner: Annotated[
        Literal["median", "hyperband", "none"],
        typer.Option("--pruner", help="Pruner on the per-epoch val metric."),
    ] = "median",
    pruner_startup: Annotated[
        int,
        typer.Option("--pruner-startup", min=0, help="Median pruner: trials finished before any is pruned."),
    ] = 2,
    n_jobs: Annotated[
        int, typer.Option("--n-jobs", min=1, help="Trials in parallel threads of this process.")
    ] = 1,
    data: DataOpt = None,
    backbones: BackbonesOpt = "demo",
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Training seed of every trial (default: the matrix's first seed)."),
    ] = None,
    sampler_seed: Annotated[
        int | None,
        typer.Option(
            "--sampler-seed",
            help="Seed the sampler (one worker only: workers with the same seed draw the same values).",
        ),
    ] = None,
    launcher: LauncherOpt = "local",
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="--launcher slurm: Optuna workers to submit (one array task each)."
        ),
    ] = 1,
    partition: PartitionOpt = None,
    gpus_per_task: GpusPerTaskOpt = None,
    cpus_per_task: CpusPerTaskOpt = None,
    time: TimeOpt = "4:00:00",
    array_parallelism: ArrayParallelismOpt = 256,
    wait: WaitOpt = False,
) -> None:
    """Tune one cell's loss weights (the matrix's tune: section) with Optuna; export the best as an overlay.

    Every trial is an MLflow run nested under the study's parent run; pruned and failed trials are recorded
    as such and the study goes on. Re-running the same command continues the study until it holds --trials
    finished trials; start the same command in several terminals (or machines sharing --storage) to run
    workers in parallel. The best values go to ablations/tuned/<matrix>/<cell>.yaml for `cxrfa ablate --tuned`.

    Examples:
      cxrfa tune --matrix smoke --cell align-clip --trials 8
      cxrfa tune --matrix full --cell align-clip --trials 50 --storage postgresql://user@db/optuna --n-jobs 2
      cxrfa tune --matrix full --cell align-clip --trials 50 --launcher slurm --workers 8 --gpus-per-task 1 \
          --storage postgresql://user@db/optuna --tracking-uri http://mlflow:5000 --wait
    """
    from cxrfa.cli.run import _announce_demo, _overrides
    from cxrfa.config import load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tracking import Tracker, redact
    from cxrfa.tuning import TuneSettings, check_space, open_storage, select_cell
    from cxrfa.tuning import tune as run_study

    if launcher == "slurm":  # an SQLite storage is refused whether or not a cluster answers
        from cxrfa.launch import check_shared_storage

        check_shared_storage(storage)
    check_launcher(launcher, dry_run=False)  # no Slurm: one line, before anything is opened
    m = load_matrix(matrix)
    cfg = select_cell(m, load_backbones(backbones), cell, seed, _overrides(data, False))
    check_space(m.tune, cfg, m.source or m.name)  # bad input fails before any store is created
    from cxrfa.preflight import check_checkpoints, preflight

    preflight([cfg])  # missing weights, a bad manifest: exit 2 in seconds, before any store is opened
    if storage is not None:
        open_storage(storage)
    tracker = Tracker(tracking_uri, experiment or m.name)
    settings = TuneSettings(
        trials=trials,
        study_name=study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        n_jobs=n_jobs,
        timeout=timeout,
        sampler_seed=sampler_seed,
        pruner_startup=pruner_startup,
        command=command_line(
            "tune",
            matrix=matrix,
            cell=cell,
            trials=trials,
            storage=redact(storage) if storage else None,
            study=study,
            timeout=timeout,
            sampler=sampler if sampler != "tpe" else None,
            pruner=pruner if pruner != "median" else None,
            pruner_startup=pruner_startup if pruner_startup != 2 else None,
            n_jobs=n_jobs if n_jobs != 1 else None,
            data=data,
            backbones=backbones if backbones != "demo" else None,
            experiment=experiment,
            tracking_uri=redact(tracking_uri) if tracking_uri else None,
            seed=seed,
            sampler_seed=sampler_seed,
        ),
    )
    from cxrfa.cell import checkpoint_dir

    check_checkpoints([cfg], checkpoint_dir(tracker))  # a planted checkpoint: exit 2 before any trial
    _announce_demo(data)
    slurm = slurm_options(launcher, partition, gpus_per_task, cpus_per_task, time, array_parallelism, tracker)
    if slurm is not None and not _on_slurm(m, cfg, tracker, settings, slurm, workers, wait):
        return
    result = run_study(m, cfg, tracker, settings)
    counts = result.counts
    console.print(
        f"study [bold]{result.study_name}[/] ({result.storage}): {result.finished}/{trials} finished "
        f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned), {counts['FAIL']} failed; this run: {result.ran} trial(s)",
        highlight=False,
    )
    if result.overlay is None:
        console.print(
            "[bold red]no complete trial[/]: nothing exported (see the cxrfa.failure tags of the trial runs)"
        )
        raise typer.Exit(1)
    console.print(
        f"best {result.metric} [bold]{result.best_value:.4f}[/] (trial {result.best_trial}) -> {result.overlay}"
    )
    for key, value in result.best_config.items():
        console.print(f"  {key}: {value!r}", highlight=False)
    store = store_options(tracking_uri, experiment)
    # the storage as typed (a journal path may be relative); the default journal is found from the store
    shown_storage = typed(storage, "CXRFA_STORAGE")
    shown_storage = redact(shown_storage) if shown_storage else None
    print_next(
        command_line("ablate", matrix=matrix, tuned=True, **store),
        command_line("dashboard", storage=shown_storage, tracking_uri=store["tracking_uri"]),
    )
    if result.finished < trials:
        raise typer.Exit(1)


def _on_slurm(
    m: AblationMatrix,
    cfg: RunConfig,
    tracker: Tracker,
    settings: TuneSettings,
    slurm: SlurmOptions,
    workers: int,
    wait: bool,
) -> bool:
    """Submit the study's workers; with ``--wait`` follow it until it holds ``--trials`` finished trials (then
    True: the caller reports it and exports the overlay as a local run would), else False."""
    from tqdm.auto import tqdm

    from cxrfa.claims import timeouts
    from cxrfa.launch import submit_study, wait_for
    from cxrfa.tuning import study_progress

    array, count = submit_study(m, cfg, tracker, settings, slurm, workers)
    console.print(
        f"submitted Slurm job array {array}: {count} Optuna worker(s); logs in {slurm.logs.resolve()}/{array}_*/; "
        f"watch with `squeue -j {array}` or `cxrfa dashboard`",
        highlight=False,
    )
    if not wait:
        return False
    name = settings.study_name or f"{m.name}.{cfg.cell}"
    bar = tqdm(total=settings.trials, desc=f"tune {name}", unit="trial", dynamic_ncols=True)

    def done() -> bool:
        bar.n = min(settings.trials, study_progress(name, settings.storage, tracker))
        bar.refresh()
        return bar.n >= settings.trials

    try:
        complete = wait_for(done, [array], timeouts().poll_s)
    finally:
        bar.close()
    if not complete:
        console.print(
            f"every task ended with {bar.n}/{settings.trials} trials finished; run the same command again",
            highlight=False,
        )
        raise typer.Exit(1)
    return True


def register(app: typer.Typer) -> None:
    app.command()(tune)
