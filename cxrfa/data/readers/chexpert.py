"""CheXpert: ``train.csv`` (+ ``valid.csv``), the CheXpert labeller's 1.0/0.0/-1.0/blank per label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.data.readers.base import (
    BadRow,
    RawTable,
    ReadOptions,
    label_values,
    number_lines,
    read_csv,
    register_reader,
    require_columns,
    to_target,
)
from cxrfa.errors import CxrfaError
from cxrfa.labels import CHEXPERT14, Blank, Uncertain


def _root_relative(root: Path, rel: str) -> str:
    """CheXpert paths start with the dataset folder (``CheXpert-v1.0-small/train/...``); accept either
    its parent or the folder itself as ``--root``."""
    first, _, rest = rel.partition("/")
    if rest and first == root.name and not (root / rel).exists():
        return rest
    return rel


def read_chexpert(
    root: Path,
    csv_path: Path | None,
    target: list[str],
    uncertain: Uncertain,
    blank: Blank,
    frontal_only: bool,
) -> RawTable:
    """CheXpert ``train.csv`` (+ ``valid.csv``, kept as the test split, since the official test set is held out;
    validation is then carved out of train.csv by patient).

    Patient id comes from the path (``patientNNNNN``); the study id is ``patientNNNNN/studyK``.
    """
    files = [csv_path] if csv_path else [p for p in (root / "train.csv", root / "valid.csv") if p.is_file()]
    if not files:
        raise CxrfaError(f"{root}: no train.csv or valid.csv; pass --csv FILE")
    parts, bad, filtered = [], [], {}
    for path in files:
        frame = number_lines(read_csv(path, dtype=str, keep_default_na=False), path)
        require_columns(frame, path, ["Path"])
        present = [c for c in CHEXPERT14 if c in frame.columns]
        if not present:
            raise CxrfaError(
                f"{path}: no CheXpert label columns (e.g. 'Cardiomegaly'); is this a CheXpert CSV?"
            )
        labels, problems = label_values(frame, present, path, uncertain, blank)
        bad += problems
        rel = frame["Path"].astype(str).str.strip().map(lambda p: _root_relative(root, p))
        pid = rel.str.extract(r"(patient\d+)", expand=False)
        study = rel.str.extract(r"(patient\d+/study\d+)", expand=False)
        for i in np.flatnonzero(pid.isna().to_numpy()):
            bad.append(
                BadRow(path.name, int(frame["_line"].iat[i]), f"no patientNNNNN in path {rel.iat[i]!r}")
            )
        lateral = frame.get("Frontal/Lateral", pd.Series("", index=frame.index)).str.lower().eq("lateral")
        view = (
            frame.get("AP/PA", pd.Series("", index=frame.index)).replace("", pd.NA).where(~lateral, "LATERAL")
        )
        sex = frame.get("Sex", pd.Series("", index=frame.index)).map({"Female": "F", "Male": "M"})
        split = ("test" if path.name.startswith("valid") else "trainval") if len(files) > 1 else pd.NA
        part = pd.DataFrame(
            {
                "path": rel,
                "patient_id": pid,
                "study_id": study,
                "sex": sex,
                "age": pd.to_numeric(frame.get("Age", pd.Series(pd.NA, index=frame.index)), errors="coerce"),
                "view": view,
                "domain": "chexpert",
                "report": pd.NA,
                "split": split,
                "_file": frame["_file"],
                "_line": frame["_line"],
            }
        )
        part = pd.concat([part, to_target(labels, list(labels.columns), target)], axis=1)
        if frontal_only:
            filtered["lateral view"] = filtered.get("lateral view", 0) + int(lateral.sum())
            part = part[~lateral.to_numpy()]
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return RawTable(frame, target, bad, filtered, split_given=len(files) > 1)


@register_reader("chexpert", filters_views=True)
def _chexpert(o: ReadOptions) -> RawTable:
    """CheXpert: train.csv / valid.csv (uncertain and blank label policies apply)."""
    return read_chexpert(o.root, o.csv, o.target, o.uncertain, o.blank, o.frontal_only)
