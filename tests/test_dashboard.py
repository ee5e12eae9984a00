"""``cxrfa dashboard``: the missing-package line, the storage it opens, and a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from _helpers import cxrfa_cmd, start_text
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.tuning import open_storage

runner = CliRunner()


def _journal(path: Path, name: str = "smoke.align-clip") -> Path:
    storage, _ = open_storage(str(path))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("loss.orth_weight", 0.0, 1.0), n_trials=2)
    return path


def _one_error(res: object) -> str:
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


def test_missing_optuna_dashboard_is_one_line_naming_the_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if not installed
    line = _one_error(runner.invoke(app, ["dashboard", "--storage", str(_journal(tmp_path / "s.journal"))]))
    assert "optuna-dashboard is not installed" in line and "pip install optuna-dashboard" in line


def test_storage_and_bind_address_passed_to_the_server(tmp_path, monkeypatch) -> None:
    pytest.importorskip("optuna_dashboard")
    calls: list[dict] = []
    monkeypatch.setattr(
        "optuna_dashboard.run_server", lambda storage, **kw: calls.append({"storage": storage, **kw})
    )
    monkeypatch.chdir(tmp_path)

    # default: the journal beside the tracking store, where `cxrfa tune` puts it
    store = tmp_path / "store"
    store.mkdir()
    _journal(store / "optuna.journal", "default-study")
    res = runner.invoke(app, ["dashboard", "--tracking-uri", str(store), "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert "http://127.0.0.1:8123" in res.output and str((store / "optuna.journal").resolve()) in res.output
    (call,) = calls
    assert call["host"] == "127.0.0.1" and call["port"] == 8123
    assert [s.study_name for s in optuna.get_all_study_summaries(call["storage"])] == ["default-study"]

    # --storage: a journal path (also as journal:PATH) or a database URL
    _journal(tmp_path / "other.journal", "other-study")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="db-study", storage=url)
    for storage, name in (
        (str(tmp_path / "other.journal"), "other-study"),
        (f"journal:{tmp_path / 'other.journal'}", "other-study"),
        (url, "db-study"),
    ):
        res = runner.invoke(app, ["dashboard", "--storage", storage])
        assert res.exit_code == 0, res.output
        assert calls[-1]["port"] == 8080 and calls[-1]["host"] == "127.0.0.1"
        assert [s.study_name for s in optuna.get_all_study_summaries(calls[-1]["storage"])] == [name]

    # nothing there yet: one line, and no empty journal created
    line = _one_error(runner.invoke(app, ["dashboard", "--storage", str(tmp_path / "typo.journal")]))
    assert "no study storage at" in line and "typo.journal" in line and "cxrfa tune" in line
    assert not (tmp_path / "typo.journal").exists()
    assert "no study storage" in _one_error(
        runner.invoke(app, ["dashboard", "--tracking-uri", str(tmp_path / "x")])
    )
    assert len(calls) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serves_the_studies_until_terminated(tmp_path) -> None:
    pytest.importorskip("optuna_dashboard")
    journal = _journal(tmp_path / "optuna.journal")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = start_text(cxrfa_cmd("dashboard", storage=journal, port=port), env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _connects(port):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the dashboard did not start listening within 60 s"
            time.sleep(0.3)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/api/studies", timeout=10) as reply:
            (study,) = json.load(reply)["study_summaries"]
        assert study["study_name"] == "smoke.align-clip" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=10) as reply:
            assert len(json.load(reply)["trials"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)  # drains its output: a full pipe would hold the process's exit
    assert not _connects(port)


def test_a_port_in_use_is_one_line(tmp_path, monkeypatch) -> None:
    pytest.importorskip("optuna_dashboard")
    journal = _journal(tmp_path / "optuna.journal")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = runner.invoke(app, ["dashboard", "--storage", str(journal), "--port", str(port)])
        line = _one_error(res)
    assert f"port {port} on 127.0.0.1 is in use" in line and "--port" in line
    assert "http://" not in res.output  # refused before any URL is printed, not once the server fails


def test_the_study_names_its_metric_and_each_trial_its_mlflow_run(lab, monkeypatch) -> None:
    import shlex

    from cxrfa.tracking import TAG_TRIAL, Tracker
    from cxrfa.tuning.study import RUN_ID_ATTR, RUN_LINK_ATTR

    uri = f"sqlite:///{lab / 'runs' / 'smoke.db'}"
    (lab / "runs").mkdir()
    args = ["tune", "--matrix", "smoke", "--cell", "visual-clip", "--trials", "1", "--sampler", "random"]
    res = runner.invoke(app, [*args, "--pruner", "none", "--tracking-uri", uri], terminal_width=300)
    assert res.exit_code == 0, res.output
    journal = lab / "runs" / "smoke.cxrfa" / "optuna.journal"  # with the store's other side files
    storage, _ = open_storage(str(journal))
    study = optuna.load_study(study_name="smoke.visual-clip", storage=storage)
    assert study.metric_names == ["val/macro_auc"]  # optuna-dashboard's axis, not "Objective 0"
    (trial,) = study.trials
    run = Tracker(uri, "smoke").get(trial.user_attrs[RUN_ID_ATTR])
    assert run.tags[TAG_TRIAL] == str(trial.number)
    link = trial.user_attrs[RUN_LINK_ATTR]
    assert link.startswith("http://127.0.0.1:5000/#/experiments/") and f"/runs/{run.run_id}" in link
    # the hints carry the store; pasted, the dashboard finds the study
    (hint,) = [line for line in res.output.splitlines() if line.startswith("next: ")]
    ablate, dashboard = hint.removeprefix("next: ").split("   or   ")
    assert ablate == f"cxrfa ablate --matrix smoke --tuned --tracking-uri {uri}"
    pytest.importorskip("optuna_dashboard")
    served: list[object] = []
    monkeypatch.setattr("optuna_dashboard.run_server", lambda storage, **kw: served.append(storage))
    monkeypatch.chdir(lab / "runs")
    pasted = runner.invoke(app, shlex.split(dashboard)[1:])
    assert pasted.exit_code == 0, pasted.output
    assert [s.study_name for s in optuna.get_all_study_summaries(served[0])] == ["smoke.visual-clip"]
