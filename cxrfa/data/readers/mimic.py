"""MIMIC-CXR-JPG: the CheXpert labeller's output joined with the split and metadata CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.data.readers.base import (
    BadRow,
    RawTable,
    ReadOptions,
    find_first,
    label_values,
    number_lines,
    read_csv,
    register_reader,
    require_columns,
    to_target,
)
from cxrfa.errors import CxrfaError
from cxrfa.labels import CHEXPERT14, Blank, Uncertain


def read_mimic(
    root: Path, target: list[str], uncertain: Uncertain, blank: Blank, frontal_only: bool
) -> RawTable:
    """MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz]`` joined on dicom/study/subject.

    Images are ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``; the official split is kept (``validate`` -> ``val``).
    """

    def find(kind: str) -> Path:
        found = find_first(root, (f"mimic-cxr-2.0.0-{kind}.csv", f"mimic-cxr-2.0.0-{kind}.csv.gz"))
        if found is None:
            raise CxrfaError(
                f"{root}: missing mimic-cxr-2.0.0-{kind}.csv(.gz); --root must be the MIMIC-CXR-JPG folder"
            )
        return found

    lab_path, split_path, meta_path = find("chexpert"), find("split"), find("metadata")
    labels_df = read_csv(lab_path, dtype=str, keep_default_na=False)
    split_df = read_csv(split_path, dtype=str, keep_default_na=False)
    meta_df = read_csv(meta_path, dtype=str, keep_default_na=False)
    require_columns(labels_df, lab_path, ["subject_id", "study_id"])
    require_columns(split_df, split_path, ["dicom_id", "split"])
    require_columns(meta_df, meta_path, ["dicom_id", "subject_id", "study_id"])
    meta_df = number_lines(meta_df, meta_path)
    frame = meta_df.merge(split_df[["dicom_id", "split"]], on="dicom_id", how="left")
    frame = frame.merge(labels_df, on=["subject_id", "study_id"], how="left", indicator=True)
    bad = [
        BadRow(
            meta_path.name,
            int(frame["_line"].iat[i]),
            f"study {frame['study_id'].iat[i]} has no row in {lab_path.name}",
        )
        for i in np.flatnonzero((frame["_merge"] == "left_only").to_numpy())
    ]
    frame = frame.drop(columns="_merge")
    present = [c for c in CHEXPERT14 if c in frame.columns]  # a study missing from the labels: NaN, blank
    labels, problems = label_values(frame, present, meta_path, uncertain, blank)
    subject = frame["subject_id"].astype(str)
    path = (
        "files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + frame["study_id"].astype(str)
        + "/"
        + frame["dicom_id"]
        + ".jpg"
    )
    view = frame.get("ViewPosition", pd.Series("", index=frame.index)).replace("", pd.NA)
    split = frame["split"].map({"train": "train", "validate": "val", "val": "val", "test": "test"})
    out = pd.DataFrame(
        {
            "path": path,
            "patient_id": subject,
            "study_id": frame["study_id"],
            "sex": pd.NA,
            "age": np.nan,
            "view": view,
            "domain": "mimic",
            "report": pd.NA,
            "split": split,
            "_file": frame["_file"],
            "_line": frame["_line"],
        }
    )
    for i in np.flatnonzero(split.isna().to_numpy()):
        bad.append(
            BadRow(
                meta_path.name,
                int(out["_line"].iat[i]),
                f"dicom {frame['dicom_id'].iat[i]} has no split in {split_path.name}",
            )
        )
    out = pd.concat([out, to_target(labels, list(labels.columns), target)], axis=1)
    filtered: dict[str, int] = {}
    if frontal_only:
        frontal = view.isin(["PA", "AP"]).to_numpy()
        filtered["non-frontal view"] = int((~frontal).sum())
        out = out[frontal]
    return RawTable(out, target, bad + problems, filtered, split_given=True)


@register_reader("mimic", filters_views=True)
def _mimic(o: ReadOptions) -> RawTable:
    """MIMIC-CXR-JPG: the chexpert, split and metadata CSVs joined (official split kept)."""
    return read_mimic(o.root, o.target, o.uncertain, o.blank, o.frontal_only)
