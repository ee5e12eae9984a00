"""The baseline cells (cxrfa/baselines.py): C chosen on val only, the same metric names as a trained run,
AUROC equal to scikit-learn's, and ``kind`` left out of existing config hashes."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from _helpers import SMOKE
from sklearn.metrics import roc_auc_score

from cxrfa.config import DEMO_BACKBONES, RunConfig, expand, load_matrix
from cxrfa.data.manifest import Manifest


def _cells(*names: str) -> dict[str, RunConfig]:
    runs = expand(load_matrix("baselines"), DEMO_BACKBONES, seeds=[0], overrides=SMOKE)
    return {r.cell: r for r in runs if r.cell in names}


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    from cxrfa.data.load import load_data

    return load_data(_cells("pixels")["pixels"].data, progress=False)


def _with_labels(manifest: Manifest, split: str, rng: np.random.Generator) -> Manifest:
    """The manifest with the labels of one split replaced by random 0/1 values."""
    frame = manifest.frame.copy()
    rows = frame["split"] == split
    for lab in manifest.labels:
        frame.loc[rows, lab] = rng.integers(0, 2, int(rows.sum())).astype(float)
    return Manifest(frame, manifest.root, list(manifest.labels), manifest.label_set, manifest.source)


def test_probe_chooses_c_on_val_and_never_reads_test_labels(manifest: Manifest) -> None:
    from cxrfa.baselines import fit_probe, pixel_features

    rng = np.random.default_rng(0)
    features = partial(pixel_features, size=8)  # 64 features: the same code path, fast fits
    cs = (0.01, 0.1, 10.0)
    clean = fit_probe(manifest, features, cs=cs)
    test_noise = fit_probe(_with_labels(manifest, "test", rng), features, cs=cs)
    assert test_noise.c == clean.c
    assert test_noise.val_auc_by_c == clean.val_auc_by_c
    # the choice does read val: random val labels move the val curve (so the check above is not vacuous)
    val_noise = fit_probe(_with_labels(manifest, "val", rng), features, cs=cs)
    assert val_noise.val_auc_by_c != clean.val_auc_by_c
    assert clean.val_auc_by_c[clean.c] == max(clean.val_auc_by_c.values())


def test_pixel_macro_auroc_equals_sklearn(manifest: Manifest) -> None:
    from cxrfa.baselines import run_pixels
    from cxrfa.record import log_evaluation
    from cxrfa.train import resolve_device

    cfg = _cells("pixels")["pixels"]
    result = run_pixels(cfg, manifest, cfg.model.visual, resolve_device("cpu"), True)
    assert result.p_test is not None
    scalars = log_evaluation(cfg, manifest, result.p_val, result.p_test, None, {})
    y = manifest.split("test").label_matrix()
    aucs = []
    for j in range(y.shape[1]):
        known = np.isfinite(y[:, j])
        if len(np.unique(y[known, j])) == 2:
            aucs.append(roc_auc_score(y[known, j], result.p_test[known, j]))
    assert scalars["test/macro_auc"] == pytest.approx(float(np.mean(aucs)), abs=1e-12)
    assert 0.5 < scalars["test/macro_auc"] < 1.0  # the synthetic findings are visible in 32x32 pixels


@pytest.mark.slow
def test_baseline_runs_log_the_metrics_of_a_trained_run() -> None:
    from cxrfa.cell import run_cell

    cells = _cells("visual-custom", "zeroshot-clip", "probe-clip", "pixels")
    got = {
        name: run_cell(cfg, None, progress=False, explore=()).metrics for name, cfg in sorted(cells.items())
    }
    trained = {k for k in got["visual-custom"] if k.startswith(("test/", "val/best_"))}
    assert "test/macro_auc" in trained and "val/best_macro_auc" in trained
    for name in ("zeroshot-clip", "probe-clip", "pixels"):
        names = {k for k in got[name] if k.startswith(("test/", "val/best_"))}
        assert names == trained, name
        assert 0.0 <= got[name]["test/macro_auc"] <= 1.0
    from cxrfa.baselines import PROBE_CS

    assert got["probe-clip"]["probe/C"] in PROBE_CS and got["pixels"]["pixels/C"] in PROBE_CS


def test_kind_is_left_out_of_existing_config_hashes() -> None:
    cfg = _cells("visual-custom")["visual-custom"]
    assert cfg.kind == "trained"
    assert "kind" not in cfg.model_dump(mode="json")  # so a hash made before the field existed is unchanged
    probe = cfg.model_copy(update={"kind": "pixels"})
    assert probe.model_dump(mode="json")["kind"] == "pixels"
    assert probe.config_hash() != cfg.config_hash()


def test_zeroshot_and_probe_need_a_frozen_backbone() -> None:
    cfg = _cells("visual-custom")["visual-custom"]
    with pytest.raises(ValueError, match="kind='probe' reads frozen embeddings"):
        RunConfig.model_validate({**cfg.model_dump(mode="json"), "kind": "probe"})


def test_custom_cnn_input_ignores_exposure() -> None:
    """Per-image standardisation: a darker, flatter exposure of the same film gives the same network input."""
    from PIL import Image

    from cxrfa.config import BackboneConfig
    from cxrfa.models.encoders import CustomCNNEncoder

    enc = CustomCNNEncoder(BackboneConfig(name="custom", arch="cxrfa-cnn-small", frozen=False), "cpu")  # type: ignore[arg-type]
    film = np.random.default_rng(0).integers(40, 200, (64, 64)).astype(np.float64)
    bright = Image.fromarray(film.astype(np.uint8))
    dark = Image.fromarray((film * 0.5 + 10).round().astype(np.uint8))
    a, b = enc.preprocess(bright), enc.preprocess(dark)  # (3, 64, 64) each
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-5) and float(a.std()) == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(a, b, atol=0.03)  # equal up to the 8-bit rounding of the darker copy
