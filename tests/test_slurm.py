"""Against a real one-node Slurm cluster: ``--launcher slurm`` submits real job arrays through submitit.

The cluster lives in a temporary directory for the module: its own munge socket, ``slurmctld``, ``slurmd`` and
``slurmdbd`` on a private MariaDB (submitit reads job states with ``sacct``; without accounting a cancelled job's
state is never known). No cgroups: processes are tracked through /proc. Every client command finds the cluster
through ``SLURM_CONF``. Skipped where the Slurm daemons are not installed or this is not root (slurmd must be).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from _helpers import cli_args, cxrfa_cmd, metric_steps
from click.testing import Result
from optuna.trial import TrialState
from test_services import PG_BIN, postgres  # noqa: F401 - the throw-away PostgreSQL server fixture
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.tracking import Tracker

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db")

REPO = Path(__file__).resolve().parents[1]
# Enough epochs that the task is still training when the test freezes it (SIGSTOP, right after its first epoch
# checkpoint) and that the resumed run has epochs left; the signal then reaches a task that is certainly
# mid-run. Unfrozen, even 60 epochs ended before scancel reached the task; 400 took a minute per test.
EPOCHS = 40
PREEMPT_EPOCHS = 400  # the preempted task is not frozen: long enough to still train when USR2 reaches it


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sbin(name: str) -> str:
    """The path of a daemon (they live in /usr/sbin, often not on a user's PATH); ``name`` if none."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin") or name


def _wait(check, what: str, log: Path, proc: subprocess.Popen[bytes] | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            text = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"{what} did not come up:\n{text}")
        time.sleep(0.1)


def _slurm_conf(root: Path, host: str, ports: dict[str, int]) -> str:
    cpus = os.cpu_count() or 1
    munge = f"socket={root / 'munge' / 'munge.sock'}"
    return f"""ClusterName=cxrfa
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo={munge},cred_expire=10
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=2
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports["dbd"]}
AccountingStoragePass={root / "munge" / "munge.sock"}
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Sockets=1 CoresPerSocket={cpus} ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _dbd_conf(root: Path, host: str, ports: dict[str, int]) -> str:
    return f"""AuthType=auth/munge
AuthInfo=socket={root / "munge" / "munge.sock"}
DbdHost={host}
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser=root
PidFile={root / "slurmdbd.pid"}
LogFile={root / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["db"]}
StorageUser=root
StorageLoc=slurm_acct_db
"""


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A one-node Slurm with accounting, up until the module ends; yields the environment its clients need."""
    if os.geteuid() != 0 or any(_sbin(d) == d for d in DAEMONS):
        pytest.skip("a test Slurm needs root and slurm-wlm, slurmdbd, munge and mariadb-server installed")
    root = Path(tempfile.mkdtemp(prefix="cxrfa-slurm-"))
    root.chmod(0o755)  # munge and mysql users read their folders in it
    host = socket.gethostname().split(".")[0]
    ports = {k: _free_port() for k in ("ctld", "slurmd", "dbd", "db")}
    procs: list[subprocess.Popen[bytes]] = []
    for sub in ("munge", "state", "spool", "db"):
        (root / sub).mkdir()
    shutil.chown(root / "munge", "munge", "munge")  # munged refuses to run as root
    (root / "slurm.conf").write_text(_slurm_conf(root, host, ports))
    (root / "slurmdbd.conf").write_text(_dbd_conf(root, host, ports))
    (root / "slurmdbd.conf").chmod(0o600)  # slurmdbd insists: it may hold the database password
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}

    def start(cmd: list[str], log: str) -> None:
        with open(root / log, "ab") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True))

    try:
        munge = root / "munge"
        start(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _sbin("munged"),
                "-F",
                f"--socket={munge / 'munge.sock'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            "munged.out",
        )
        subprocess.run(
            [
                _sbin("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={root / 'db'}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        start(
            [
                _sbin("mariadbd"),
                "--no-defaults",
                f"--datadir={root / 'db'}",
                "--user=root",
                f"--port={ports['db']}",
                "--bind-address=127.0.0.1",
                f"--socket={root / 'db.sock'}",
                "--skip-grant-tables",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
            ],
            "mariadb.log",
        )
        _wait(lambda: (munge / "munge.sock").exists(), "munged", munge / "munged.log")
        _wait(lambda: _listens(ports["db"]), "mariadb", root / "mariadb.log")
        start([_sbin("slurmdbd"), "-D"], "slurmdbd.out")
        _wait(lambda: _listens(ports["dbd"]), "slurmdbd", root / "slurmdbd.log", procs[-1])
        start([_sbin("slurmctld"), "-D", "-c", "-i"], "slurmctld.out")
        start([_sbin("slurmd"), "-D"], "slurmd.out")
        _wait(lambda: _idle(env), "the node", root / "slurmctld.log")
        yield {"SLURM_CONF": env["SLURM_CONF"], "CXRFA_SLURM_ROOT": str(root)}
    finally:
        # end every job first: slurmstepd runs outside the daemons' sessions and outlives a killed slurmd
        subprocess.run(["scancel", "--partition=debug"], env=env, capture_output=True, check=False)
        deadline = time.monotonic() + 20
        while _squeue(env) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(slurm: dict[str, str]) -> Iterator[dict[str, str]]:
    """The test cluster for one test, its variables set in this process too, where the commands that submit
    run (they submit and follow the tasks, which run in processes of their own: a fresh process would import
    torch for nothing); what those commands set for sbatch's environment is taken back afterwards. Yields the
    environment for Slurm's own clients."""
    before = dict(os.environ)
    os.environ.update(slurm)
    try:
        yield dict(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(before)


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _squeue(env: dict[str, str]) -> str:
    """``squeue``'s job lines ('' once the queue is empty or the controller is gone)."""
    out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def _idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == "idle"


def _runs(store: Path, experiment: str) -> list[tuple[str, str, str]]:
    """(config hash, status, run id) of every child run of the experiment."""
    tracker = Tracker(str(store), experiment, create=False)
    found = tracker.search("tags.`cxrfa.config_hash` != ''")
    return sorted((r.tags["cxrfa.config_hash"], r.status, r.run_id) for r in found)


def _finished_once(runs: list[tuple[str, str, str]], units: int) -> None:
    finished = [h for h, status, _ in runs if status == "FINISHED"]
    assert len(finished) == units and len(set(finished)) == units, runs


def _invoke(*args: object, **options: object) -> Result:
    """``cxrfa …`` in this process (a fresh process would only import torch again: these commands submit at
    most, and every task runs in a process of its own)."""
    return CliRunner().invoke(app, cli_args(*args, **options))


def test_no_slurm_reachable_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-such" / "slurm.conf"))
    out = _invoke("ablate", matrix="smoke", launcher="slurm", tracking_uri=tmp_path / "store")
    assert out.exit_code == 2, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--launcher slurm" in lines[0], out.stderr
    assert not (tmp_path / "store").exists()  # nothing opened, nothing submitted


def test_dry_run_prints_the_array_it_would_submit(tmp_path: Path) -> None:
    out = _invoke(
        "ablate",
        "--dry-run",
        matrix="smoke",
        launcher="slurm",
        partition="gpu",
        gpus_per_task=1,
        time="4:00:00",
        array_parallelism=1,
        tracking_uri=tmp_path / "store",
    )
    assert out.exit_code == 0, out.output
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1"):
        assert line in out.stdout, out.stdout
    assert "#SBATCH --time=240" in out.stdout and "submitit" in out.stdout


@pytest.mark.services
def test_the_cluster_runs_a_job(slurm: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **slurm}
    out = subprocess.run(
        ["sbatch", "--parsable", "--wait", "-o", str(tmp_path / "out"), "--wrap", "echo hello"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out").read_text().strip() == "hello"
    job = out.stdout.strip().split(";")[0]
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-o", "State", "-j", job], env=env, capture_output=True, text=True
    )
    assert "COMPLETED" in acct.stdout


@pytest.mark.services
def test_ablate_on_slurm_runs_each_unit_once_and_a_rerun_submits_nothing(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    args = ("ablate", "--wait")
    opts = {"matrix": "smoke", "launcher": "slurm", "tracking_uri": store, "explore": "", "time": "10"}
    first = _invoke(*args, **opts)
    assert first.exit_code == 0, first.output[-3000:]
    assert "submitted Slurm job array" in first.stderr
    _finished_once(_runs(store, "smoke"), 2)
    again = _invoke(*args, **opts)
    assert again.exit_code == 0, again.output[-3000:]
    assert "nothing to submit" in again.stderr
    assert len(_runs(store, "smoke")) == 2  # no run was repeated


def _matrix(tmp_path: Path, epochs: int) -> Path:
    """The smoke matrix's visual-clip cell, trained for ``epochs`` epochs (long enough to interrupt)."""
    spec = yaml.safe_load((REPO / "ablations" / "smoke.yaml").read_text())
    spec["name"] = "slow"
    spec["cells"] = {"visual-clip": spec["cells"]["visual-clip"]}
    spec["contrasts"] = {}
    spec.pop("tune", None)
    spec["base"]["train"].update(epochs=epochs, patience=epochs)
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _task_pid(store: Path, timeout: float = 300) -> int:
    """The pid of the Python process that runs the one array task writing under ``store`` (submitit's
    ``python -m submitit.core._submit <store>/slurm/%j``; not ``srun``, whose arguments name it too)."""
    folder, deadline = str(store.resolve()), time.monotonic() + timeout  # submitit's folder is resolved
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:  # not a process, or it ended while read
                continue
            python = Path(argv[0]).name.startswith("python")
            if python and "submitit.core._submit" in argv and argv[-2].startswith(folder):
                return int(proc.name)
        time.sleep(0.05)
    raise AssertionError(f"no task process for {store} after {timeout} s")


def _freeze_after_first_checkpoint(store: Path, timeout: float = 300) -> int:
    """SIGSTOP the task once its run has written an epoch checkpoint (with the store's side files), at a moment
    it holds no file lock (not inside a write to the SQLite store); returns its pid. Frozen, it is certainly
    mid-run when Slurm's signal reaches it, however long scancel takes."""
    pid = _task_pid(store, timeout)
    deadline = time.monotonic() + timeout
    while not any(store.glob("**/checkpoints/*.pt")):
        assert time.monotonic() < deadline, f"no epoch checkpoint under {store} after {timeout} s"
        time.sleep(0.01)
    _stop(pid, deadline)
    # Slurm's signal is taken where the task stands: inside a store transaction the interrupted write keeps
    # SQLite's lock and the run's own "stopped" tag then fails (database is locked), so step it out of any
    while _holds_a_lock(pid):
        assert time.monotonic() < deadline, f"task {pid} still holds a file lock after {timeout} s"
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002)
        _stop(pid, deadline)
    return pid


def _stop(pid: int, deadline: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    while (state := _state(pid)) not in ("T", "", "Z"):  # stopping is not instant
        assert time.monotonic() < deadline, f"task {pid} still {state!r} after SIGSTOP"
        time.sleep(0.001)
    assert state == "T", f"the task had ended its {EPOCHS} epochs before it could be stopped: raise EPOCHS"


def _holds_a_lock(pid: int) -> bool:
    """Whether ``pid`` holds a POSIX file lock (SQLite's, during a transaction), as /proc/locks lists them."""
    return any(line.split()[4:5] == [str(pid)] for line in Path("/proc/locks").read_text().splitlines())


def _state(pid: int) -> str:
    """The state letter of ``pid`` (R, S, T stopped, Z ended, ...); '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def _held_until_gone(pid: int, timeout: float = 60) -> None:
    """Keep the task stopped until it is gone: a cancel sends SIGCONT and SIGTERM first and SIGKILL only
    KillWait later (seconds in which a running task trained ~30 more epochs), so it must not run on between."""
    deadline = time.monotonic() + timeout
    while (state := _state(pid)) not in ("", "Z"):
        assert time.monotonic() < deadline, f"task {pid} still {state!r} {timeout} s after scancel"
        if state != "T":
            with contextlib.suppress(ProcessLookupError):  # it may end between the two looks
                os.kill(pid, signal.SIGSTOP)
        time.sleep(0.002)


def _submit_slow(tmp_path: Path, epochs: int = EPOCHS) -> tuple[Path, dict[str, object], str]:
    """Submit a one-unit ablation of ``epochs`` epochs without waiting: (store, options, array id)."""
    store = tmp_path / "store"
    opts = {
        "matrix": _matrix(tmp_path, epochs),
        "launcher": "slurm",
        "tracking_uri": store,
        "explore": "",
        "time": "10",
    }
    out = _invoke("ablate", **opts)
    assert out.exit_code == 0, out.output[-3000:]
    match = re.search(r"submitted Slurm job array (\d+)", out.stderr)
    assert match, out.output[-3000:]
    return store, opts, match.group(1)


def _gone(env: dict[str, str], job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued after {timeout} s")


@pytest.mark.services
def test_a_cancelled_task_is_run_by_the_next_submission_once(cluster: dict[str, str], tmp_path: Path) -> None:
    env = cluster
    store, opts, job = _submit_slow(tmp_path)
    pid = _freeze_after_first_checkpoint(store)
    # killed without warning (a plain scancel ends the same way, KillWait later: submitit ignores SIGTERM)
    subprocess.run(["scancel", "--signal=KILL", job], env=env, check=True)
    _held_until_gone(pid)
    _gone(env, job)
    again = _invoke("ablate", "--wait", **opts)
    assert again.exit_code == 0, again.output[-3000:]
    assert "submitted Slurm job array" in again.stderr, again.output[-4000:]
    runs = _runs(store, "slow")
    _finished_once(runs, 1)
    # the cancelled task's run, closed by the task that took over
    assert sorted(status for _, status, _ in runs) == ["FINISHED", "KILLED"]


@pytest.mark.services
def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    # Not frozen like the cancelled task: a task stopped and continued has its queue heartbeat thread and its
    # preemption handler write to the one SQLite queue at the same moment, and one of them met "database is
    # locked". So the task runs PREEMPT_EPOCHS epochs, long enough to be mid-run when the signal arrives.
    env = cluster
    store, opts, job = _submit_slow(tmp_path, PREEMPT_EPOCHS)
    deadline = time.monotonic() + 300
    while not any(store.glob("**/checkpoints/*.pt")):  # past its first epoch
        assert time.monotonic() < deadline, f"no epoch checkpoint under {store} after 300 s"
        time.sleep(0.05)
    # what Slurm sends before preempting or at the time limit (submitit's own test hook does the same)
    subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    again = subprocess.run(  # follows the requeued task, from its own process as a user would
        cxrfa_cmd("ablate", "--wait", **opts),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    runs = _runs(store, "slow")
    _finished_once(runs, 1)
    (done,) = [r for r in runs if r[1] == "FINISHED"]
    tracker = Tracker(str(store), "slow", create=False)
    (stopped,) = [r for r in runs if r[1] == "KILLED"]  # ended by our handler, not killed by the signal
    assert tracker.get(stopped[2]).tags.get("cxrfa.failure") == "stopped by SIGUSR2"
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-o", "State", "-j", job], env=env, capture_output=True, text=True
    )
    assert "REQUEUED" in acct.stdout, acct.stdout  # submitit requeued the same task
    resumed = tracker.get(done[2]).tags.get("cxrfa.resumed_from", "")
    assert resumed.startswith("epoch "), resumed
    steps = [step for step, _ in metric_steps(tracker.uri, done[2], "val/macro_auc")]
    assert (
        min(steps) > 0 and max(steps) == PREEMPT_EPOCHS - 1
    )  # its epochs continued where the preempted task stopped


@pytest.mark.services
@pytest.mark.skipif(not (PG_BIN / "postgres").exists(), reason=f"no PostgreSQL binaries in {PG_BIN}")
def test_tune_on_slurm_against_postgres_holds_exactly_the_trials_asked_for(
    cluster: dict[str, str],
    postgres: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "ablations").mkdir()
    shutil.copy(REPO / "ablations" / "smoke.yaml", tmp_path / "ablations" / "smoke.yaml")
    monkeypatch.chdir(tmp_path)
    os.environ["CXRFA_STORAGE"] = f"{postgres}/optuna"  # taken back with the cluster's variables
    search = {"trials": 8, "sampler": "random", "study": "slurm-study", "launcher": "slurm", "workers": 2}
    out = _invoke("tune", "--wait", matrix="smoke", cell="visual-clip", **search, tracking_uri="store")
    assert out.exit_code == 0, out.output[-3000:]
    assert "submitted Slurm job array" in out.stderr
    study = optuna.load_study(
        study_name="slurm-study", storage=optuna.storages.RDBStorage(f"{postgres}/optuna")
    )
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8
    runs = Tracker(str(tmp_path / "store"), "smoke", create=False).search("tags.`cxrfa.trial` != ''")
    numbers = [
        int(r.tags["cxrfa.trial"]) for r in runs if r.tags.get("cxrfa.trial_state") in ("COMPLETE", "PRUNED")
    ]
    assert sorted(numbers) == sorted(t.number for t in finished)  # one run per trial, no number twice
    assert len({r.tags["cxrfa.owner"] for r in runs}) == 2  # both tasks ran trials


def test_tune_on_slurm_refuses_sqlite(tmp_path: Path) -> None:
    out = _invoke(
        "tune",
        matrix="smoke",
        cell="visual-clip",
        trials=2,
        launcher="slurm",
        storage=f"sqlite:///{tmp_path / 's.db'}",
    )
    assert out.exit_code == 2 and "SQLite breaks on a shared filesystem" in out.stderr, out.output
