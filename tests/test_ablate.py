"""`cxrfa ablate` end to end on the smoke matrix: resumable, failure-isolated; `compare` checked independently."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _helpers import cli_args, cxrfa_cmd, metric_steps, start_text
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.tracking import TAG_CELLS, Tracker

pytestmark = pytest.mark.slow

runner = CliRunner()
# the runs of the smoke matrix with seeds 0 and 1, as sorted (cell, seed) pairs
SMOKE_RUNS = [("align-clip", "0"), ("align-clip", "1"), ("visual-clip", "0"), ("visual-clip", "1")]


def _finished(store: str | None, experiment: str = "smoke") -> list:
    return Tracker(store, experiment).search("tags.`cxrfa.cell` != '' and attributes.status = 'FINISHED'")


def test_smoke_ablation_then_rerun_skips_everything_and_compare_is_right(workdir: Path) -> None:
    result = runner.invoke(app, ["ablate", "--matrix", "smoke", "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    runs = _finished(None)
    assert sorted((r.tags["cxrfa.cell"], r.tags["cxrfa.seed"]) for r in runs) == SMOKE_RUNS
    (parent,) = Tracker(None, "smoke").search("tags.`cxrfa.parent` != ''")
    assert {r.tags["mlflow.parentRunId"] for r in runs} == {parent.run_id}
    assert {r.name for r in runs} == {
        "align-clip/seed=0",
        "align-clip/seed=1",
        "visual-clip/seed=0",
        "visual-clip/seed=1",
    }

    logs = sorted((workdir / "mlruns" / "workers").glob("*.log"))  # the default layout started two workers
    sizes = [p.stat().st_size for p in logs]
    again = runner.invoke(app, ["ablate", "--matrix", "smoke", "--seeds", "0,1"])
    assert again.exit_code == 0, again.output
    assert again.output.count("SKIPPED") == 4
    assert (
        len(logs) == 2 and [p.stat().st_size for p in logs] == sizes
    )  # nothing left to run: no worker started
    assert len(_finished(None)) == 4 and len(Tracker(None, "smoke").search("tags.`cxrfa.parent` != ''")) == 1

    dry = runner.invoke(app, ["ablate", "--matrix", "smoke", "--seeds", "0,1", "--dry-run"])
    assert dry.exit_code == 0 and all(r.run_id in dry.output for r in runs)

    out = workdir / "cmp"
    cmp = runner.invoke(app, cli_args("compare", experiment="smoke", out=out, n_boot=200))
    assert cmp.exit_code == 0, cmp.output
    table = pd.read_csv(out / "cells.csv", index_col="cell")
    # Matrix order, whatever order the queue ran the cells in (longest first); then the constant predictor.
    assert json.loads(parent.tags[TAG_CELLS]) == list(table.index)[:2] == ["visual-clip", "align-clip"]
    assert "align-clip − visual-clip" in (out / "comparison.md").read_text()  # smoke.yaml's declared contrast
    tracker = Tracker(None, "smoke")
    for cell in ("visual-clip", "align-clip"):  # recompute each run's macro AUROC from its logged predictions
        aucs = []
        for run in (r for r in runs if r.tags["cxrfa.cell"] == cell):
            pred = pd.read_csv(tracker.download(run.run_id, "test_predictions.csv", workdir / run.run_id))
            truth = pd.read_csv(tracker.download(run.run_id, "test_labels.csv", workdir / run.run_id))
            per_label = []
            for label in truth.columns[1:]:
                known = truth[label].notna()
                y = truth.loc[known, label].to_numpy()
                if 0 < y.sum() < len(y):
                    per_label.append(roc_auc_score(y, pred.loc[known, label]))
            aucs.append(np.mean(per_label))
        assert table.loc[cell, "macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
        assert table.loc[cell, "seeds"] == 2
    contrasts = pd.read_csv(out / "comparison.csv")
    row = contrasts[contrasts["metric"] == "macro_auc"].iloc[0]
    assert (row["family"], row["cell"], row["other"]) == ("alignment", "align-clip", "visual-clip")
    assert 0 < row["p_holm"] <= 1
    assert (out / "comparison.html").read_text().count("data:image/png;base64") == 2
    logged = {a for a in tracker.list_artifacts(parent.run_id, "comparison")}
    assert "comparison/comparison.md" in logged


def test_failing_cell_leaves_the_others_finished(workdir: Path) -> None:
    matrix = workdir / "failing.yaml"
    spec = yaml.safe_load((Path("ablations") / "smoke.yaml").read_text())
    # a third cell whose loss explodes (huge lr, no clipping) between the two good ones
    exploding = {"model": {"visual": "clip"}, "train": {"lr": 1.0e30, "grad_clip": 0.0}}
    good = spec["cells"]
    spec["name"] = "failing"
    spec["cells"] = {
        "visual-clip": good["visual-clip"],
        "exploding": exploding,
        "align-clip": good["align-clip"],
    }
    matrix.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["ablate", "--matrix", str(matrix)])
    assert result.exit_code == 1
    assert "exploding" in result.output and "non-finite loss" in result.output
    assert sorted(r.tags["cxrfa.cell"] for r in _finished(None, "failing")) == ["align-clip", "visual-clip"]
    (failed,) = Tracker(None, "failing").search(
        "attributes.status = 'FAILED' and tags.`cxrfa.cell` = 'exploding'"
    )
    assert "non-finite loss" in failed.tags["cxrfa.failure"]


def test_sigkill_mid_cell_then_rerun_completes_without_duplicates(workdir: Path) -> None:
    store = str(workdir / "store")
    args = cli_args("ablate", matrix="smoke", tracking_uri=store)
    proc = subprocess.Popen(cxrfa_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # kill while the second cell is training: the first has finished, the second is RUNNING
    while _cells_started(Path(store, "mlflow.db")) < 2:
        running = proc.poll() is None and time.monotonic() < deadline
        assert running, "ablation ended before the second cell started"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # the rerun is an ordinary start (here in this process): what it must find is the killed process's leftovers
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output[-2000:]
    runs = Tracker(store, "smoke").search("tags.`cxrfa.cell` != ''")
    finished = [(r.tags["cxrfa.cell"], r.tags["cxrfa.seed"]) for r in runs if r.status == "FINISHED"]
    assert sorted(finished) == [("align-clip", "0"), ("visual-clip", "0")]  # exactly one per cell x seed
    assert all(r.status in ("FINISHED", "KILLED") for r in runs)  # nothing left RUNNING


def _cells_started(db: Path) -> int:
    """Child runs created so far, read straight from the store without touching it (the writer is live)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from tags where key = 'cxrfa.cell'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _ablate_proc(store: str, **options: object) -> subprocess.Popen[str]:
    return start_text(cxrfa_cmd("ablate", matrix="smoke", tracking_uri=store, **options))


