"""cxrfa.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    mean_squared_error,
    roc_auc_score,
)

from cxrfa.metrics import bootstrap_per_label, choose_thresholds, compute_metrics, expected_calibration_error

TOL = 1e-9


def _random_case(seed: int = 0, n: int = 300, c: int = 6) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.linspace(0.05, 0.5, c)).astype(float)
    p = np.clip(0.6 * y + rng.random((n, c)) * 0.7 - 0.1, 0, 1)
    p[:, ::2] = np.round(p[:, ::2], 1)  # heavy ties in every other label
    y[rng.random((n, c)) < 0.15] = np.nan  # unknown entries
    return y, p, [f"L{j}" for j in range(c)]


def test_per_label_and_global_metrics_match_sklearn() -> None:
    y, p, labels = _random_case()
    thresholds = choose_thresholds(y, p)
    res = compute_metrics(y, p, labels, thresholds=thresholds, n_boot=0)
    aucs, aps, f1s = [], [], []
    for j, lab in enumerate(labels):
        m = np.isfinite(y[:, j])
        auc, ap = roc_auc_score(y[m, j], p[m, j]), average_precision_score(y[m, j], p[m, j])
        f1 = f1_score(y[m, j], p[m, j] >= thresholds[j])
        assert res.scalars[f"auc/{lab}"] == pytest.approx(auc, abs=TOL)
        assert res.scalars[f"ap/{lab}"] == pytest.approx(ap, abs=TOL)
        assert res.scalars[f"f1/{lab}"] == pytest.approx(f1, abs=TOL)
        cm = confusion_matrix(y[m, j], p[m, j] >= thresholds[j], labels=[0, 1])
        np.testing.assert_array_equal(res.confusion[lab], cm)
        aucs.append(auc), aps.append(ap), f1s.append(f1)
    known = np.isfinite(y)
    assert res.scalars["macro_auc"] == pytest.approx(np.mean(aucs), abs=TOL)
    assert res.scalars["map"] == pytest.approx(np.mean(aps), abs=TOL)
    assert res.scalars["macro_f1"] == pytest.approx(np.mean(f1s), abs=TOL)
    assert res.scalars["micro_auc"] == pytest.approx(roc_auc_score(y[known], p[known]), abs=TOL)
    assert res.scalars["mse"] == pytest.approx(mean_squared_error(y[known], p[known]), abs=TOL)
    assert res.thresholds_from_val
    row = res.per_label.set_index("label").loc["L1"]
    m = np.isfinite(y[:, 1])
    assert row["n_pos"] == int(y[m, 1].sum()) and row["n_neg"] == int((y[m, 1] == 0).sum())


def test_choose_thresholds_maximises_f1() -> None:
    y, p, _ = _random_case(seed=3, n=120, c=4)
    thresholds = choose_thresholds(y, p)
    for j in range(y.shape[1]):
        m = np.isfinite(y[:, j])
        best = max(f1_score(y[m, j], p[m, j] >= t) for t in np.unique(p[m, j]))
        assert f1_score(y[m, j], p[m, j] >= thresholds[j]) == pytest.approx(best, abs=TOL)
        assert thresholds[j] in p[m, j]


def test_single_class_label_is_nan_and_excluded(caplog: pytest.LogCaptureFixture) -> None:
    y, p, labels = _random_case(seed=1, c=3)
    y[:, 1] = np.where(np.isfinite(y[:, 1]), 0.0, np.nan)  # all-negative label
    y[:, 2] = np.nan  # entirely unknown label
    assert choose_thresholds(y, p)[1:].tolist() == [0.5, 0.5]
    logger = logging.getLogger("cxrfa.metrics")  # attach directly: the CLI turns off propagation of "cxrfa"
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="cxrfa.metrics"):
            res = compute_metrics(y, p, labels, n_boot=20)
    finally:
        logger.removeHandler(caplog.handler)
    assert "L1" in caplog.text and "one class" in caplog.text
    assert np.isnan(res.scalars["auc/L1"]) and np.isnan(res.scalars["ap/L2"])
    m = np.isfinite(y[:, 0])
    assert res.scalars["macro_auc"] == pytest.approx(roc_auc_score(y[m, 0], p[m, 0]), abs=TOL)
    assert res.scalars["macro_f1"] == pytest.approx(res.scalars["f1/L0"], abs=TOL)
    assert np.isfinite(res.scalars["macro_auc_ci_low"])
    assert not res.thresholds_from_val


def test_ties_everywhere_give_half_auc() -> None:
    y = np.array([[0.0], [1.0], [0.0], [1.0]])
    p = np.full((4, 1), 0.3)
    res = compute_metrics(y, p, ["A"], n_boot=0)
    assert res.scalars["auc/A"] == pytest.approx(0.5)
    assert res.scalars["ap/A"] == pytest.approx(average_precision_score(y[:, 0], p[:, 0]), abs=TOL)


def test_ece_by_hand() -> None:
    y = np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 1.0]])
    p = np.array([[0.95, 0.02], [0.9, 0.5], [1.0, 0.05]])
    # 15 bins of width 1/15: {0.95, 1.0} → bin 14 (y 1, 1); {0.9} → bin 13 (y 0); {0.02, 0.05} → bin 0
    expected = 2 / 5 * abs(1 - 0.975) + 1 / 5 * abs(0 - 0.9) + 2 / 5 * abs(0.5 - 0.035)
    assert expected_calibration_error(y, p) == pytest.approx(expected, abs=TOL)
    assert compute_metrics(y, p, ["A", "B"], n_boot=0).scalars["ece"] == pytest.approx(expected, abs=TOL)


def test_bootstrap_resamples_match_explicit_resampling() -> None:
    y, p, _ = _random_case(seed=2, n=80, c=3)
    auc, ap = bootstrap_per_label(y, p, n_boot=3, seed=7)
    idx = np.random.default_rng(7).integers(0, 80, size=(3, 80))
    for b in range(3):
        yb, pb = y[idx[b]], p[idx[b]]
        for j in range(3):
            m = np.isfinite(yb[:, j])
            if len(np.unique(yb[m, j])) < 2:
                assert np.isnan(auc[b, j])
                continue
            assert auc[b, j] == pytest.approx(roc_auc_score(yb[m, j], pb[m, j]), abs=TOL)
            assert ap[b, j] == pytest.approx(average_precision_score(yb[m, j], pb[m, j]), abs=TOL)


def _patients(n: int, seed: int) -> np.ndarray:
    """Patient ids with 1-6 images each, rows of one patient scattered through the table."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=n)
    ids = np.repeat([f"p{i:03d}" for i in range(n)], sizes)[:n]
    return rng.permutation(ids)


