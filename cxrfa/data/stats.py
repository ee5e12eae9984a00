"""Summary statistics of a manifest: prevalence per split, long-tail groups, subgroups, patient leakage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrfa.data.ages import AGE_BINS, age_bins
from cxrfa.data.manifest import SPLITS, Manifest
from cxrfa.data.splits import overlapping_patients
from cxrfa.labels import group_by_prevalence


@dataclass
class ManifestStats:
    """Everything ``cxrfa data stats`` shows.

    Attributes:
        splits: split names present, in train/val/test order.
        images: images per split.
        patients: patients per split.
        prevalence: one row per label; columns ``<split>_pos``, ``<split>_known``, ``<split>_prev`` per split
            and ``group`` (head/medium/tail, from the train split).
        subgroups: attribute (sex, view, age, domain) -> counts table (rows = values, columns = splits).
        overlap: patient id -> splits, for patients in more than one split (a leak).
    """

    splits: list[str]
    images: dict[str, int]
    patients: dict[str, int]
    prevalence: pd.DataFrame
    subgroups: dict[str, pd.DataFrame]
    overlap: dict[str, list[str]]


def manifest_stats(manifest: Manifest) -> ManifestStats:
    """Compute the statistics of a manifest (counts only; nothing is read from the images)."""
    frame = manifest.frame
    present = set(frame["split"].dropna().astype(str))
    splits = [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))
    images = {s: int((frame["split"] == s).sum()) for s in splits}
    patients = {s: int(frame.loc[frame["split"] == s, "patient_id"].nunique()) for s in splits}
    y = manifest.label_matrix()  # (N, C)
    table = pd.DataFrame(index=manifest.labels)
    for s in splits:
        part = y[(frame["split"] == s).to_numpy()]
        known = np.isfinite(part).sum(axis=0)
        pos = np.nansum(part, axis=0)
        table[f"{s}_pos"] = pos.astype(int)
        table[f"{s}_known"] = known.astype(int)
        with np.errstate(invalid="ignore", divide="ignore"):
            table[f"{s}_prev"] = np.where(known > 0, pos / np.maximum(known, 1), np.nan)
    reference = "train" if "train" in splits else (splits[0] if splits else None)
    if reference is not None:
        prev = table[f"{reference}_prev"].fillna(0.0).to_dict()
        table["group"] = pd.Series(group_by_prevalence(prev))
    else:
        table["group"] = ""
    subgroups: dict[str, pd.DataFrame] = {}
    attrs = {
        "sex": frame["sex"].fillna("unknown").astype(str),
        "view": frame["view"].fillna("unknown").astype(str),
        "age": age_bins(frame["age"]).fillna("unknown"),  # the fairness metrics' bins
        "domain": frame["domain"].fillna("unknown").astype(str),
    }
    for name, values in attrs.items():
        counts = pd.crosstab(values, frame["split"].astype(str)).reindex(columns=splits, fill_value=0)
        if name == "age":
            counts = counts.reindex([a for a in (*AGE_BINS, "unknown") if a in counts.index])
        subgroups[name] = counts
    return ManifestStats(splits, images, patients, table, subgroups, overlapping_patients(frame))
