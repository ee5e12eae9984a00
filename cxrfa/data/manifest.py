"""The manifest: one table, one row per image, that every format reader produces (DESIGN.md).

On disk a manifest is a CSV whose first line is a JSON header::

    #cxrfa-manifest {"version": 1, "root": "images", "label_set": "nih14", "labels": [...]}

``root`` is where the images live, relative to the manifest file's folder when it can be (so a manifest and
its images can move together) and absolute otherwise. Label columns hold 1, 0 or empty (= unknown).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_write_text, require_regular

HEADER = "#cxrfa-manifest "
META_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "study_id",
    "split",
    "sex",
    "age",
    "view",
    "domain",
    "report",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id", "split")
# What pandas' CSV reader turns into a missing value (its default na_values): a patient id written as one of
# these would read back as no patient id, so `data index` refuses it before writing the manifest.
NA_STRINGS = frozenset(
    "#N/A|#N/A N/A|#NA|-1.#IND|-1.#QNAN|-NaN|-nan|1.#IND|1.#QNAN|<NA>|N/A|NA|NULL|NaN|None|n/a|nan|null".split(
        "|"
    )
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Manifest:
    """A manifest in memory.

    Attributes:
        frame: one row per image; columns :data:`META_COLUMNS` then one float column per label (1/0/NaN).
        root: absolute folder that ``path`` values are relative to.
        labels: label column names, in order.
        label_set: name of the label set (see :mod:`cxrfa.labels`).
        source: the file it was read from, if any.
    """

    frame: pd.DataFrame
    root: Path
    labels: list[str]
    label_set: str = "custom"
    source: Path | None = None
    _hash: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame)

    def split(self, name: str) -> Manifest:
        """The rows of one split (``train``/``val``/``test``), index reset."""
        part = self.frame[self.frame["split"] == name].reset_index(drop=True)
        return Manifest(part, self.root, self.labels, self.label_set, self.source)

    def label_matrix(self) -> np.ndarray:
        """(N, C) float32 array: 1, 0 or NaN (unknown)."""
        return self.frame[self.labels].to_numpy(dtype=np.float32, na_value=np.nan)

    def report_rows(self) -> np.ndarray:
        """(N,) bool: the rows with a report; missing, empty and whitespace-only are no report.

        The one "has a report" test: pretraining pairs and the report loss term both ask it.
        """
        reports = self.frame.get("report")
        if reports is None:
            return np.zeros(len(self.frame), dtype=bool)
        return (reports.notna() & reports.astype(str).str.strip().ne("")).to_numpy(dtype=bool)

    def has_reports(self) -> bool:
        """Whether any row has a report (:meth:`report_rows`)."""
        return bool(self.report_rows().any())

    def image_path(self, i: int) -> Path:
        """The file of row ``i``, symlinks resolved.

        Raises:
            CxrfaError: the path leaves :attr:`root` (``..``, absolute, or a symlink pointing outside).
        """
        return confined(self.root, str(self.frame["path"].iat[i]), self.source)

    def image_paths(self) -> list[Path]:
        """:meth:`image_path` of every row, in order."""
        folders: dict[str, str] = {}
        return [confined(self.root, rel, self.source, folders) for rel in self.frame["path"].astype(str)]

    def data_hash(self) -> str:
        """12-hex-digit hash of the table content (rows, labels, splits), independent of where it lives."""
        if self._hash is None:
            blob = self.frame.to_csv(index=False).encode() + json.dumps(self.labels).encode()
            self._hash = hashlib.sha256(blob).hexdigest()[:12]
        return self._hash

    def prevalence(self, split: str = "train") -> dict[str, float]:
        """Fraction positive among known labels, per label, on one split."""
        y = self.split(split).label_matrix()
        with np.errstate(invalid="ignore"):
            return {
                lab: float(np.nanmean(y[:, j])) if np.isfinite(y[:, j]).any() else 0.0
                for j, lab in enumerate(self.labels)
            }


def path_escapes(rel: str) -> bool:
    """Whether a manifest ``path`` value is empty, absolute or climbs out of the root with ``..``."""
    if not rel or rel in ("nan", "<NA>") or os.path.isabs(rel) or rel.startswith(("\\", "/")):
        return True
    norm = os.path.normpath(rel)
    return norm == ".." or norm.startswith(".." + os.sep) or ":" in rel.split("/")[0]


def confined(root: Path, rel: str, source: Path | None = None, folders: dict[str, str] | None = None) -> Path:
    """``root / rel`` with symlinks resolved, refused when it is not inside ``root`` (itself resolved).

    ``folders`` memoises resolved parent folders across calls: one ``lstat`` per file instead of one per path
    component.

    Raises:
        CxrfaError: one line naming the manifest (when known), the path and where it leads.
    """
    where = f"{source}: " if source is not None else ""
    if path_escapes(rel):
        raise CxrfaError(
            f"{where}path {rel!r} is outside the image root {root} (absolute or '..'); "
            "manifest paths must be relative and inside the root"
        )
    parent, _, name = rel.rpartition("/")
    folders = {} if folders is None else folders
    if (folder := folders.get(parent)) is None:
        folder = folders[parent] = os.path.realpath(root / parent) if parent else str(root)
    real = os.path.join(folder, name)
    if name in ("", ".", "..") or os.path.islink(real):
        real = os.path.realpath(real)
    inside = str(root).rstrip(os.sep) + os.sep
    if real != str(root) and not real.startswith(inside):
        raise CxrfaError(
            f"{where}path {rel!r} leads outside the image root {root} (a symlink to {real}); "
            "point the manifest root at the real folder or copy the image inside it"
        )
    return Path(real)


def _normalise(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    frame = frame.copy()
    for col in META_COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.NA
    for col in ("path", "patient_id", "study_id", "split", "sex", "view", "domain", "report"):
        frame[col] = frame[col].astype("string")
    frame["age"] = pd.to_numeric(frame["age"], errors="coerce")
    for lab in labels:
        frame[lab] = pd.to_numeric(frame[lab], errors="coerce").astype("float32")
    return frame[[*META_COLUMNS, *labels]].reset_index(drop=True)


def make_manifest(
    frame: pd.DataFrame, root: str | os.PathLike[str], labels: list[str], label_set: str
) -> Manifest:
    """Build a manifest from a frame with the meta columns and one column per label."""
    missing = [c for c in (*REQUIRED_COLUMNS, *labels) if c not in frame.columns]
    if missing:
        raise CxrfaError(f"manifest is missing column(s): {', '.join(missing)}")
    return Manifest(_normalise(frame, list(labels)), Path(root).resolve(), list(labels), label_set)


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically (never half a file). Returns the path written."""
    path = Path(path)
    folder = path.parent.resolve()
    try:
        root = os.path.relpath(manifest.root, folder)
    except ValueError:  # different drives
        root = str(manifest.root)
    header = {"version": 1, "root": root, "label_set": manifest.label_set, "labels": manifest.labels}
    body = io.StringIO()
    frame = manifest.frame.copy()
    for lab in manifest.labels:  # write 1/0/empty, not 1.0/0.0/nan
        frame[lab] = frame[lab].map(lambda v: "" if pd.isna(v) else str(int(v)))
    frame.to_csv(body, index=False)
    atomic_write_text(path, HEADER + json.dumps(header) + "\n" + body.getvalue())
    return path


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest written by :func:`write_manifest` (or by hand), checked like ``cxrfa data index`` checks.

    Every row must have a path inside the root (relative, no ``..``; symlinks are checked when an image is
    opened), a patient id, a split of train/val/test, a path no other row has, and labels of 1, 0 or blank.

    Raises:
        CxrfaError: the file is missing, has no cxrfa header, lacks required columns, its root is the
            file-system root, or a row breaks a rule (naming the file, the row and the column).
    """
    path = require_regular(path, "manifest")  # a FIFO named as the manifest would block forever
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or "not UTF-8 text"
        raise CxrfaError(
            f"{path}: cannot read manifest ({why}); create one with `cxrfa data index`"
        ) from None
    first, _, rest = text.partition("\n")
    if not first.startswith(HEADER):
        raise CxrfaError(
            f"{path}: not a cxrfa manifest (no '{HEADER.strip()}' header line); make one with `cxrfa data index`"
        )
    try:
        header = json.loads(first[len(HEADER) :])
        labels = list(header["labels"])
        root = Path(str(header.get("root", ".")))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CxrfaError(f"{path}: line 1: malformed manifest header ({err})") from None
    bad = [lab for lab in labels if not isinstance(lab, str) or not lab or lab in META_COLUMNS]
    if bad or len(set(labels)) != len(labels):
        what = f"{bad[0]!r} is not a label name" if bad else "a label is listed twice"
        raise CxrfaError(f"{path}: line 1: header 'labels': {what}")
    root = (root if root.is_absolute() else path.parent / root).resolve()
    if root == Path(root.anchor):
        raise CxrfaError(
            f"{path}: line 1: header root {header.get('root')!r} is the file-system root {root}; "
            "set it to the folder that holds the images"
        )
    try:
        frame = pd.read_csv(
            io.StringIO(rest), dtype={"path": str, "patient_id": str, "study_id": str}, keep_default_na=True
        )
        wanted = {*labels, "path"}  # labels again, as written: "x" or "-1" must not pass as blank
        raw = pd.read_csv(io.StringIO(rest), dtype=str, keep_default_na=False, usecols=lambda c: c in wanted)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise CxrfaError(f"{path}: malformed CSV ({' '.join(str(err).split())})") from None
    missing = [c for c in (*REQUIRED_COLUMNS, *labels) if c not in frame.columns]
    if missing:
        raise CxrfaError(
            f"{path}: missing column(s) {', '.join(missing)}; re-create it with `cxrfa data index`"
        )
    problems = _row_problems(frame, raw, labels)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CxrfaError(f"{path}: {problems[0]}{more}; fix the file or re-create it with `cxrfa data index`")
    manifest = make_manifest(frame, root, labels, header.get("label_set", "custom"))
    manifest.source = path
    return manifest


_LABEL_VALUES = {"": "", "1": "1", "0": "0", "1.0": "1", "0.0": "0"}


def _row_problems(frame: pd.DataFrame, raw: pd.DataFrame, labels: list[str]) -> list[str]:
    """One line per broken row, in file order; rows are numbered from 1 (file line = row + 2)."""
    out: list[tuple[int, str]] = []

    def add(mask: Any, what: Callable[[int], str]) -> None:
        out.extend((int(i), what(int(i))) for i in np.flatnonzero(np.asarray(mask, dtype=bool)))

    paths = raw["path"].astype(str).str.strip()
    add(
        paths.map(path_escapes),
        lambda i: (
            f"column 'path' has {paths.iat[i]!r}: absolute, empty or '..' "
            "(paths must be relative and inside the root)"
        ),
    )
    dup = paths.duplicated(keep="first") & ~paths.map(path_escapes)
    add(dup, lambda i: f"column 'path' repeats {paths.iat[i]!r} (each image once)")
    pid = frame["patient_id"].astype("string").str.strip()
    add(pid.isna() | (pid == ""), lambda i: "column 'patient_id' is blank (splits are by patient)")
    split = frame["split"].astype("string").str.strip()
    add(
        ~split.isin(SPLITS).fillna(False),
        lambda i: f"column 'split' has {split.iat[i]!r}; expected one of {', '.join(SPLITS)}",
    )
    for lab in labels:
        values = raw[lab].astype(str).str.strip()
        add(
            ~values.isin(_LABEL_VALUES),
            lambda i, lab=lab, values=values: (
                f"column {lab!r} has {values.iat[i]!r}; labels must be 1, 0 or blank (unknown)"
            ),
        )
    out.sort(key=lambda item: item[0])
    return [f"row {i + 1} (line {i + 3}): {what}" for i, what in out]