def test_patient_bootstrap_ci_equals_a_slow_explicit_patient_resampling() -> None:
    y, p, labels = _random_case(seed=3, n=120, c=4)
    patients = _patients(120, seed=1)
    n_boot, seed = 70, 11  # more than one chunk of resamples
    res = compute_metrics(y, p, labels, n_boot=n_boot, seed=seed, patients=patients).scalars
    # the reference: draw patients with the same generator calls, concatenate all their images, score with sklearn
    unique = np.unique(patients)
    rows_of = {pid: np.flatnonzero(patients == pid) for pid in unique}
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.integers(0, len(unique), size=(b, len(unique))) for b in (50, 20)])
    macro_auc, macro_ap = [], []
    for b in range(n_boot):
        rows = np.concatenate([rows_of[unique[k]] for k in draws[b]])
        yb, pb = y[rows], p[rows]
        aucs, aps = [], []
        for j in range(len(labels)):
            m = np.isfinite(yb[:, j])
            if len(np.unique(yb[m, j])) == 2:
                aucs.append(roc_auc_score(yb[m, j], pb[m, j]))
                aps.append(average_precision_score(yb[m, j], pb[m, j]))
        macro_auc.append(np.mean(aucs))
        macro_ap.append(np.mean(aps))
    assert (res["macro_auc_ci_low"], res["macro_auc_ci_high"]) == pytest.approx(
        tuple(np.percentile(macro_auc, [2.5, 97.5])), abs=TOL
    )
    assert (res["map_ci_low"], res["map_ci_high"]) == pytest.approx(
        tuple(np.percentile(macro_ap, [2.5, 97.5])), abs=TOL
    )
    # resampling patients is not resampling images: the image-level CI differs
    images = compute_metrics(y, p, labels, n_boot=n_boot, seed=seed).scalars
    assert images["macro_auc_ci_low"] != res["macro_auc_ci_low"]


