"""``cxrfa data index``: read a dataset in any supported format, check every row, split, build a manifest.

Every unusable row is reported as one line naming the file, the row and the problem. Without
``skip_bad`` the first problem is raised (with the count of the others); with it, the rows are dropped and the
counts per reason are reported. Images are checked concurrently: each must exist and decode (PNG chunks and
CRCs verified; JPEG decoded at reduced scale, which still catches truncation).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxrfa.data.image_limits import bomb_problem, oversized
from cxrfa.data.manifest import META_COLUMNS, NA_STRINGS, Manifest, confined, make_manifest, path_escapes
from cxrfa.data.readers import BadRow, RawTable, ReadOptions, get_reader
from cxrfa.data.splits import carve_validation, stratified_patient_split, warn_overlap
from cxrfa.errors import CxrfaError
from cxrfa.io import file_kind
from cxrfa.labels import Blank, Uncertain, get_label_set

log = logging.getLogger(__name__)

VAL_FRACTION_OF_TRAINVAL = (
    0.125  # of a given train+val pool (NIH lists, CheXpert train.csv): ~10% of all images
)


@dataclass
class IndexResult:
    """A built manifest and what was left out of it."""

    manifest: Manifest
    dropped: dict[str, int] = field(default_factory=dict)  # unusable rows dropped (--skip-bad), per reason
    filtered: dict[str, int] = field(default_factory=dict)  # rows left out by an option (e.g. --frontal-only)
    overlap: dict[str, list[str]] = field(default_factory=dict)  # patients in more than one given split
    examples: list[str] = field(default_factory=list)  # the first few problem lines


def reason(problem: str) -> str:
    """Short category of a problem line, for the dropped-rows summary."""
    for key, name in (
        ("unknown label", "unknown label"),
        ("not found", "missing image"),
        ("cannot decode", "corrupt image"),
        ("pixel limit", "image too large"),
        ("duplicate", "duplicate row"),
        ("escapes", "path escapes root"),
        ("not a regular file", "not a regular file"),
        ("patient id", "no patient id"),
        ("split", "no split"),
    ):
        if key in problem:
            return name
    return "bad value"


def check_image(path: Path) -> str | None:
    """``None`` if the image exists and decodes, else the problem (without the file name)."""
    try:
        if kind := file_kind(path):  # never open a FIFO or a device: it may block forever
            return (
                "image not found (a folder)" if kind == "a folder" else f"image is {kind}, not a regular file"
            )
        with Image.open(path) as img:
            if problem := oversized(*img.size):
                return problem
            if img.format == "JPEG":
                img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))  # DCT-scaled decode: fast
                img.load()
            else:
                img.verify()  # PNG: every chunk and CRC, without decompressing
        return None
    except FileNotFoundError:
        return "image not found"
    except IsADirectoryError:
        return "image not found (a folder)"
    except Image.DecompressionBombError as err:
        return bomb_problem(err)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return f"cannot decode image ({' '.join(str(err).split())}): corrupt or truncated"


def _check_inside(root: Path, rel: str) -> str | None:
    """:func:`check_image` of ``root / rel``, never opening a file a symlink leads to outside ``root``."""
    try:
        path = confined(root.resolve(), rel)
    except CxrfaError:
        return f"path escapes the dataset root through a symlink (to {os.path.realpath(root / rel)})"
    return check_image(path)


def _row_problems(raw: RawTable, root: Path, check_images: bool) -> list[BadRow]:
    frame = raw.frame
    bad_lines = {(b.file, b.line) for b in raw.bad}
    problems = list(raw.bad)
    paths = frame["path"].astype(str)
    first_seen: dict[str, int] = {}
    to_check: list[int] = []
    for i, rel in enumerate(paths):
        key = (str(frame["_file"].iat[i]), int(frame["_line"].iat[i]))
        pid = frame["patient_id"].iat[i]
        if path_escapes(rel):
            problems.append(
                BadRow(
                    *key,
                    f"path {rel!r} escapes the dataset root (absolute or '..'); paths must be inside --root",
                )
            )
        elif pd.isna(pid) or not str(pid).strip():
            problems.append(BadRow(*key, "no patient id; every image needs one (splits are by patient)"))
        elif str(pid).strip() in NA_STRINGS:
            problems.append(
                BadRow(*key, f"patient id {str(pid).strip()!r} reads as missing; give the real patient id")
            )
        elif rel in first_seen:
            problems.append(BadRow(*key, f"duplicate row: {rel} is already listed at row {first_seen[rel]}"))
        else:
            first_seen[rel] = key[1]
            if key not in bad_lines:
                to_check.append(i)
    if check_images and to_check:
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
            results = list(pool.map(lambda i: _check_inside(root, paths.iat[i]), to_check))
        for i, problem in zip(to_check, results, strict=True):
            if problem:
                problems.append(
                    BadRow(
                        str(frame["_file"].iat[i]),
                        int(frame["_line"].iat[i]),
                        f"{problem}: {root / paths.iat[i]}",
                    )
                )
    return sorted(problems, key=lambda b: (b.file, b.line))


def _assign_splits(
    frame: pd.DataFrame, labels: list[str], split_given: bool, seed: int, where: str
) -> tuple[pd.Series, dict[str, list[str]]]:
    y = frame[labels].to_numpy(dtype=np.float64)
    if not split_given:
        return pd.Series(stratified_patient_split(frame["patient_id"], y, seed), index=frame.index), {}
    split = frame["split"].astype(object).copy()
    pool = (split == "trainval").to_numpy()
    if pool.any():
        part = frame[pool]
        split[pool] = carve_validation(part["patient_id"], y[pool], VAL_FRACTION_OF_TRAINVAL, seed)
    overlap = warn_overlap(frame.assign(split=split), where)
    return split, overlap


def index_dataset(
    fmt: str,
    root: Path,
    csv: Path | None = None,
    label_set: str = "nih14",
    uncertain: Uncertain = "ignore",
    blank: Blank = "zero",
    frontal_only: bool = False,
    split_seed: int = 0,
    skip_bad: bool = False,
    columns: dict[str, str] | None = None,
    check_images: bool = True,
) -> IndexResult:
    """Build a manifest from a dataset on disk.

    Args:
        fmt: a registered format (:func:`cxrfa.data.readers.list_readers`; ``csv`` is generic, with
            ``columns``).
        root: dataset folder; manifest paths are relative to it.
        csv: the label CSV, when not at its standard place under ``root`` (required for ``csv``).
        label_set: target label set; labels the source lacks become unknown.
        uncertain: CheXpert ``-1.0`` policy (``ones``/``zeros``/``ignore`` = unknown).
        blank: a blank CheXpert cell is ``zero`` (default, the labeller's "not mentioned") or ``unknown``.
        frontal_only: keep frontal (PA/AP) views only.
        split_seed: seed of the patient-level split, when the source gives none.
        skip_bad: drop unusable rows (and report them) instead of failing on the first.
        columns: generic CSV mapping, manifest key -> CSV column.
        check_images: open every image (disable only for trusted, huge sets).

    Returns:
        The manifest and the counts of dropped / filtered rows and overlapping patients.

    Raises:
        CxrfaError: a bad row without ``skip_bad`` (file, row, problem), a malformed or incomplete CSV, or an
            empty dataset after filtering.
    """
    reader = get_reader(fmt)
    root = Path(root)
    if not root.is_dir():
        raise CxrfaError(f"--root {root}: not a folder")
    target = list(get_label_set(label_set))
    raw = reader.read(ReadOptions(root, csv, target, uncertain, blank, frontal_only, columns or {}))
    if frontal_only and not reader.filters_views:
        views = raw.frame["view"].astype(str).str.upper()
        keep = views.isin(["PA", "AP", "NAN", "<NA>", ""]).to_numpy()
        raw.filtered["non-frontal view"] = int((~keep).sum())
        raw.frame = raw.frame[keep]
    raw.frame = raw.frame.reset_index(drop=True)
    problems = _row_problems(raw, root, check_images)
    where = str(csv or root)
    if problems and not skip_bad:
        more = f" (+{len(problems) - 1} more bad row(s))" if len(problems) > 1 else ""
        raise CxrfaError(f"{problems[0]}{more}; fix the data or pass --skip-bad to drop bad rows")
    bad_keys = {(b.file, b.line) for b in problems}
    keep = np.array(
        [(f, int(ln)) not in bad_keys for f, ln in zip(raw.frame["_file"], raw.frame["_line"], strict=True)],
        dtype=bool,
    )
    frame = raw.frame[keep].reset_index(drop=True)
    dropped = dict(Counter(reason(b.problem) for b in problems))
    if dropped:
        log.warning(
            "%s: dropped %d bad row(s): %s",
            where,
            len(problems),
            ", ".join(f"{n} {k}" for k, n in dropped.items()),
        )
        for b in problems[:3]:
            log.warning("  %s", b)
    if frame.empty:
        why = (
            ", ".join(f"{n} {k}" for k, n in {**raw.filtered, **dropped}.items()) or "the source has no rows"
        )
        raise CxrfaError(f"{where}: no usable images left after filtering ({why})")
    frame["split"], overlap = _assign_splits(frame, target, raw.split_given, split_seed, where)
    manifest = make_manifest(frame[[*META_COLUMNS, *target]], root, target, label_set)
    return IndexResult(
        manifest,
        dropped,
        {k: v for k, v in raw.filtered.items() if v},
        overlap,
        [str(b) for b in problems[:5]],
    )
