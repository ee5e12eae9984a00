"""The study loop: trials as nested MLflow runs of :func:`cxrfa.cell.run_cell`, pruning, stop rules."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial

from cxrfa.cell import CellResult, StopRun, checkpoint_dir, run_cell
from cxrfa.config import AblationMatrix, RunConfig, SearchSpace
from cxrfa.data.features import EncodedSplits
from cxrfa.errors import CxrfaError
from cxrfa.tracking import (
    TAG_CONFIG_HASH,
    TAG_STUDY,
    TAG_TRIAL,
    TAG_TRIAL_CONFIG_HASH,
    TAG_TRIAL_STATE,
    TrackedRun,
    Tracker,
    run_link,
)
from cxrfa.train import NonFiniteLoss
from cxrfa.tuning.backends import build_pruner, build_sampler, open_storage
from cxrfa.tuning.report import claim_study, finish_study, study_parent
from cxrfa.tuning.space import apply_values, check_space, sample_values
from cxrfa.tuning.workers import (
    CONFIG,
    FAILURE,
    SURPLUS,
    best_trial,
    count_states,
    fail_stale_trials,
    heartbeat,
    holds_slot,
    trial_runs,
)

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"  # a trial's user attributes (shown by optuna-dashboard): its MLflow run
RUN_LINK_ATTR = "mlflow_run"


WAIT_S = 2.0  # poll interval while other workers hold the last open slots


@dataclass(frozen=True)
class TuneSettings:
    """How to run a study (everything but the matrix, the cell's config and the tracker)."""

    trials: int  # finished (COMPLETE + PRUNED) trials the study should hold in total
    study_name: str | None = None  # default "<matrix>.<cell>"
    storage: str | None = None  # journal file path or SQLAlchemy URL; None = optuna.journal beside the store
    sampler: str = "tpe"  # tpe | random | cmaes
    pruner: str | optuna.pruners.BasePruner = "median"  # median | hyperband | none, or any Optuna pruner
    n_jobs: int = 1  # trials run in parallel threads of this process
    timeout: float | None = None  # seconds this worker keeps starting trials
    sampler_seed: int | None = None  # None = fresh entropy (required for several workers to differ)
    pruner_startup: int = 2  # median pruner: trials that must finish before any is pruned
    pruner_warmup: int = 0  # median pruner: epochs before a trial may be pruned
    max_failures: int | None = None  # stop after this many failed trials in the study; None = max(10, trials)
    overlay_root: Path = Path("ablations")  # overlays go to <root>/tuned/<matrix>/<cell>.yaml
    command: str | None = None  # the command line recorded in the overlay header
    progress: bool = True


@dataclass
class TuneResult:
    """What a study holds after :func:`tune` returns."""

    study_name: str
    storage: str  # redacted
    metric: str
    counts: dict[str, int]  # COMPLETE / PRUNED / FAIL / RUNNING / WAITING
    best_value: float | None = None
    best_trial: int | None = None
    best_config: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    overlay: Path | None = None
    parent_id: str | None = None
    ran: int = 0  # trials this call ran (not counting surplus ones)

    @property
    def finished(self) -> int:
        """COMPLETE + PRUNED trials: what ``trials`` counts."""
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


# A trial needs only its validation curve: no test-set evaluation (metrics, plots, checkpoint), which also keeps
# test numbers out of the tuning runs altogether.
_VAL_ONLY: dict[str, Any] = {"evaluate": False}


class TrialPruned(StopRun):
    """Raised from the epoch callback when the pruner says stop; the MLflow run ends KILLED."""


class _Surplus(Exception):
    """This trial's slot is past the requested total: it is dropped before training."""


class _BadSample(Exception):
    """The sampled values make an invalid config (the search space allows an impossible combination)."""


class _PruneCallback:
    """Reports the tuned metric each epoch and stops the run when the pruner says so. Holds no trial."""

    def __init__(
        self, metric: str, report: Callable[[float, int], None], should_prune: Callable[[], bool]
    ) -> None:
        self.metric, self.report, self.should_prune = metric, report, should_prune

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        self.report(float(value), epoch)
        if self.should_prune():
            raise TrialPruned(f"pruned after epoch {epoch}: {self.metric} {value:.4f}")


def objective_value(result: CellResult, metric: str) -> float:
    """``metric`` at the epoch the run kept (selected on ``val`` by ``train.monitor``)."""
    fit = result.fit
    if fit is not None and 0 <= fit.best_epoch < len(fit.history) and metric in fit.history[fit.best_epoch]:
        return float(fit.history[fit.best_epoch][metric])
    return float(result.metrics.get("val/best_" + metric.removeprefix("val/"), float("nan")))


def tune(matrix: AblationMatrix, cfg: RunConfig, tracker: Tracker, settings: TuneSettings) -> TuneResult:
    """Run (or continue) the study of one cell until it holds ``settings.trials`` finished trials.

    Args:
        matrix: the matrix (its ``tune`` section is the search space and metric).
        cfg: the cell's resolved config (see :func:`select_cell`); sampled values are applied to it.
        tracker: MLflow store + experiment; the study gets a parent run, each trial a nested run.
        settings: storage, sampler, pruner, workers, limits.

    Returns:
        The study's counts, best value and config after this call; the best config is written as an overlay
        (``<overlay_root>/tuned/<matrix>/<cell>.yaml``) when the study has a complete trial.

    Raises:
        CxrfaError: empty or invalid search space, bad storage, a study of another matrix/cell/metric.
    """
    where = matrix.source or matrix.name
    space = matrix.tune
    check_space(space, cfg, where)
    if settings.trials < 1:
        raise CxrfaError(f"--trials {settings.trials}: need at least 1")
    name = settings.study_name or f"{matrix.name}.{cfg.cell}"
    storage, shown = open_storage(settings.storage, tracker)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our progress bar and log lines say what happens
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=build_sampler(settings.sampler, settings.sampler_seed, settings.trials),
        pruner=build_pruner(
            settings.pruner, cfg.train.epochs, settings.pruner_startup, settings.pruner_warmup
        ),
    )
    study.set_metric_names([space.metric])  # optuna-dashboard says "val/macro_auc", not "Objective 0"
    claim_study(study, matrix, cfg, space, where)
    parent = study_parent(tracker, name, matrix, cfg, settings, shown)
    result = TuneResult(name, shown, space.metric, count_states(study), parent_id=parent.run_id)
    max_failures = settings.max_failures if settings.max_failures is not None else max(10, settings.trials)
    objective = _Objective(
        study, cfg, space, tracker, parent.run_id, settings.trials, f"{where}: tune.params"
    )
    bar = _bar(settings, name, result.finished)
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    try:
        while True:
            fail_stale_trials(study, tracker)
            counts = count_states(study)
            finished, running = counts["COMPLETE"] + counts["PRUNED"], counts["RUNNING"]
            _update_bar(bar, study, finished)
            if finished >= settings.trials:
                break
            if counts["FAIL"] >= max_failures:
                log.error(
                    "study %s: %d failed trials (limit %d); stopping. See the cxrfa.failure tags of the trial runs",
                    name,
                    counts["FAIL"],
                    max_failures,
                )
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.info(
                    "study %s: --timeout reached with %d/%d trials finished", name, finished, settings.trials
                )
                break
            if finished + running >= settings.trials:
                time.sleep(WAIT_S)  # other workers hold the last slots; take over if one of them fails
                continue
            study.optimize(
                objective,
                timeout=left,
                n_jobs=settings.n_jobs,
                gc_after_trial=True,
                catch=(NonFiniteLoss, _Surplus, _BadSample),
                callbacks=[_StopRule(settings.trials, max_failures, bar)],
            )
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        parent.end(status, f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        if bar is not None:
            bar.close()
    result.ran = objective.ran
    finish_study(study, result, matrix, cfg, parent, settings)
    return result


class _Objective:
    """One trial: sample, apply, run the cell as a nested MLflow run, return the val metric."""

    def __init__(
        self,
        study: optuna.Study,
        cfg: RunConfig,
        space: SearchSpace,
        tracker: Tracker,
        parent_id: str,
        total: int,
        where: str,
    ) -> None:
        self.study, self.cfg, self.space, self.tracker = study, cfg, space, tracker
        self.parent_id, self.total, self.where = parent_id, total, where
        self.ran = 0
        self.features = EncodedSplits()  # every trial of this process reads each split's encoding once

    def __call__(self, trial: Trial) -> float:
        if not holds_slot(self.study, trial.number, self.total):
            trial.set_user_attr(SURPLUS, True)
            self.study.stop()
            raise _Surplus(f"trial {trial.number}: the study already holds {self.total} trials")
        values = sample_values(trial, self.space, self.cfg)
        trial.set_user_attr(CONFIG, values)
        try:
            cfg = apply_values(self.cfg, values, self.where)
        except CxrfaError as err:
            trial.set_user_attr(FAILURE, str(err))
            log.warning("trial %d: sampled values give an invalid config: %s", trial.number, err)
            raise _BadSample(str(err)) from None
        self.ran += 1
        with heartbeat(trial):
            return self._run(trial, cfg, values)

    def _run(self, trial: Trial, cfg: RunConfig, values: Mapping[str, Any]) -> float:
        name, metric = self.study.study_name, self.space.metric
        tags = {
            TAG_STUDY: name,
            TAG_TRIAL: str(trial.number),
            TAG_TRIAL_STATE: "RUNNING",
            TAG_TRIAL_CONFIG_HASH: cfg.config_hash(),
            # A trial is not a cell run: keep `ablate` resume (which matches config hashes) from reusing it.
            TAG_CONFIG_HASH: f"{cfg.config_hash()}.trial{trial.number}",
        }
        reporter = _PruneCallback(metric, trial.report, trial.should_prune)
        try:
            result = run_cell(
                cfg,
                self.tracker,
                parent_id=self.parent_id,
                callbacks=[reporter],
                extra_tags=tags,
                run_name=f"{cfg.cell}/trial={trial.number}",
                explore=(),
                progress=False,
                features=self.features,
                **_VAL_ONLY,
            )
        except TrialPruned as stop:
            self._close(trial, cfg, "PRUNED", values)
            log.info("trial %d %s", trial.number, stop.reason)
            raise optuna.TrialPruned(stop.reason) from None
        except NonFiniteLoss as err:
            trial.set_user_attr(FAILURE, err.reason)
            self._close(trial, cfg, "FAIL", values)
            log.warning("trial %d failed: %s", trial.number, err.reason)
            raise
        except BaseException as err:
            with contextlib.suppress(Exception):
                trial.set_user_attr(FAILURE, f"{type(err).__name__}: {err}"[:1000])
                self._close(trial, cfg, "FAIL", values)
            raise
        value = objective_value(result, metric)
        if result.run_id is not None:
            self._link(trial, result.run_id)
            run = TrackedRun(self.tracker, result.run_id)
            run.set_tags({TAG_TRIAL_STATE: "COMPLETE" if math.isfinite(value) else "FAIL"})
            run.log_params({f"optuna.{k}": v for k, v in trial.params.items()})
            run.log_metrics({f"objective/{metric}": value})
        log.info("trial %d: %s %.4f", trial.number, metric, value)
        return value

    def _close(self, trial: Trial, cfg: RunConfig, state: str, values: Mapping[str, Any]) -> None:
        for run_id in trial_runs(self.tracker, self.study.study_name, trial.number):
            self._link(trial, run_id)
            TrackedRun(self.tracker, run_id).set_tags({TAG_TRIAL_STATE: state})
        # A stopped trial's epoch checkpoint must not be resumed by a later run of the same config.
        (checkpoint_dir(self.tracker) / f"{cfg.config_hash()}.pt").unlink(missing_ok=True)

    def _link(self, trial: Trial, run_id: str) -> None:
        """The trial's MLflow run, as its id and a link into the MLflow UI, among its user attributes."""
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        trial.set_user_attr(RUN_LINK_ATTR, run_link(self.tracker, run_id))


class _StopRule:
    """Stop this worker's optimize loop once finished + running trials reach the total (or failures the limit)."""

    def __init__(self, total: int, max_failures: int, bar: Any) -> None:
        self.total, self.max_failures, self.bar = total, max_failures, bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        counts = count_states(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        _update_bar(self.bar, study, finished)
        if finished + counts["RUNNING"] >= self.total or counts["FAIL"] >= self.max_failures:
            study.stop()


def _bar(settings: TuneSettings, name: str, finished: int) -> Any:
    if not settings.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=settings.trials,
        initial=min(finished, settings.trials),
        desc=f"tune {name}",
        unit="trial",
        dynamic_ncols=True,
    )


def _update_bar(bar: Any, study: optuna.Study, finished: int) -> None:
    if bar is None:
        return
    bar.n = min(finished, bar.total)
    best = best_trial(study)
    if best is not None:
        bar.set_postfix_str(f"best {best.value:.4f} (trial {best.number})")
    bar.refresh()
