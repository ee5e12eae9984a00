"""``cxrfa explore`` through typer's CliRunner on a small synthetic dataset (tiny CLIP, scratch weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.data.synth import synthesize

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explore-cli")
    manifest = synthesize(root / "data", n=48, size=64, seed=0)
    backbones = root / "backbones.yaml"
    backbones.write_text(
        "clip:\n  name: clip\n  arch: cxrfa-tiny-clip\ncustom:\n  name: custom\n  arch: cxrfa-cnn-small\n"
    )
    return manifest, backbones


def _run(*args: str) -> object:
    return runner.invoke(app, ["explore", *args])


def test_gap_similarity_zeroshot_write_their_outputs(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, backbones = setup
    common = ["--backbone", "clip", "--backbones", str(backbones), "--data", str(manifest), "--device", "cpu"]
    res = _run("gap", *common, "--out", str(tmp_path), "--step", "0.5", "--no-feature-cache")
    assert res.exit_code == 0, res.output
    frame = pd.read_csv(tmp_path / "gap_shift.csv")
    assert frame["delta"].tolist() == pytest.approx([f * frame["delta"].max() for f in (-0.5, 0.0, 0.5, 1.0)])
    summary = json.loads((tmp_path / "gap.json").read_text())
    assert summary["modality_gap"] == pytest.approx(frame.loc[frame["delta"] == 0, "gap"].item())
    assert summary["modality_gap"] == pytest.approx(frame["delta"].max())  # the sweep ends at closing the gap
    assert (tmp_path / "gap_shift.png").read_bytes()[:4] == b"\x89PNG"

    res = _run("similarity", *common, "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    sim = json.loads((tmp_path / "similarity.json").read_text())
    assert len(sim["labels"]) == 14 and set(sim["stages"]) == {"label prompts", "negated prompts"}
    assert len(sim["stages"]["label prompts"]["matrix"]) == 14
    assert (tmp_path / "similarity.png").stat().st_size > 5000

    res = _run("zeroshot", *common, "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert "macro" in res.stdout
    scores = json.loads((tmp_path / "zeroshot.json").read_text())
    assert set(scores["auc"]) == set(sim["labels"]) and 0.0 <= scores["macro_auc"] <= 1.0


def test_user_errors_are_one_line_exit_2(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, backbones = setup
    base = ["--backbones", str(backbones), "--data", str(manifest), "--device", "cpu"]
    cases = {
        "no text tower": ["zeroshot", "--backbone", "custom", *base],
        "not in backbone set": ["zeroshot", "--backbone", "biomedclip", *base],
        "no rows in split": [
            "gap",
            "--backbone",
            "clip",
            *base,
            "--split",
            "holdout",
            "--out",
            str(tmp_path),
        ],
        "not a cxrfa manifest": ["zeroshot", "--backbones", str(backbones), "--data", str(backbones)],
    }
    for needle, args in cases.items():
        res = _run(*args)
        assert res.exit_code == 2, (needle, res.output)
        errors = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in res.output, res.output
    assert not list(tmp_path.iterdir())  # nothing written on failure
