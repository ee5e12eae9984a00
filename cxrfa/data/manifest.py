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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_write_text

HEADER = "#cxrfa-manifest "
META_COLUMNS: tuple[str, ...] = (
    "path", "patient_id", "study_id", "split", "sex", "age", "view", "domain", "report",
)  # fmt: skip
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id", "split")
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

    def image_path(self, i: int) -> Path:
        return self.root / str(self.frame["path"].iat[i])

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
            return {lab: float(np.nanmean(y[:, j])) if np.isfinite(y[:, j]).any() else 0.0
                    for j, lab in enumerate(self.labels)}  # fmt: skip


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
    """Read a manifest written by :func:`write_manifest`.

    Raises:
        CxrfaError: the file is missing, has no cxrfa header, or lacks required columns.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise CxrfaError(
            f"{path}: cannot read manifest ({err.strerror}); create one with `cxrfa data index`"
        ) from None
    first, _, rest = text.partition("\n")
    if not first.startswith(HEADER):
        raise CxrfaError(
            f"{path}: not a cxrfa manifest (no '{HEADER.strip()}' header line); make one with `cxrfa data index`"
        )
    try:
        header = json.loads(first[len(HEADER) :])
        labels = list(header["labels"])
    except (ValueError, KeyError) as err:
        raise CxrfaError(f"{path}: line 1: malformed manifest header ({err})") from None
    try:
        frame = pd.read_csv(
            io.StringIO(rest), dtype={"path": str, "patient_id": str, "study_id": str}, keep_default_na=True
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CxrfaError(f"{path}: malformed CSV ({str(err).strip()})") from None
    root = Path(header.get("root", "."))
    root = root if root.is_absolute() else (path.parent / root)
    manifest = make_manifest(frame, root, labels, header.get("label_set", "custom"))
    manifest.source = path
    return manifest
