"""One age binning: the fairness metric keys and ``cxrfa data stats`` name the same age groups."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrfa.data.ages import AGE_BINS, age_bins
from cxrfa.data.manifest import make_manifest
from cxrfa.data.stats import manifest_stats
from cxrfa.metrics import compute_metrics


def test_age_bins_edges_and_unknowns() -> None:
    ages = pd.Series([0, 19.9, 20, 59, 60, 79.5, 80, 104, -3, np.nan, "n/a"])
    got = age_bins(ages).tolist()
    assert got[:8] == ["0-20", "0-20", "20-40", "40-60", "60-80", "60-80", "80plus", "80plus"]
    assert all(v is np.nan or pd.isna(v) for v in got[8:])


def test_stats_and_fairness_metrics_share_the_age_groups() -> None:
    rng = np.random.default_rng(0)
    n = 40
    ages = np.array([5, 25, 45, 65, 85] * 8, dtype=float)
    frame = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(n)],
            "patient_id": [f"p{i}" for i in range(n)],
            "split": "test",
            "sex": rng.choice(["M", "F"], n),
            "age": ages,
            "view": "PA",
            "domain": "synth",
            "A": (np.arange(n) % 3 == 0).astype(float),
        }
    )
    manifest = make_manifest(frame, ".", ["A"], "custom")
    stats_groups = manifest_stats(manifest).subgroups["age"].index.tolist()
    assert stats_groups == list(AGE_BINS)  # every bin has rows, in bin order
    y = manifest.label_matrix()
    scores = compute_metrics(y, rng.random(y.shape), ["A"], subgroups=frame[["sex", "age", "view"]], n_boot=0)
    metric_groups = [k.removeprefix("fair/age/auc/") for k in scores.scalars if k.startswith("fair/age/auc/")]
    assert metric_groups == stats_groups
