"""Against real services: a PostgreSQL server and an `mlflow server` on it with proxied artifacts.

Everything here goes through http://127.0.0.1:<port> (MLflow) and postgresql://…@127.0.0.1:<port> (the ablation
queue and the Optuna studies), as a team's workers would. The password holds `/` and `@` on purpose: it must
work, and it must never show up on a command line. Select with `-m services`; skipped only where the
PostgreSQL binaries are absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import optuna
import pandas as pd
import pytest
import yaml
from _helpers import cli_args, cxrfa_cmd, python_m, start_text
from optuna.trial import TrialState

from cxrfa.tracking import Tracker
from cxrfa.uiserver import answers, port_free, stop_group

PG_BIN = Path(os.environ.get("CXRFA_PG_BIN", "/usr/lib/postgresql/15/bin"))
PASSWORD = "s3cr/t@pw"  # a slash and an at sign: what URL redaction used to get wrong
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(
        not (PG_BIN / "postgres").exists(),
        reason=f"PostgreSQL binaries not found in {PG_BIN} (install postgresql-15 or set CXRFA_PG_BIN)",
    ),
]


def _pg(tool: str, *args: object, **options: object) -> list[str]:
    """A PostgreSQL tool's command line: options first, then the positional arguments."""
    return [str(PG_BIN / tool), *cli_args(**options), *map(str, args)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server; yields ``postgresql://cxrfa:<password>@127.0.0.1:<port>``."""
    root = Path(tempfile.mkdtemp(prefix="cxrfa-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_pg = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    (root / "pw").write_text(PASSWORD + "\n")
    if as_pg:
        shutil.chown(root / "pw", "postgres")
    port = _free_port()
    data = root / "data"
    login = {"username": "cxrfa", "pwfile": root / "pw", "auth": "scram-sha-256"}
    init = _pg("initdb", pgdata=data, **login, encoding="UTF8", no_sync=True)
    subprocess.run([*as_pg, *init], check=True, capture_output=True)
    options = f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"
    start = _pg("pg_ctl", "start", pgdata=data, options=options, log=root / "log", wait=True)
    subprocess.run([*as_pg, *start], check=True, capture_output=True)
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    for db in ("mlflow", "optuna"):
        createdb = _pg("createdb", db, host="127.0.0.1", port=port, username="cxrfa")
        subprocess.run(createdb, check=True, env=env, capture_output=True)
    try:
        yield f"postgresql://cxrfa:{quote(PASSWORD, safe='')}@127.0.0.1:{port}"
    finally:
        stop = _pg("pg_ctl", "stop", pgdata=data, mode="immediate")
        subprocess.run([*as_pg, *stop], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on the PostgreSQL store, proxying artifacts to a folder; yields its http URL."""
    port = _free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"{postgres}/mlflow",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = python_m(
        "mlflow", "server", host="127.0.0.1", port=port, workers=2, artifacts_destination=artifacts
    )
    log = tmp_path_factory.mktemp("mlflow-log") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not answers(f"{url}/health"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    try:
        yield url
    finally:
        stop_group(proc)


@pytest.fixture(scope="session")
def team_ablation(
    mlflow_server: str, postgres: str, tmp_path_factory: pytest.TempPathFactory, smoke_standin: object
) -> dict:
    """Two `ablate --worker` processes on one matrix; one is killed with SIGKILL in the middle of a cell.
    (The stand-in is in the session home before B's home links to it: neither worker pretrains it.)"""
    root = tmp_path_factory.mktemp("team")
    spec = yaml.safe_load((REPO / "ablations" / "smoke.yaml").read_text())
    spec["name"] = "team"
    spec["base"]["train"].update({"epochs": 3, "patience": 3})  # long enough to be killed in the middle
    (root / "team.yaml").write_text(yaml.safe_dump(spec))
    # Worker B has its own cxrfa home (no local checkpoints), sharing only the demo data and stand-ins, so the
    # cell it takes over can only resume from the checkpoint A left on the tracking server.
    home_a = Path(os.environ["CXRFA_HOME"])
    home_b = Path(tempfile.mkdtemp(prefix="cxrfa-home-b-"))
    for entry in home_a.iterdir():
        if entry.name != "checkpoints" and not entry.name.endswith(".lock"):  # B takes its own locks
            (home_b / entry.name).symlink_to(entry)
    tracker = Tracker(mlflow_server, "team")
    cmd = cxrfa_cmd("ablate", matrix=root / "team.yaml", worker=True, threads=1, explore="")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "CXRFA_STORAGE": f"{postgres}/optuna"}
    procs = {}
    for name, home in (("a", home_a), ("b", home_b)):
        with open(root / f"{name}.log", "wb") as out:
            procs[name] = subprocess.Popen(
                cmd, env={**env, "CXRFA_HOME": str(home)}, stdout=out, stderr=out, cwd=root
            )
    # kill A as soon as it has logged the checkpoint of its first epoch, i.e. in the middle of its cell
    victim, deadline = None, time.monotonic() + 600
    while victim is None:
        assert procs["a"].poll() is None and time.monotonic() < deadline, (root / "a.log").read_text()[-3000:]
        for run in tracker.search("attributes.status = 'RUNNING'"):
            owner_pid = run.tags.get("cxrfa.owner", "").split(":")[1:2]
            if owner_pid == [str(procs["a"].pid)] and tracker.list_artifacts(run.run_id, "resume"):
                victim = run
        time.sleep(0.2)
    os.kill(procs["a"].pid, signal.SIGKILL)
    procs["a"].wait()
    procs["b"].wait(timeout=600)
    return {
        "tracker": tracker,
        "victim": victim,
        "rc_b": procs["b"].returncode,
        "root": root,
        "log_b": (root / "b.log").read_text(errors="replace"),
        "ps_args": cmd,
    }


def test_two_workers_run_each_cell_once_and_a_killed_workers_cell_resumes_elsewhere(
    team_ablation: dict,
) -> None:
    tracker, victim = team_ablation["tracker"], team_ablation["victim"]
    assert team_ablation["rc_b"] == 0, team_ablation["log_b"][-3000:]
    runs = tracker.search("tags.`cxrfa.cell` != ''")
    finished = sorted(r.tags["cxrfa.cell"] for r in runs if r.status == "FINISHED")
    assert finished == ["align-clip", "visual-clip"]  # exactly one FINISHED run per cell x seed
    assert {r.status for r in runs} <= {"FINISHED", "KILLED"}
    assert tracker.get(victim.run_id).status == "KILLED"
    (taken,) = [
        r for r in runs if r.status == "FINISHED" and r.tags["cxrfa.cell"] == victim.tags["cxrfa.cell"]
    ]
    assert taken.tags["cxrfa.owner"] != victim.tags["cxrfa.owner"]
    # resumed from the checkpoint the killed worker uploaded, not from scratch
    assert taken.tags["cxrfa.resumed_from"].endswith(f"(checkpoint of run {victim.run_id})")
    assert taken.artifact_uri.startswith("mlflow-artifacts:")  # artifacts went through the server


def test_compare_and_explore_work_through_the_server(
    team_ablation: dict, mlflow_server: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cxrfa.cli import app

    out, uri = tmp_path / "cmp", ["--tracking-uri", mlflow_server]
    cmp = CliRunner().invoke(
        app, ["compare", "--experiment", "team", "--out", str(out), "--n-boot", "50", *uri]
    )
    assert cmp.exit_code == 0, cmp.output[-3000:]
    assert {"align-clip", "visual-clip"} <= set(pd.read_csv(out / "cells.csv")["cell"])
    tracker = team_ablation["tracker"]
    (align,) = tracker.search("tags.`cxrfa.cell` = 'align-clip' and attributes.status = 'FINISHED'")
    assert "embed/modality_gap" not in align.metrics  # the workers ran with --explore ''
    gap = CliRunner().invoke(
        app, ["explore", "gap", "--run", align.run_id, "--out", str(tmp_path / "gap"), *uri]
    )
    assert gap.exit_code == 0, gap.output[-3000:]
    assert "embed/modality_gap" in tracker.get(align.run_id).metrics  # logged back on the run, over http


def test_two_tune_workers_on_postgres_run_exactly_the_requested_trials(
    mlflow_server: str, postgres: str, tmp_path: Path
) -> None:
    (tmp_path / "ablations").mkdir()
    shutil.copy(REPO / "ablations" / "smoke.yaml", tmp_path / "ablations" / "smoke.yaml")
    search = {"trials": 4, "sampler": "random", "pruner": "none", "study": "team-study"}
    cmd = cxrfa_cmd("tune", matrix="smoke", cell="visual-clip", **search, experiment="team-tune")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "CXRFA_STORAGE": f"{postgres}/optuna"}
    procs = [start_text(cmd, env=env, cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    storage = optuna.storages.RDBStorage(f"{postgres}/optuna")
    study = optuna.load_study(study_name="team-study", storage=storage)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    runs = Tracker(mlflow_server, "team-tune").search(
        "tags.`cxrfa.trial` != '' and attributes.status = 'FINISHED'"
    )
    numbers = [int(r.tags["cxrfa.trial"]) for r in runs]
    assert len(numbers) == len(set(numbers)) == 4 and set(numbers) == {t.number for t in finished}
    owners = {r.tags["cxrfa.owner"] for r in runs}
    assert len(owners) == 2  # both workers ran trials


def test_ui_on_postgres_keeps_the_password_off_command_lines_and_stops_whole(postgres: str) -> None:
    from test_tracking import start_ui

    proc, port = start_ui(env={**os.environ, "MLFLOW_TRACKING_URI": f"{postgres}/mlflow"})
    secret = {PASSWORD, quote(PASSWORD, safe="")}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not any(s in text for s in secret), f"password visible in {cmdline}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert port_free(port)
