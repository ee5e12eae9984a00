"""What a study leaves behind: its parent MLflow run (best value, best values, plots) and the overlay file."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
import yaml
from optuna.trial import TrialState

from cxrfa.config import AblationMatrix, RunConfig, SearchSpace
from cxrfa.errors import CxrfaError
from cxrfa.tracking import (
    TAG_BEST_RUN,
    TAG_BEST_TRIAL,
    TAG_CELL,
    TAG_MATRIX,
    TAG_METRIC,
    TAG_PREFIX,
    TAG_PRUNER,
    TAG_SAMPLER,
    TAG_STORAGE,
    TAG_STUDY_PARENT,
    TAG_TUNED_CELL,
    TrackedRun,
    Tracker,
    redact,
)
from cxrfa.tuning.overlays import overlay_path, write_overlay
from cxrfa.tuning.workers import CONFIG, best_trial, count_states, trial_runs

if TYPE_CHECKING:
    from cxrfa.tuning.study import TuneResult, TuneSettings

log = logging.getLogger(__name__)

SEARCH_SPACE = f"{TAG_PREFIX}search_space"  # study attribute: the space the first trial ran with


def claim_study(
    study: optuna.Study, matrix: AblationMatrix, cfg: RunConfig, space: SearchSpace, where: str
) -> None:
    """Record what the study tunes; refuse to mix a different matrix, cell or metric into it."""
    mine = {TAG_MATRIX: matrix.name, TAG_CELL: cfg.cell, TAG_METRIC: space.metric}
    attrs = study.user_attrs
    for key, value in mine.items():
        if key in attrs and attrs[key] != value:
            raise CxrfaError(
                f"study {study.study_name!r} was created for {key.removeprefix(TAG_PREFIX)} {attrs[key]!r}, not {value!r}; "
                "pass another --study name"
            )
        if key not in attrs:
            study.set_user_attr(key, value)
    text = yaml.safe_dump(space.model_dump(mode="json"), sort_keys=True)
    if attrs.get(SEARCH_SPACE, text) != text:
        log.warning(
            "study %s: the search space in %s changed since the study began; earlier trials still count",
            study.study_name,
            where,
        )
    study.set_user_attr(SEARCH_SPACE, text)


def study_parent(
    tracker: Tracker, name: str, matrix: AblationMatrix, cfg: RunConfig, settings: TuneSettings, storage: str
) -> TrackedRun:
    """The study's parent run, shared by every worker (the oldest wins if two create one at once)."""
    key = f"tags.`{TAG_STUDY_PARENT}` = '{name}'"
    found = tracker.search(key)
    if not found:
        # Not `cxrfa.cell`: that tag marks cell runs, which `compare` gathers.
        tags = {
            TAG_STUDY_PARENT: name,
            TAG_MATRIX: matrix.name,
            TAG_TUNED_CELL: cfg.cell,
            TAG_STORAGE: storage,
            TAG_METRIC: matrix.tune.metric,
        }
        about = (
            f"Optuna study **{name}**: tunes cell `{cfg.cell}` of matrix `{matrix.name}` on `{matrix.tune.metric}` "
            f"(validation split; test never drives tuning). Each child run is one trial; the best values are in "
            f"the `best.*` tags and the overlay artifact."
        )
        mine = tracker.start(f"tune {name}", tags, description=about)
        found = tracker.search(key)
        if len(found) > 1 and found[-1].run_id != mine.run_id:  # search is newest first
            tracker.delete_run(mine.run_id)
        mine.log_text(
            yaml.safe_dump(matrix.tune.model_dump(mode="json"), sort_keys=False), "search_space.yaml"
        )
    parent = TrackedRun(tracker, tracker.search(key)[-1].run_id)
    parent.reopen()
    pruner = settings.pruner if isinstance(settings.pruner, str) else type(settings.pruner).__name__
    parent.set_tags({TAG_SAMPLER: settings.sampler, TAG_PRUNER: pruner})
    return parent


def finish_study(
    study: optuna.Study,
    result: TuneResult,
    matrix: AblationMatrix,
    cfg: RunConfig,
    parent: TrackedRun,
    settings: TuneSettings,
) -> None:
    """Best value and config on the result and the parent run; overlay file; Optuna plots."""
    result.counts = count_states(study)
    best = best_trial(study)
    parent.log_metrics({f"trials/{k.lower()}": v for k, v in result.counts.items() if k != "WAITING"})
    if best is not None:
        result.best_value, result.best_trial = float(best.value), best.number  # type: ignore[arg-type]
        result.best_config = dict(best.user_attrs.get(CONFIG, {}))
        result.overlay = overlay_path(matrix.name, cfg.cell, settings.overlay_root)
        header = [
            f"Tuned overlay for cell {cfg.cell!r} of matrix {matrix.name!r}, written by:",
            f"  {settings.command or _command(matrix, cfg, settings)}",
            f"Study {result.study_name} ({result.storage}): best {result.metric} = {result.best_value:.4f} "
            f"(trial {best.number}; {result.finished} finished, {result.counts['FAIL']} failed)",
            f"Use it with:  cxrfa ablate --matrix {matrix.name} --tuned",
        ]
        write_overlay(result.overlay, result.best_config, header)
        parent.log_metrics({f"best/{result.metric}": result.best_value, "best/trial": best.number})
        parent.set_tags(
            {
                TAG_BEST_TRIAL: str(best.number),
                **{f"best.{k}": repr(v) for k, v in result.best_config.items()},
            }
        )
        best_runs = trial_runs(parent.tracker, result.study_name, best.number, status="FINISHED")
        if best_runs:
            parent.set_tags({TAG_BEST_RUN: best_runs[0]})
        parent.log_artifact(result.overlay, "overlay")
    log_plots(study, parent)
    if result.finished >= settings.trials:
        parent.finish()
    else:
        parent.end("KILLED", f"{result.finished}/{settings.trials} trials finished")


def _command(matrix: AblationMatrix, cfg: RunConfig, settings: TuneSettings) -> str:
    parts = ["cxrfa tune", f"--matrix {matrix.name}", f"--cell {cfg.cell}", f"--trials {settings.trials}"]
    if settings.storage:
        parts.append(f"--storage {redact(settings.storage)}")
    return " ".join(parts)


def log_plots(study: optuna.Study, parent: TrackedRun) -> None:
    """Optimisation history, parameter importances (needs >= 2 complete trials) and parallel coordinates."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    plots: dict[str, Callable[[optuna.Study], Any]] = {"optimization_history": oplt.plot_optimization_history}
    if len(complete) >= 2:
        plots["param_importances"] = oplt.plot_param_importances
        plots["parallel_coordinate"] = oplt.plot_parallel_coordinate
    for name, plot in plots.items():
        try:
            # optuna's plots call plt.style.use("ggplot"), which would restyle every later figure of this
            # process (a pipeline's ablation runs, a test's panels): keep that inside the plot
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                axes = plot(study)
        except Exception as err:  # noqa: BLE001 - e.g. importances when every trial has the same params
            log.info("skipped the %s plot: %s", name, err)
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        parent.log_figure(figure, f"optuna/{name}.png")
        plt.close(figure)
