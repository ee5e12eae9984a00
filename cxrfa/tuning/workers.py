"""Several workers on one study: trial ownership, heartbeats, stale trials, exact slots, counts.

Journal files have no built-in heartbeat, so each running trial records its owner and refreshes a heartbeat
user attribute (:mod:`cxrfa.claims`); a RUNNING trial that :func:`cxrfa.claims.is_stale` calls stale (its process
gone on this host, or silent for the grace period) belongs to a dead worker and is marked FAIL.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from cxrfa.claims import HEARTBEAT, OWNER, is_stale, me
from cxrfa.claims import heartbeat as beating
from cxrfa.tracking import TAG_STUDY, TAG_TRIAL, TAG_TRIAL_STATE, TrackedRun, Tracker

log = logging.getLogger(__name__)


SURPLUS = "cxrfa.surplus"
CONFIG = "cxrfa.config"  # the dotted config values a trial applied (what the overlay exports)
FAILURE = "cxrfa.failure"


def _is_stale(t: FrozenTrial, now: float) -> bool:
    beat = t.user_attrs.get(HEARTBEAT)
    if beat is None and t.datetime_start is not None:  # claimed, not yet beating
        beat = t.datetime_start.timestamp()
    return is_stale(t.user_attrs.get(OWNER), beat, now)


def fail_stale_trials(study: optuna.Study, tracker: Tracker | None) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL (and their MLflow runs FAILED); returns their numbers."""
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(t, now):
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
            log.warning(
                "trial %d of %s was left RUNNING by a stopped worker; marked FAIL", t.number, study.study_name
            )
        if tracker is not None:
            for run in trial_runs(tracker, study.study_name, t.number, status="RUNNING"):
                TrackedRun(tracker, run).set_tags({TAG_TRIAL_STATE: "FAIL"})
                TrackedRun(tracker, run).fail("the worker running this trial stopped")
    return failed


@contextlib.contextmanager
def heartbeat(trial: Trial) -> Iterator[None]:
    """Record the owner and refresh a heartbeat while the trial runs (journal files have no built-in one)."""
    trial.set_user_attr(OWNER, me())
    with beating(lambda: trial.set_user_attr(HEARTBEAT, time.time()), f"trial-{trial.number}"):
        yield


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials per state name; surplus trials are left out of every count."""
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(SURPLUS):
            counts[t.state.name] += 1
    return counts


def holds_slot(study: optuna.Study, number: int, total: int) -> bool:
    """Whether trial ``number`` is within the first ``total`` live-or-finished trials of the study."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    before = sum(
        1
        for t in study.get_trials(deepcopy=False, states=live)
        if t.number < number and not t.user_attrs.get(SURPLUS)
    )
    return before < total


def trial_runs(tracker: Tracker, study: str, number: int, status: str | None = None) -> list[str]:
    """Ids of the MLflow runs of trial ``number`` of ``study`` (only those with ``status`` when given)."""
    query = f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_TRIAL}` = '{number}'"
    if status:
        query += f" and attributes.status = '{status}'"
    return [r.run_id for r in tracker.search(query)]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The COMPLETE trial with the highest finite value, or None."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done = [t for t in done if math.isfinite(t.value)]  # type: ignore[arg-type]
    return max(done, key=lambda t: t.value) if done else None  # type: ignore[arg-type, return-value]
