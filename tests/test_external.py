"""External validation: train on an NIH-format manifest, evaluate on a CheXpert-format one over the shared
labels, with the source's val thresholds; the numbers checked against scikit-learn from the logged predictions."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.config import DEMO_BACKBONES, ExternalSet, expand, load_matrix
from cxrfa.data.indexing import index_dataset
from cxrfa.data.manifest import read_manifest, write_manifest
from cxrfa.evaluate import external_rows
from cxrfa.metrics import choose_thresholds
from cxrfa.tracking import Tracker

pytestmark = pytest.mark.slow

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"
# NIH-14 and CheXpert-14 share these findings (Effusion is CheXpert's "Pleural Effusion")
SHARED = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema"]
SIGNS = {"Cardiomegaly": (8, 24, 8, 24), "Effusion": (26, 32, 0, 32)}  # where a finding brightens the image


def _image(path: Path, findings: set[str], rng: np.random.Generator) -> None:
    """A 32-px stand-in radiograph: noise, plus a bright patch per finding it shows (so a model can learn)."""
    img = rng.normal(70, 20, (32, 32))
    for finding, (r0, r1, c0, c1) in SIGNS.items():
        if finding in findings:
            img[r0:r1, c0:c1] += 110
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An NIH-format dataset (the fixture's 4 real rows and images, plus 116 rows in the same format with
    stand-in images) and a CheXpert-format one (the fixture's 500 real rows, stand-in images), both indexed."""
    rng = np.random.default_rng(3)
    base = tmp_path_factory.mktemp("external")
    nih = base / "nih"
    shutil.copytree(FIXTURES / "nih", nih)
    entry = nih / "Data_Entry_2017_v2020.csv"
    lines = entry.read_text().splitlines()
    for i in range(116):
        findings = {
            f for f, p in (("Cardiomegaly", 0.35), ("Effusion", 0.35), ("Mass", 0.1)) if rng.random() < p
        }
        name = f"{100 + i // 2:08d}_{i % 2:03d}.png"  # two images per patient
        _image(nih / "images" / name, findings, rng)
        label = "|".join(sorted(findings)) or "No Finding"
        lines.append(
            f"{name},{label},{i % 2},{100 + i // 2},{30 + i % 50},{'MF'[i % 2]},PA,2048,2048,0.14,0.14"
        )
    entry.write_text("\n".join(lines) + "\n")
    nih_csv = write_manifest(index_dataset("nih", nih, label_set="nih14").manifest, base / "nih.csv")

    chex = base / "chex"
    rows = list(csv.DictReader((FIXTURES / "chexpert" / "train.sample.csv").open(newline="")))
    for row in rows:
        shown = {
            f
            for f, col in (("Cardiomegaly", "Cardiomegaly"), ("Effusion", "Pleural Effusion"))
            if row[col] == "1.0"
        }
        _image(chex / row["Path"], shown, rng)
    sample = (FIXTURES / "chexpert" / "train.sample.csv").read_text().splitlines()
    (chex / "train.csv").write_text("\n".join(sample[:381]) + "\n")
    (chex / "valid.csv").write_text("\n".join([sample[0], *sample[381:]]) + "\n")  # 120 rows: the test split
    indexed = index_dataset("chexpert", chex, label_set="chexpert14", uncertain="ignore", frontal_only=True)
    chex_csv = write_manifest(indexed.manifest, base / "chexpert.csv")
    return nih_csv, chex_csv


def test_external_rows_map_the_shared_labels(manifests: tuple[Path, Path]) -> None:
    nih_csv, chex_csv = manifests
    labels = read_manifest(nih_csv).labels
    rows, shared, data_hash = external_rows(ExternalSet(path=str(chex_csv)), labels)
    assert sorted(shared) == sorted(SHARED) and shared["Effusion"] == "Pleural Effusion"
    chex = read_manifest(chex_csv)
    test = chex.split("test")
    assert data_hash == chex.data_hash() and list(rows.frame["path"]) == list(test.frame["path"])
    np.testing.assert_array_equal(rows.frame["Effusion"], test.frame["Pleural Effusion"])
    assert rows.frame["Mass"].isna().all()  # CheXpert has no mass label: unknown, never negative


@pytest.fixture(scope="module")
def trained(manifests: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Tracker, Path]:
    """`cxrfa train --data nih.csv --external chexpert=chexpert.csv` with a small frozen CLIP (random weights,
    so no stand-in pretraining), in a private store and cxrfa home."""
    nih_csv, chex_csv = manifests
    lab = tmp_path_factory.mktemp("run")
    matrix = {
        "name": "external",
        "base": {
            "model": {"visual": "clip", "width": 32, "heads": 2, "t1_layers": 1, "dropout": 0.0},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.003},
        },
        "cells": {"visual": {}},
    }
    (lab / "m.yaml").write_text(yaml.safe_dump(matrix))
    (lab / "bb.yaml").write_text(yaml.safe_dump({"clip": {"name": "clip", "arch": "cxrfa-tiny-clip"}}))
    store = f"sqlite:///{lab / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXRFA_HOME", str(lab / "home"))
        patch.chdir(lab)
        args = ["train", "--matrix", "m.yaml", "--cell", "visual", "--data", str(nih_csv)]
        args += ["--external", f"chexpert={chex_csv}", "--backbones", "bb.yaml", "--tracking-uri", store]
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return Tracker(store, "external"), lab


