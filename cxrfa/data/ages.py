"""The project's one age binning: fairness metrics, ``cxrfa data stats`` and the UMAP colours all use it, so a
subgroup has the same name in a metric key, a stats table and a plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

AGE_EDGES: tuple[float, ...] = (0.0, 20.0, 40.0, 60.0, 80.0, np.inf)
# "80plus" rather than "80+": metric keys are logged to MLflow, which rejects "+" in names.
AGE_BINS: tuple[str, ...] = ("0-20", "20-40", "40-60", "60-80", "80plus")


def age_bins(age: pd.Series) -> pd.Series:
    """Ages in years -> :data:`AGE_BINS` names (left-closed: 20 is in ``20-40``); unknown or negative -> NaN."""
    years = pd.to_numeric(age, errors="coerce")
    binned = pd.cut(years.where(years >= 0), list(AGE_EDGES), right=False, labels=list(AGE_BINS))
    return binned.astype(object).where(binned.notna(), np.nan)
