"""cxrfa.stats against explicit references: slow resampling loops with the same draws, Holm by hand, scipy."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from cxrfa.stats import (
    delong_test,
    delong_var,
    format_p,
    holm,
    holm_at_floor,
    label_boot,
    mean_std_ci,
    metric_range,
    paired_delta,
    paired_seed_test,
    prob_improvement,
    seed_patient_t,
    shared_patient_var,
)

CHUNK = 50  # resamples drawn per generator call (cxrfa.metrics.bootstrap._BOOT_CHUNK)


def _case(seed: int = 0, n: int = 200, c: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(float)
    y[rng.random((n, c)) < 0.1] = np.nan
    weak = rng.random((n, c))
    strong = np.clip(np.nan_to_num(y) * 0.5 + rng.random((n, c)) * 0.6, 0, 1)
    return y, weak, strong


def _patients(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat([f"p{i:03d}" for i in range(n)], rng.integers(1, 5, size=n))[:n])


def _macro(y: np.ndarray, p: np.ndarray, score) -> float:
    vals = []
    for j in range(y.shape[1]):
        m = np.isfinite(y[:, j])
        if len(np.unique(y[m, j])) == 2:
            vals.append(score(y[m, j], p[m, j]))
    return float(np.mean(vals))


def _patient_draws(patients: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Rows of each resample, drawn exactly as cxrfa draws them: patients (sorted ids) in chunks of 50."""
    unique = np.unique(patients)
    rows_of = [np.flatnonzero(patients == pid) for pid in unique]
    rng = np.random.default_rng(seed)
    draws = np.concatenate(
        [
            rng.integers(0, len(unique), size=(min(CHUNK, n_boot - i), len(unique)))
            for i in range(0, n_boot, CHUNK)
        ]
    )
    return [np.concatenate([rows_of[k] for k in draw]) for draw in draws]


def test_seed_and_patient_bootstrap_matches_a_slow_two_level_loop() -> None:
    """Replicate b: draw K seed pairs with default_rng([seed, 1]), then score each drawn pair on patient
    resample b (default_rng(seed)); Δ*_b is the mean over the drawn pairs."""
    y, _, strong = _case(seed=5, n=80, c=3)
    rng = np.random.default_rng(1)
    cell = [np.clip(strong + rng.normal(0, 0.3, strong.shape), 0, 1) for _ in range(3)]  # 3 seeds
    base = [np.clip(strong + rng.normal(0, 0.5, strong.shape), 0, 1) for _ in range(3)]
    patients = _patients(80, seed=6)
    n_boot, seed = 55, 8
    boot = [label_boot(y, p, n_boot, seed, patients).macro("macro_auc") for p in (*cell, *base)]
    res = paired_delta(boot[:3], boot[3:], seed)

    pairs = np.random.default_rng([seed, 1]).integers(0, 3, size=(n_boot, 3))
    rows = _patient_draws(patients, n_boot, seed)
    deltas = []
    for b in range(n_boot):
        r = rows[b]
        deltas.append(
            np.mean(
                [
                    _macro(y[r], cell[k][r], roc_auc_score) - _macro(y[r], base[k][r], roc_auc_score)
                    for k in pairs[b]
                ]
            )
        )
    observed = np.mean(
        [_macro(y, c, roc_auc_score) - _macro(y, b, roc_auc_score) for c, b in zip(cell, base, strict=True)]
    )
    assert res.value == pytest.approx(observed, abs=1e-9)
    assert (res.low, res.high) == pytest.approx(tuple(np.percentile(deltas, [2.5, 97.5])), abs=1e-9)
    extreme = np.sum(np.abs(np.array(deltas) - observed) >= abs(observed))
    assert res.p == pytest.approx((extreme + 1) / (n_boot + 1))
    # seed variation widens the interval over the patient-only interval of the seed-mean difference
    patient_only = np.percentile(
        [
            np.mean(d)
            for d in np.stack([b_.boot for b_ in boot[:3]]).T - np.stack([b_.boot for b_ in boot[3:]]).T
        ],
        [2.5, 97.5],
    )
    assert res.high - res.low > patient_only[1] - patient_only[0]