def test_processes_started_together_on_a_fresh_store_run_each_cell_once(workdir: Path) -> None:
    """`ablate --workers 2` and a plain `ablate` at the same moment on a store that does not exist yet: they
    create the MLflow store and the queue together, share the four runs, and nothing runs twice."""
    store = str(workdir / "fresh")
    pool = _ablate_proc(store, seeds="0,1", workers=2, threads=1)
    plain = _ablate_proc(store, seeds="0,1")
    outputs = [p.communicate(timeout=900)[0] for p in (pool, plain)]
    assert [pool.returncode, plain.returncode] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    tracker = Tracker(store, "smoke")
    runs = tracker.search("tags.`cxrfa.cell` != ''")
    ran = sorted((r.tags["cxrfa.cell"], r.tags["cxrfa.seed"], r.status) for r in runs)
    assert ran == [(cell, seed, "FINISHED") for cell, seed in SMOKE_RUNS]
    assert len(tracker.search("tags.`cxrfa.parent` != ''")) == 1
    pids = {r.tags["cxrfa.owner"].split(":")[1]: r for r in runs}
    assert len(pids) >= 2 and str(pool.pid) not in pids  # the pool's workers ran cells, not its coordinator
    for pid, run in pids.items():  # the pool's workers train with their pinned single thread
        assert run.tags["cxrfa.threads"] == "1" or pid == str(plain.pid)
    for run in runs:  # final metrics at step 0: one bar per run in MLflow's chart view
        assert metric_steps(tracker.uri, run.run_id, "test/macro_auc") == [(0, run.metrics["test/macro_auc"])]
        assert "visual" in run.tags["mlflow.note.content"]


