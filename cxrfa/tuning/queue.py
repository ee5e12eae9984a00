"""The ablation's work queue: every cell x seed runs exactly once, whichever process or machine runs it.

The engine is Optuna's RDB storage used as a queue (a SQLite file beside a local tracking store, or the team's
PostgreSQL). One study per ablation; each cell x seed is a *unit*: a trial enqueued WAITING whose user attributes
carry the resolved config. Optuna does the hard parts: ``ask`` pops a WAITING trial atomically, so exactly one
worker claims it; a heartbeat thread refreshes the claimed trial every ``heartbeat_s`` seconds; a trial whose
heartbeat stopped for ``grace_s`` seconds (both :func:`cxrfa.claims.timeouts`) is failed by the next worker that
looks, and ``RetryHeartbeatStaleTrialCallback`` enqueues a copy, which a free worker claims and resumes from the
checkpoint the stopped worker kept as a run artifact. A worker whose process is gone on this very machine is noticed at
once (:func:`cxrfa.claims.is_stale`: its owner id names a dead pid) instead of after the grace period.

Two processes may enqueue the same unit at once (machines starting together); the copies are told apart by the
*canonical* rule: for a unit (config hash, attempt), only the lowest-numbered trial that is not retired may run; a
copy popped while a lower one is waiting, running or done is dropped (PRUNED, ``cxrfa.outcome`` = duplicate).
Retired are trials failed for a stopped worker (their copy takes over) and dropped copies. A unit with nothing
waiting or running is enqueued as a new ``attempt`` (one past its earlier ones), so re-running ``ablate`` after a
cell failed tries it again once, however many processes start together.

The queue is Optuna storage, so it lives in :mod:`cxrfa.tuning`, the only package that imports optuna.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from cxrfa.cell import StopRun
from cxrfa.claims import OWNER, is_stale, me, timeouts
from cxrfa.config import RunConfig
from cxrfa.errors import CxrfaError
from cxrfa.io import DiskFull, as_disk_full
from cxrfa.signals import die_with_parent
from cxrfa.tracking import (
    TAG_CONFIG_HASH,
    TrackedRun,
    Tracker,
    check_reachable,
    creation_lock,
    redact,
    redact_text,
    side_path,
)

log = logging.getLogger(__name__)

MAX_RETRY = 3  # a unit whose worker stopped more often than this counts as failed
QUEUE_DB = "queue.db"

UNIT = "cxrfa.unit"  # config hash of the cell x seed
ATTEMPT = "cxrfa.attempt"
RUN_CONFIG = "cxrfa.run_config"  # the resolved RunConfig, as JSON
LABEL = "cxrfa.label"  # <cell>/seed=<k>, for people reading the study
OUTCOME = "cxrfa.outcome"  # finished | skipped | failed | duplicate | idle | interrupted | lost
FAILURE = "cxrfa.failure"
RUN_ID = "cxrfa.run_id"

_RETIRED_OUTCOMES = ("duplicate", "idle", "interrupted", "lost")


class CellFailed(Exception):
    """A unit's cell failed (bad config, NaN loss, a bug): the trial ends FAIL and is not retried."""


class ClaimLost(StopRun):
    """The engine gave this unit to another worker (this one missed its heartbeats); the run ends KILLED."""


def default_queue_url(tracker: Tracker) -> str:
    """``queue.db`` with a local SQLite store's other side files (:func:`cxrfa.tracking.side_path`), else
    ``./mlruns/queue.db``."""
    path = side_path(tracker.uri, QUEUE_DB) or Path("mlruns") / QUEUE_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def open_queue(url: str | None, tracker: Tracker) -> tuple[optuna.storages.RDBStorage, str]:
    """The RDB storage with heartbeats and retries; returns it and its display form (credentials hidden).

    Raises:
        CxrfaError: not a database URL (a journal file has no heartbeats), or the database cannot be opened.
    """
    from cxrfa.tracking import _retry_first_use

    url = url or default_queue_url(tracker)
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        raise CxrfaError(
            f"--storage {redact(url)!r}: the ablation queue needs a database with heartbeats; "
            "use sqlite:///path/queue.db (one machine) or postgresql://user@host/db (several)"
        )
    if scheme == "sqlite" and not Path(url.removeprefix("sqlite:///")).parent.is_dir():
        raise CxrfaError(
            f"--storage {url!r}: folder {Path(url.removeprefix('sqlite:///')).parent} does not exist"
        )
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are marked experimental
        callback = (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=MAX_RETRY)
        times = timeouts()
        kwargs: dict[str, Any] = {"heartbeat_interval": times.heartbeat_s, "grace_period": times.grace_s}
        kwargs["heartbeat_stale_trial_callback" if retry else "failed_trial_callback"] = callback
        if scheme == "sqlite":  # several local workers write to one file: wait for the lock, don't fail
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        check_reachable(url)
        try:
            with creation_lock(url):
                storage = _retry_first_use(lambda: optuna.storages.RDBStorage(url, **kwargs), url)
        except Exception as err:  # noqa: BLE001 - driver missing, server down, bad credentials
            first = (redact_text(str(err), url).strip().splitlines() or [type(err).__name__])[0]
            raise CxrfaError(f"--storage {redact(url)}: cannot open the database ({first[:200]})") from None
    return storage, redact(url)


