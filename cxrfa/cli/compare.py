"""``cxrfa compare``: the ablation's declared contrasts, tested and written as a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfa.cli._common import TrackingUriOpt, console, user_errors


@user_errors
def compare(
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="Experiment to compare (default: full).")
    ] = None,
    parent: Annotated[
        str | None,
        typer.Option(
            "--parent", help="The ablation's parent run id (default: the experiment's newest parent)."
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric", help="Headline metric of the answers (test/macro_auc, test/map, test/mse, ...)."
        ),
    ] = "test/macro_auc",
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Also test every cell against this one (an ad-hoc family); the per-label Δ reference "
            "(default: the matrix's first cell).",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for comparison.md/.csv/.tex/.html and the figures.")
    ] = Path("out/compare"),
    n_boot: Annotated[int, typer.Option("--n-boot", help="Patient resamples (shared by every run).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    no_log: Annotated[
        bool,
        typer.Option("--no-log", help="Write the report files only; leave the tracking store untouched."),
    ] = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Test the ablation's declared contrasts (the matrix's `contrasts:`), Holm within each family; report answers first.

    Compares the runs of one parent run (--parent, or the experiment's newest) on one data hash; intervals and tests
    combine the seed spread with the patient variance all seeds share. --baseline adds an ad-hoc family (every
    cell against it). Reads the store and never creates an experiment; logs the report on the parent unless --no-log.

    Example:  cxrfa compare --experiment full --baseline visual-clip
    """
    from cxrfa.compare import compare as build
    from cxrfa.compare import console_table, write_report
    from cxrfa.tracking import Tracker

    if parent is not None and experiment is None:
        experiment = Tracker(tracking_uri, "Default", create=False).experiment_of(parent)
    tracker = Tracker(tracking_uri, experiment or "full", create=False)
    comp = build(tracker, parent, metric, baseline, n_boot=n_boot, seed=seed, progress=True)
    paths = write_report(comp, out, None if no_log else tracker)
    console.print(console_table(comp))
    for warning in comp.methods.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(
        f"wrote {paths['html']} (and .md, .csv, .tex)"
        + (f"; logged on parent run {comp.parent_id}" if comp.parent_id and not no_log else "")
    )


def register(app: typer.Typer) -> None:
    app.command()(compare)
