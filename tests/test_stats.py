"""cxrfa.stats: paired bootstrap between two models and mean ± CI over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrfa.stats import mean_std_ci, paired_bootstrap


def _case(seed: int = 0, n: int = 200, c: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(float)
    y[rng.random((n, c)) < 0.1] = np.nan
    weak = rng.random((n, c))
    strong = np.clip(np.nan_to_num(y) * 0.5 + rng.random((n, c)) * 0.6, 0, 1)
    return y, weak, strong


def _macro(y: np.ndarray, p: np.ndarray, score) -> float:
    vals = []
    for j in range(y.shape[1]):
        m = np.isfinite(y[:, j])
        if len(np.unique(y[m, j])) == 2:
            vals.append(score(y[m, j], p[m, j]))
    return float(np.mean(vals))


def test_identical_predictions_give_zero_delta_and_p_one() -> None:
    y, weak, _ = _case()
    res = paired_bootstrap(y, weak, weak.copy(), n_boot=100)
    assert res.delta == 0.0 and res.p_value == 1.0
    assert res.ci_low == 0.0 and res.ci_high == 0.0 and res.n == 100


def test_clearly_better_model_is_significant() -> None:
    y, weak, strong = _case(seed=1)
    res = paired_bootstrap(y, weak, strong, metric="macro_auc", n_boot=200, seed=3)
    assert res.delta > 0.2 and res.ci_low > 0
    assert res.p_value == pytest.approx(2 / 201)  # no resample on the other side: the +1 floor
    rev = paired_bootstrap(y, strong, weak, metric="map", n_boot=200, seed=3)
    assert rev.delta < 0 and rev.ci_high < 0 and rev.p_value < 0.05


@pytest.mark.parametrize("metric", ["macro_auc", "map"])
def test_values_match_explicit_resampling(metric: str) -> None:
    y, weak, strong = _case(seed=2, n=60, c=2)
    noisy = np.clip(strong + np.random.default_rng(9).normal(0, 0.4, strong.shape), 0, 1)  # a close race
    score = roc_auc_score if metric == "macro_auc" else average_precision_score
    n_boot, seed = 30, 4
    res = paired_bootstrap(y, weak, noisy, metric=metric, n_boot=n_boot, seed=seed)
    assert res.delta == pytest.approx(_macro(y, noisy, score) - _macro(y, weak, score), abs=1e-9)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    deltas = np.array([_macro(y[i], noisy[i], score) - _macro(y[i], weak[i], score) for i in idx])
    other = np.sum(deltas <= 0) if res.delta > 0 else np.sum(deltas >= 0)
    assert res.p_value == pytest.approx(min(1.0, 2 * (other + 1) / (n_boot + 1)))
    assert (res.ci_low, res.ci_high) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])), abs=1e-9)


def test_paired_bootstrap_rejects_unknown_metric() -> None:
    y, weak, strong = _case(n=20)
    with pytest.raises(ValueError, match="metric"):
        paired_bootstrap(y, weak, strong, metric="accuracy")  # type: ignore[arg-type]


def test_mean_std_ci() -> None:
    values = [0.71, 0.74, 0.69, 0.75]
    mean, std, low, high, n = mean_std_ci(values)
    arr = np.array(values)
    assert n == 4 and mean == pytest.approx(arr.mean()) and std == pytest.approx(arr.std(ddof=1))
    ref = sps.t.interval(0.95, df=3, loc=arr.mean(), scale=arr.std(ddof=1) / math.sqrt(4))
    assert (low, high) == pytest.approx(ref)
    one = mean_std_ci([0.8])
    assert one[0] == 0.8 and one[4] == 1 and all(math.isnan(v) for v in one[1:4])
    assert mean_std_ci([0.7, float("nan"), 0.9])[4] == 2
