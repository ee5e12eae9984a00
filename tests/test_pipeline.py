"""`cxrfa pipeline run`: a tiny recipe runs every stage once, then a second run skips every stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.config import load_matrix
from cxrfa.pipeline import load_recipe, run_pipeline
from cxrfa.tracking import Tracker
from cxrfa.tuning import overlay_path

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY = {
    "name": "tiny",
    "matrix": "smoke",
    "backbones": "demo",
    "experiment": "tiny",
    "data": {"synth": {"out": "data/tiny", "n": 240, "size": 64, "seed": 0}},
    "tune": {"trials": 2, "sampler": "random", "pruner": "none", "overrides": {"train.epochs": 1}},
    "ablate": {"seeds": [0], "tuned": True, "explore": []},
    "compare": {"out": "out/tiny", "baseline": "visual-clip", "n_boot": 50},
}


def _all_runs(experiment: str) -> list:
    return Tracker(None, experiment).search("")


def test_tiny_recipe_runs_every_stage_then_skips_every_stage(lab: Path) -> None:
    (lab / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    first = runner.invoke(app, ["pipeline", "run", "tiny.yaml", "--quiet"])
    assert first.exit_code == 0, first.output
    assert (lab / "data" / "tiny" / "manifest.csv").is_file()
    overlay = overlay_path("smoke", "visual-clip")
    assert overlay.is_file() and "cxrfa pipeline run tiny.yaml" in overlay.read_text()
    assert overlay_path("smoke", "align-clip").is_file()  # every compared cell is tuned, with the same budget
    report = lab / "out" / "tiny" / "comparison.md"
    assert report.is_file() and "align-clip" in report.read_text()
    assert (
        "Tuning: every compared cell tuned with the same budget: 2 finished Optuna trials each"
        in report.read_text()
    )

    runs = _all_runs("tiny")
    trials = [r for r in runs if "cxrfa.trial" in r.tags]
    cells = [r for r in runs if "cxrfa.cell" in r.tags and "cxrfa.trial" not in r.tags]
    assert len(trials) == 4 and sorted(r.tags["cxrfa.cell"] for r in cells) == ["align-clip", "visual-clip"]
    assert all(r.status == "FINISHED" for r in cells)
    manifest = str((lab / "data" / "tiny" / "manifest.csv").resolve())
    assert all(
        r.params["data.manifest"] == manifest for r in [*trials, *cells]
    )  # the recipe's data, everywhere
    tuned = yaml.safe_load(overlay.read_text())
    visual = next(r for r in cells if r.tags["cxrfa.cell"] == "visual-clip")
    assert float(visual.params["train.lr"]) == pytest.approx(
        tuned["train.lr"]
    )  # the ablation used the overlay

    second = run_pipeline(load_recipe(lab / "tiny.yaml"), progress=False)
    assert [(s.name, s.status) for s in second.stages] == [
        ("data", "skipped"),
        ("tune visual-clip", "skipped"),
        ("tune align-clip", "skipped"),
        ("ablate", "skipped"),
        ("compare", "skipped"),
    ]
    assert len(_all_runs("tiny")) == len(runs)  # nothing new was tracked


@pytest.mark.parametrize("name", ["demo", "nih", "chexpert", "mimic"])
def test_shipped_recipes_are_valid_and_name_real_matrices_and_cells(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "pipelines" / f"{name}.yaml")
    matrix = load_matrix(recipe.matrix)
    assert recipe.tune is not None and recipe.tuned_cells(matrix) == list(
        matrix.cells
    )  # every cell, one budget
    assert "loss.tau" in matrix.tune.params
    assert recipe.compare is not None and recipe.compare.baseline in matrix.cells


def test_tuning_only_some_compared_cells_is_refused_in_one_line(lab: Path) -> None:
    lopsided = {**TINY, "tune": {**TINY["tune"], "cells": ["align-clip"]}}
    (lab / "lopsided.yaml").write_text(yaml.safe_dump(lopsided))
    result = runner.invoke(app, ["pipeline", "run", "lopsided.yaml"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "leaves out compared cell(s) visual-clip" in result.output
    assert not (lab / "data" / "tiny").exists()  # refused before any stage ran


def test_a_typo_in_a_recipe_is_one_line_naming_the_key(lab: Path) -> None:
    bad = {**TINY, "tune": {**TINY["tune"], "trails": 3}}  # type: ignore[dict-item]
    (lab / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["pipeline", "run", "bad.yaml"])
    assert result.exit_code == 2
    assert (
        result.output.startswith("error:")
        and "tune.trails" in result.output
        and "unknown key" in result.output
    )
    missing = runner.invoke(app, ["pipeline", "run", "nope.yaml"])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output


def test_an_unknown_pretrain_backbone_fails_before_any_stage(lab: Path) -> None:
    """pretrain.backbone names an entry of the recipe's backbone set (no list of its own): a name outside the
    set is one line listing the set's entries, before the data stage writes anything."""
    bad = {**TINY, "pretrain": {"backbone": "clipp", "out": "w.pt"}}
    (lab / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = runner.invoke(app, ["pipeline", "run", "bad.yaml", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "pretrain.backbone 'clipp' is not in backbone set 'demo'; known: clip, biomedclip" in result.output
    assert not (lab / "data" / "tiny").exists()
