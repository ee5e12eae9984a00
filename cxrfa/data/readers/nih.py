"""NIH ChestX-ray14: ``Data_Entry_2017*.csv``, its image folders and the official split lists.

NIH labels are names (``Finding Labels``, pipe-separated), not a value per label, so the shared label-value
parser does not apply: a listed finding is 1, an unlisted one 0.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.data.readers.base import (
    BadRow,
    RawTable,
    ReadOptions,
    find_first,
    number_lines,
    read_csv,
    register_reader,
    require_columns,
    to_target,
)
from cxrfa.errors import CxrfaError
from cxrfa.labels import NIH14

NIH_NO_FINDING = "No Finding"


def _age(value: object) -> float:
    """NIH ages: ``57``, ``060Y``, ``011M``, ``020D`` -> years; anything else NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YyMmDdWw]?)\s*", str(value))
    if not match:
        return float("nan")
    number, unit = float(match.group(1)), match.group(2).upper()
    return number / {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}[unit]


def _nih_image_paths(root: Path, names: pd.Series) -> dict[str, str]:
    """Image name -> path relative to root, from ``images/``, ``images_NNN/images/`` or the root itself."""
    found: dict[str, str] = {}
    folders = [root / "images", root, *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    for folder in folders:
        if not folder.is_dir():
            continue
        rel = os.path.relpath(folder, root)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name not in found and entry.name.lower().endswith((".png", ".jpg", ".jpeg")):
                    found[entry.name] = entry.name if rel == "." else f"{rel}/{entry.name}"
    return {n: found.get(n, f"images/{n}") for n in names}


def read_nih(root: Path, csv_path: Path | None, target: list[str]) -> RawTable:
    """NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (trailing comma tolerated).

    ``Finding Labels`` is pipe-separated; ``No Finding`` means all 14 findings negative. When
    ``train_val_list.txt`` and ``test_list.txt`` are present the official test split is kept and the
    validation split is carved out of train_val by patient later.
    """
    path = csv_path or find_first(root, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"))
    if path is None:
        raise CxrfaError(f"{root}: no Data_Entry_2017_v2020.csv or Data_Entry_2017.csv; pass --csv FILE")
    frame = read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed")]]  # trailing comma
    require_columns(frame, path, ["Image Index", "Finding Labels", "Patient ID"])
    frame = number_lines(frame, path)
    bad: list[BadRow] = []
    known = {lab.lower(): lab for lab in NIH14}
    known.update({"pleural thickening": "Pleural_Thickening", "no finding": NIH_NO_FINDING})
    source = pd.DataFrame(0.0, index=frame.index, columns=[*NIH14, NIH_NO_FINDING])
    for i, text in enumerate(frame["Finding Labels"]):
        tokens = [t.strip() for t in str(text).split("|") if t.strip()]
        unknown = [t for t in tokens if t.lower() not in known]
        if unknown or not tokens:
            what = f"unknown label {unknown[0]!r}" if unknown else "empty 'Finding Labels'"
            bad.append(
                BadRow(
                    path.name,
                    int(frame["_line"].iat[i]),
                    f"{what} in 'Finding Labels'; known: {', '.join(NIH14)}, No Finding",
                )
            )
            continue
        for t in tokens:
            source.iat[i, source.columns.get_loc(known[t.lower()])] = 1.0
        if NIH_NO_FINDING in [known[t.lower()] for t in tokens] and len(tokens) > 1:
            bad.append(BadRow(path.name, int(frame["_line"].iat[i]), "'No Finding' together with findings"))
    names = frame["Image Index"].astype(str).str.strip()
    paths = _nih_image_paths(root, names)
    out = pd.DataFrame(
        {
            "path": names.map(paths),
            "patient_id": frame["Patient ID"].astype(str).str.strip().str.lstrip("0").replace("", "0"),
            "study_id": names.str.rsplit(".", n=1).str[0],
            "sex": frame.get("Patient Gender", pd.Series(pd.NA, index=frame.index)),
            "age": frame.get("Patient Age", pd.Series(pd.NA, index=frame.index)).map(_age),
            "view": frame.get("View Position", pd.Series(pd.NA, index=frame.index)),
            "domain": "nih",
            "report": pd.NA,
            "split": pd.NA,
            "_file": frame["_file"],
            "_line": frame["_line"],
        }
    )
    out = pd.concat([out, to_target(source, [*NIH14, NIH_NO_FINDING], target)], axis=1)
    table = RawTable(out, target, bad)
    lists = [find_first(folder, ("train_val_list.txt",)) for folder in (root, path.parent)]
    tests = [find_first(folder, ("test_list.txt",)) for folder in (root, path.parent)]
    train_val, test = next((p for p in lists if p), None), next((p for p in tests if p), None)
    if train_val and test:
        in_test = set(test.read_text().split())
        in_train = set(train_val.read_text().split())
        split = np.where(names.isin(in_test), "test", np.where(names.isin(in_train), "trainval", ""))
        for i in np.flatnonzero(split == ""):
            bad.append(
                BadRow(
                    path.name,
                    int(out["_line"].iat[i]),
                    f"image {names.iat[i]} is in neither {train_val.name} nor {test.name}",
                )
            )
        table.frame["split"] = pd.Series(split, index=out.index).replace("", pd.NA)
        table.split_given = True
    return table


@register_reader("nih")
def _nih(o: ReadOptions) -> RawTable:
    """NIH ChestX-ray14: Data_Entry_2017*.csv and the image folders (official split lists kept)."""
    return read_nih(o.root, o.csv, o.target)