def test_a_worker_silent_on_another_machine_loses_its_cell_after_the_grace_period(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrfa.cell import run_cell
    from cxrfa.config import DEMO_BACKBONES, expand, load_matrix
    from cxrfa.tuning import queue as scheduler

    monkeypatch.setenv("CXRFA_HEARTBEAT_S", "1")
    monkeypatch.setenv("CXRFA_GRACE_S", "2")
    tracker = Tracker(str(workdir / "store"), "smoke")
    (cfg,) = expand(load_matrix("smoke"), DEMO_BACKBONES, cells=["visual-clip"])
    storage, _ = scheduler.open_queue(None, tracker)
    queue = scheduler.Queue(storage, "smoke-queue", tracker)
    states = queue.enqueue([cfg])
    # a worker on another machine claims the cell, starts its run, beats once and goes silent
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: heartbeats are meant for optimize()
        ghost = queue.study.ask()
    ghost.set_user_attr(scheduler.OWNER, "elsewhere:4242:1")
    storage.record_heartbeat(ghost._trial_id)
    lost = tracker.start(
        "visual-clip/seed=0", {"cxrfa.config_hash": cfg.config_hash(), "cxrfa.owner": "elsewhere:4242:1"}
    )
    queue.add(cfg, 0)  # and a machine that started at the same moment enqueued the cell again
    started = time.monotonic()
    worker = scheduler.Worker(lambda c, claim: run_cell(c, tracker, claim=claim, explore=(), progress=False))
    queue.work(states, worker)
    waited = time.monotonic() - started
    assert waited >= 2  # nothing was taken from a live-looking worker before the grace period
    assert states[cfg.config_hash()].status == "FINISHED"
    runs = {r.run_id: r.status for r in tracker.search(f"tags.`cxrfa.config_hash` = '{cfg.config_hash()}'")}
    assert runs.pop(lost.run_id) == "KILLED" and list(runs.values()) == ["FINISHED"]
    trials = sorted(queue.units(), key=lambda t: t.number)
    outcomes = [(t.state.name, t.user_attrs.get(scheduler.OUTCOME)) for t in trials]
    assert outcomes == [("FAIL", None), ("PRUNED", "duplicate"), ("COMPLETE", "finished")]
    assert trials[2].system_attrs["failed_trial"] == 0  # Optuna's retry of the silent worker's trial


def test_each_worker_gets_its_device_and_a_share_of_the_cores() -> None:
    from cxrfa.errors import CxrfaError
    from cxrfa.tuning.queue import device_env, threads_per_worker

    visible = "CUDA_VISIBLE_DEVICES"
    devices = [device_env(("cuda:0", "cuda:1"), i) for i in range(3)]
    assert devices == [{visible: "0"}, {visible: "1"}, {visible: "0"}]
    assert device_env(("cpu",), 0) == {visible: ""} and device_env((), 5) == {}
    with pytest.raises(CxrfaError, match="'gpu1' is not cpu or cuda:N"):
        device_env(("gpu1",), 0)
    cores = os.cpu_count() or 1
    assert threads_per_worker(2, None) == max(1, cores // 2) and threads_per_worker(2, 3) == 3
    assert threads_per_worker(cores * 4, None) == 1


def test_the_queue_opens_while_another_process_holds_the_sqlite_write_lock(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite fails a read-to-write upgrade at once ("database is locked") while another process writes, busy
    timeout or not: opening the queue tries again instead of stopping the command with exit 2."""
    import optuna
    import sqlalchemy.exc

    from cxrfa.tuning import queue

    real, calls = optuna.storages.RDBStorage, []

    def busy_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # what the driver raised when a requeued task held the lock
            raise sqlalchemy.exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(queue.optuna.storages, "RDBStorage", busy_once)
    storage, _ = queue.open_queue(None, Tracker(str(workdir / "store"), "smoke"))
    assert len(calls) == 2 and storage.get_all_studies() == []