def test_one_image_per_patient_is_the_image_bootstrap_and_missing_ids_are_refused() -> None:
    y, p, labels = _random_case(seed=5, n=60, c=3)
    ids = [f"id{i:02d}" for i in range(60)]  # sorted order = row order
    assert compute_metrics(y, p, labels, n_boot=40, seed=2, patients=ids).scalars == pytest.approx(
        compute_metrics(y, p, labels, n_boot=40, seed=2).scalars, nan_ok=True
    )
    with pytest.raises(ValueError, match="patients has 59 rows"):
        compute_metrics(y, p, labels, n_boot=10, patients=ids[:-1])
    with pytest.raises(ValueError, match="patient id is missing"):
        compute_metrics(y, p, labels, n_boot=10, patients=[*ids[:-1], None])


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    y, p, labels = _random_case(seed=4)
    a = compute_metrics(y, p, labels, n_boot=100, seed=5).scalars
    b = compute_metrics(y, p, labels, n_boot=100, seed=5).scalars
    c = compute_metrics(y, p, labels, n_boot=100, seed=6).scalars
    for key in ("macro_auc", "map"):
        assert a[f"{key}_ci_low"] < a[key] < a[f"{key}_ci_high"]
        assert (a[f"{key}_ci_low"], a[f"{key}_ci_high"]) == (b[f"{key}_ci_low"], b[f"{key}_ci_high"])
    assert a["macro_auc_ci_low"] != c["macro_auc_ci_low"]
    assert np.isnan(compute_metrics(y, p, labels, n_boot=0).scalars["map_ci_low"])


def test_long_tail_groups() -> None:
    y, p, labels = _random_case(seed=5, c=4)
    groups = {"L0": "tail", "L1": "head", "L2": "head", "L3": "medium"}
    res = compute_metrics(y, p, labels, label_groups=groups, n_boot=0)
    s = res.scalars
    assert s["macro_auc_head"] == pytest.approx((s["auc/L1"] + s["auc/L2"]) / 2, abs=TOL)
    assert s["map_tail"] == pytest.approx(s["ap/L0"], abs=TOL)
    assert s["macro_auc_medium"] == pytest.approx(s["auc/L3"], abs=TOL)
    assert res.per_label["group"].tolist() == ["tail", "head", "head", "medium"]


def test_fairness_gaps_by_hand() -> None:
    # Men: 4 positives (3 caught, TPR .75) + 2 negatives, age 30. Women: 2 positives (1 caught, TPR .5)
    # + 2 negatives, age 85. One view everywhere.
    y = np.array([[1], [1], [1], [1], [0], [0], [1], [1], [0], [0]], dtype=float)
    p = np.array([[0.9], [0.9], [0.9], [0.1], [0.2], [0.05], [0.9], [0.1], [0.3], [0.2]])
    sub = pd.DataFrame({"sex": ["M"] * 6 + ["F"] * 4, "age": [30] * 6 + [85] * 4, "view": ["PA"] * 10})
    s = compute_metrics(y, p, ["A"], subgroups=sub, n_boot=0).scalars
    assert s["fair/sex/tpr/M"] == pytest.approx(0.75) and s["fair/sex/tpr/F"] == pytest.approx(0.5)
    assert s["fair/sex/tpr_gap/M"] == pytest.approx(0.25) and s["fair/sex/tpr_gap/F"] == pytest.approx(-0.25)
    assert s["fair/age/tpr_gap/20-40"] == pytest.approx(0.125)
    assert s["fair/age/tpr_gap/80plus"] == pytest.approx(-0.125)
    assert s["fair/view/tpr_gap/PA"] == pytest.approx(0.0)
    assert s["fair/worst_tpr_gap"] == pytest.approx(0.25)
    men = slice(0, 6)
    assert s["fair/sex/auc/M"] == pytest.approx(roc_auc_score(y[men, 0], p[men, 0]), abs=TOL)
    assert "fair/age/auc/0-20" not in s  # no rows in that bin