def test_holm_matches_the_step_down_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005·4 = 0.02; 0.01·3 = 0.03; 0.03·2 = 0.06; 0.04·1 = 0.04 → running max 0.06
    expected = [0.03, 0.06, 0.06, 0.02, float("nan")]
    assert holm(p) == pytest.approx(expected, nan_ok=True)
    assert holm([0.2, 0.5, 0.6]) == pytest.approx([0.6, 1.0, 1.0])  # 0.6, min(1, 1.0), max(1.0, 0.6)
    assert holm([0.04]) == pytest.approx([0.04])


def test_holm_of_floored_p_values_is_a_bound_shown_with_its_multiplier() -> None:
    floor = 1 / 1001
    p = [floor, 0.02, floor]
    adjusted = holm(p)
    assert adjusted == pytest.approx([3 * floor, 0.02, 3 * floor])
    bound = holm_at_floor(p, [True, False, True])
    assert bound.tolist() == [True, False, True]
    assert [format_p(a, 1000, b) for a, b in zip(adjusted, bound, strict=True)] == [
        "≤ 3/1001",
        "0.020",
        "≤ 3/1001",
    ]
    assert format_p(float("nan"), 1000, False) == "–"


def test_mean_std_ci_plain_and_bounded() -> None:
    values = [0.71, 0.74, 0.69, 0.75]
    mean, std, low, high, n = mean_std_ci(values)
    arr = np.array(values)
    assert n == 4 and mean == pytest.approx(arr.mean()) and std == pytest.approx(arr.std(ddof=1))
    ref = sps.t.interval(0.95, df=3, loc=arr.mean(), scale=arr.std(ddof=1) / math.sqrt(4))
    assert (low, high) == pytest.approx(ref)
    one = mean_std_ci([0.8])
    assert one[0] == 0.8 and one[4] == 1 and all(math.isnan(v) for v in one[1:4])
    assert mean_std_ci([0.7, float("nan"), 0.9])[4] == 2

    gaps = [0.01, 0.002, 0.03]  # TPR gaps near 0: the plain t-interval goes below 0, the bounded one cannot
    assert mean_std_ci(gaps)[2] < 0
    g_mean, _, g_low, g_high, _ = mean_std_ci(gaps, (0.0, 1.0))
    z = np.log(np.array(gaps) / (1 - np.array(gaps)))
    lz, hz = sps.t.interval(0.95, df=2, loc=z.mean(), scale=z.std(ddof=1) / math.sqrt(3))
    assert (g_low, g_high) == pytest.approx((1 / (1 + math.exp(-lz)), 1 / (1 + math.exp(-hz))))
    assert 0 < g_low < g_mean < g_high < 1
    cosine = [0.97, 0.99, 0.999]  # cosine similarities near 1: the plain interval passes 1
    assert mean_std_ci(cosine)[3] > 1
    c_low, c_high = mean_std_ci(cosine, (-1.0, 1.0))[2:4]
    assert -1 < c_low < c_high < 1


def test_metric_ranges() -> None:
    assert metric_range("test/macro_auc") == (0.0, 1.0)
    assert metric_range("test/macro_auc_tail") == (0.0, 1.0)
    assert metric_range("test/fair/worst_tpr_gap") == (0.0, 1.0)
    assert metric_range("test/fair/sex/tpr_gap/F") == (-1.0, 1.0)
    assert metric_range("embed/mean_offdiag_sim/final") == (-1.0, 1.0)
    assert metric_range("embed/modality_gap") == (0.0, 2.0)
    assert metric_range("train/loss") is None


# ---------------------------------------------------------------------------------------------------------
# seed + patient t inference, DeLong


