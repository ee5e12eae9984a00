"""Synthetic chest X-rays with real signal: the offline demo dataset.

Each patient gets a build (sex, age, site, body and organ sizes) and chronic findings from a generator seeded
by ``(seed, patient)``; each image gets its acute findings, view, positioning, noise and report from a
generator seeded by ``(seed, image)``. No global RNG is touched, so the same arguments give byte-identical
PNGs and manifest. Prevalence is long-tailed like NIH ChestX-ray14 (Infiltration ~18% ... Hernia ~0.6%),
with realistic co-occurrence (effusion with cardiomegaly/edema, consolidation with pneumonia).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrfa.config import DataConfig
from cxrfa.data.manifest import make_manifest, write_manifest
from cxrfa.data.reports import write_report
from cxrfa.data.splits import stratified_patient_split
from cxrfa.data.synth_render import Anatomy, Finding, expose, render_density
from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_write_text, cxrfa_home
from cxrfa.labels import NIH14

log = logging.getLogger(__name__)

SITE_NAMES: tuple[str, ...] = ("site-a", "site-b", "site-c")
SITE_P = (0.5, 0.3, 0.2)
SITE_RISK = {"site-a": 0.9, "site-b": 1.0, "site-c": 1.25}  # site-c sees sicker patients
COMPLETE = ".complete"

# Per-patient probability of a chronic finding; each of the patient's films shows it with PERSIST.
CHRONIC: dict[str, float] = {
    "Cardiomegaly": 0.030,
    "Emphysema": 0.026,
    "Fibrosis": 0.018,
    "Pleural_Thickening": 0.035,
    "Hernia": 0.012,
    "Mass": 0.058,
    "Nodule": 0.060,
}
PERSIST = 0.85
# Per-image base probability of an acute finding (before the co-occurrence boosts below).
ACUTE: dict[str, float] = {
    "Edema": 0.019,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Effusion": 0.100,
    "Consolidation": 0.036,
    "Infiltration": 0.171,
    "Atelectasis": 0.078,
}


@dataclass(frozen=True)
class _Patient:
    pid: int
    sex: str
    age: int
    site: str
    build: Anatomy
    chronic: dict[str, Finding]


def _finding(rng: np.random.Generator, label: str) -> Finding:
    severity = float(rng.uniform(0.3, 1.0))
    side = int(rng.choice((-1, 1)))
    if label in ("Effusion", "Pleural_Thickening") and rng.random() < 0.3:
        side = 0
    spot = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
    if label == "Pneumonia":
        spot = (spot[0], abs(spot[1]))  # lower-zone predominant
    extra = {"second": float(rng.uniform(-1, 1))} if label == "Nodule" and rng.random() < 0.3 else {}
    return Finding(severity, side, spot, extra)


def _risk(age: int, site: str) -> float:
    return (0.6 + 0.8 * float(np.clip((age - 20) / 60, 0.0, 1.0))) * SITE_RISK[site]


def _make_patient(seed: int, pid: int) -> _Patient:
    rng = np.random.default_rng([seed, 1, pid])
    female = bool(rng.random() < 0.44)
    age = int(np.clip(rng.normal(47, 17), 5, 95))
    site = str(rng.choice(SITE_NAMES, p=SITE_P))
    u = rng.uniform(-1, 1, size=12)
    build = Anatomy(
        body_w=(0.82 if female else 0.9) + 0.04 * u[0],
        lung_w=0.3 + 0.02 * u[1],
        lung_h=0.58 + 0.04 * u[2],
        lung_cx=0.38 + 0.02 * u[3],
        lung_cy=-0.08 + 0.03 * u[4],
        dome_y=(0.5 + 0.03 * u[5], 0.54 + 0.03 * u[5]),
        dome_h=0.1 + 0.02 * u[6],
        heart_w=0.35 + 0.025 * u[7],
        heart_h=0.22 + 0.02 * u[8],
        heart_cx=0.08 + 0.02 * u[9],
        rib_gap=0.11 + 0.01 * u[10],
        bone=1.0 - 0.4 * float(np.clip((age - 30) / 60, 0, 1)),
        female=female,
        aortic_knob=float(np.clip((age - 40) / 40, 0, 1)),
        ap=False,
        rotate=0.0,
        shift=(0.0, 0.0),
        site=site,
    )
    risk = _risk(age, site)
    chronic = {lab: _finding(rng, lab) for lab, p in CHRONIC.items() if rng.random() < p * risk}
    if "Emphysema" in chronic:  # over-inflated lungs, flat low diaphragm, narrow vertical heart
        build = replace(
            build,
            lung_h=build.lung_h * 1.1,
            dome_y=(build.dome_y[0] + 0.06, build.dome_y[1] + 0.06),
            dome_h=build.dome_h * 0.35,
            heart_w=build.heart_w * 0.88,
        )
    return _Patient(pid, "F" if female else "M", age, site, build, chronic)


def _image_findings(rng: np.random.Generator, patient: _Patient) -> dict[str, Finding]:
    risk = _risk(patient.age, patient.site)
    found = {lab: f for lab, f in patient.chronic.items() if rng.random() < PERSIST}
    draws = rng.random(len(ACUTE))
    has = {lab: lab in found for lab in NIH14}
    p = {lab: base * risk for lab, base in ACUTE.items()}
    p["Edema"] *= 1.0 + 3.0 * has["Cardiomegaly"]
    has["Edema"] = bool(draws[0] < p["Edema"])
    has["Pneumonia"] = bool(draws[1] < p["Pneumonia"])
    has["Pneumothorax"] = bool(draws[2] < p["Pneumothorax"])
    has["Effusion"] = bool(draws[3] < p["Effusion"] + 0.35 * has["Cardiomegaly"] + 0.4 * has["Edema"])
    has["Consolidation"] = bool(draws[4] < p["Consolidation"] + 0.45 * has["Pneumonia"])
    has["Infiltration"] = bool(draws[5] < p["Infiltration"] + 0.3 * has["Pneumonia"])
    has["Atelectasis"] = bool(draws[6] < p["Atelectasis"] + 0.2 * has["Effusion"])
    params = {lab: _finding(rng, lab) for lab in ACUTE}  # drawn for every label: stable RNG stream
    for lab in ACUTE:
        if has[lab]:
            found[lab] = params[lab]
    if "Consolidation" in found and "Pneumonia" in found:  # same lobe
        found["Consolidation"] = replace(
            found["Consolidation"], side=found["Pneumonia"].side, spot=found["Pneumonia"].spot
        )
    return {lab: found[lab] for lab in NIH14 if lab in found}


def _film(rng: np.random.Generator, patient: _Patient, findings: dict[str, Finding]) -> tuple[Anatomy, str]:
    sick = any(lab in findings for lab in ("Effusion", "Edema", "Pneumonia", "Pneumothorax", "Consolidation"))
    ap = bool(rng.random() < (0.6 if sick else 0.3))
    b = patient.build
    breath = float(rng.uniform(0.95, 1.03)) * (0.94 if ap else 1.0)
    lift = -0.04 if ap else 0.0
    film = replace(
        b,
        ap=ap,
        lung_h=b.lung_h * breath,
        dome_y=(b.dome_y[0] + lift, b.dome_y[1] + lift),
        rotate=float(rng.uniform(-0.05, 0.05)),
        shift=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
    )
    return film, "AP" if ap else "PA"


def _layout(seed: int, n: int) -> list[tuple[int, int]]:
    """(patient number, follow-up number) per image index."""
    rng = np.random.default_rng([seed, 0])
    out: list[tuple[int, int]] = []
    pid = 0
    while len(out) < n:
        pid += 1
        k = int(rng.choice(5, p=(0.45, 0.25, 0.15, 0.1, 0.05))) + 1
        out.extend((pid, j) for j in range(k))
    return out[:n]


def synthesize(
    out: Path, n: int, size: int = 96, seed: int = 0, nih_layout: bool = False, progress: bool = False
) -> Path:
    """Generate ``n`` synthetic radiographs with labels, reports and a patient-level split.

    Args:
        out: output folder; images go to ``out/images/*.png`` (8-bit grayscale, NIH-style names).
        n: number of images.
        size: image side in pixels.
        seed: dataset seed; same arguments -> byte-identical files.
        nih_layout: also write ``Data_Entry_2017_v2020.csv`` and ``train_val_list.txt``/``test_list.txt``
            like the NIH release, so ``cxrfa data index --format nih`` can read the folder.
        progress: show a progress bar.

    Returns:
        Path of the manifest (``out/manifest.csv``, label set ``nih14``).

    Raises:
        CxrfaError: ``n`` or ``size`` out of range.
    """
    if n < 1 or size < 32:
        raise CxrfaError(f"synth needs --n >= 1 and --size >= 32 (got n={n}, size={size})")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    patients: dict[int, _Patient] = {}
    rows = []
    for index, (pid, follow) in enumerate(
        tqdm(_layout(seed, n), disable=not progress, desc="synth", unit="img")
    ):
        patient = patients.get(pid) or patients.setdefault(pid, _make_patient(seed, pid))
        rng = np.random.default_rng([seed, 2, index])
        findings = _image_findings(rng, patient)
        film, view = _film(rng, patient, findings)
        pixels = expose(render_density(film, findings, size, rng), film, rng)  # (S, S) uint8
        name = f"{pid:08d}_{follow:03d}.png"
        Image.fromarray(pixels, mode="L").save(out / "images" / name, compress_level=1)
        report = write_report({k: (f.severity, f.side, f.spot[1]) for k, f in findings.items()}, view, rng)
        row = {
            "path": f"images/{name}",
            "patient_id": f"{pid:08d}",
            "study_id": f"{pid:08d}_{follow:03d}",
            "sex": patient.sex,
            "age": patient.age + follow // 2,
            "view": view,
            "domain": patient.site,
            "report": report,
        }
        row.update({lab: int(lab in findings) for lab in NIH14})
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["split"] = stratified_patient_split(frame["patient_id"], frame[list(NIH14)].to_numpy(float), seed)
    manifest_path = write_manifest(make_manifest(frame, out, list(NIH14), "nih14"), out / "manifest.csv")
    if nih_layout:
        _write_nih_files(out, frame)
    log.info("wrote %d synthetic images (%d patients) to %s", len(frame), frame["patient_id"].nunique(), out)
    return manifest_path


def _write_nih_files(out: Path, frame: pd.DataFrame) -> None:
    """``Data_Entry_2017_v2020.csv`` + ``train_val_list.txt``/``test_list.txt`` as NIH distributes them."""
    header = [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    lines = [",".join(header)]
    names = frame["path"].str.removeprefix("images/")
    for name, (_, row) in zip(names, frame.iterrows(), strict=True):
        present = [lab for lab in NIH14 if row[lab] == 1]
        labels = "|".join(present) if present else "No Finding"
        follow = int(name.split("_")[1].split(".")[0])
        lines.append(
            f"{name},{labels},{follow},{int(row['patient_id'])},{int(row['age'])},{row['sex']},"
            f"{row['view']},2500,2048,0.168,0.168"
        )
    atomic_write_text(out / "Data_Entry_2017_v2020.csv", "\n".join(lines) + "\n")
    test = frame["split"] == "test"
    atomic_write_text(out / "test_list.txt", "\n".join(names[test]) + "\n")
    atomic_write_text(out / "train_val_list.txt", "\n".join(names[~test]) + "\n")


def demo_manifest(cfg: DataConfig) -> Path:
    """The built-in demo dataset for ``cfg`` (``demo_n``, ``demo_size``, ``demo_seed``), generated once.

    Lives in ``cxrfa_home()/demo/synth-n{n}-s{size}-seed{seed}/``. It is built in a temporary folder and
    renamed into place with its completion marker already written, so concurrent or interrupted runs never
    see half a dataset.

    Returns:
        Path of the demo manifest.
    """
    from filelock import FileLock

    name = f"synth-n{cfg.demo_n}-s{cfg.demo_size}-seed{cfg.demo_seed}"
    final = cxrfa_home() / "demo" / name
    if (final / COMPLETE).is_file():
        return final / "manifest.csv"
    final.parent.mkdir(parents=True, exist_ok=True)
    # ablate's workers start while their parent synthesises: they wait for its data instead of making their own
    with FileLock(str(final.parent / f".{name}.lock")):
        if (final / COMPLETE).is_file():
            return final / "manifest.csv"
        return _synthesize_into(final, name, cfg)


def _synthesize_into(final: Path, name: str, cfg: DataConfig) -> Path:
    if final.exists():  # left by an older, interrupted layout: no marker, so not trustworthy
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        log.info("generating the demo dataset (%d images, %d px) in %s", cfg.demo_n, cfg.demo_size, final)
        synthesize(tmp, cfg.demo_n, cfg.demo_size, cfg.demo_seed)
        with open(tmp / COMPLETE, "w", newline="") as handle:
            csv.writer(handle).writerow(["n", cfg.demo_n, "size", cfg.demo_size, "seed", cfg.demo_seed])
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: use theirs
            if not (final / COMPLETE).is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return final / "manifest.csv"
