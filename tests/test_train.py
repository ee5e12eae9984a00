"""`cxrfa train`: one complete MLflow run; resume after SIGKILL matches an uninterrupted run; NaN -> FAILED."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli_args, cxrfa_cmd, metric_steps
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.metrics import GAP_STATS, load_gap_stats, weighted_gap
from cxrfa.tracking import Tracker

pytestmark = pytest.mark.slow

runner = CliRunner()
TRAIN = ["train", "--matrix", "smoke", "--cell", "align-clip", "--seed", "0"]


def test_train_logs_a_complete_run(workdir: Path) -> None:
    result = runner.invoke(app, TRAIN)
    assert result.exit_code == 0, result.output
    (run,) = Tracker(None, "smoke").search("tags.`cxrfa.cell` = 'align-clip'")
    assert run.status == "FINISHED"
    assert run.params["model.aligner"] == "True" and run.params["loss.semantic"] == "0.5"
    for tag in (
        "cxrfa.seed",
        "cxrfa.config_hash",
        "cxrfa.data_hash",
        "cxrfa.backbone.source",
        "cxrfa.code_version",
    ):
        assert run.tags[tag]
    assert run.tags["cxrfa.backbone.source"].startswith("stand-in:")
    for key in (
        "test/macro_auc",
        "test/micro_auc",
        "test/map",
        "test/mse",
        "test/macro_f1",
        "test/macro_auc_head",
        "embed/modality_gap",
        "val/macro_auc",
        "train/loss",
        "train/loss_semantic",
    ):
        assert key in run.metrics, key
    per_label = [k for k in run.metrics if k.startswith("test/auc/")]  # labels with both classes in test
    assert len(per_label) >= 3 and len([k for k in run.metrics if k.startswith("test/ap/")]) == len(per_label)
    history = metric_steps(Tracker(None, "smoke").uri, run.run_id, "val/macro_auc")
    assert [step for step, _ in history] == [0, 1]
    files = set(Tracker(None, "smoke").list_artifacts(run.run_id))
    assert {
        "test_predictions.csv",
        "val_predictions.csv",
        "test_labels.csv",
        "config.json",
        "evaluation",
        "plots",
        "checkpoint",
        GAP_STATS,
    } <= files
    # the gap's per-patient sums give the logged gap to the last digit (what compare resamples)
    stats = load_gap_stats(Tracker(None, "smoke").download(run.run_id, GAP_STATS, workdir / "gap"))
    assert weighted_gap(stats, np.ones((1, stats["patients"].size)))[0] == run.metrics["embed/modality_gap"]
    plots = set(Tracker(None, "smoke").list_artifacts(run.run_id, "plots"))
    assert {"plots/gap_shift.png", "plots/label_similarity.png", "plots/training_curves.png"} <= plots
    ckpt = Tracker(None, "smoke").download(run.run_id, "checkpoint/model.pt", workdir / "dl")
    state = torch.load(ckpt, weights_only=True)
    assert state["config"]["cell"] == "align-clip" and state["state_dict"]

    # re-evaluating the logged run reproduces its logged test metrics exactly
    again = runner.invoke(app, ["evaluate", "--run", run.run_id, "--out", str(workdir / "re")])
    assert again.exit_code == 0, again.output
    scores = json.loads((workdir / "re" / "metrics.json").read_text())
    for key in ("macro_auc", "map", "mse", "macro_f1", "macro_auc_ci_low", "fair/worst_tpr_gap"):
        assert scores[key] == pytest.approx(run.metrics[f"test/{key}"], abs=1e-12), key

    # exploring the trained run rebuilds the model from its checkpoint and reproduces the logged diagnostics
    explored = runner.invoke(
        app, ["explore", "similarity", "--run", run.run_id, "--out", str(workdir / "sim")]
    )
    assert explored.exit_code == 0, explored.output
    sims = json.loads((workdir / "sim" / "explore.json").read_text())
    assert sims["embed/mean_offdiag_sim/final"] == pytest.approx(
        run.metrics["embed/mean_offdiag_sim/final"], abs=1e-5
    )
    assert (workdir / "sim" / "label_similarity.png").is_file()
    # exploring the gap again logs it back with the sums it comes from, so compare still resamples what is logged
    explored = runner.invoke(app, ["explore", "gap", "--run", run.run_id, "--out", str(workdir / "gap2")])
    assert explored.exit_code == 0, explored.output
    again = Tracker(None, "smoke").get(run.run_id).metrics["embed/modality_gap"]
    assert again == pytest.approx(run.metrics["embed/modality_gap"], rel=1e-6)
    stats = load_gap_stats(Tracker(None, "smoke").download(run.run_id, GAP_STATS, workdir / "gap3"))
    assert weighted_gap(stats, np.ones((1, stats["patients"].size)))[0] == again


def test_nan_loss_marks_run_failed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrfa.train as train_mod

    real = train_mod.compute_terms

    def poisoned(*args, **kwargs):  # the semantic term turns NaN: the run must stop with that reason
        terms = real(*args, **kwargs)
        terms["semantic"] = terms["semantic"] * float("nan")
        return terms

    monkeypatch.setattr(train_mod, "compute_terms", poisoned)
    result = runner.invoke(app, TRAIN)
    assert result.exit_code == 1
    assert "non-finite loss at epoch 0, step 0 (term: semantic)" in result.output
    (run,) = Tracker(None, "smoke").search("tags.`cxrfa.cell` = 'align-clip'")
    assert run.status == "FAILED" and "non-finite loss" in run.tags["cxrfa.failure"]


def _final_metrics(store: Path) -> dict[str, float]:
    (run,) = Tracker(str(store), "smoke").search("attributes.status = 'FINISHED'")
    return {k: v for k, v in run.metrics.items() if k.startswith("test/")}


def test_sigkill_mid_training_then_resume_matches_uninterrupted(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    matrix = workdir / "longer.yaml"  # the smoke matrix with room to be killed mid-training
    matrix.write_text((Path("ablations") / "smoke.yaml").read_text().replace("epochs: 2", "epochs: 4"))
    args = cli_args("train", matrix=matrix, cell="align-clip") + ["--tracking-uri"]
    # The uninterrupted run and the resume are ordinary starts, run here; only the killed run needs its own
    # process. All three train on one thread (this process's, as every test's), so they compute alike.
    uninterrupted = runner.invoke(app, [*args, str(workdir / "a")])
    assert uninterrupted.exit_code == 0, uninterrupted.output[-2000:]
    expected = _final_metrics(workdir / "a")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cxrfa_cmd(*args, workdir / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = workdir / "b" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (ckpts.is_dir() and any(ckpts.glob("*.pt"))):  # the first epoch's checkpoint is written
        assert proc.poll() is None and time.monotonic() < deadline, (
            "training ended before a checkpoint appeared"
        )
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Tracker(str(workdir / "b"), "smoke").search(
        "attributes.status = 'RUNNING'"
    )  # left behind by the kill

    train_log = logging.getLogger("cxrfa.train")
    train_log.addHandler(caplog.handler)  # the CLI's logging setup keeps cxrfa's records from the root logger
    try:
        with caplog.at_level(logging.INFO, logger="cxrfa.train"):
            resumed = runner.invoke(app, [*args, str(workdir / "b")])
    finally:
        train_log.removeHandler(caplog.handler)
    assert resumed.exit_code == 0, resumed.output[-2000:]
    assert "resuming from" in caplog.text
    runs = Tracker(str(workdir / "b"), "smoke").search("")
    assert sorted(r.status for r in runs) == ["FINISHED", "KILLED"]
    got = _final_metrics(workdir / "b")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
