"""``ablate``: run every cell x seed of a matrix as child runs under one parent, on any number of workers.

Every invocation goes through the ablation's work queue (:mod:`cxrfa.tuning.queue`): it enqueues the units not
yet FINISHED, then claims and runs units until every one of its units is final. So a second process (a second
terminal, ``--workers N``, or ``--worker`` on other machines sharing the stores) never repeats a cell, a stopped
worker's cell is taken over and resumed from its checkpoint, and re-running the command skips what finished. One
failing cell never stops the others. On a Slurm cluster (:func:`submit_to_slurm`) the same queue hands the units
to the tasks of a job array instead of local processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrfa.cell import CellResult, run_cell
from cxrfa.config import AblationMatrix, BackboneConfig, RunConfig
from cxrfa.data.features import EncodedSplits
from cxrfa.errors import CxrfaError
from cxrfa.io import reserve_space
from cxrfa.signals import reason, signal_of
from cxrfa.tracking import (
    TAG_BACKBONES,
    TAG_CELLS,
    TAG_CONTRASTS,
    TAG_DATA,
    TAG_MATRIX,
    TAG_THREADS,
    TrackedRun,
    Tracker,
)

if TYPE_CHECKING:
    from cxrfa.cell import CellClaim
    from cxrfa.launch import SlurmOptions
    from cxrfa.tuning.queue import Queue, UnitState, Worker

log = logging.getLogger(__name__)

# how long stopped workers get to mark their runs KILLED, so a stopped ablation leaves nothing after 10 s
STOP_GRACE_S = 8.0


@dataclass
class PlannedRun:
    """One row of ``--dry-run``: a resolved config and, if it already finished, its run id."""

    cfg: RunConfig
    finished_run: str | None


@dataclass
class AblationSummary:
    matrix: str
    parent_id: str | None
    results: list[CellResult] = field(default_factory=list)
    seconds: float = 0.0
    ran_here: list[str] = field(default_factory=list)  # <cell>/seed=<k> of the units this process ran

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.results if r.status not in ("FINISHED", "SKIPPED")]


@dataclass(frozen=True)
class Workers:
    """How many worker processes, on which devices, with how many CPU threads each.

    ``count`` > 1 starts that many ``cxrfa ablate --worker`` processes (``args``: their command line, without
    credentials, which travel in ``env``) and watches them; 1 runs the units in this process.
    """

    count: int = 1
    devices: tuple[str, ...] = ()  # cpu | cuda:N, one per worker (cycled)
    threads: int | None = None  # torch CPU threads per worker; None = cores / count
    storage: str | None = None  # queue database URL; None = queue.db beside a local store (or ./mlruns)
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    logs: Path = Path("mlruns") / "workers"


def parent_name(matrix: AblationMatrix, backbones: str, data: str | None) -> str:
    """Name (and reuse key) of a matrix invocation's parent run."""
    return f"{matrix.name} [{backbones}{'' if data is None else ', ' + data}]"


def plan(runs: Sequence[RunConfig], tracker: Tracker) -> list[PlannedRun]:
    """Which runs are still to do."""
    out = []
    for cfg in runs:
        done = tracker.finished(cfg.config_hash())
        out.append(PlannedRun(cfg, done.run_id if done else None))
    return out


def prepare(runs: Sequence[RunConfig], progress: bool, threads: int | None = None) -> None:
    """Build what every cell shares (demo data, stand-in backbones) once, before the cells need it.

    Processes started together on one machine take turns through a lock in the cxrfa home, so the first builds
    and the others find it cached; each stand-in has its own lock besides, so a worker that reaches a cell
    first builds what it needs itself, and this process then finds it built. ``threads``: torch CPU threads for
    the pretraining, those of the runs, so that what is built does not depend on which process built it.
    """
    from filelock import FileLock

    from cxrfa.io import cxrfa_home
    from cxrfa.standins import warn_unaligned

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    home = cxrfa_home()
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / ".prepare.lock"), timeout=3600):
        resolved = _shared(runs, progress)
    warn_unaligned(resolved)  # a stand-in near chance makes every text cell meaningless: say so up front