def test_without_patient_variance_the_seed_test_is_scipys_t_test() -> None:
    cell = np.array([0.742, 0.761, 0.730, 0.755])
    base = np.array([0.731, 0.744, 0.735, 0.738])
    res = paired_seed_test(cell, base)
    ref = sps.ttest_rel(cell, base)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-12) and res.df == pytest.approx(3)
    d = cell - base
    low, high = sps.t.interval(0.95, df=3, loc=d.mean(), scale=d.std(ddof=1) / 2)
    assert (res.low, res.high) == pytest.approx((low, high), rel=1e-12)
    assert res.prob_improvement == pytest.approx(0.75)  # 3 of 4 pairs favour the cell
    one = seed_patient_t(d, 0.0, null=0.0)
    assert one.p == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-12)
    # minimum detectable Δ at 80% power: (t_.975 + t_.80) x SE on the same df
    assert res.mde == pytest.approx((sps.t.ppf(0.975, 3) + sps.t.ppf(0.8, 3)) * res.se)


def test_shared_patient_variance_widens_the_interval_with_satterthwaite_df_by_hand() -> None:
    d = np.array([0.012, -0.004, 0.021])
    shared, n_patients = 0.011**2, 120
    res = seed_patient_t(d, shared, n_patients - 1)
    seed_part = d.var(ddof=1) / 3
    se = math.sqrt(seed_part + shared)
    upper = seed_part * 2 / sps.chi2.ppf(0.25, 2)  # seed part at its 75% upper bound, for the df only
    df = (upper + shared) ** 2 / (upper**2 / 2 + shared**2 / (n_patients - 1))
    assert res.se == pytest.approx(se, rel=1e-12) and res.df == pytest.approx(df, rel=1e-12)
    assert (res.low, res.high) == pytest.approx(sps.t.interval(0.95, df, loc=d.mean(), scale=se), rel=1e-12)
    assert res.p == pytest.approx(2 * sps.t.sf(d.mean() / se, df), rel=1e-12)
    plain = seed_patient_t(d, 0.0)
    assert res.high - res.low > 0 and res.se > plain.se and res.df > plain.df  # wider SE, more df than K − 1
    patient_only = seed_patient_t([0.02], 0.01**2)  # one seed: a normal test on the patient variance
    assert math.isinf(patient_only.df) and patient_only.p == pytest.approx(2 * sps.norm.sf(2.0))


def test_shared_patient_variance_is_the_mean_cross_seed_covariance() -> None:
    rng = np.random.default_rng(3)
    common = rng.normal(0, 0.02, 400)  # (B,) shared by every seed
    reps = common + rng.normal(0, 0.01, (3, 400))  # (K, B)
    cov = np.cov(reps)
    expected = (cov.sum() - np.trace(cov)) / 6
    assert shared_patient_var(reps) == pytest.approx(expected, rel=1e-12)
    assert shared_patient_var(reps) == pytest.approx(0.02**2, rel=0.2)  # the common part only
    assert shared_patient_var(reps[:1]) == pytest.approx(cov[0, 0])
    test = paired_seed_test(np.array([0.01, 0.02, 0.0]), np.zeros(3), replicates=reps, n_patients=150)
    assert test.shared_var == pytest.approx(expected, rel=1e-12)
    assert paired_seed_test([0.1], [0.0], patient_var=[0.0004]).se == pytest.approx(0.02)


def test_probability_of_improvement_follows_the_metrics_direction() -> None:
    assert prob_improvement([0.01, -0.02, 0.0, 0.03]) == pytest.approx(0.625)
    assert prob_improvement([0.01, -0.02, 0.0, 0.03], higher_is_better=False) == pytest.approx(0.375)


