"""Optuna studies over one cell's search space: the only package that imports optuna.

A study belongs to one (matrix, cell) and is named ``<matrix>.<cell>`` by default. Each trial samples the
matrix's ``tune.params`` (dotted config paths), applies them to the cell's resolved config, validates the result
like any config and runs it through :func:`cxrfa.cell.run_cell` as an MLflow run nested under the study's
parent run. The objective is the matrix's ``tune.metric`` on ``val`` at the epoch the run keeps; it is reported
every epoch so the pruner can stop a poor trial early. ``test`` never drives anything here.

Counting and resume: COMPLETE and PRUNED trials are *finished*; a FAIL trial (NaN loss, invalid sampled config,
a worker that died) is not, so another trial replaces it. ``tune`` runs until the study holds ``trials``
finished trials in total, whichever worker ran them, so re-running the same command continues where it
stopped and repeats nothing. A study also stops after ``max_failures`` failed trials in total (default: the
larger of 10 and ``trials``) so a broken search space cannot loop forever.

Several workers (processes, machines or ``n_jobs`` threads) share one storage: a journal file by default
(``mlruns/optuna.journal``), or any SQLAlchemy URL. Every trial holds a numbered slot: a trial whose number
comes after ``trials`` live-or-finished trials is surplus and is dropped before it trains (marked FAIL with the
user attribute ``cxrfa.surplus``), so the total is exact however the workers race. Each running trial records
its owner (host:pid) and a heartbeat; on every start, RUNNING trials of a dead worker (its process gone, or no
heartbeat for the grace period of :mod:`cxrfa.claims`) are marked FAIL, and so is their MLflow run.
"""

from cxrfa.tuning.backends import (
    build_pruner,
    build_sampler,
    default_storage_path,
    open_storage,
    study_progress,
)
from cxrfa.tuning.overlays import apply_overlays, overlay_path, read_overlay, write_overlay
from cxrfa.tuning.space import apply_values, check_space, sample_values, select_cell
from cxrfa.tuning.study import TrialPruned, TuneResult, TuneSettings, objective_value, tune
from cxrfa.tuning.workers import OWNER, SURPLUS, count_states, fail_stale_trials

__all__ = [
    "OWNER",
    "SURPLUS",
    "TrialPruned",
    "TuneResult",
    "TuneSettings",
    "apply_overlays",
    "apply_values",
    "build_pruner",
    "build_sampler",
    "check_space",
    "count_states",
    "default_storage_path",
    "fail_stale_trials",
    "objective_value",
    "open_storage",
    "overlay_path",
    "read_overlay",
    "sample_values",
    "select_cell",
    "study_progress",
    "tune",
    "write_overlay",
]