def _shared(runs: Sequence[RunConfig], progress: bool, build: bool = True) -> list[BackboneConfig]:
    """Each distinct (data, backbone) of ``runs`` resolved: data loaded, stand-in pretrained. ``build=False``
    pretrains nothing: a stand-in is resolved only where its weights are already built (by the workers)."""
    from cxrfa.data.load import load_data
    from cxrfa.standins import ensure_standin, standin_path

    done: set[str] = set()
    out: list[BackboneConfig] = []
    for cfg in runs:
        manifest = None
        for backbone in (cfg.model.visual, cfg.model.text):
            if backbone is None:
                continue
            key = cfg.data.model_dump_json() + backbone.model_dump_json()
            if key in done:
                continue
            done.add(key)
            if manifest is None:
                manifest = load_data(cfg.data, progress)
            if build or backbone.pretrained != "demo":
                out.append(ensure_standin(backbone, manifest))
            elif (path := standin_path(backbone.arch, manifest)).is_file():
                out.append(backbone.model_copy(update={"pretrained": str(path)}))
    return out


def ablate(
    matrix: AblationMatrix,
    runs: Sequence[RunConfig],
    tracker: Tracker,
    *,
    backbones: str,
    data: str | None,
    explore: Sequence[str] = ("gap", "similarity"),
    progress: bool = True,
    workers: Workers = Workers(),
    build: bool = True,
) -> AblationSummary:
    """Run (or skip, when finished) every config under one parent run; never raises for a failing cell.

    Returns when every unit of ``runs`` is final, whichever worker ran it. One worker (``workers.count`` 1)
    builds the shared data, stand-ins and feature cache first (:func:`prepare`). Several worker processes build
    what their cells need themselves, each part once under its own lock: the queue hands out one unit per
    stand-in first, so they pretrain different stand-ins side by side, and this process only watches (a build
    beside them would put more busy processes than cores on the machine, which measured slower). ``build=False``
    (a worker of a larger ablation) leaves building to whoever needs it first, as well.

    Raises:
        CxrfaError: the queue storage cannot be used.
        KeyboardInterrupt: passed through after the current child and the parent are marked KILLED (also
            :class:`cxrfa.signals.Terminated` for SIGTERM/SIGHUP; worker processes get the same signal).
    """
    from cxrfa.tuning.queue import Worker

    started = time.monotonic()
    queue, parent, states = open_ablation(
        matrix,
        runs,
        tracker,
        backbones=backbones,
        data=data,
        storage=workers.storage,
        progress=progress,
        build=build and workers.count == 1,
        threads=workers.threads,
    )
    bar = _Bar(states, matrix.name, progress)
    worker = Worker(
        functools.partial(
            _run,
            tracker=tracker,
            parent_id=parent.run_id,
            explore=tuple(explore),
            progress=progress,
            features=EncodedSplits(),  # this process's cells share each split's encoding
        ),
        threads=workers.threads,
        on_change=bar.update,
    )
    try:
        with contextlib.ExitStack() as stack:
            for folder in _local_folders(
                tracker, queue.study._storage
            ):  # room to record a full disk (cxrfa.io)
                stack.enter_context(reserve_space(folder))
            # a re-run with every run finished earlier starts no worker and builds nothing
            if workers.count > 1 and any(st.status == "PENDING" for st in states.values()):
                _supervise(queue, states, worker, workers, bar)
                if build:  # prepare's warning, for the stand-ins the workers built
                    from cxrfa.standins import warn_unaligned

                    warn_unaligned(_shared(runs, progress=False, build=False))
            else:
                queue.work(states, worker)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (cxrfa.signals.Terminated)
        parent.end("KILLED", reason(err))
        raise
    except CxrfaError as err:  # a full disk: every cell would fail the same way, so the ablation stops
        parent.fail(str(err))
        raise
    finally:
        bar.close()
    return close_ablation(matrix, tracker, parent, states, started, worker.ran)