@dataclass
class UnitState:
    """Where one of this worker's units stands."""

    cfg: RunConfig
    attempt: int
    status: str = "PENDING"  # PENDING | FINISHED | SKIPPED | FAILED
    run_id: str | None = None
    reason: str | None = None


@dataclass
class Worker:
    """How this process runs units: its device, CPU threads and what to log."""

    run: Callable[..., Any]  # run(cfg, claim=...) -> CellResult (``run_cell`` with the ablation's settings)
    threads: int | None = None
    progress: bool = True
    on_change: Callable[[], None] | None = None  # called after each finished unit (progress bars)
    ran: list[str] = field(default_factory=list)  # labels of the units this process ran


class Queue:
    """The work queue of one ablation (an Optuna study named ``name`` in ``storage``)."""

    def __init__(self, storage: optuna.storages.RDBStorage, name: str, tracker: Tracker) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.tracker, self.name = tracker, name
        self.study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            direction="minimize",  # the value of a unit is its wall time in seconds
            sampler=optuna.samplers.RandomSampler(),
        )
        self._no_live: dict[tuple[str, int], int] = {}
        self._lost = False
        self._outcome: str | None = None  # of the unit this process last claimed
        self.interrupted: dict[str, Any] | None = (
            None  # user attributes of the unit a stop signal interrupted
        )

    # -- reading -----------------------------------------------------------------------------------------

    def units(self) -> list[FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False) if UNIT in t.user_attrs]

    @staticmethod
    def _retired(t: FrozenTrial) -> bool:
        outcome = t.user_attrs.get(OUTCOME)
        if t.state == TrialState.PRUNED or outcome in _RETIRED_OUTCOMES:
            return True
        return t.state == TrialState.FAIL and outcome != "failed"  # its worker stopped

    @classmethod
    def canonical(cls, trials: Sequence[FrozenTrial], unit: str, attempt: int) -> FrozenTrial | None:
        """The one trial of (unit, attempt) that may run (or ran): the lowest-numbered one not retired."""
        mine = [
            t
            for t in trials
            if t.user_attrs.get(UNIT) == unit and t.user_attrs.get(ATTEMPT) == attempt and not cls._retired(t)
        ]
        return min(mine, key=lambda t: t.number) if mine else None

    # -- enqueueing --------------------------------------------------------------------------------------

    def enqueue(self, runs: Sequence[RunConfig]) -> dict[str, UnitState]:
        """Put every unit of ``runs`` not yet finished in the queue (once, whoever else enqueues it).

        Units go in in :func:`queue_order`: one unit per stand-in first, so that workers pretrain different
        stand-ins side by side, then longest first.
        """
        states: dict[str, UnitState] = {}
        new: list[UnitState] = []
        # the lock makes this exact on one machine; across machines the canonical rule drops copies
        with creation_lock(self.tracker.uri, "queue"):
            trials = self.units()
            for cfg in runs:
                unit = cfg.config_hash()
                done = self.tracker.finished(unit)
                if done is not None:
                    states[unit] = UnitState(cfg, 0, "SKIPPED", done.run_id)
                    continue
                mine = [t for t in trials if t.user_attrs.get(UNIT) == unit]
                live = [t for t in mine if t.state in (TrialState.WAITING, TrialState.RUNNING)]
                live = [t for t in live if not self._retired(t)]
                if live:
                    states[unit] = UnitState(cfg, int(min(live, key=lambda t: t.number).user_attrs[ATTEMPT]))
                    continue
                # a new attempt past every earlier one (failed, or finished but its run deleted since); processes
                # enqueueing at the same moment see the same history, so they agree on the number
                states[unit] = UnitState(cfg, 1 + max((int(t.user_attrs[ATTEMPT]) for t in mine), default=-1))
                new.append(states[unit])
            for st in queue_order(new):
                self.add(st.cfg, st.attempt)
        return states

    def add(self, cfg: RunConfig, attempt: int) -> None:
        """Put attempt ``attempt`` of ``cfg``'s unit in the queue as it is, whatever is there already: what
        :meth:`enqueue` and :meth:`refresh` do once they decide the unit is missing (two machines deciding at the
        same moment both add it, and the canonical rule drops the copy)."""
        attrs = {
            UNIT: cfg.config_hash(),
            ATTEMPT: attempt,
            LABEL: f"{cfg.cell}/seed={cfg.seed}",
            RUN_CONFIG: json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        }
        self.study.enqueue_trial({}, user_attrs=attrs)

    # -- stopped workers ---------------------------------------------------------------------------------

    def reap(self) -> None:
        """Fail the units of stopped workers (no heartbeat for the grace period, or a dead local process) and
        put a copy of each back in the queue."""
        optuna.storages.fail_stale_trials(self.study)
        storage = self.study._storage
        callback = storage.get_heartbeat_stale_trial_callback()  # type: ignore[attr-defined]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.user_attrs.get(OWNER)
            # Optuna's own heartbeat covers silence; a dead process of this machine is known at once
            if owner is None or not is_stale(owner, None, time.time()):
                continue
            try:
                changed = storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            if changed:
                log.warning(
                    "%s: its worker %s stopped; the cell goes back in the queue", t.user_attrs[LABEL], owner
                )
                callback(self.study, storage.get_trial(t._trial_id))

    # -- status ------------------------------------------------------------------------------------------

    def refresh(self, states: Mapping[str, UnitState]) -> bool:
        """Update ``states`` from the queue; True when every unit is final (finished, skipped or failed)."""
        trials = self.units()
        pending = False
        for unit, st in states.items():
            if st.status != "PENDING":
                continue
            top = self.canonical(trials, unit, st.attempt)
            if top is None:
                pending |= self._orphan(trials, unit, st)
                continue
            self._no_live.pop((unit, st.attempt), None)
            if top.state == TrialState.COMPLETE:
                outcome = top.user_attrs.get(OUTCOME)
                st.status, st.run_id = (
                    ("SKIPPED" if outcome == "skipped" else "FINISHED"),
                    top.user_attrs.get(RUN_ID),
                )
            elif top.state == TrialState.FAIL:
                st.status, st.run_id = "FAILED", top.user_attrs.get(RUN_ID)
                st.reason = top.user_attrs.get(FAILURE, "failed")
            else:
                pending = True
        return not pending

    def _orphan(self, trials: Sequence[FrozenTrial], unit: str, st: UnitState) -> bool:
        """A unit with no live trial: its worker was interrupted, or a retry is about to appear. Returns
        whether it is still pending."""
        stopped = [
            t
            for t in trials
            if t.user_attrs.get(UNIT) == unit
            and t.user_attrs.get(ATTEMPT) == st.attempt
            and t.state == TrialState.FAIL
            and t.user_attrs.get(OUTCOME) is None
        ]
        if len(stopped) > MAX_RETRY:
            st.status, st.reason = (
                "FAILED",
                f"its worker stopped {len(stopped)} times (a crash or out of memory?)",
            )
            return False
        key = (unit, st.attempt)
        self._no_live[key] = self._no_live.get(key, 0) + 1
        if self._no_live[key] >= 2:  # still nothing after a poll: nobody will put it back, so we do
            self.add(st.cfg, st.attempt)
            self._no_live.pop(key)
        return True

    def waiting_units(self, states: Mapping[str, UnitState]) -> int:
        """How many units of ``states`` wait for a worker (their running trial, if any, belongs to a live one)."""
        trials = self.units()
        tops = [
            self.canonical(trials, unit, st.attempt) for unit, st in states.items() if st.status == "PENDING"
        ]
        return sum(t is not None and t.state == TrialState.WAITING for t in tops)

    def waiting(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    # -- working -----------------------------------------------------------------------------------------

    def work(self, states: dict[str, UnitState], worker: Worker) -> None:
        """Claim and run units until every unit of ``states`` is final (others' included: a stopped worker's
        unit is taken over here)."""
        _set_threads(worker)
        while True:
            self.reap()
            if self.refresh(states):
                return
            if self.waiting() == 0:
                time.sleep(timeouts().poll_s)
                continue
            self._claim(worker)

    def work_one(self, worker: Worker) -> bool:
        """Claim and run one waiting unit, if any is left (a Slurm array task); returns whether one ran.

        Popped trials that run nothing (a duplicate copy, a blank one) do not count: the next is tried.
        """
        _set_threads(worker)
        self.reap()
        while self.waiting() > 0:
            if self._claim(worker) in ("finished", "failed", "skipped"):
                return True
        return False

    def put_back(self) -> None:
        """Enqueue again the unit whose run this process interrupted (a preempted Slurm task), so that the
        requeued task, or any worker, claims it and resumes it from its checkpoint."""
        attrs, self.interrupted = self.interrupted, None
        if attrs is not None:
            self.study.enqueue_trial({}, user_attrs={k: attrs[k] for k in (UNIT, ATTEMPT, LABEL, RUN_CONFIG)})

    def _claim(self, worker: Worker) -> str | None:
        """Pop one waiting trial and run it; returns its outcome (None if the engine took it away)."""
        self._lost, self._outcome = False, None
        try:
            self.study.optimize(
                lambda trial: self._objective(trial, worker),
                n_trials=1,
                catch=(CellFailed,),
                gc_after_trial=False,
            )
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            if not self._lost:
                raise
        if worker.on_change is not None:
            worker.on_change()
        return self._outcome

    def _objective(self, trial: Trial, worker: Worker) -> float:
        from cxrfa.config import validate
        from cxrfa.train import NonFiniteLoss

        attrs = trial.user_attrs
        if UNIT not in attrs:  # the queue emptied between our look and the claim: Optuna made a blank trial
            trial.set_user_attr(OUTCOME, "idle")
            raise optuna.TrialPruned()
        unit, attempt, label = attrs[UNIT], attrs[ATTEMPT], attrs[LABEL]
        trial.set_user_attr(OWNER, me())
        top = self.canonical(self.units(), unit, attempt)
        if top is not None and top.number != trial.number:
            trial.set_user_attr(OUTCOME, "duplicate")
            raise optuna.TrialPruned()
        done = self.tracker.finished(unit)
        if done is not None:
            trial.set_user_attr(OUTCOME, "skipped")
            trial.set_user_attr(RUN_ID, done.run_id)
            self._outcome = "skipped"
            return 0.0
        started = time.monotonic()
        log.info("%s: running on %s", label, me())
        try:
            if RUN_CONFIG not in attrs:  # enqueued by an older cxrfa, which named the attribute otherwise
                raise CxrfaError(
                    f"queue {self.name}: unit {label} comes from another cxrfa version; delete the queue"
                )
            cfg = validate(RunConfig, json.loads(attrs[RUN_CONFIG]), f"queue {self.name} unit {label}")
            if cfg.config_hash() != unit:  # written by another cxrfa version: it would never count as done
                raise CxrfaError(
                    f"queue {self.name}: unit {label} comes from another cxrfa version; delete the queue"
                )
            result = worker.run(cfg, claim=_Claim(self, trial, unit))
        except ClaimLost as lost:
            self._lost = True
            log.warning("%s: %s", label, lost.reason)
            raise optuna.TrialPruned() from None
        except KeyboardInterrupt:
            trial.set_user_attr(OUTCOME, "interrupted")
            self.interrupted = dict(attrs)
            raise
        except Exception as err:  # noqa: BLE001 - one cell never stops the others
            full = as_disk_full(err)
            if full is not None:  # ...except a full disk, which would fail every cell the same way
                self._stopped_by(unit, trial, full)
                raise full from None
            reason = getattr(err, "reason", None) or str(err) or type(err).__name__
            if not isinstance(err, (NonFiniteLoss, CxrfaError)):
                log.exception("%s failed", label)
                reason = f"{type(err).__name__}: {err}"
            failed = self.tracker.search(
                f"tags.`{TAG_CONFIG_HASH}` = '{unit}' and attributes.status = 'FAILED'"
            )
            trial.set_user_attr(OUTCOME, "failed")
            trial.set_user_attr(FAILURE, reason[:2000])
            if failed:
                trial.set_user_attr(RUN_ID, failed[0].run_id)
            log.error("%s failed: %s", label, reason)
            self._outcome = "failed"
            raise CellFailed(reason) from None
        trial.set_user_attr(OUTCOME, "finished")
        trial.set_user_attr(RUN_ID, result.run_id)
        self._outcome = "finished"
        worker.ran.append(label)
        return time.monotonic() - started

    def _stopped_by(self, unit: str, trial: Trial, err: DiskFull) -> None:
        """A full disk stopped the unit: its run (if still RUNNING: marking it may have failed for lack of
        space) is marked FAILED with the reason, and the unit is retired so a rerun after freeing space runs
        it again from its checkpoint."""
        for run in self.tracker.search(
            f"tags.`{TAG_CONFIG_HASH}` = '{unit}' and attributes.status = 'RUNNING'"
        ):
            if run.tags.get(OWNER) in (None, me()):
                TrackedRun(self.tracker, run.run_id).fail(str(err))
        trial.set_user_attr(OUTCOME, "interrupted")
        trial.set_user_attr(FAILURE, str(err)[:2000])


def queue_order(units: Sequence[UnitState]) -> list[UnitState]:
    """The order workers claim ``units`` in.

    Longest first (trainable encoders, then frozen ones, then the baselines that fit no heads; more epochs
    first within each), so the last units to start are short and the workers finish close together. Before them, for each stand-in backbone the units need (``pretrained: demo``, built
    once by whichever worker needs it first, under a lock), the first unit that needs it: workers starting
    together then pretrain different stand-ins side by side, one per core, instead of one waiting on the other's
    lock or every worker waiting on a build in the parent.
    """
    longest = sorted(
        units,
        key=lambda st: (st.cfg.kind != "trained", st.cfg.model.visual.frozen, -st.cfg.train.epochs),
    )
    builders: list[UnitState] = []
    covered: set[str] = set()
    for st in longest:
        needs = _standins(st.cfg) - covered
        if needs:
            builders.append(st)
            covered |= needs
    first = {id(st) for st in builders}
    return builders + [st for st in longest if id(st) not in first]


def _standins(cfg: RunConfig) -> set[str]:
    """The stand-in backbones (by architecture) a unit's config needs pretrained."""
    model = cfg.model
    return {b.arch for b in (model.visual, model.text) if b is not None and b.pretrained == "demo"}


def _set_threads(worker: Worker) -> None:
    if worker.threads is not None:
        import torch

        torch.set_num_threads(worker.threads)


class _Claim:
    """A held unit, as :func:`cxrfa.cell.run_cell` sees it (:class:`cxrfa.cell.CellClaim`)."""

    def __init__(self, queue: Queue, trial: Trial, unit: str) -> None:
        self.queue, self.trial, self.unit = queue, trial, unit

    def held(self) -> bool:
        (t,) = [t for t in self.queue.study.get_trials(deepcopy=False) if t.number == self.trial.number]
        return t.state == TrialState.RUNNING

    def check(self) -> None:
        if not self.held():
            raise ClaimLost("another worker took this cell over (this one missed its heartbeats); stopped")

    def fetch_checkpoint(self, tracker: Tracker, checkpoint: Path) -> str | None:
        """A stopped worker's checkpoint, from its run's artifacts, unless a local copy exists."""
        if (
            checkpoint.is_file() or tracker.is_local
        ):  # a local store keeps checkpoints beside it for every worker
            return None
        name = f"resume/{checkpoint.name}"
        for run in tracker.search(f"tags.`{TAG_CONFIG_HASH}` = '{self.unit}'"):
            if run.status == "FINISHED" or name not in tracker.list_artifacts(run.run_id, "resume"):
                continue
            with tempfile.TemporaryDirectory(prefix="cxrfa-resume-") as tmp:
                path = tracker.download(run.run_id, name, Path(tmp))
                if not _loadable(path, f"run {run.run_id} artifact {name}"):
                    continue
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), checkpoint)
            return f"checkpoint of run {run.run_id}"
        return None

    def callbacks(self, run: TrackedRun, checkpoint: Path) -> list[Any]:
        return [_KeepCheckpoint(self, run, checkpoint)]


