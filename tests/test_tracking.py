"""Tracking store resolution: defaults, bad URLs as one clear line, credentials never shown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import cxrfa_cmd, start_text

from cxrfa.errors import CxrfaError
from cxrfa.tracking import Tracker, redact, redact_text, resolve_uri


def test_default_store_is_sqlite_under_mlruns_with_explicit_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = resolve_uri(None)
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    tracker = Tracker(None, "exp")
    run = tracker.start("r", {"cxrfa.cell": "c"})
    run.log_metrics({"a": 1.0, "b": float("nan")})
    run.finish()
    (info,) = tracker.search("tags.`cxrfa.cell` = 'c'")
    assert info.status == "FINISHED" and info.metrics == {"a": 1.0}
    assert info.artifact_uri.startswith((tmp_path / "mlruns" / "artifacts").as_uri())


def test_bad_uris_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match="unknown scheme 'ftp'"):
        resolve_uri("ftp://example/x")
    with pytest.raises(CxrfaError, match="does not exist"):
        resolve_uri(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    with pytest.raises(
        CxrfaError, match=r"cannot reach database postgresql://\*\*\*@127\.0\.0\.1:1/db"
    ) as err:
        Tracker("postgresql://user:secret@127.0.0.1:1/db", "x")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_redact() -> None:
    assert redact("http://u:p@host:5000/x") == "http://***@host:5000/x"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    # passwords holding '/' or '@' are hidden whole, raw or percent-encoded
    assert redact("postgresql://u:pa/ss@host/db") == "postgresql://***@host/db"
    assert redact("postgresql+psycopg://u:p@ss/w@rd@host:5432/db") == "postgresql+psycopg://***@host:5432/db"
    assert redact("postgresql://u:p%2Fw%40d@host/db") == "postgresql://***@host/db"
    assert redact("postgresql://host/db") == "postgresql://host/db"


def test_credentials_never_reach_an_error_line() -> None:
    message = "API request to http://bob:se/cr@t@127.0.0.1:1/api failed; password se/cr@t rejected"
    shown = redact_text(message, "http://bob:se/cr@t@127.0.0.1:1")
    assert "se/cr@t" not in shown and "127.0.0.1:1/api" in shown
    for uri in ("http://bob:se/cr@t@127.0.0.1:1", "postgresql://bob:se/cr@t@127.0.0.1:1/db"):
        with pytest.raises(CxrfaError) as err:
            Tracker(uri, "x")
        assert "se/cr" not in str(err.value) and "cr@t" not in str(err.value) and "\n" not in str(err.value)


def test_experiments_open_as_training_experiments(tmp_path: Path) -> None:
    tracker = Tracker(str(tmp_path / "store"), "exp")
    run = tracker.start("r", {"cxrfa.cell": "c"}, description="what this run is")
    run.log_metrics({"test/macro_auc": 0.7})
    (info,) = tracker.search()
    assert info.tags["mlflow.note.content"] == "what this run is"
    assert tracker.metric_history(run.run_id, "test/macro_auc") == [(0, 0.7)]
    import mlflow

    experiment = mlflow.MlflowClient(tracker.uri).get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_concurrent_first_use_of_a_new_store(tmp_path: Path) -> None:
    """Processes creating the same new store at once (MLflow and queue migrations) all succeed."""
    code = (
        "import sys; from cxrfa.tracking import Tracker; from cxrfa.scheduler import open_queue; "
        "t = Tracker(sys.argv[1], 'exp'); open_queue(None, t); print(t.experiment_id)"
    )
    store = str(tmp_path / "new")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, store], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1500:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, seen by all


def start_ui(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """``cxrfa ui`` on a free port, returned once it printed its URL (which must then answer)."""
    from cxrfa.uiserver import answers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start_text(cxrfa_cmd("ui", *args, port=port), env=env)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "MLflow UI:" in line:
            break
    assert answers(f"http://127.0.0.1:{port}/health"), "".join(lines)  # the URL is printed once it answers
    return proc, port


def test_ui_serves_the_store_without_putting_it_on_a_command_line(tmp_path: Path) -> None:
    from cxrfa.uiserver import port_free

    store = tmp_path / "private-store"
    Tracker(str(store), "exp")
    proc, port = start_ui("--tracking-uri", str(store))
    server = [p for p in Path("/proc").glob("[0-9]*") if "mlflow" in _cmdline(p) and str(port) in _cmdline(p)]
    assert server and all("private-store" not in _cmdline(p) for p in server)
    (uvicorn,) = [p for p in server if "uvicorn" in _cmdline(p)]
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))  # 1 on 2 cores, not MLflow's 4
    assert f"--workers {workers}" in _cmdline(uvicorn)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert port_free(port) and not any(p.exists() for p in server)  # nothing left listening or running


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_parent_is_reused(tmp_path: Path) -> None:
    tracker = Tracker(str(tmp_path / "store"), "exp")
    first = tracker.parent("m [demo]")
    first.finish()
    again = tracker.parent("m [demo]")
    assert again.run_id == first.run_id


def test_only_runs_of_stopped_processes_are_marked_killed(tmp_path: Path) -> None:
    tracker = Tracker(str(tmp_path / "store"), "exp")
    live = tracker.start("live", {"cxrfa.config_hash": "h"})  # owned by this (live) process
    code = "import os; print(os.getpid())"  # a process that has ended by the time its pid is read
    dead_pid = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    dead = tracker.start(
        "dead", {"cxrfa.config_hash": "h", "cxrfa.owner": f"{socket.gethostname()}:{dead_pid}"}
    )
    elsewhere = tracker.start("elsewhere", {"cxrfa.config_hash": "h", "cxrfa.owner": "other-host:1:1"})
    assert [r.run_id for r in tracker.abandon_unfinished("h")] == [dead.run_id]
    status = {r.run_id: r.status for r in tracker.search()}
    assert status == {live.run_id: "RUNNING", dead.run_id: "KILLED", elsewhere.run_id: "RUNNING"}
    # the holder of the cell's queue claim may take over any of them (the engine declared their workers dead)
    assert {r.run_id for r in tracker.abandon_unfinished("h", claimed=True)} == {
        live.run_id,
        elsewhere.run_id,
    }