def open_ablation(
    matrix: AblationMatrix,
    runs: Sequence[RunConfig],
    tracker: Tracker,
    *,
    backbones: str,
    data: str | None,
    storage: str | None,
    progress: bool = True,
    build: bool = True,
    threads: int | None = None,
) -> tuple[Queue, TrackedRun, dict[str, UnitState]]:
    """The ablation's queue (its units enqueued), its parent run and where each unit stands.

    ``build=False`` leaves building the shared data and stand-ins to the workers (a cluster's login node) or
    to the caller, after it started them; ``threads``: what :func:`prepare` builds with.

    Raises:
        CxrfaError: the queue storage cannot be used.
    """
    from cxrfa.tuning.queue import Queue, open_queue

    queue_storage, shown = open_queue(storage, tracker)  # a bad --storage fails before minutes of preparing
    if build:
        prepare(runs, progress, threads)
    if not tracker.is_local and storage is None:
        log.info(
            "the work queue is %s, on this machine only; workers on other machines need --storage", shown
        )
    name = parent_name(matrix, backbones, data)
    queue = Queue(queue_storage, queue_name(tracker, name), tracker)
    tags = {TAG_MATRIX: matrix.name, TAG_BACKBONES: backbones, TAG_DATA: data or "demo"}
    parent = tracker.parent(name, tags, description=_description(matrix, backbones, data))
    # `compare` lists cells in this order: the runs' cell names (with any `@<fraction>`), then the file's others
    order = list(dict.fromkeys([*(r.cell for r in runs), *matrix.cells]))
    parent.set_tags({TAG_CELLS: json.dumps(order)})
    parent.set_tags({TAG_CONTRASTS: json.dumps(matrix.contrasts)})  # and tests these, Holm within each family
    parent.log_text(_matrix_text(matrix), "matrix.yaml")
    queue.reap()  # a unit whose worker is known dead goes back in the queue before counting what is left
    return queue, parent, queue.enqueue(runs)


def queue_name(tracker: Tracker, parent: str) -> str:
    """The queue (Optuna study) of the ablation whose parent run is named ``parent``."""
    return f"ablate.{tracker.experiment}.{parent}"


def close_ablation(
    matrix: AblationMatrix,
    tracker: Tracker,
    parent: TrackedRun,
    states: Mapping[str, UnitState],
    started: float,
    ran: Sequence[str] = (),
) -> AblationSummary:
    """Read every unit's result, log the totals on the parent and end it (FAILED if a cell failed)."""
    summary = AblationSummary(
        matrix.name, parent.run_id, seconds=time.monotonic() - started, ran_here=list(ran)
    )
    summary.results = [_result(tracker, st) for st in states.values()]
    parent.log_metrics(
        {
            "cells_finished": sum(r.status in ("FINISHED", "SKIPPED") for r in summary.results),
            "cells_failed": len(summary.failed),
            "wall_seconds": summary.seconds,
        }
    )
    if summary.failed:
        parent.fail(
            f"{len(summary.failed)} cell(s) failed: "
            + "; ".join(f"{r.cfg.cell}/seed={r.cfg.seed}" for r in summary.failed)
        )
    else:
        parent.finish()
    return summary


def _local_folders(tracker: Tracker, storage: Any) -> list[Path]:
    """Folders of the local SQLite databases this ablation writes (tracking store, queue)."""
    urls = [tracker.uri, str(getattr(getattr(storage, "engine", None), "url", ""))]
    folders = {Path(u.removeprefix("sqlite:///")).parent for u in urls if u.startswith("sqlite:///")}
    return sorted(folders)


def _run(
    cfg: RunConfig,
    *,
    claim: CellClaim,
    tracker: Tracker,
    parent_id: str,
    explore: tuple[str, ...],
    progress: bool,
    features: EncodedSplits,
) -> CellResult:
    import torch

    threads = {TAG_THREADS: str(cfg.train.threads or torch.get_num_threads())}
    return run_cell(
        cfg,
        tracker,
        parent_id=parent_id,
        explore=explore,
        progress=progress,
        claim=claim,
        extra_tags=threads,
        features=features,
    )


