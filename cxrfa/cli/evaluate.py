"""``cxrfa evaluate``: score a predictions CSV against a manifest split and write metrics, tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrfa.cli._common import TrackingUriOpt, user_errors

if TYPE_CHECKING:
    import pandas as pd

    from cxrfa.metrics import MetricsResult


def _read_predictions(path: Path) -> pd.DataFrame:
    """Read a predictions CSV, turning unreadable files into one-line user errors."""
    import pandas as pd

    from cxrfa.errors import CxrfaError

    try:
        return pd.read_csv(path, dtype={"path": str})
    except FileNotFoundError:
        raise CxrfaError(f"{path}: no such predictions file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CxrfaError(f"{path}: not a readable CSV ({str(err).strip().splitlines()[0]})") from None


@user_errors
def evaluate(
    predictions: Annotated[
        Path | None,
        typer.Option("--predictions", help="CSV with 'path' and one probability column per label."),
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest the predictions refer to.")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option("--run", help="Re-evaluate a logged MLflow run from its logged predictions instead."),
    ] = None,
    tracking_uri: TrackingUriOpt = None,
    split: Annotated[str, typer.Option("--split", help="Manifest split the predictions cover.")] = "test",
    val_predictions: Annotated[
        Path | None,
        typer.Option(
            "--val-predictions",
            help="Predictions on the val split; per-label F1-optimal thresholds "
            "are chosen on them (default: 0.5).",
        ),
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=0, help="Bootstrap resamples for the 95% CIs.")
    ] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for metrics.json, per_label.csv and plots (printed).")
    ] = Path("out/evaluate"),
) -> None:
    """Score predictions against a manifest split: AUROC/AP/F1, CIs, long-tail and subgroup metrics, plots.

    Examples:
      cxrfa evaluate --predictions test.csv --val-predictions val.csv --manifest m.csv --out eval/
      cxrfa evaluate --run 3f2a...                  # into out/evaluate
    """
    from cxrfa.errors import CxrfaError

    if run is not None:
        if predictions is not None or manifest is not None:
            raise CxrfaError("give either --run or --predictions with --manifest, not both")
        from cxrfa.postrun import evaluate_run
        from cxrfa.tracking import Tracker

        # reads the run by id: no experiment, folder or database is created for a mistyped store
        result = evaluate_run(Tracker(tracking_uri, None, create=False), run, out, n_boot=n_boot)
        split = "test"
    elif predictions is None or manifest is None:
        raise CxrfaError("give --predictions and --manifest (or --run RUN_ID)")
    else:
        result = _evaluate_files(predictions, manifest, out, split, val_predictions, n_boot, seed)
    _print(result, split)


def _evaluate_files(
    predictions: Path,
    manifest: Path,
    out: Path,
    split: str,
    val_predictions: Path | None,
    n_boot: int,
    seed: int,
) -> MetricsResult:
    from cxrfa.data.manifest import read_manifest
    from cxrfa.evaluate import evaluate_predictions

    man = read_manifest(manifest)
    pred = _read_predictions(predictions)
    val = _read_predictions(val_predictions) if val_predictions is not None else None
    return evaluate_predictions(
        pred,
        man,
        split,
        out,
        val_pred=val,
        n_boot=n_boot,
        seed=seed,
        pred_source=str(predictions),
        val_source=str(val_predictions),
    )


def _print(result: MetricsResult, split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from cxrfa.metrics import list_metrics

    s = result.scalars
    table = Table(title=f"{split} metrics ({len(result.y_true)} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for spec in list_metrics():  # the registry's headline metrics, as compare's report shows them
        key = spec.name
        if spec.headline and key in s:
            extra = ""
            if f"{key}_ci_low" in s:
                extra = f"  [{s[f'{key}_ci_low']:.3f}, {s[f'{key}_ci_high']:.3f}]"
            table.add_row(f"{key} {spec.arrow}", f"{s[key]:.4f}{extra}")
    table.add_row("thresholds", "val-chosen" if result.thresholds_from_val else "0.5")
    Console().print(table)  # stdout: the result; logs and errors go to stderr


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the app."""
    app.command("evaluate")(evaluate)
