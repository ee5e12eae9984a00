"""Tracking store resolution: defaults, bad URLs as one clear line, credentials never shown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import cxrfa_cmd, metric_steps, start_text

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
    assert metric_steps(tracker.uri, run.run_id, "test/macro_auc") == [(0, 0.7)]  # finals at step 0
    import mlflow

    experiment = mlflow.MlflowClient(tracker.uri).get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_store(tmp_path: Path) -> None:
    """Processes creating the same new store at once (MLflow and queue migrations) all succeed."""
    code = (
        "import sys; from cxrfa.tracking import Tracker; from cxrfa.tuning.queue import open_queue; "
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


@pytest.mark.slow
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


# -- store layout and read-only opening ------------------------------------------------------------------


def test_an_sqlite_file_keeps_its_side_files_in_one_folder_beside_it(tmp_path: Path) -> None:
    from cxrfa.cell import checkpoint_dir
    from cxrfa.tracking import side_path
    from cxrfa.tuning import default_storage_path

    (tmp_path / "notes.txt").write_text("the user's own file")
    tracker = Tracker(f"sqlite:///{tmp_path / 'smoke.db'}", "exp")
    side = tmp_path / "smoke.cxrfa"
    assert checkpoint_dir(tracker) == side / "checkpoints"
    assert default_storage_path(tracker) == side / "optuna.journal"
    assert side_path(tracker.uri, "queue.db") == side / "queue.db"
    assert tracker.artifact_root == (side / "artifacts").as_uri()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "smoke.cxrfa",
        "smoke.db",
    ]  # locks inside
    # a folder store owns its folder: unchanged
    assert side_path(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "checkpoints") == (
        tmp_path / "mlruns" / "checkpoints"
    )
    # an older store with files beside its database keeps reading them there
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "optuna.journal").write_text("")
    assert side_path(f"sqlite:///{old / 'study.db'}", "checkpoints") == old / "checkpoints"
    assert side_path(f"sqlite:///{old / 'study.db'}", "optuna.journal") == old / "optuna.journal"
    assert side_path(f"sqlite:///{old / 'study.db'}", "queue.db") == old / "study.cxrfa" / "queue.db"
    assert side_path("postgresql://db/mlflow", "checkpoints") is None


def test_reading_commands_create_no_store_and_name_the_experiments_there(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrfa.cli import app

    missing = tmp_path / "typo.db"
    for args in (["explore", "gap", "--run", "abc"], ["evaluate", "--run", "abc"], ["ui"]):
        res = CliRunner().invoke(app, [*args, "--tracking-uri", f"sqlite:///{missing}"])
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and "no tracking store at" in errors[0], res.output
    assert list(tmp_path.iterdir()) == []  # no database, side folder, lock or ./out
    Tracker(str(tmp_path / "store"), "full")
    with pytest.raises(CxrfaError, match=r"no experiment 'ful' in tracking store .*; known: Default, full$"):
        Tracker(str(tmp_path / "store"), "ful", create=False)
    reader = Tracker(str(tmp_path / "store"), None, create=False)
    assert reader.experiment_id == ""
    assert [e.name for e in reader._client.search_experiments()] == ["full", "Default"]  # none added


# -- the UI -----------------------------------------------------------------------------------------------


def _cell_store(tmp_path: Path) -> Tracker:
    from cxrfa.tracking import TAG_CELL, TAG_SEED

    cells = Tracker(f"sqlite:///{tmp_path / 'smoke.db'}", "smoke")
    parent = cells.parent("smoke [demo]")
    for cell, auc in (("visual-clip", 0.70), ("align-clip", 0.74)):
        run = cells.start(f"{cell}/seed=0", {TAG_CELL: cell, TAG_SEED: "0"}, parent_id=parent.run_id)
        run.log_metrics({"test/macro_auc": auc, "test/map": auc / 3})
    Tracker(cells.uri, "tune-only").start("trial 0", {})  # no cell runs: no link
    return cells


def test_cell_view_links_open_runs_grouped_by_cell_in_the_training_view(tmp_path: Path) -> None:
    import json
    import re
    from urllib.parse import parse_qs, urlsplit

    from cxrfa.tracking import MLFLOW_SHARED_VIEW, TAG_CELL, TAG_TRIAL, VIEW_KEY, cell_views

    cells = _cell_store(tmp_path)
    (view,) = cell_views(cells.uri, "http://127.0.0.1:5000")
    assert view.experiment == "smoke"
    table, charts = (urlsplit(link.replace("/#/", "/")) for link in (view.table, view.charts))
    assert table.path == charts.path == f"/experiments/{cells.experiment_id}/runs"
    assert parse_qs(table.query) == {"workflowType": ["machine_learning"], "viewStateShareKey": [VIEW_KEY]}
    assert parse_qs(charts.query) == {**parse_qs(table.query), "compareRunsMode": ["CHART"]}
    # the view the key names, as MLflow's UI reads a saved view: an envelope whose state is JSON
    tags = cells._client.get_experiment(cells.experiment_id).tags
    envelope = json.loads(tags[MLFLOW_SHARED_VIEW + VIEW_KEY])
    assert {"name", "createdAt", "state"} <= set(envelope) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["groupBy"] == {
        "aggregateFunction": "average",
        "groupByKeys": [{"mode": "tag", "groupByData": "cxrfa.cell"}],
    }
    assert state["selectedColumns"][:2] == ["metrics.`test/macro_auc`", "metrics.`test/map`"]
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["orderByKey"] == "metrics.`test/macro_auc`"
    pattern = re.compile(state["chartsSearchFilter"])
    assert pattern.search("test/macro_auc") and pattern.search("test/map")
    assert not pattern.search("compare/visual-clip/test/macro_auc") and not pattern.search("test/auc/Mass")
    # the view's search keeps the cell runs of ablations: not their parent, nor a tuning trial with a cell tag
    cells.start("align-clip/trial=0", {TAG_CELL: "align-clip", TAG_TRIAL: "0"}).finish()
    assert {r.name for r in cells.search(state["searchFilter"])} == {
        "visual-clip/seed=0",
        "align-clip/seed=0",
    }
    # written once: a second listing leaves the tag as it is
    cell_views(cells.uri, "http://127.0.0.1:5000")
    assert cells._client.get_experiment(cells.experiment_id).tags == tags


def test_ui_prints_its_links_last_and_its_server_dies_with_it_on_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    import urllib.request

    from cxrfa.uiserver import answers, port_free

    cells = _cell_store(tmp_path)
    proc, port = start_ui("--tracking-uri", cells.uri)
    # after the address line: the experiment and its two links, nothing after them (the log is in its file)
    lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
    assert lines[0].strip() == "smoke", lines
    assert "grouped by cxrfa.cell" in lines[1] and "viewStateShareKey=" in lines[1]
    assert "one bar per cell" in lines[2] and "compareRunsMode=CHART" in lines[2]
    page = lines[1].split(": ", 1)[1].strip().split("#")[0]
    with urllib.request.urlopen(page, timeout=10) as response:  # noqa: S310 - the local UI
        assert response.status == 200 and b"<html" in response.read(2000).lower()
    log = Path(os.environ["CXRFA_HOME"]) / "ui" / f"mlflow-{port}.log"
    assert "GET / HTTP" in log.read_text()  # the access log is in the file, not on the terminal
    server = [
        p for p in Path("/proc").glob("[0-9]*") if "mlflow" in _cmdline(p) and f" {port} " in _cmdline(p)
    ]
    assert server
    proc.send_signal(signal.SIGKILL)  # no handler runs: the kernel tells the server
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (
        any(p.exists() and _cmdline(p) for p in server) or not port_free(port)
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers(f"http://127.0.0.1:{port}/health") and port_free(port)
    assert not any(p.exists() and _cmdline(p) for p in server)  # nothing orphaned


def test_a_port_held_by_a_server_an_earlier_ui_left_is_named(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cxrfa.cli import app
    from cxrfa.uiserver import ui_folder

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "mlflow.db").touch()  # a store is there; the port is refused before it is opened
    # a stand-in for an orphaned `mlflow server`: listening, in a process group of its own, "mlflow" in its argv
    listener = (
        "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
        " print(s.getsockname()[1], flush=True); time.sleep(120)"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", listener, "mlflow"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        port = int(orphan.stdout.readline())  # type: ignore[union-attr]
        ui_folder().mkdir(parents=True, exist_ok=True)
        (ui_folder() / f"{port}.json").write_text(json.dumps({"pid": orphan.pid, "port": port}))
        res = CliRunner().invoke(app, ["ui", "--tracking-uri", str(tmp_path / "store"), "--port", str(port)])
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1, res.output
        assert "earlier `cxrfa ui`" in errors[0] and f"kill -- -{orphan.pid}" in errors[0]
    finally:
        orphan.kill()
        orphan.wait()