def _supervise(
    queue: Queue,
    states: dict[str, UnitState],
    worker: Worker,
    workers: Workers,
    bar: _Bar,
) -> None:
    """Start ``workers.count`` worker processes and wait until every unit is final. If every worker process
    ended while units are left (each crashed), this process finishes them itself."""
    from cxrfa.claims import timeouts
    from cxrfa.tuning.queue import device_env, spawn, threads_per_worker

    threads = threads_per_worker(workers.count, workers.threads)
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(workers.count):
        env = {**workers.env, **device_env(workers.devices, i), "OMP_NUM_THREADS": str(threads)}
        args = [*workers.args, "--worker", "--threads", str(threads)]
        procs.append(spawn(args, env, workers.logs / f"worker-{i}.log"))
    log.info(
        "started %d workers (%d CPU threads each), which build what their cells need first (data, stand-ins); "
        "their logs: %s",
        len(procs),
        threads,
        workers.logs,
    )
    try:
        while True:
            queue.reap()
            if queue.refresh(states):
                break
            bar.update()
            if all(p.poll() is not None for p in procs):
                log.warning("every worker process ended with cells left; running them here")
                queue.work(states, worker)
                break
            time.sleep(timeouts().poll_s)
        for p in procs:
            p.wait()
    except BaseException as err:
        # the signal that stopped us goes on to each worker: it marks its run KILLED (checkpoint kept) and its
        # unit goes back in the queue; a worker still busy after the grace period is killed, and the queue's
        # dead-owner check hands its unit on at the next start
        stop = signal_of(err)
        for p in procs:
            if p.poll() is None:
                p.send_signal(stop)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop within %.0f s of %s; killed", p.pid, STOP_GRACE_S, stop)
                p.kill()
                p.wait()
        raise


