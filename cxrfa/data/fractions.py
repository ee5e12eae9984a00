"""Label fractions: the patient-level, label-stratified, nested subsample of the train split behind the
label-efficiency protocol (fine-tune on 1 %, 10 %, 100 % of the training labels, as GLoRIA, BioViL and MedKLIP
report it).

One ordering of the train split's patients is fixed per manifest (seeded by its data hash, never by a run's
seed), and a fraction keeps a prefix of it. So every cell and seed of a fraction trains on the same patients,
and the patients of a smaller fraction are inside every larger one. The ordering starts with a *head*: for each
label, rarest first, a patient positive for it (unless one already there is), so every label with a positive
in the split keeps one at any fraction; the kept count is ``max(ceil(fraction x patients), len(head))``. The
rest are interleaved by stratum (each patient's rarest positive label, or none) in proportion to the strata's
sizes, so each prefix keeps the label mix of the split. Val and test rows are never touched.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrfa.config import fraction_name
from cxrfa.data.manifest import Manifest
from cxrfa.errors import CxrfaError

__all__ = [
    "TAG_LABEL_FRACTION",
    "TAG_SUBSET_HASH",
    "TrainSubset",
    "patient_order",
    "subsample_train",
]

TAG_SUBSET_HASH = "cxrfa.subset_hash"  # run tag: hash of the train image paths the run trained on
TAG_LABEL_FRACTION = "cxrfa.label_fraction"  # run tag: train.label_fraction


@dataclass(frozen=True)
class TrainSubset:
    """The train rows a run sees at one label fraction.

    Attributes:
        fraction: the requested fraction of train patients.
        manifest: the manifest with only the kept train rows (val and test rows all kept, order unchanged).
        patients: train patients kept.
        images: train images kept.
        subset_hash: 12 hex digits of SHA-256 over the kept train paths (sorted).
        positives: per label, kept train images positive for it.
    """

    fraction: float
    manifest: Manifest
    patients: int
    images: int
    subset_hash: str
    positives: dict[str, int]

    def metrics(self) -> dict[str, float]:
        """``data/train_size``, ``data/train_patients`` and ``data/train_positives/<label>`` of the run."""
        out = {"data/train_size": float(self.images), "data/train_patients": float(self.patients)}
        out.update({f"data/train_positives/{lab}": float(n) for lab, n in self.positives.items()})
        return out

    def tags(self) -> dict[str, str]:
        """The run tags: the fraction and the subset's hash."""
        return {TAG_LABEL_FRACTION: fraction_name(self.fraction), TAG_SUBSET_HASH: self.subset_hash}