def _loadable(path: Path, name: str) -> bool:
    """Whether a downloaded checkpoint holds only tensors and plain values (never unpickles code)."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - refused: the cell starts from scratch instead
        log.warning(
            "%s is not a usable checkpoint (%s); not resuming from it", name, str(err).splitlines()[0][:200]
        )
        return False
    return True


class _KeepCheckpoint:
    """After each epoch (the checkpoint is written just before): stop if the claim was lost; on a shared
    tracking server, upload the checkpoint as the run's ``resume/`` artifact so any worker can resume it."""

    def __init__(self, claim: _Claim, run: TrackedRun, checkpoint: Path) -> None:
        self.claim, self.run, self.checkpoint = claim, run, checkpoint

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.claim.check()
        if not self.run.tracker.is_local and self.checkpoint.is_file():
            self.run.log_artifact(self.checkpoint, "resume")


# -- processes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Worker processes for one machine: how many, each one's CPU threads and device, and why."""

    count: int
    threads: int  # torch CPU threads per worker
    devices: tuple[str, ...]
    reason: str


def auto_layout(units: int, cores: int | None = None, gpus: int | None = None) -> Layout:
    """The measured best layout for ``units`` runs on this machine (``--workers auto``).

    With GPUs: one worker per GPU. On CPUs: one worker per core with one thread each, because the demo's runs
    are small (a head on cached features, a 96 px CNN) and spend much of their time in single-threaded Python
    (evaluation, plots, logging) that a second thread cannot speed up: two single-thread workers on 2 cores ran
    the demo 1.70x faster than one worker with both threads (benchmarks/README.md, "Workers"). A worker process
    costs a fresh interpreter and its imports (about 10 s here), so each gets at least two runs: fewer than
    two runs per core run in this process. The queue hands out the longest runs first (:meth:`Queue.enqueue`).

    Args:
        units: runs to do.
        cores: CPU cores this process may use (default: its affinity mask).
        gpus: visible CUDA devices (default: torch's count).

    Returns:
        The layout; on CPUs every worker has 1 thread (:func:`cpu_threads`).
    """
    cores = _cores() if cores is None else cores
    gpus = _gpus() if gpus is None else gpus
    units = max(1, units)
    if gpus > 0:
        count = min(gpus, units)
        threads = max(1, cores // count)
        why = f"one per GPU of {gpus}, {threads} CPU thread(s) each"
        return Layout(count, threads, tuple(f"cuda:{i}" for i in range(count)), why)
    count = max(1, min(cores, units // 2))
    if count == 1:
        why = "one core" if cores == 1 else f"{units} run(s), too few to share out"
        return Layout(1, 1, (), f"in this process with 1 thread ({why})")
    return Layout(count, 1, (), f"{count} of {cores} cores, 1 thread each")


def cpu_threads(count: int, gpus: int | None = None) -> int:
    """Torch CPU threads per worker when ``--threads`` is not given.

    On a machine without GPUs: 1, whatever the layout, so a result never depends on how the runs were shared
    out: torch's CPU kernels sum in an order that depends on their thread count (one worker with 2 threads
    against two with 1 moved ``test/mse`` of the smoke matrix in its 9th digit). The cores go to workers
    instead. With GPUs the threads only feed them: the cores shared out.
    """
    gpus = _gpus() if gpus is None else gpus
    return threads_per_worker(count, None) if gpus > 0 else 1


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def threads_per_worker(workers: int, threads: int | None) -> int:
    """CPU threads for each of ``workers`` processes: the cores shared out, so workers x threads <= cores."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def device_env(devices: Sequence[str], index: int) -> dict[str, str]:
    """Environment that gives worker ``index`` its device: ``cuda:N`` -> only GPU N visible, ``cpu`` -> none."""
    if not devices:
        return {}
    device = devices[index % len(devices)]
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": ""}
    if device.startswith("cuda:") and device[5:].isdigit():
        return {"CUDA_VISIBLE_DEVICES": device[5:]}
    raise CxrfaError(f"--devices {','.join(devices)}: {device!r} is not cpu or cuda:N")


def spawn(args: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cxrfa <args>`` as a worker process; credentials travel in ``env``, never in ``args``.

    The worker gets SIGTERM when this process dies, however it dies (it then marks its run KILLED).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cxrfa.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call; no locks taken between fork and exec
        )
