"""``--launcher slurm``: the same units as local workers, run as one Slurm job array through submitit.

The queue stays the one source of truth (:mod:`cxrfa.tuning.queue`): the submitting command enqueues what is not
finished, as any ``ablate`` does, and submits one array task per unit left waiting. Each task is a worker that
claims one unit, runs it and ends; Optuna's atomic claim makes the task-to-unit mapping irrelevant, so a unit is
run once however tasks and local workers mix. Re-running the command submits only what is not finished.

Preemption and time limits: submitit asks Slurm for ``USR2`` before the kill (``--signal``). The task's handler
interrupts the run like Ctrl-C (the run ends KILLED, its epoch checkpoint kept), puts the unit back in the queue
and lets submitit requeue the task (:class:`submitit.helpers.Checkpointable`), which claims it again and
resumes from the checkpoint. A task killed without warning (``scancel``, a crashed node) is found by the stale
rule of :mod:`cxrfa.claims`: at once on the same host, else after the grace period.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import submitit
from pydantic import BaseModel, ConfigDict, Field

from cxrfa.errors import CxrfaError
from cxrfa.signals import Terminated

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
TAG_ARRAYS = "cxrfa.slurm_arrays"  # on the parent run: the job arrays submitted for it, a JSON list
PENDING_STATES = ("PD", "CF", "RQ", "RH", "RF", "RD")  # pending, configuring, requeued (fed, held)


class SlurmOptions(BaseModel):
    """What each array task asks Slurm for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partition: str | None = None
    gpus_per_task: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    time_min: int = Field(240, ge=1)  # --time, in minutes
    array_parallelism: int = Field(256, ge=1)  # tasks of the array running at once
    logs: Path = Path("mlruns") / "slurm"  # submitit's folder: one log (and pickle) per task


