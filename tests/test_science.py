"""Sanity checks that would catch the results going wrong: calibrated heads, reproducible runs from a cold or a
warm cache, and the demo backbones on data without reports."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import tiny_heads

from cxrfa.config import DEMO_BACKBONES, DataConfig, LossConfig, expand, load_matrix
from cxrfa.losses import compute_terms, weighted_total

pytestmark = pytest.mark.slow


def _toy_batch(b: int, c: int, n: int, dv: int, signal: torch.Tensor, prevalence: torch.Tensor):
    targets = (torch.rand(b, c) < prevalence).float()
    tokens = torch.randn(b, n, dv)
    tokens[:, :c] += 1.5 * targets.unsqueeze(-1) * signal  # token c shows finding c (plus noise)
    return tokens, targets


@pytest.mark.parametrize("output", ["a", "b", "mean"])
def test_each_head_is_calibrated_on_a_learnable_toy_task(output: str) -> None:
    """Mean predicted probability per label within a factor 2 of its prevalence, for each head and the output
    (the collapsed build predicted 1e-5..3e-3 for findings with 1-17 % prevalence)."""
    torch.manual_seed(0)
    c, n, dv = 4, 8, 16
    prevalence = torch.tensor([0.02, 0.05, 0.15, 0.4])
    signal = torch.randn(c, dv)
    heads = tiny_heads(c, n, dv, output=output)
    heads.init_prior(prevalence)
    loss_cfg = LossConfig(semantic=0.5, domain=0.1, consistency=0.1)
    opt = torch.optim.AdamW(heads.parameters(), lr=2e-3)
    for _ in range(300):
        tokens, targets = _toy_batch(128, c, n, dv, signal, prevalence)
        loss = weighted_total(compute_terms(heads(tokens, tokens.mean(1)), targets, loss_cfg), loss_cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    heads.eval()
    tokens, targets = _toy_batch(4000, c, n, dv, signal, prevalence)
    with torch.no_grad():
        out = heads(tokens, tokens.mean(1))
    observed = targets.mean(0)
    for name in ("logits_a", "logits_b", "logits"):
        mean_p = torch.sigmoid(out[name]).mean(0)
        ratio = (mean_p / observed).numpy()
        assert np.all((ratio > 0.5) & (ratio < 2.0)), (name, ratio)
    # and the output is informative, not a constant at the prevalence
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(targets[:, j], out["logits"][:, j]) for j in range(c)]
    assert min(aucs) > 0.9, aucs


def _smoke(cell: str, **overrides: object):
    return expand(load_matrix("smoke"), DEMO_BACKBONES, cells=[cell], overrides=overrides)[0]


def _cold(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    from cxrfa import standins

    monkeypatch.setenv("CXRFA_HOME", str(home))  # each run_cell below encodes for itself: no memo to clear
    # a cold home pretrains its stand-ins for one epoch, not the recipe's 12: what these tests check (the run's
    # random state, pretraining on data without reports) does not depend on how well they are aligned
    recipe = standins.standin_settings
    monkeypatch.setattr(standins, "standin_settings", lambda epochs: recipe(1))


def test_cold_and_warm_caches_and_fresh_homes_give_identical_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold cache pretrains the stand-in inside the run; that must not move the run's random state."""
    from cxrfa.cell import run_cell

    cfg = _smoke("align-clip", **{"train.epochs": 1})
    _cold(monkeypatch, tmp_path / "a")
    cold = run_cell(cfg, None, progress=False, explore=()).metrics
    warm = run_cell(cfg, None, progress=False, explore=()).metrics
    _cold(monkeypatch, tmp_path / "b")
    cold_again = run_cell(cfg, None, progress=False, explore=()).metrics
    keys = [k for k in cold if k.startswith("test/") and "ci_" not in k]
    assert keys and all(cold[k] == warm[k] == cold_again[k] or np.isnan(cold[k]) for k in keys)


def test_demo_backbones_run_on_data_without_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Real datasets without reports (NIH, CheXpert): the stand-ins pretrain on sentences built from the train
    labels, and the report term is skipped with one log line."""
    from cxrfa.cell import run_cell
    from cxrfa.data.load import load_data
    from cxrfa.data.manifest import Manifest, write_manifest

    demo = load_data(DataConfig(demo_n=240, demo_size=64), progress=False)
    frame = demo.frame.drop(columns=["report"])
    path = write_manifest(
        Manifest(frame, demo.root, demo.labels, demo.label_set), tmp_path / "no-reports.csv"
    )
    _cold(monkeypatch, tmp_path / "home")
    caplog.set_level(logging.INFO)
    for cell in ("visual-clip", "align-clip"):
        result = run_cell(_smoke(cell, **{"data.manifest": str(path)}), None, progress=False, explore=())
        assert result.status == "FINISHED" and np.isfinite(result.metrics["test/macro_auc"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("pretraining on sentences built from the labels" in m for m in messages)
    assert sum("report term skipped" in m for m in messages) == 1


def test_trainable_encoder_cell_trains_with_the_report_term() -> None:
    """Image datasets carry the report text; the report term gets the cached embeddings, not the strings."""
    from cxrfa.cell import run_cell

    cfg = _smoke("align-clip", **{"model.visual": "custom", "train.epochs": 1})
    assert cfg.loss.report > 0 and not cfg.model.visual.frozen
    result = run_cell(cfg, None, progress=False, explore=())
    assert result.status == "FINISHED"
    assert "train/loss_report" in result.fit.history[0] and "train/chance_report" in result.fit.history[0]