def test_train_on_nih_evaluates_chexpert_on_the_shared_labels(
    manifests: tuple[Path, Path], trained: tuple[Tracker, Path]
) -> None:
    nih_csv, chex_csv = manifests
    tracker, lab = trained
    (run,) = tracker.search("tags.`cxrfa.cell` != ''")
    chex = read_manifest(chex_csv)
    assert run.tags["cxrfa.external.chexpert.data_hash"] == chex.data_hash()
    logged = {
        k.removeprefix("external/chexpert/auc/")
        for k in run.metrics
        if k.startswith("external/chexpert/auc/")
    }
    test = chex.split("test")
    # labels the external test set has both classes of (the others are undefined, not logged)
    defined = [
        lab_
        for lab_ in SHARED
        if test.frame[dict(Effusion="Pleural Effusion").get(lab_, lab_)].nunique() == 2
    ]
    assert logged == set(defined) and "Cardiomegaly" in logged and "Effusion" in logged
    assert run.metrics["external/chexpert/n_images"] == len(test)

    # recompute from the logged predictions with scikit-learn
    tmp = lab / "downloads"
    tmp.mkdir(exist_ok=True)
    pred = pd.read_csv(tracker.download(run.run_id, "external/chexpert/predictions.csv", tmp))
    per_label = pd.read_csv(tracker.download(run.run_id, "external/chexpert/per_label.csv", tmp))
    val_pred = pd.read_csv(tracker.download(run.run_id, "val_predictions.csv", tmp))
    assert list(pred["path"]) == list(test.frame["path"]) and list(pred.columns[1:]) == SHARED
    aucs = []
    for label in defined:
        y = test.frame[dict(Effusion="Pleural Effusion").get(label, label)].to_numpy()
        known = ~np.isnan(y)
        auc = roc_auc_score(y[known], pred[label].to_numpy()[known])
        assert run.metrics[f"external/chexpert/auc/{label}"] == pytest.approx(auc, abs=1e-12)
        ap = average_precision_score(y[known], pred[label].to_numpy()[known])
        assert run.metrics[f"external/chexpert/ap/{label}"] == pytest.approx(ap, abs=1e-12)
        aucs.append(auc)
    assert run.metrics["external/chexpert/macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    # thresholds are the source's: chosen on the NIH val split from the run's own val predictions
    nih = read_manifest(nih_csv)
    val = nih.split("val")
    assert list(val_pred["path"]) == list(val.frame["path"])
    thresholds = choose_thresholds(val.label_matrix(), val_pred[nih.labels].to_numpy())
    expected = {lab_: thresholds[nih.labels.index(lab_)] for lab_ in SHARED}
    got = per_label.set_index("label")["threshold"]
    assert {lab_: got[lab_] for lab_ in SHARED} == pytest.approx(expected, abs=1e-12)


def test_the_feature_cache_serves_the_external_images(
    manifests: tuple[Path, Path], trained: tuple[Tracker, Path]
) -> None:
    nih_csv, chex_csv = manifests
    _, lab = trained
    features = lab / "home" / "features"
    cached = [
        p for p in features.rglob("*.bin") if p.relative_to(features).parts[0] not in ("labels", "texts")
    ]
    # one entry per distinct image: every NIH row and every external test image
    n_ext = len(read_manifest(chex_csv).split("test"))
    assert len(cached) == len(read_manifest(nih_csv)) + n_ext


def test_external_sets_in_a_matrix_and_on_the_command_line(
    tmp_path: Path, manifests: tuple[Path, Path]
) -> None:
    _, chex_csv = manifests
    path = tmp_path / "m.yaml"
    raw = {
        "name": "m",
        "cells": {"a": {"model": {"visual": "clip"}}},
        "external": [{"path": str(chex_csv), "name": "chex"}],
    }
    path.write_text(yaml.safe_dump(raw))
    extra = ExternalSet(path=str(chex_csv), name="again", split="all")
    (run,) = expand(load_matrix(str(path)), DEMO_BACKBONES, external=[extra])
    assert [(e.key, e.split) for e in run.data.external] == [("chex", "test"), ("again", "all")]
    raw["external"].append({"path": "other.csv", "name": "chex"})
    path.write_text(yaml.safe_dump(raw))
    bad = runner.invoke(app, ["ablate", "--matrix", str(path), "--dry-run"])
    assert bad.exit_code == 2 and "name 'chex' is used twice" in bad.output
    missing = runner.invoke(app, ["ablate", "--matrix", "smoke", "--dry-run", "--external", "nope.csv"])
    assert missing.exit_code == 2 and "--external 'nope.csv': no manifest file" in missing.output


def test_a_missing_external_set_in_a_matrix_stops_before_any_run(
    tmp_path: Path, manifests: tuple[Path, Path]
) -> None:
    nih_csv, _ = manifests
    matrix = {"name": "m", "cells": {"a": {"model": {"visual": "clip"}}}, "external": [{"path": "gone.csv"}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    (tmp_path / "bb.yaml").write_text(yaml.safe_dump({"clip": {"name": "clip", "arch": "cxrfa-tiny-clip"}}))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["train", "--matrix", str(tmp_path / "m.yaml"), "--cell", "a", "--data", str(nih_csv)]
    result = runner.invoke(app, [*args, "--backbones", str(tmp_path / "bb.yaml"), "--tracking-uri", store])
    assert result.exit_code == 2 and "external test set 'gone.csv': no such manifest file" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the store was opened