def test_non_finite_probabilities_are_refused() -> None:
    y, p, labels = _random_case(seed=6, n=40, c=2)
    p[np.flatnonzero(np.isfinite(y[:, 0]))[0], 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(y, p, labels, n_boot=0)
    p[~np.isfinite(y)] = np.nan  # but NaN where the label is unknown is ignored
    p[np.isfinite(y) & np.isnan(p)] = 0.5
    assert np.isfinite(compute_metrics(y, p, labels, n_boot=0).scalars["macro_auc"])


def test_calibration_in_the_large_against_numpy() -> None:
    from cxrfa.metrics import calibration_in_the_large

    y = np.array([[1, 0], [0, np.nan], [0, 1], [0, 0]], dtype=float)
    p = np.array([[0.5, 0.1], [0.1, 0.9], [0.2, 0.3], [0.0, 0.2]])
    out = calibration_in_the_large(y, p, ["A", "B"])
    assert out["max_prob"] == 0.5  # the 0.9 sits on an unknown entry
    assert out["mean_prob/A"] == pytest.approx(0.2) and out["prevalence/A"] == pytest.approx(0.25)
    assert out["mean_prob/B"] == pytest.approx(0.2) and out["prevalence/B"] == pytest.approx(1 / 3)
    assert out["prevalence_ratio_min"] == pytest.approx(0.6) and out["prevalence_ratio_max"] == pytest.approx(
        0.8
    )


def test_masked_per_label_auroc_has_one_owner_whoever_asks() -> None:
    """compute_metrics (overall and per subgroup), masked_auc (exploration) and label_boot (comparison) all score
    AUROC through per_label_auc_ap, and each equals scikit-learn on the label's known rows."""
    from cxrfa.metrics import masked_auc
    from cxrfa.stats import label_boot

    y, p, labels = _random_case(seed=3)
    expected = np.array(
        [roc_auc_score(y[np.isfinite(y[:, j]), j], p[np.isfinite(y[:, j]), j]) for j in range(len(labels))]
    )
    sex = pd.DataFrame({"sex": np.where(np.arange(len(y)) < 150, "M", "F")})
    result = compute_metrics(y, p, labels, subgroups=sex, n_boot=0)
    per_label, macro = masked_auc(y, p, labels)
    np.testing.assert_allclose(result.per_label["auc"], expected, atol=TOL)
    np.testing.assert_allclose([per_label[lab] for lab in labels], expected, atol=TOL)
    np.testing.assert_allclose(label_boot(y, p, n_boot=0).auc, expected, atol=TOL)
    assert macro == pytest.approx(result.scalars["macro_auc"], abs=TOL)
    men = [
        roc_auc_score(y[:150][np.isfinite(y[:150, j]), j], p[:150][np.isfinite(y[:150, j]), j])
        for j in range(len(labels))
    ]
    assert result.scalars["fair/sex/auc/M"] == pytest.approx(np.mean(men), abs=TOL)


# ---------------------------------------------------------------------------------------------------------
# The compared-metric registry, scored under patient-resample weights


def _registry_case() -> tuple[np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(11)
    n, c = 240, 5
    y = (rng.random((n, c)) < [0.4, 0.3, 0.2, 0.1, 0.05]).astype(float)
    y[rng.random((n, c)) < 0.08] = np.nan
    prob = np.clip(0.35 * np.nan_to_num(y) + 0.65 * rng.random((n, c)), 0, 1).round(3)  # ties
    sub = pd.DataFrame(
        {
            "sex": rng.choice(["M", "F"], n),
            "age": rng.integers(5, 95, n),
            "view": rng.choice(["PA", "AP", "LL"], n),
        }
    )
    patients = rng.permutation(np.repeat([f"p{i:03d}" for i in range(n)], rng.integers(1, 4, size=n))[:n])
    return y, prob, sub, rng.uniform(0.2, 0.6, c), ["head", "head", "medium", "tail", "tail"], patients


def test_every_paired_metric_on_the_test_set_equals_compute_metrics() -> None:
    from cxrfa.metrics import list_metrics, score_weighted

    y, prob, sub, thr, groups, patients = _registry_case()
    labels = [f"L{j}" for j in range(y.shape[1])]
    ref = compute_metrics(
        y,
        prob,
        labels,
        thresholds=thr,
        subgroups=sub,
        label_groups=dict(zip(labels, groups, strict=True)),
        n_boot=0,
    ).scalars
    values, per_label = score_weighted(
        y, prob, list_metrics(paired=True), 0, thresholds=thr, label_groups=groups, subgroups=sub
    )
    assert {k for k in ref if "/tpr_gap/" in k} <= set(
        values
    )  # every subgroup's gap, as compute_metrics logs it
    for name, v in values.items():
        assert v.shape == (1,)
        assert v[0] == pytest.approx(ref[name], abs=1e-12), name
    assert per_label[0] == pytest.approx([ref[f"auc/{lab}"] for lab in labels], abs=1e-12)
    assert ref["mse"] == pytest.approx(mean_squared_error(y[np.isfinite(y)], prob[np.isfinite(y)]))


def test_a_resample_of_every_paired_metric_equals_scoring_the_resampled_rows() -> None:
    from cxrfa.metrics import (
        SUBGROUP_ATTRIBUTES,
        cluster_codes,
        list_metrics,
        row_counts,
        score_weighted,
        stratified_row_counts,
        subgroup_codes,
    )

    y, prob, sub, thr, groups, patients = _registry_case()
    labels = [f"L{j}" for j in range(y.shape[1])]
    values, per_label = score_weighted(
        y,
        prob,
        list_metrics(paired=True),
        3,
        seed=4,
        patients=patients,
        thresholds=thr,
        label_groups=groups,
        subgroups=sub,
    )
    codes = cluster_codes(patients, len(y))
    counts = next(row_counts(codes, 3, 4))  # (3, N): the same draws
    # the subgroup gaps' own draws, inside each subgroup of each attribute
    within = {
        attr: next(stratified_row_counts(codes, index, 3, (4, 3, SUBGROUP_ATTRIBUTES.index(attr))))
        for attr, (_, index) in subgroup_codes(sub).items()
    }

    def scored(weights: np.ndarray) -> dict[str, float]:
        rows = np.repeat(np.arange(len(y)), weights.astype(int))  # the resample's rows, explicitly
        return compute_metrics(
            y[rows],
            prob[rows],
            labels,
            thresholds=thr,
            subgroups=sub.iloc[rows],
            label_groups=dict(zip(labels, groups, strict=True)),
            n_boot=0,
        ).scalars

    for b in range(3):
        ref = scored(counts[b])
        gaps = {}
        for attr, w in within.items():
            gaps |= {k: v for k, v in scored(w[b]).items() if k.startswith(f"fair/{attr}/tpr_gap/")}
        ref |= gaps | {"fair/worst_tpr_gap": max(abs(v) for v in gaps.values() if np.isfinite(v))}
        for name, v in values.items():
            assert v[1 + b] == pytest.approx(ref[name], abs=1e-12, nan_ok=True), (name, b)
        assert per_label[1 + b] == pytest.approx(
            [ref[f"auc/{lab}"] for lab in labels], abs=1e-12, nan_ok=True
        )


def test_subgroup_resamples_draw_patients_inside_each_subgroup_so_each_keeps_its_size() -> None:
    from cxrfa.metrics import cluster_codes, row_counts, stratified_row_counts, subgroup_codes

    _, _, sub, _, _, patients = _registry_case()
    codes = cluster_codes(patients, len(patients))
    names, index = subgroup_codes(sub)["view"]
    counts = np.concatenate(list(stratified_row_counts(codes, index, 120, (0, 3, 2))))  # (120, N)
    assert counts.shape == (120, len(patients))
    for g in range(len(names)):
        rows = index == g
        clusters = {p: np.flatnonzero(rows & (codes == p)) for p in np.unique(codes[rows])}
        drawn = np.stack([counts[:, r[0]] for r in clusters.values()], axis=1)  # (B, patients in g)
        assert (drawn.sum(axis=1) == len(clusters)).all()  # as many draws as g has patients, every time
        for r in clusters.values():  # a drawn patient brings all its rows in g, and only those
            assert (counts[:, r] == counts[:, r[:1]]).all()
        assert drawn.std() > 0  # and they are resampled
    # a plain patient resample lets a subgroup's number of patients wander with the draw of the whole test set
    plain = next(row_counts(codes, 50, 0))  # (50, N)
    assert np.ptp(np.stack([plain[:, r[0]] for r in clusters.values()], axis=1).sum(axis=1)) > 0


def test_the_worst_gap_null_is_above_zero_and_its_permutations_are_seeded() -> None:
    from cxrfa.metrics import worst_gap_null

    y, prob, sub, thr, _, _ = _registry_case()
    null = worst_gap_null(y, prob, thr, sub, n_perm=20, seed=1)
    assert null.shape == (20,) and (null > 0).all()  # a max of noisy gaps is biased upward
    assert worst_gap_null(y, prob, thr, sub, n_perm=20, seed=1) == pytest.approx(null)


def test_the_registry_declares_each_metric_once_with_its_direction() -> None:
    from cxrfa.metrics import get_metric, list_metrics

    assert get_metric("test/mse").arrow == "↓" and get_metric("macro_auc").arrow == "↑"
    assert get_metric("embed/modality_gap").paired and not get_metric("embed/mean_offdiag_sim/final").paired
    names = [m.name for m in list_metrics()]
    assert len(names) == len(set(names))
    with pytest.raises(KeyError, match="known: macro_auc"):
        get_metric("test/nope")
