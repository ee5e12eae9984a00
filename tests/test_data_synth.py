"""Synthetic CXRs: determinism, every finding drawn, reports, the demo cache and the NIH layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrfa.config import DataConfig
from cxrfa.data.manifest import read_manifest
from cxrfa.data.synth import _make_patient, demo_manifest, synthesize
from cxrfa.data.synth_render import Finding, expose, render_density
from cxrfa.labels import NIH14, display_name


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 24, size=48, seed=3)
    synthesize(tmp_path / "b", 24, size=48, seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 25 and a == b  # 24 PNGs + manifest
    synthesize(tmp_path / "c", 24, size=48, seed=4)
    assert _files(tmp_path / "c") != a


def test_images_are_8bit_gray_and_manifest_is_complete(tmp_path: Path) -> None:
    manifest = read_manifest(synthesize(tmp_path, 40, size=40, seed=1))
    assert manifest.label_set == "nih14" and manifest.labels == list(NIH14)
    assert len(manifest) == 40 and set(manifest.frame["split"]) <= {"train", "val", "test"}
    with Image.open(manifest.image_path(0)) as img:
        assert img.mode == "L" and img.size == (40, 40)
    frame = manifest.frame
    assert frame["patient_id"].nunique() < 40  # several films per patient
    assert set(frame["view"]) <= {"PA", "AP"} and set(frame["sex"]) <= {"M", "F"}
    assert set(frame["domain"]) <= {"site-a", "site-b", "site-c"}
    assert frame.groupby("patient_id")["split"].nunique().max() == 1  # patient-level split
    y = manifest.label_matrix()
    assert np.isfinite(y).all()
    for i in range(len(frame)):  # reports state the present findings in the label's words
        report = frame["report"].iat[i].lower()
        for j, label in enumerate(NIH14):
            if y[i, j] == 1:
                assert display_name(label) in report


@pytest.mark.parametrize("label", NIH14)
def test_every_finding_changes_the_image(label: str) -> None:
    patient = _make_patient(0, 1)
    finding = Finding(severity=0.8, side=1, spot=(0.1, 0.2))
    plain = render_density(patient.build, {}, 64, np.random.default_rng(0))
    drawn = render_density(patient.build, {label: finding}, 64, np.random.default_rng(0))
    diff = np.abs(drawn - plain)
    assert diff.max() > 0.04 and (diff > 0.02).sum() >= 4, label


def test_effusion_whitens_the_costophrenic_angle_and_cardiomegaly_widens_the_heart() -> None:
    build = _make_patient(0, 1).build
    plain = render_density(build, {}, 64, np.random.default_rng(0))
    eff = render_density(build, {"Effusion": Finding(0.9, side=-1)}, 64, np.random.default_rng(0))
    lower_left = (slice(36, 48), slice(6, 22))  # image-left lung base
    assert eff[lower_left].mean() > plain[lower_left].mean() + 0.05
    big = render_density(build, {"Cardiomegaly": Finding(0.9)}, 64, np.random.default_rng(0))
    heart_row = plain[40]
    assert (big[40] > 0.45).sum() > (heart_row > 0.45).sum()


def test_sites_differ_in_exposure() -> None:
    patient = _make_patient(0, 1)
    from dataclasses import replace

    dens = render_density(patient.build, {}, 48, np.random.default_rng(0))
    means = {
        s: expose(dens, replace(patient.build, site=s), np.random.default_rng(0)).mean()
        for s in ("site-a", "site-b", "site-c")
    }
    assert max(means.values()) - min(means.values()) > 5


def test_prevalence_is_long_tailed_with_cooccurrence(tmp_path: Path) -> None:
    manifest = read_manifest(synthesize(tmp_path, 600, size=32, seed=0))
    prev = manifest.frame[manifest.labels].mean()
    assert prev.idxmax() == "Infiltration" and 0.1 < prev["Infiltration"] < 0.26
    assert prev["Hernia"] < 0.03 and prev["Effusion"] > prev["Hernia"]
    f = manifest.frame
    assert f.loc[f["Pneumonia"] == 1, "Consolidation"].mean() > prev["Consolidation"]


def test_demo_manifest_is_built_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_HOME", str(tmp_path))
    cfg = DataConfig(demo_n=20, demo_size=32, demo_seed=5)
    path = demo_manifest(cfg)
    assert path == tmp_path / "demo" / "synth-n20-s32-seed5" / "manifest.csv"
    assert (path.parent / ".complete").is_file()
    stamp = os.stat(path).st_mtime_ns
    assert demo_manifest(cfg) == path and os.stat(path).st_mtime_ns == stamp
    # no temp folders left (beside the folder, the lock its builders take turns through)
    assert [p.name for p in (tmp_path / "demo").iterdir() if p.is_dir()] == ["synth-n20-s32-seed5"]
    assert len(read_manifest(path)) == 20


def test_nih_layout_writes_the_nih_files(tmp_path: Path) -> None:
    synthesize(tmp_path, 30, size=32, seed=2, nih_layout=True)
    lines = (tmp_path / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert lines[0].startswith("Image Index,Finding Labels,Follow-up #,Patient ID") and len(lines) == 31
    listed = set((tmp_path / "train_val_list.txt").read_text().split()) | set(
        (tmp_path / "test_list.txt").read_text().split()
    )
    assert listed == {p.name for p in (tmp_path / "images").glob("*.png")}
