"""Patient-level splits: seeded, label-stratified assignment of whole patients to train/val/test.

Images of one patient never straddle splits. Stratification is iterative (rarest label first, after Sechidis
et al., 2011): patients carrying the rarest remaining label are dealt to the split that still wants most of
that label, so even a label with a handful of positive patients lands in every split where possible.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


def patient_label_table(patients: pd.Series, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse image rows to patients.

    Args:
        patients: (N,) patient id per image.
        labels: (N, C) 1/0/NaN label matrix.

    Returns:
        ``(ids, positives, images)``: (P,) unique ids in first-seen order, (P, C) bool "any image positive",
        (P,) images per patient.
    """
    codes, ids = pd.factorize(patients.astype(str), sort=False)
    n_pat = len(ids)
    pos = np.zeros((n_pat, labels.shape[1]), dtype=bool)
    if labels.size:
        np.logical_or.at(pos, codes, np.nan_to_num(labels, nan=0.0) > 0.5)
    counts = np.bincount(codes, minlength=n_pat)
    return np.asarray(ids, dtype=object), pos, counts


def stratified_patient_split(
    patients: pd.Series,
    labels: np.ndarray,
    seed: int = 0,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    names: tuple[str, ...] = SPLIT_NAMES,
) -> np.ndarray:
    """Assign every image a split so that patients are disjoint and label prevalence is balanced.

    Args:
        patients: (N,) patient id per image.
        labels: (N, C) 1/0/NaN label matrix (NaN counts as not positive).
        seed: the split seed (same inputs and seed -> same split).
        fractions: target fraction of images per split, summing to 1.
        names: split names, one per fraction.

    Returns:
        (N,) object array of split names.
    """
    if len(fractions) != len(names) or not np.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise CxrfaError(f"split fractions {fractions} must be non-negative, one per split, and sum to 1")
    rng = np.random.default_rng([seed, 7919])
    ids, pos, counts = patient_label_table(patients, labels)
    n_pat, n_lab = pos.shape
    frac = np.asarray(fractions, dtype=np.float64)
    want_images = frac * counts.sum()  # (K,)
    want_labels = frac[:, None] * pos.sum(axis=0)[None, :].astype(np.float64)  # (K, C)
    assigned = np.full(n_pat, -1, dtype=np.int64)
    order = rng.permutation(n_pat)  # random tie-breaking, fixed by the seed
    remaining = pos.copy()

    def give(p: int, k: int) -> None:
        assigned[p] = k
        want_images[k] -= counts[p]
        want_labels[k] -= pos[p]
        remaining[p] = False

    while n_lab and remaining.any():
        per_label = remaining.sum(axis=0)
        label = int(np.argmin(np.where(per_label > 0, per_label, np.iinfo(np.int64).max)))
        for p in order[remaining[order, label]]:
            demand = want_labels[:, label]
            best = np.flatnonzero(demand == demand.max())
            if len(best) > 1:
                best = best[np.flatnonzero(want_images[best] == want_images[best].max())]
            give(int(p), int(best[0]))
    for p in order[assigned[order] < 0]:  # patients without positives balance the image counts
        give(int(p), int(np.argmax(want_images)))
    codes, _ = pd.factorize(patients.astype(str), sort=False)
    return np.asarray(names, dtype=object)[assigned[codes]]


def carve_validation(
    patients: pd.Series, labels: np.ndarray, val_fraction: float, seed: int = 0
) -> np.ndarray:
    """Split a given train+val pool into ``train`` / ``val`` by patient (e.g. NIH's train_val_list.txt).

    Returns:
        (N,) object array of ``train``/``val``.
    """
    return stratified_patient_split(
        patients, labels, seed, (1.0 - val_fraction, val_fraction), ("train", "val")
    )


def overlapping_patients(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Patients whose images sit in more than one split: patient id -> sorted split names."""
    if frame.empty:
        return {}
    per = (
        frame.dropna(subset=["split"])
        .groupby(frame["patient_id"].astype(str))["split"]
        .agg(lambda s: sorted(set(s)))
    )
    return {pid: list(splits) for pid, splits in per.items() if len(splits) > 1}


def warn_overlap(frame: pd.DataFrame, where: str) -> dict[str, list[str]]:
    """Log a warning when a given split leaks patients across splits; return the overlaps."""
    overlap = overlapping_patients(frame)
    if overlap:
        first = next(iter(overlap))
        log.warning(
            "%s: %d patient(s) appear in more than one split (e.g. %s in %s); metrics may be optimistic",
            where,
            len(overlap),
            first,
            "+".join(overlap[first]),
        )
    return overlap


# a patient's images split evenly between two splits go to the evaluation side: the source's test split is the
# one its published numbers use, so it stays as complete as possible
_TIE_ORDER: tuple[str, ...] = ("test", "val", "train")


def resplit_leaking_patients(frame: pd.DataFrame) -> pd.Series:
    """The split column with every patient whose images sit in more than one split moved whole to the split
    holding most of their images (ties: test, then val, then train); other patients keep theirs.

    Args:
        frame: a manifest table (``patient_id``, ``split``).

    Returns:
        The new ``split`` column (object dtype, same index).
    """
    patients = frame["patient_id"].astype(str)
    counts = frame.groupby([patients, frame["split"].astype(str)]).size().rename("n").reset_index()
    counts["tie"] = (
        counts["split"].map({name: i for i, name in enumerate(_TIE_ORDER)}).fillna(len(_TIE_ORDER))
    )
    best = counts.sort_values(["n", "tie"], ascending=[False, True]).drop_duplicates("patient_id")
    return patients.map(best.set_index("patient_id")["split"]).astype(object)


def patient_disjoint(frame: pd.DataFrame, where: str, keep_source_split: bool = False) -> pd.DataFrame:
    """A manifest table whose patients each sit in one split: a source split that leaks patients is re-split
    by patient (:func:`resplit_leaking_patients`) and says so in one log line with the count, unless
    ``keep_source_split``, which keeps it with the leak warning of :func:`warn_overlap`.

    Args:
        frame: a manifest table.
        where: the manifest, for the log line.
        keep_source_split: keep a leaking split as the source gives it (``data.keep_source_split``).

    Returns:
        ``frame`` itself when nothing moves, else a copy with the new ``split`` column.
    """
    overlap = overlapping_patients(frame)
    if not overlap:
        return frame
    if keep_source_split:
        warn_overlap(frame, where)
        return frame
    split = resplit_leaking_patients(frame)
    moved = int((split != frame["split"].astype(object)).sum())
    log.warning(
        "%s: %d patient(s) had images in more than one split; re-split by patient, each moved whole to the split "
        "holding most of their images (%d image(s) moved; ties to test, then val); set data.keep_source_split: "
        "true to keep the source split",
        where,
        len(overlap),
        moved,
    )
    return frame.assign(split=split.astype(frame["split"].dtype))
