"""The modality gap from a run's per-patient sums: the gap of ``losses.modality_gap_vector`` on the images, and on
any patient resample of them, from the small file a run logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfa.explore import explore_model
from cxrfa.explore.gap import measured_gap
from cxrfa.losses import modality_gap_vector
from cxrfa.metrics import gap_statistics, get_metric, load_gap_stats, save_gap_stats, weighted_gap


def _case(seed: int = 0, n: int = 60, c: int = 4, d: int = 8, per_label: bool = True):
    """Images of patients with 1-3 images each, labels 1/0/NaN, features near their prototypes plus a gap."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i:02d}" for i in range(n)], rng.integers(1, 4, size=n))[:n]
    y = (rng.random((n, c)) < 0.35).astype(float)
    y[rng.random(y.shape) < 0.1] = np.nan
    protos = rng.normal(size=(c, d))
    shape = (n, c, d) if per_label else (n, d)
    feats = (protos[None] if per_label else 0.0) + 0.3 + 0.9 * rng.normal(size=shape)
    return feats, protos, y, patients


def _definition(feats: np.ndarray, protos: np.ndarray, y: np.ndarray) -> float:
    """The gap as the domain loss defines it (torch, float64)."""
    t = torch.as_tensor
    return float(modality_gap_vector(t(feats), t(protos), t(y)).norm())


@pytest.mark.parametrize("per_label", [True, False], ids=["per-label features", "one embedding per image"])
def test_the_sums_give_the_gap_of_every_patient_resample(per_label: bool) -> None:
    feats, protos, y, patients = _case(per_label=per_label)
    stats = gap_statistics(feats, protos, y, patients)
    ones = np.ones((1, stats["patients"].size))
    assert weighted_gap(stats, ones)[0] == pytest.approx(_definition(feats, protos, y), rel=1e-6)
    rng = np.random.default_rng(1)
    ids = np.unique(patients)
    for _ in range(5):  # a resample: patients drawn with replacement, each bringing all its images
        draws = np.bincount(rng.integers(0, ids.size, ids.size), minlength=ids.size)  # (P_all,)
        rows = np.repeat(np.arange(len(y)), draws[np.searchsorted(ids, patients)])  # the resample's images
        weights = draws[np.searchsorted(ids, stats["patients"])][None].astype(float)  # (1, P)
        expected = _definition(feats[rows], protos, y[rows])
        assert weighted_gap(stats, weights)[0] == pytest.approx(expected, rel=1e-6)


def test_a_label_none_of_whose_patients_is_drawn_leaves_the_replicate() -> None:
    feats, protos, y, patients = _case(seed=2)
    y[:, 3] = np.nan
    y[0, 3] = 1.0  # one image of one patient has label 3
    stats = gap_statistics(feats, protos, y, patients)
    without = np.ones((1, stats["patients"].size))
    without[0, list(stats["patients"]).index(patients[0])] = 0.0
    keep = patients != patients[0]
    assert weighted_gap(stats, without)[0] == pytest.approx(
        _definition(feats[keep], protos, y[keep]), rel=1e-6
    )
    assert weighted_gap(stats, np.zeros((1, stats["patients"].size)))[0] == 0.0  # nothing present: 0


def test_the_file_is_small_and_reads_back_to_the_same_replicates(tmp_path: Path) -> None:
    feats, protos, y, patients = _case(n=400, c=14, d=128)
    stats = gap_statistics(feats, protos, y, patients)
    path = save_gap_stats(stats, tmp_path / "gap.npz")
    back = load_gap_stats(path)
    w = np.random.default_rng(0).integers(0, 3, size=(20, stats["patients"].size)).astype(float)
    assert np.array_equal(weighted_gap(back, w), weighted_gap(stats, w))
    # one float32 row per (patient, present label) pair: what the summed residuals must cost, and little more
    assert path.stat().st_size < 1.1 * stats["residual"].nbytes + 20_000
    assert stats["residual"].shape[0] <= int((y == 1).sum())
    np.savez(tmp_path / "other.npz", patients=np.array(["a"]))
    with pytest.raises(ValueError, match="no count, pair_label, pair_patient, residual"):
        load_gap_stats(tmp_path / "other.npz")


def test_explore_model_logs_the_gap_its_sums_give_to_the_last_digit() -> None:
    from cxrfa.config import BackboneConfig, ModelConfig
    from cxrfa.models.alignment import AlignmentModel

    backbone = BackboneConfig(name="clip", arch="cxrfa-tiny-clip")
    torch.manual_seed(0)
    cfg = ModelConfig(
        visual=backbone, text=backbone, width=16, heads=2, t2_layers=1, aligner=True, output="mean"
    )
    heads = AlignmentModel(cfg, 10, 6, torch.nn.functional.normalize(torch.randn(4, 12), dim=-1), 4)
    g = torch.Generator().manual_seed(1)
    tokens, embedding = torch.randn(30, 6, 10, generator=g), torch.randn(30, 12, generator=g)
    y = (torch.rand(30, 4, generator=g) < 0.4).double().numpy()
    patients = np.repeat([f"p{i}" for i in range(15)], 2)
    result = explore_model(
        heads, tokens, embedding, y, ["a", "b", "c", "d"], parts=("gap",), patients=patients
    )
    stats = result.gap_stats
    assert stats is not None and set(stats["patients"]) <= set(patients)
    logged = result.scalars["embed/modality_gap"]
    assert (
        weighted_gap(stats, np.ones((1, stats["patients"].size)))[0] == logged
    )  # compare's value at weights 1
    heads.eval()
    with torch.no_grad():
        out = heads(tokens, embedding)
    assert logged == pytest.approx(measured_gap(out["features"], out["labels_emb"], y).norm, rel=1e-6)


def test_the_gap_is_a_paired_metric_read_from_its_file() -> None:
    spec = get_metric("embed/modality_gap")
    assert spec.paired and spec.score is None and spec.artifact == "modality_gap_stats.npz"
    assert not get_metric("embed/mean_offdiag_sim/final").paired
