"""Pure exploration functions on small synthetic embeddings with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from cxrfa.explore import (
    balanced_gap,
    cosine_scores,
    gap_shift_experiment,
    mean_offdiag,
    modality_gap,
    plot_gap_shift,
    shift,
    similarity_matrix,
    similarity_panels,
    zero_shot_probs,
)
from cxrfa.metrics import masked_auc

D = 6


def _unit(i: int) -> np.ndarray:
    e = np.zeros(D)
    e[i] = 1.0
    return e


def _cones(theta: float = 0.4, phi: float = 0.7, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Images: cos θ e0 ± sin θ e2 and cos θ e0 ± sin θ e3 (centroid cos θ e0); texts likewise about e1 with φ.

    Rows are scaled by ``scale`` so the functions must normalise them first.
    """
    img = [np.cos(theta) * _unit(0) + s * np.sin(theta) * _unit(k) for k in (2, 3) for s in (1, -1)]
    txt = [np.cos(phi) * _unit(1) + s * np.sin(phi) * _unit(k) for k in (4, 5) for s in (1, -1)]
    return scale * np.array(img), scale * np.array(txt)


def _independent_gap(img: np.ndarray, txt: np.ndarray) -> float:
    a = img / np.linalg.norm(img, axis=1, keepdims=True)
    b = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def test_modality_gap_recovers_known_gap_for_arrays_and_tensors() -> None:
    theta, phi = 0.4, 0.7
    img, txt = _cones(theta, phi)
    expected = np.cos(theta) * _unit(0) - np.cos(phi) * _unit(1)
    gap = modality_gap(img, txt)
    np.testing.assert_allclose(gap.vector, expected, atol=1e-12)
    assert gap.norm == pytest.approx(np.hypot(np.cos(theta), np.cos(phi)), abs=1e-12)
    np.testing.assert_allclose(gap.direction, expected / np.linalg.norm(expected), atol=1e-12)
    from_torch = modality_gap(torch.tensor(img, dtype=torch.float16), torch.tensor(txt))
    assert from_torch.norm == pytest.approx(gap.norm, abs=2e-3)


def test_shift_moves_the_gap_by_delta_along_its_direction() -> None:
    img, txt = _cones()
    gap = modality_gap(img, txt).norm
    for delta in (-0.3, 0.2, 0.5, gap):
        # without renormalisation every vector moves by the same amount: the gap shrinks by exactly δ
        a, b = shift(img, txt, delta, renormalise=False)
        assert np.linalg.norm(a.mean(0) - b.mean(0)) == pytest.approx(abs(gap - delta), abs=1e-12)
        # with renormalisation: compare with the shift done by hand, then measured independently
        a, b = shift(img, txt, delta)
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0) and np.allclose(np.linalg.norm(b, axis=1), 1.0)
        g_hat = (np.cos(0.4) * _unit(0) - np.cos(0.7) * _unit(1)) / gap
        img_n = img / np.linalg.norm(img, axis=1, keepdims=True)
        txt_n = txt / np.linalg.norm(txt, axis=1, keepdims=True)
        manual_img, manual_txt = img_n - delta / 2 * g_hat, txt_n + delta / 2 * g_hat
        np.testing.assert_allclose(
            a, manual_img / np.linalg.norm(manual_img, axis=1, keepdims=True), atol=1e-12
        )
        assert modality_gap(a, b).norm == pytest.approx(_independent_gap(manual_img, manual_txt), abs=1e-12)
    closed, widened = shift(img, txt, 0.5), shift(img, txt, -0.5)
    assert modality_gap(*closed).norm < gap < modality_gap(*widened).norm


def _labelled_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 images in 3 labels: positives lean towards their label's text embedding; some labels unknown."""
    rng = np.random.default_rng(seed)
    txt = np.linalg.qr(rng.normal(size=(8, 3)))[0].T + 0.8 * np.eye(8)[7]  # (3, 8) sharing a common offset
    y = (rng.random((40, 3)) < 0.4).astype(float)
    img = rng.normal(size=(40, 8)) * 0.6 + y @ txt[:, :8] - 0.9 * np.eye(8)[7]
    y[[1, 5, 9], 0] = np.nan  # unknown entries must be masked
    y[:, 2] = np.where(np.isnan(y[:, 2]), np.nan, 0.0)  # one label without positives: excluded from macro
    return img, txt, y


def test_masked_auc_matches_sklearn_on_known_rows() -> None:
    img, txt, y = _labelled_set()
    scores = cosine_scores(img, txt)
    per_label, macro = masked_auc(y, scores, ["a", "b", "c"])
    known = ~np.isnan(y[:, 0])
    assert per_label["a"] == pytest.approx(roc_auc_score(y[known, 0], scores[known, 0]), abs=1e-12)
    assert per_label["b"] == pytest.approx(roc_auc_score(y[:, 1], scores[:, 1]), abs=1e-12)
    assert np.isnan(per_label["c"])
    assert macro == pytest.approx((per_label["a"] + per_label["b"]) / 2, abs=1e-12)