def parse_time(text: str) -> int:
    """Slurm's ``--time`` forms (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in whole minutes.

    Raises:
        CxrfaError: not one of those forms.
    """
    days, _, rest = text.strip().rpartition("-") if "-" in text else ("", "", text.strip())
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()) or len(parts) > 3:
        raise CxrfaError(f"--time {text!r}: expected minutes, H:MM:SS or D-HH:MM:SS, as sbatch takes it")
    nums = [int(p) for p in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (nums + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + (seconds > 0)
    elif len(nums) == 1:
        total = nums[0]
    elif len(nums) == 2:  # M:S
        total = nums[0] + (nums[1] > 0)
    else:
        total = nums[0] * 60 + nums[1] + (nums[2] > 0)
    if total < 1:
        raise CxrfaError(f"--time {text!r}: a task needs at least one minute")
    return total


def check_slurm() -> None:
    """That a Slurm controller answers ``sinfo``; called before anything is written or submitted.

    Raises:
        CxrfaError: no Slurm client here, or no controller answers.
    """
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise CxrfaError(
            "--launcher slurm: no Slurm client (sbatch, sinfo) on this machine; run on the cluster's login node"
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():  # sinfo would wait a minute for it to appear
        raise CxrfaError(
            f"--launcher slurm: SLURM_CONF={conf} does not exist; point it at the cluster's slurm.conf"
        )
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        raise CxrfaError("--launcher slurm: sinfo got no answer in 20 s; is slurmctld up?") from None
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no output"])[-1]
        where = f" (SLURM_CONF={os.environ['SLURM_CONF']})" if "SLURM_CONF" in os.environ else ""
        raise CxrfaError(f"--launcher slurm: no Slurm controller reachable{where}: {first[:200]}")


class _ScriptOnly(submitit.SlurmExecutor):
    """An executor that only writes its sbatch script: submitit's needs ``srun`` on the PATH to be built at all,
    and a dry run is for seeing the script before there is a cluster to hand (a laptop, CI)."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def executor(opts: SlurmOptions, name: str, *, script_only: bool = False) -> Any:
    """A submitit Slurm executor for ``opts`` (jobs named ``name``); ``script_only`` for :func:`sbatch_script`
    on a machine without Slurm."""
    kind = _ScriptOnly if script_only else submitit.SlurmExecutor
    ex = kind(folder=str(opts.logs.resolve() / "%j"), max_num_timeout=3)
    params: dict[str, Any] = {
        "job_name": name,
        "time": opts.time_min,
        "array_parallelism": opts.array_parallelism,
        "signal_delay_s": min(90, max(10, opts.time_min * 60 // 10)),  # time to mark the run and requeue
        "stderr_to_stdout": True,
    }
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    ex.update_parameters(**params)
    return ex


def sbatch_script(ex: Any, tasks: int) -> str:
    """The sbatch script ``ex`` would submit for an array of ``tasks`` tasks (nothing is submitted)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = {**ex.parameters, **({"map_count": tasks} if tasks > 1 else {})}
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)


def submit(ex: Any, tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Submit ``tasks`` as one job array (one job when there is one); returns submitit's jobs."""
    with ex.batch():
        jobs = [ex.submit(task) for task in tasks]
    return jobs


def array_id(jobs: Sequence[Any]) -> str:
    """The array's job id (``123`` of ``123_4``)."""
    return str(jobs[0].job_id).split("_")[0]


def tasks(arrays: Sequence[str]) -> list[str]:
    """Slurm's state code (``PD``, ``R``, ``CG``, ...) of every task of ``arrays`` still in the queue.

    Raises:
        CxrfaError: ``squeue`` fails for another reason than arrays that have all left the queue.
    """
    if not arrays:
        return []
    cmd = ["squeue", "--noheader", "--array", "--format=%t", f"--jobs={','.join(arrays)}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:  # every array has ended and left the controller's memory
            return []
        raise CxrfaError(f"squeue failed: {(out.stderr.strip().splitlines() or ['no output'])[-1][:200]}")
    return out.stdout.split()


def pending(arrays: Sequence[str]) -> int:
    """Tasks of ``arrays`` not started yet (queued, or requeued after a preemption): each will claim a unit."""
    return sum(state in PENDING_STATES for state in tasks(arrays))


# -- inside a task -----------------------------------------------------------------------------------------


class Preempted(Terminated):
    """Slurm signalled this task before preempting it or at its time limit: stop like Ctrl-C, then requeue."""


class Task(submitit.helpers.Checkpointable):
    """One array task: ``fn(**kwargs)``, requeued by submitit when Slurm preempts it (``checkpoint`` resubmits
    the same call; the work itself resumes from the queue and the run's epoch checkpoint)."""

    def __init__(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        self.fn, self.kwargs = fn, kwargs

    def __call__(self) -> Any:
        return self.fn(**self.kwargs)


def preemptible(body: Callable[[], Any], on_preempt: Callable[[], None]) -> Any:
    """Run ``body`` so that Slurm's warning signal interrupts it (:class:`Preempted`, handled everywhere like
    Ctrl-C: the run ends KILLED, its checkpoint kept); then ``on_preempt`` puts the work back and submitit
    requeues this task (its handler calls :meth:`Task.checkpoint`, ``scontrol requeue``, and exits)."""
    usr = submitit.JobEnvironment()._usr_sig()  # the signal submitit asked Slurm for (USR2)
    requeue = signal.getsignal(usr)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Preempted(signum)

    signal.signal(usr, interrupt)
    try:
        return body()
    except Preempted:
        signal.signal(usr, requeue)
        on_preempt()
        log.warning("preempted: the unit is back in the queue and this task is requeued")
        if callable(requeue):
            requeue(usr, None)
        raise


def wait_for(check: Callable[[], bool], arrays: Sequence[str], poll_s: float) -> bool:
    """Poll until ``check()`` is True (returns True) or every task of ``arrays`` has ended with it False."""
    while not check():
        if not tasks(arrays):
            return check()
        time.sleep(poll_s)
    return True


# -- tuning ------------------------------------------------------------------------------------------------


def check_shared_storage(storage: str | None) -> None:
    """Refuse a study storage that Slurm tasks on several nodes cannot share safely.

    Raises:
        CxrfaError: an SQLite URL (its file locks break on the network filesystems clusters share).
    """
    if storage is not None and storage.startswith("sqlite"):
        raise CxrfaError(
            f"--storage {storage}: SQLite breaks on a shared filesystem, where Slurm tasks meet; use "
            "postgresql://… or a journal file (a path)"
        )


def submit_study(
    matrix: Any, cfg: Any, tracker: Any, settings: Any, slurm: SlurmOptions, workers: int
) -> tuple[str, int]:
    """Submit ``workers`` Optuna workers (``n_jobs=1`` each) on the study's storage as one job array; returns
    the array id and the tasks submitted.

    Each worker runs trials until the study holds ``settings.trials`` finished ones, whoever ran them (the
    slots of :mod:`cxrfa.tuning.workers` keep the total exact), so a re-run after a lost task only tops it up.
    The storage and the tracking store reach the tasks through ``CXRFA_STORAGE`` and ``MLFLOW_TRACKING_URI``.

    Raises:
        CxrfaError: no Slurm reachable, or an SQLite storage.
    """
    check_shared_storage(settings.storage)
    check_slurm()
    os.environ["MLFLOW_TRACKING_URI"] = tracker.uri
    if settings.storage:
        os.environ["CXRFA_STORAGE"] = settings.storage
    task = Task(tune_task, matrix=matrix, cfg=cfg, experiment=tracker.experiment, settings=settings)
    jobs = submit(executor(slurm, f"cxrfa-tune-{matrix.name}"), [task] * workers)
    return array_id(jobs), len(jobs)


def tune_task(matrix: Any, cfg: Any, experiment: str, settings: Any) -> int:
    """One Slurm task of ``tune``: an Optuna worker until the study is complete; returns the trials it ran."""
    import dataclasses

    from cxrfa.tracking import Tracker
    from cxrfa.tuning import tune

    tracker = Tracker(os.environ.get("MLFLOW_TRACKING_URI"), experiment)
    mine = dataclasses.replace(
        settings, storage=os.environ.get("CXRFA_STORAGE"), n_jobs=1, progress=False, sampler_seed=None
    )
    # a preempted trial ends FAIL like an interrupted one and the study replaces it; the requeued task goes on
    return preemptible(lambda: tune(matrix, cfg, tracker, mine).ran, lambda: None)