class _Bar:
    """Units final out of this invocation's units, refreshed from the queue."""

    def __init__(self, states: dict[str, UnitState], matrix: str, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.states = states
        self.bar = tqdm(
            total=len(states), desc=f"ablate {matrix}", unit="run", disable=not progress, dynamic_ncols=True
        )
        self.update()

    def update(self) -> None:
        self.bar.n = sum(st.status != "PENDING" for st in self.states.values())
        self.bar.refresh()

    def close(self) -> None:
        self.update()
        self.bar.close()


def _result(tracker: Tracker, st: UnitState) -> CellResult:
    done = st.status in ("FINISHED", "SKIPPED") and st.run_id is not None
    return CellResult(
        st.cfg, st.status, st.run_id, _metrics(tracker, st.run_id) if done else {}, reason=st.reason
    )


def _metrics(tracker: Tracker, run_id: str) -> dict[str, float]:
    return {k: v for k, v in tracker.get(run_id).metrics.items() if k.startswith("test/")}


def _description(matrix: AblationMatrix, backbones: str, data: str | None) -> str:
    return (
        f"Ablation **{matrix.name}** ({len(matrix.cells)} cells x {len(matrix.seeds)} seeds), backbones "
        f"`{backbones}`, data `{data or 'synthetic demo'}`. {matrix.description or ''}\n\n"
        f"Each child run is one cell x seed; `cxrfa compare --parent <this run id>` puts them side by side."
    )


def _matrix_text(matrix: AblationMatrix) -> str:
    import yaml

    return yaml.safe_dump(matrix.model_dump(mode="json", exclude={"source"}), sort_keys=False)


# -- on a Slurm cluster ------------------------------------------------------------------------------------


@dataclass
class Submitted:
    """What ``--launcher slurm`` submitted: the array (None when nothing was left to run) and its logs."""

    array: str | None
    tasks: int
    logs: Path
    summary: AblationSummary | None = None  # with --wait: the ablation's results


def submit_to_slurm(
    matrix: AblationMatrix,
    runs: Sequence[RunConfig],
    tracker: Tracker,
    slurm: SlurmOptions,
    *,
    backbones: str,
    data: str | None,
    storage: str | None,
    explore: Sequence[str] = ("gap", "similarity"),
    wait: bool = False,
    progress: bool = True,
) -> Submitted:
    """Enqueue the units not finished and submit one Slurm array task per unit left waiting.

    The tasks find the tracking store and the queue through ``MLFLOW_TRACKING_URI`` and ``CXRFA_STORAGE``
    (sbatch passes the environment on), so no credential is written into the job's files. With ``wait`` it
    follows the units until each is final or every task ended; then the parent run is closed as ``ablate``
    closes it (KILLED, with what is left, when a task was cancelled or killed).

    Raises:
        CxrfaError: no Slurm controller answers (nothing is submitted), or the queue cannot be used.
    """
    from cxrfa import launch
    from cxrfa.claims import timeouts

    launch.check_slurm()
    started = time.monotonic()
    queue, parent, states = open_ablation(
        matrix, runs, tracker, backbones=backbones, data=data, storage=storage, build=False
    )
    arrays = json.loads(tracker.get(parent.run_id).tags.get(launch.TAG_ARRAYS, "[]"))
    # a task still queued (or requeued after a preemption) claims a unit when it starts: submit for the rest
    waiting = queue.waiting_units(states) - launch.pending(arrays)
    os.environ["MLFLOW_TRACKING_URI"] = tracker.uri  # for the tasks, through sbatch's environment
    if storage:
        os.environ["CXRFA_STORAGE"] = storage
    out = Submitted(None, 0, slurm.logs.resolve())
    if waiting > 0:
        task = launch.Task(
            slurm_task,
            runs=list(runs),
            experiment=tracker.experiment,
            queue=queue.name,
            parent_id=parent.run_id,
            explore=tuple(explore),
        )
        jobs = launch.submit(launch.executor(slurm, f"cxrfa-{matrix.name}"), [task] * waiting)
        out.array, out.tasks = launch.array_id(jobs), len(jobs)
        arrays.append(out.array)
        parent.set_tags({launch.TAG_ARRAYS: json.dumps(arrays)})
    if not wait:
        if out.array is None and queue.refresh(states):  # nothing left: close the parent as --wait would
            out.summary = close_ablation(matrix, tracker, parent, states, started)
        return out
    bar = _Bar(states, matrix.name, progress)

    def final() -> bool:
        queue.reap()
        done = queue.refresh(states)
        bar.update()
        return done

    try:
        complete = launch.wait_for(final, arrays, timeouts().poll_s)
    finally:
        bar.close()
    if not complete:
        left = sum(st.status == "PENDING" for st in states.values())
        parent.end("KILLED", f"{left} unit(s) left when every task had ended; run the same command again")
        out.summary = AblationSummary(matrix.name, parent.run_id, seconds=time.monotonic() - started)
        out.summary.results = [_result(tracker, st) for st in states.values()]
        return out
    out.summary = close_ablation(matrix, tracker, parent, states, started)
    return out


def slurm_task(
    runs: Sequence[RunConfig], experiment: str, queue: str, parent_id: str, explore: tuple[str, ...]
) -> list[str]:
    """One Slurm array task: claim one waiting unit of the ablation's queue and run it; returns its label."""
    from cxrfa import launch
    from cxrfa.tuning.queue import Queue, Worker, cpu_threads, open_queue

    tracker = Tracker(os.environ.get("MLFLOW_TRACKING_URI"), experiment)
    storage, _ = open_queue(os.environ.get("CXRFA_STORAGE"), tracker)
    work = Queue(storage, queue, tracker)
    prepare(runs, progress=False, threads=cpu_threads(1))  # the first task builds the shared stand-ins
    worker = Worker(
        functools.partial(
            _run,
            tracker=tracker,
            parent_id=parent_id,
            explore=explore,
            progress=False,
            features=EncodedSplits(),  # the task's cells share each split's encoding, as a local worker's do
        ),
        threads=cpu_threads(1),
        progress=False,
    )
    launch.preemptible(lambda: work.work_one(worker), work.put_back)
    return worker.ran