def _independent_balanced_gap(img: np.ndarray, txt: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over present labels of (centroid of their images' unit embeddings) - mean of their unit texts."""
    a = img / np.linalg.norm(img, axis=1, keepdims=True)
    b = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    cols = [c for c in range(len(txt)) if (y[:, c] == 1).any()]
    return np.stack([a[y[:, c] == 1].mean(0) for c in cols]).mean(0) - b[cols].mean(0)


def test_gap_shift_experiment_remeasures_gap_and_metric() -> None:
    """One embedding per image: the class-balanced gap, each image standing for each of its labels."""
    img, txt, y = _labelled_set()
    vector = _independent_balanced_gap(img, txt, y)
    gap = float(np.linalg.norm(vector))
    deltas = [-0.2, 0.0, 0.3, gap]
    df = gap_shift_experiment(img, txt, y, deltas)
    assert list(df.columns) == ["delta", "gap", "macro_auc"]
    assert df["delta"].tolist() == deltas
    img_n = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt_n = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    for delta, row in zip(deltas, df.itertuples(), strict=True):
        a, b = img_n - delta / 2 * vector / gap, txt_n + delta / 2 * vector / gap
        a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        assert row.gap == pytest.approx(np.linalg.norm(_independent_balanced_gap(a, b, y)), abs=1e-12)
        _, expected = masked_auc(y, cosine_scores(a, b))
        assert row.macro_auc == pytest.approx(expected, abs=1e-12)
    assert df["gap"].iloc[1] == pytest.approx(gap, abs=1e-12)
    assert df["gap"].iloc[2] < df["gap"].iloc[1] < df["gap"].iloc[0]
    assert 0.5 < df["macro_auc"].iloc[1] <= 1.0  # positives lean towards their label: above chance
    fig = plot_gap_shift(df)
    assert (
        isinstance(fig, Figure) and len(fig.axes) == 2
    )  # AUROC and gap against δ, no text labels to overlap
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), np.array(deltas) / gap)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), df["gap"])


def test_gap_shift_on_per_disease_features_measures_the_class_balanced_gap() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(12, 3, 5))  # (N, C, d)
    txt = rng.normal(size=(3, 5))
    y = (rng.random((12, 3)) < 0.5).astype(float)
    df = gap_shift_experiment(feats, txt, y, [0.0])
    f_hat = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
    centroids = np.stack([f_hat[y[:, c] == 1, c].mean(0) for c in range(3)])  # one centroid per label
    t_hat = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    assert df["gap"].iloc[0] == pytest.approx(np.linalg.norm(centroids.mean(0) - t_hat.mean(0)), abs=1e-12)
    # perfectly aligned features have no gap, however unequal the label frequencies
    y_skewed = np.zeros((12, 3))
    y_skewed[:11, 0], y_skewed[11, 1] = 1, 1
    aligned = np.repeat(txt[None], 12, axis=0) * 2.0
    assert balanced_gap(aligned, txt, y_skewed).norm == pytest.approx(0.0, abs=1e-12)
    assert modality_gap(aligned[y_skewed == 1], txt).norm > 0.1  # the frequency-weighted centroid is biased
    expected = np.einsum(
        "ncd,cd->nc",
        feats / np.linalg.norm(feats, axis=-1, keepdims=True),
        txt / np.linalg.norm(txt, axis=-1, keepdims=True),
    )
    np.testing.assert_allclose(cosine_scores(feats, txt), expected, atol=1e-12)


def test_similarity_of_orthonormal_labels_is_identity() -> None:
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 14)))[0].T  # (14, 16) orthonormal rows
    sim = similarity_matrix(5.0 * q)
    np.testing.assert_allclose(sim, np.eye(14), atol=1e-12)
    assert mean_offdiag(sim) == pytest.approx(0.0, abs=1e-12)
    sixty = similarity_matrix(np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2], [1.0, 0.0]]))
    assert mean_offdiag(sixty) == pytest.approx((0.5 + 1.0 + 0.5) / 3, abs=1e-12)
    with pytest.raises(ValueError):
        mean_offdiag(np.ones((1, 1)))


def test_similarity_panels_one_heatmap_per_stage(tmp_path) -> None:
    rng = np.random.default_rng(0)
    stages = {"raw": rng.normal(size=(4, 8)), "final": rng.normal(size=(4, 3))}
    fig = similarity_panels(stages, ["Atelectasis", "Effusion", "Mass", "Pleural_Thickening"])
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(heatmaps) == 2 and "mean off-diag" in heatmaps[0].get_title()
    fig.savefig(tmp_path / "sim.png")
    assert (tmp_path / "sim.png").stat().st_size > 1000


def test_zero_shot_probs_is_softmax_over_positive_and_negative_logits() -> None:
    rng = np.random.default_rng(0)
    img, pos, neg = rng.normal(size=(7, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    probs = zero_shot_probs(img, pos, neg, logit_scale=10.0)
    t = torch.nn.functional.normalize
    i, p, n = (t(torch.tensor(a), dim=-1) for a in (img, pos, neg))
    logits = torch.stack([i @ p.T, i @ n.T], dim=-1) * 10.0  # (N, C, 2)
    np.testing.assert_allclose(probs, torch.softmax(logits, dim=-1)[..., 0].numpy(), atol=1e-12)
