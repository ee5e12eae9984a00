"""cxrfa.evaluate and ``cxrfa evaluate``: predictions matched to a manifest split, files written, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import assert_drawn, panels_drawn
from typer.testing import CliRunner

from cxrfa import plots
from cxrfa.cli import app
from cxrfa.data.manifest import Manifest, make_manifest, write_manifest
from cxrfa.errors import CxrfaError
from cxrfa.evaluate import PLOT_FILES, evaluate_predictions, predictions_frame
from cxrfa.metrics import choose_thresholds, compute_metrics, list_metrics

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion"]
FILES = ("metrics.json", "per_label.csv", *PLOT_FILES)


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    rng = np.random.default_rng(0)
    n = 90
    frame = pd.DataFrame(
        {
            "path": [f"img/{i:04d}.png" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": ["train"] * 30 + ["val"] * 25 + ["test"] * 35,
            "sex": rng.choice(["M", "F"], n),
            "age": rng.integers(10, 95, n),
            "view": rng.choice(["PA", "AP"], n),
        }
    )
    y = (rng.random((n, 3)) < [0.4, 0.3, 0.03]).astype(float)
    y[rng.random((n, 3)) < 0.1] = np.nan
    for j, lab in enumerate(LABELS):
        frame[lab] = y[:, j]
    return make_manifest(frame, tmp_path, LABELS, "nih14")


def _preds(manifest: Manifest, split: str, seed: int = 1) -> pd.DataFrame:
    part = manifest.split(split)
    y = np.nan_to_num(part.label_matrix())
    probs = np.clip(0.5 * y + np.random.default_rng(seed).random(y.shape) * 0.6, 0, 1)
    return predictions_frame(part.frame["path"].tolist(), probs, LABELS)


def test_evaluate_writes_files_and_matches_rows_by_path(
    manifest: Manifest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pred = _preds(manifest, "test")
    shuffled = pred.sample(frac=1.0, random_state=0).reset_index(drop=True)
    out = tmp_path / "eval"
    logger = logging.getLogger("cxrfa.evaluate")  # attach directly: the CLI turns off propagation of "cxrfa"
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="cxrfa.evaluate"):
            res = evaluate_predictions(shuffled, manifest, "test", out, n_boot=30)
    finally:
        logger.removeHandler(caplog.handler)
    assert "threshold 0.5" in caplog.text
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    for name in PLOT_FILES:
        assert_drawn(out / name)
    # the per-label figures: one 2.6-inch panel per label in a row (3 labels), at the figures' resolution
    size = (round(3 * 2.6 * plots.DPI), round((2.6 + 0.4) * plots.DPI))
    for name in ("roc.png", "pr.png", "confusion.png"):
        grey = assert_drawn(out / name, size)
        assert panels_drawn(grey, 1, 3, title_px=round(0.75 * plots.DPI)) == [True] * 3, name
    assert not list(out.glob(".*tmp"))
    part = manifest.split("test")
    direct = compute_metrics(part.label_matrix(), pred[LABELS].to_numpy(), LABELS, n_boot=0)
    assert res.scalars["macro_auc"] == pytest.approx(direct.scalars["macro_auc"], abs=1e-12)
    # the CIs resample the manifest's patients (two images each here), not images
    by_patient = compute_metrics(
        part.label_matrix(), pred[LABELS].to_numpy(), LABELS, n_boot=30, patients=part.frame["patient_id"]
    )
    by_image = compute_metrics(part.label_matrix(), pred[LABELS].to_numpy(), LABELS, n_boot=30)
    assert res.scalars["macro_auc_ci_low"] == by_patient.scalars["macro_auc_ci_low"]
    assert res.scalars["macro_auc_ci_low"] != by_image.scalars["macro_auc_ci_low"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["thresholds_from_val"] == 0 and saved["macro_auc"] == pytest.approx(res.scalars["macro_auc"])
    assert {"macro_auc_ci_low", "fair/worst_tpr_gap", "auc/Effusion"} <= set(saved)
    assert any(k.startswith("macro_auc_") and k.split("_")[-1] in ("head", "medium", "tail") for k in saved)
    per_label = pd.read_csv(out / "per_label.csv")
    assert per_label["label"].tolist() == LABELS and "threshold" in per_label.columns


def test_val_predictions_choose_thresholds(manifest: Manifest, tmp_path: Path) -> None:
    val = _preds(manifest, "val", seed=2)
    res = evaluate_predictions(
        _preds(manifest, "test"), manifest, "test", tmp_path / "e", val_pred=val, n_boot=0
    )
    expected = choose_thresholds(manifest.split("val").label_matrix(), val[LABELS].to_numpy())
    np.testing.assert_allclose(res.per_label["threshold"].to_numpy(), expected)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["thresholds_from_val"] == 1


def test_predictions_frame_shape_checked() -> None:
    frame = predictions_frame(["a.png", "b.png"], np.array([[0.1, 0.2], [0.3, 0.4]]), ["A", "B"])
    assert frame.columns.tolist() == ["path", "A", "B"] and frame["B"].tolist() == [0.2, 0.4]
    with pytest.raises(ValueError):
        predictions_frame(["a.png"], np.zeros((2, 2)), ["A", "B"])


def _cli_files(manifest: Manifest, tmp_path: Path, pred: pd.DataFrame) -> tuple[Path, Path]:
    man_path = write_manifest(manifest, tmp_path / "manifest.csv")
    pred_path = tmp_path / "test_predictions.csv"
    pred.to_csv(pred_path, index=False)
    return man_path, pred_path


def test_cli_evaluate(manifest: Manifest, tmp_path: Path) -> None:
    man_path, pred_path = _cli_files(manifest, tmp_path, _preds(manifest, "test"))
    val_path = tmp_path / "val_predictions.csv"
    _preds(manifest, "val").to_csv(val_path, index=False)
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(pred_path), "--manifest", str(man_path), "--out", str(out)]
    args += ["--val-predictions", str(val_path), "--n-boot", "20"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val-chosen" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    # the table's rows are the metric registry's headline metrics that were computed, with their direction
    scalars = json.loads((out / "metrics.json").read_text())
    scalars = scalars.get("scalars", scalars)
    shown = [line.split("│")[1].strip() for line in result.stdout.splitlines() if line.count("│") == 3]
    expected = [f"{m.name} {m.arrow}" for m in list_metrics() if m.headline and m.name in scalars]
    assert (
        "mse ↓" in expected
        and shown[: len(expected)] == expected
        and shown[len(expected) :] == ["thresholds"]
    )


def _drop_row(f: pd.DataFrame) -> pd.DataFrame:
    return f.iloc[1:]


def _extra_row(f: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([f, f.iloc[:1].assign(path="img/unknown.png")])


def _set(col: str, row: int, value: object):
    def edit(f: pd.DataFrame) -> pd.DataFrame:
        f = f.copy().astype({col: object})
        f.loc[row, col] = value
        return f

    return edit


BAD_INPUTS = {
    "missing label column": (lambda f: f.drop(columns=["Effusion"]), "'Effusion'"),
    "extra column": (lambda f: f.assign(Hernia=0.1), "'Hernia'"),
    "no path column": (lambda f: f.drop(columns=["path"]), "'path'"),
    "probability above 1": (_set("Cardiomegaly", 3, 1.5), "line 5, column 'Cardiomegaly'"),
    "NaN probability": (_set("Atelectasis", 0, np.nan), "line 2, column 'Atelectasis'"),
    "text probability": (_set("Effusion", 2, "high"), "line 4, column 'Effusion'"),
    "missing row": (_drop_row, "have no prediction"),
    "extra row": (_extra_row, "img/unknown.png"),
    "duplicate path": (lambda f: pd.concat([f, f.iloc[:1]]), "more than once"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_predictions_exit_2_one_line_nothing_written(
    case: str, manifest: Manifest, tmp_path: Path
) -> None:
    edit, needle = BAD_INPUTS[case]
    man_path, pred_path = _cli_files(manifest, tmp_path, edit(_preds(manifest, "test")))
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(pred_path), "--manifest", str(man_path), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(pred_path) in lines[0] and needle in lines[0], result.output
    assert not out.exists()


def test_bad_val_predictions_and_missing_files(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match="val.csv.*not in the manifest's 'val' split"):
        evaluate_predictions(
            _preds(manifest, "test"),
            manifest,
            "test",
            tmp_path / "o",
            val_pred=_preds(manifest, "test"),
            val_source="val.csv",
        )
    assert not (tmp_path / "o").exists()
    man_path, _ = _cli_files(manifest, tmp_path, _preds(manifest, "test"))
    args = [
        "evaluate",
        "--predictions",
        str(tmp_path / "nope.csv"),
        "--manifest",
        str(man_path),
        "--out",
        "x",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "nope.csv" in result.output