def _patient_positives(train: pd.DataFrame, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Patient ids (P,) sorted, and (P, C) bool: does any image of the patient have the label positive."""
    positive = train[labels].eq(1).groupby(train["patient_id"].astype(str)).any()  # (P, C), index sorted
    return positive.index.to_numpy(dtype=object), positive.to_numpy(dtype=bool)


def patient_order(manifest: Manifest) -> list[str]:
    """The train split's patient ids in the fixed order a label fraction takes a prefix of.

    Depends only on the manifest's content (its data hash seeds the shuffle), so every run of one manifest
    gets the same order. See the module docstring for the head and the stratified interleave.
    """
    train = manifest.frame[manifest.frame["split"] == "train"]
    ids, pos = _patient_positives(train, list(manifest.labels))  # (P,), (P, C)
    rng = np.random.default_rng(int(manifest.data_hash(), 16))
    shuffled = rng.permutation(len(ids))  # (P,) patient indices in a data-seeded random order
    counts = pos.sum(axis=0)  # (C,) positive patients per label
    rare_first = [c for c in np.argsort(counts, kind="stable") if counts[c] > 0]
    head: list[int] = []
    for c in rare_first:
        if not any(pos[p, c] for p in head):
            head.append(int(next(p for p in shuffled if pos[p, c])))
    # stratum = the patient's rarest positive label (rank in rare_first), len(rare_first) = no positive label
    rank = np.full(pos.shape[1], len(rare_first))
    rank[rare_first] = np.arange(len(rare_first))
    label_rank = np.where(pos, rank[None, :], len(rare_first))  # (P, C)
    stratum = label_rank.min(axis=1) if pos.shape[1] else np.zeros(len(ids), dtype=int)  # (P,)
    in_head = set(head)
    rest = [int(p) for p in shuffled if int(p) not in in_head]
    # proportional interleave: the i-th of a stratum's n patients sits at (i + 0.5) / n, so any prefix holds
    # each stratum in proportion to its size (rarer strata first on ties)
    seen: dict[int, int] = {}
    sizes = pd.Series(stratum[rest]).value_counts().to_dict() if rest else {}
    keys = []
    for p in rest:
        s = int(stratum[p])
        i = seen.get(s, 0)
        seen[s] = i + 1
        keys.append(((i + 0.5) / sizes[s], s))
    ordered = [p for _, p in sorted(zip(keys, rest, strict=True), key=lambda kp: kp[0])]
    return [str(ids[p]) for p in head + ordered]


def _subset_hash(paths: pd.Series) -> str:
    return hashlib.sha256("\n".join(sorted(paths.astype(str))).encode()).hexdigest()[:12]


def subsample_train(manifest: Manifest, fraction: float) -> TrainSubset:
    """Keep the train images of the first patients of :func:`patient_order` (all of them at fraction 1).

    Args:
        manifest: the whole manifest.
        fraction: share of train patients to keep, in (0, 1].

    Returns:
        The :class:`TrainSubset`; at fraction 1 its manifest is ``manifest`` itself.

    Raises:
        CxrfaError: a fraction outside (0, 1], or a manifest without train rows.
    """
    if not 0.0 < fraction <= 1.0:
        raise CxrfaError(f"train.label_fraction={fraction!r}: expected a fraction in (0, 1], e.g. 0.1")
    frame = manifest.frame
    is_train = frame["split"] == "train"
    if not is_train.any():
        where = manifest.source or "the manifest"
        raise CxrfaError(f"{where}: no train rows to subsample; index the data with a train split")
    kept_manifest = manifest
    n_patients = frame.loc[is_train, "patient_id"].astype(str).nunique()
    if fraction < 1.0:
        order = patient_order(manifest)
        head = _head_length(manifest, order)
        # round(.., 9) first: 0.07 x 100 is 7.000000000000001 in floating point, and must keep 7 patients
        n_keep = min(len(order), max(math.ceil(round(fraction * len(order), 9)), head))
        kept = set(order[:n_keep])
        keep_rows = ~is_train | frame["patient_id"].astype(str).isin(kept)
        kept_manifest = Manifest(
            frame[keep_rows].reset_index(drop=True),
            manifest.root,
            manifest.labels,
            manifest.label_set,
            manifest.source,
        )
        n_patients = n_keep
    train = kept_manifest.frame[kept_manifest.frame["split"] == "train"]
    return TrainSubset(
        fraction=fraction,
        manifest=kept_manifest,
        patients=n_patients,
        images=len(train),
        subset_hash=_subset_hash(train["path"]),
        positives={lab: int(train[lab].eq(1).sum()) for lab in manifest.labels},
    )


def _head_length(manifest: Manifest, order: list[str]) -> int:
    """How many patients at the front of ``order`` it takes to hold a positive of every label that has one."""
    train = manifest.frame[manifest.frame["split"] == "train"]
    ids, pos = _patient_positives(train, list(manifest.labels))
    row = {pid: i for i, pid in enumerate(ids)}
    needed = pos.any(axis=0)  # (C,)
    covered = np.zeros_like(needed)
    for n, pid in enumerate(order):
        if covered[needed].all():
            return n
        covered |= pos[row[pid]]
    return len(order)