def test_delong_matches_a_hand_computation() -> None:
    # y = 1,1,1,0,0. Model a: positives .9 .6 .4, negatives .5 .1 -> V10 = (1, 1, .5), V01 = (2/3, 1), AUROC 5/6,
    # var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/18. Model b: positives .8 .7 .2, negatives .3 .6 ->
    # V10 = (1, 1, 0), V01 = (2/3, 2/3), AUROC 2/3. Δ = b − a = −1/6; its components D10 = (0, 0, −.5) with
    # var 1/12 and D01 = (0, −1/3) with var 1/18, so var(Δ) = 1/36 + 1/36 = 1/18, z = (1/6)/sqrt(1/18).
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.1])
    b = np.array([0.8, 0.7, 0.2, 0.3, 0.6])
    assert delong_var(y, a) == pytest.approx(1 / 18)
    delta, se, p = delong_test(y, a, b)
    assert delta == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a)) == pytest.approx(-1 / 6)
    assert se == pytest.approx(math.sqrt(1 / 18))
    assert p == pytest.approx(2 * sps.norm.sf((1 / 6) / math.sqrt(1 / 18)))
    assert delong_test(y, a, a)[2] == 1.0


ASAH = Path(__file__).parent / "fixtures" / "aSAH.csv"  # pROC's aSAH data (fixtures/README.md)


def _asah() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with ASAH.open(newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([r["outcome"] == "Poor" for r in rows], dtype=float)
    return y, {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "s100b", "ndka")}


@pytest.mark.parametrize(
    ("first", "second", "z", "p", "ci"),
    [  # roc.test(roc(outcome, first), roc(outcome, second)): pROC tests/testthat/test-roc.test.R
        ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, (0.0104061769564846, 0.174214419249478)),
        ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, (0.0634011709339876, 0.3600405634833566)),
        ("ndka", "s100b", -1.39077002573558, 0.164295175223054, (-0.2876917446341914, 0.0488706064228094)),
    ],
)
def test_delong_reproduces_procs_published_roc_test_on_asah(
    first: str, second: str, z: float, p: float, ci: tuple[float, float]
) -> None:
    """pROC's paired DeLong test on the aSAH data (113 patients, Turck et al. 2010), to its printed precision.

    pROC's statistic is (AUC(first) − AUC(second)) / SE; :func:`delong_test` returns AUC(b) − AUC(a), so the
    first curve is passed as b.
    """
    y, score = _asah()
    assert y.size == 113 and int(y.sum()) == 41
    delta, se, p_ours = delong_test(y, score[second], score[first])
    assert delta / se == pytest.approx(z, rel=1e-12)
    assert p_ours == pytest.approx(p, rel=1e-12)
    half = sps.norm.ppf(0.975) * se
    assert (delta - half, delta + half) == pytest.approx(ci, rel=1e-12)


def test_delong_auc_variance_and_covariance_match_proc_on_asah() -> None:
    """pROC's auc(), var() and cov() (tests test-auc.R, test-var.R, test-cov.R) of the same three ROC curves."""
    y, score = _asah()
    assert roc_auc_score(y, score["wfns"]) == pytest.approx(0.823678861788618, rel=1e-12)
    assert roc_auc_score(y, score["ndka"]) == pytest.approx(0.611957994579946, rel=1e-12)
    published_var = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913, "s100b": 0.00266868245717244}
    for name, var in published_var.items():
        assert delong_var(y, score[name]) == pytest.approx(var, rel=1e-12)
    # var(b − a) = var(a) + var(b) − 2 cov(a, b), so each pair's test variance gives pROC's cov(a, b)
    published_cov = {("wfns", "ndka"): -0.000532967856762438, ("ndka", "s100b"): -0.000756164938056579}
    for (a, b), cov in published_cov.items():
        se = delong_test(y, score[a], score[b])[1]
        assert (published_var[a] + published_var[b] - se**2) / 2 == pytest.approx(cov, rel=1e-10)


def test_fast_delong_equals_the_quadratic_definition_with_ties() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(60) < 0.4).astype(float)
    a = np.round(rng.random(60) + 0.4 * y, 1)  # rounded: many ties
    b = np.round(rng.random(60) + 0.6 * y, 1)

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (m, n)
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = components(a), components(b)
    var = np.var(b10 - a10, ddof=1) / a10.size + np.var(b01 - a01, ddof=1) / a01.size
    delta, se, _ = delong_test(y, a, b)
    assert delta == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a), abs=1e-12)
    assert se == pytest.approx(math.sqrt(var), rel=1e-10)
