"""`cxrfa tune` end to end on the smoke matrix: counts, resume, workers, NaN trials, pruning, overlays."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from _helpers import cxrfa_cmd, metric_steps, start_text
from optuna.trial import TrialState
from typer.testing import CliRunner

from cxrfa.cell import checkpoint_dir
from cxrfa.cli import app
from cxrfa.config import DEMO_BACKBONES, expand, load_matrix
from cxrfa.tracking import Tracker
from cxrfa.tuning import (
    OWNER,
    SURPLUS,
    TuneSettings,
    apply_overlays,
    apply_values,
    open_storage,
    overlay_path,
    select_cell,
    tune,
)

pytestmark = pytest.mark.slow

runner = CliRunner()


def _study(name: str) -> optuna.Study:
    storage, _ = open_storage(None, Tracker(None, name.split(".")[0]))
    return optuna.load_study(study_name=name, storage=storage)


def _trial_runs(experiment: str) -> list:
    return Tracker(None, experiment).search("tags.`cxrfa.trial` != ''")


def _matrix(lab: Path, name: str, cell: str, params: dict, train: dict | None = None) -> None:
    """A copy of smoke with one cell and the given search space."""
    raw = yaml.safe_load((lab / "ablations" / "smoke.yaml").read_text())
    raw["name"] = name
    raw["cells"] = {cell: {"model": {"visual": "clip"}, "train": train or {}}}
    raw.pop("contrasts", None)  # smoke's contrasts name cells this copy no longer has
    raw["tune"] = {"metric": "val/macro_auc", "params": params}
    (lab / "ablations" / f"{name}.yaml").write_text(yaml.safe_dump(raw))


def test_study_counts_resumes_exactly_and_exports_an_overlay_that_changes_the_cell(lab: Path) -> None:
    args = ["tune", "--matrix", "smoke", "--cell", "visual-clip", "--sampler", "random", "--pruner", "none"]
    result = runner.invoke(app, [*args, "--trials", "4"])
    assert result.exit_code == 0, result.output
    study = _study("smoke.visual-clip")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    runs = _trial_runs("smoke")
    (parent,) = Tracker(None, "smoke").search("tags.`cxrfa.study_parent` = 'smoke.visual-clip'")
    assert sorted(int(r.tags["cxrfa.trial"]) for r in runs) == [0, 1, 2, 3]
    assert {r.tags["mlflow.parentRunId"] for r in runs} == {parent.run_id} and "cxrfa.cell" not in parent.tags
    assert {r.tags["cxrfa.trial_state"] for r in runs} == {"COMPLETE"} and {r.status for r in runs} == {
        "FINISHED"
    }
    for run in runs:  # each trial run carries the values Optuna sampled, as config params
        trial = study.trials[int(run.tags["cxrfa.trial"])]
        assert float(run.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
    best = max(study.trials, key=lambda t: t.value)
    assert parent.metrics["best/val/macro_auc"] == pytest.approx(best.value)
    plots = set(Tracker(None, "smoke").list_artifacts(parent.run_id, "optuna"))
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png"} <= plots

    again = runner.invoke(app, [*args, "--trials", "6"])
    assert again.exit_code == 0, again.output
    study = _study("smoke.visual-clip")
    assert [t.number for t in study.trials] == list(range(6))  # exactly two more, nothing repeated
    assert len(_trial_runs("smoke")) == 6
    assert len(Tracker(None, "smoke").search("tags.`cxrfa.study_parent` != ''")) == 1
    done = runner.invoke(app, [*args, "--trials", "6"])
    assert done.exit_code == 0 and len(_study("smoke.visual-clip").trials) == 6

    overlay = overlay_path("smoke", "visual-clip")
    text = overlay.read_text()
    assert text.startswith("# ") and "cxrfa tune" in text and "--trials 6" in text
    best = max(_study("smoke.visual-clip").trials, key=lambda t: t.value)
    values = yaml.safe_load(text)
    assert values["train.lr"] == pytest.approx(best.params["train.lr"])
    matrix = load_matrix("smoke")
    runs = expand(matrix, DEMO_BACKBONES, cells=["visual-clip", "align-clip"])
    tuned = apply_overlays(matrix, runs)
    assert tuned[0].train.lr == values["train.lr"] and tuned[0].config_hash() != runs[0].config_hash()
    assert tuned[1] == runs[1]  # align-clip has no overlay: unchanged
    # The trials are not cell runs: an ablation with the tuned overlay trains the cell instead of reusing a trial.
    dry = runner.invoke(
        app, ["ablate", "--matrix", "smoke", "--cells", "visual-clip", "--tuned", "--dry-run"]
    )
    assert dry.exit_code == 0 and tuned[0].config_hash() in dry.output
    assert not any(r.run_id in dry.output for r in _trial_runs("smoke"))


def test_two_workers_share_one_journal_and_reach_the_exact_total(lab: Path) -> None:
    Tracker(None, "smoke")  # create the experiment once, before the workers race for it
    cmd = cxrfa_cmd("tune", matrix="smoke", cell="visual-clip", trials=3, sampler="random", pruner="none")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [start_text(cmd, cwd=lab, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = _study("smoke.visual-clip")
    counted = [t for t in study.trials if not t.user_attrs.get(SURPLUS)]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    numbers = [int(r.tags["cxrfa.trial"]) for r in _trial_runs("smoke")]
    assert sorted(numbers) == sorted(t.number for t in counted) and len(set(numbers)) == 3
    owners = {t.user_attrs[OWNER] for t in counted}
    assert len(owners) == 2, "both workers ran trials"


def test_a_nan_trial_and_a_dead_workers_trial_are_recorded_as_failed_and_the_study_goes_on(lab: Path) -> None:
    _matrix(lab, "nan", "visual-clip", {"train.lr": {"choices": [0.003, 1.0e30]}}, train={"grad_clip": 0.0})
    storage, _ = open_storage(None, Tracker(None, "nan"))
    study = optuna.create_study(study_name="nan.visual-clip", storage=storage, direction="maximize")
    dead = study.ask()  # left RUNNING by a worker that died: marked FAIL when the study resumes
    dead.set_user_attr(OWNER, f"{socket.gethostname()}:{_dead_pid()}")
    study.enqueue_trial({"train.lr": 1.0e30})  # the loss becomes NaN
    study.enqueue_trial({"train.lr": 0.003})

    result = runner.invoke(app, ["tune", "--matrix", "nan", "--cell", "visual-clip", "--trials", "1"])
    assert result.exit_code == 0, result.output
    trials = _study("nan.visual-clip").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "non-finite" in trials[1].user_attrs["cxrfa.failure"] and trials[1].params["train.lr"] == 1.0e30
    runs = {int(r.tags["cxrfa.trial"]): r for r in _trial_runs("nan")}
    assert sorted(runs) == [1, 2]  # the dead worker never got as far as a run
    assert runs[1].status == "FAILED" and runs[1].tags["cxrfa.trial_state"] == "FAIL"
    assert "non-finite" in runs[1].tags["cxrfa.failure"]
    assert runs[2].status == "FINISHED" and runs[2].tags["cxrfa.trial_state"] == "COMPLETE"
    assert yaml.safe_load(overlay_path("nan", "visual-clip").read_text()) == {"train.lr": 0.003}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pruned_trials_stop_early_and_count_as_finished(lab: Path) -> None:
    _matrix(
        lab,
        "prune",
        "visual-clip",
        {"train.lr": {"low": 0.001, "high": 0.01}},
        train={"epochs": 4, "patience": 4},
    )
    matrix = load_matrix("prune")
    cfg = select_cell(matrix, DEMO_BACKBONES, "visual-clip")
    # No AUROC reaches 1.01, so from the second epoch on the pruner stops every trial.
    pruner = optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=1)
    result = tune(matrix, cfg, Tracker(None, "prune"), TuneSettings(trials=2, pruner=pruner, progress=False))
    assert result.counts["PRUNED"] == 2 and result.finished == 2 and result.overlay is None
    for trial in _study("prune.visual-clip").trials:
        assert trial.state == TrialState.PRUNED and sorted(trial.intermediate_values) == [
            0,
            1,
        ]  # 2 of 4 epochs
    runs = _trial_runs("prune")
    assert len(runs) == 2 and {r.status for r in runs} == {"KILLED"}
    assert {r.tags["cxrfa.trial_state"] for r in runs} == {"PRUNED"} and all(
        "pruned" in r.tags["cxrfa.failure"] for r in runs
    )
    for run in runs:
        assert len(metric_steps(Tracker(None, "prune").uri, run.run_id, "val/macro_auc")) == 2
        assert "test/macro_auc" not in run.metrics
    for trial in _study(
        "prune.visual-clip"
    ).trials:  # a pruned trial's epoch checkpoint is not left to resume
        trial_cfg = apply_values(cfg, trial.user_attrs["cxrfa.config"], "test")
        assert trial_cfg.train.lr == trial.params["train.lr"]
        assert not (checkpoint_dir(Tracker(None, "prune")) / f"{trial_cfg.config_hash()}.pt").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cell", "nope"], "no cell 'nope'"),
        (["--cell", "visual-clip", "--storage", "redis://host/0"], "unknown scheme 'redis'"),
        (["--cell", "visual-clip", "--storage", "missing-dir/x.journal"], "does not exist"),
        (["--cell", "visual-clip", "--matrix", "empty"], "no params"),
        (["--cell", "visual-clip", "--matrix", "typo"], "'loss.semantc' is not a config key"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(lab: Path, args: list[str], needle: str) -> None:
    _matrix(lab, "empty", "visual-clip", {})
    _matrix(lab, "typo", "visual-clip", {"loss.semantc": {"low": 0.1, "high": 1.0}})
    result = runner.invoke(app, ["tune", "--trials", "1", "--matrix", "smoke", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.strip().startswith("error:")
    assert len(result.output.strip().splitlines()) <= 2  # one line (rich may wrap a long one once)
    assert not (lab / "ablations" / "tuned").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train.lr: [unclosed\n", "not valid YAML"),
        ("- 1\n- 2\n", "must map dotted"),
        ("train.lrr: 0.1\n", "train.lrr"),
    ],
)
def test_malformed_overlay_is_one_line_and_exit_2(lab: Path, text: str, needle: str) -> None:
    path = overlay_path("smoke", "visual-clip")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    result = runner.invoke(app, ["ablate", "--matrix", "smoke", "--tuned", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "visual-clip.yaml" in result.output


def test_the_study_plots_leave_the_process_matplotlib_style_alone(tmp_path: Path) -> None:
    """optuna's matplotlib plots switch the global style to ggplot; a later run's figures must not inherit it."""
    import matplotlib
    import optuna

    from cxrfa.tracking import Tracker
    from cxrfa.tuning.report import log_plots

    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    before = dict(matplotlib.rcParams)
    tracker = Tracker(str(tmp_path / "store"), "plots")
    parent = tracker.parent("study", {})
    log_plots(study, parent)
    parent.finish()
    assert {k: v for k, v in matplotlib.rcParams.items() if before.get(k) != v} == {}
