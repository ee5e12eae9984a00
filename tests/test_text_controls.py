"""Text controls at equal capacity: the shuffled-text derangement, the frozen text map, parameter parity of the
full matrix's text cells and their controls, no unused modules, and the prototype-drift metrics of a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import OnFeatures
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes

from cxrfa.config import (
    DEMO_BACKBONES,
    BackboneConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    expand,
    load_matrix,
)
from cxrfa.data.features import FeatureDataset
from cxrfa.labels import NIH14
from cxrfa.models import AlignmentModel, build_encoder, build_model
from cxrfa.models.alignment import derangement
from cxrfa.models.drift import drift_metrics, label_prototypes, mean_angle_deg, procrustes_residual
from cxrfa.models.model import parameter_counts
from cxrfa.train import fit, trained_state

ENC = BackboneConfig(name="clip", arch="x")
TEXT_CELLS = ("dual-clip", "dual-clip-shuffled", "dual-learned")
CONTROL_PAIRS = (("dual-biomedclip", "dual-learned-biomedclip"), ("dual-custom", "dual-learned-custom"))


def _heads(c: int = 6, **model: object) -> AlignmentModel:
    cfg = ModelConfig(visual=ENC, text=ENC, width=16, heads=2, t2_layers=1, aligner=True, output="b", **model)
    torch.manual_seed(0)
    return AlignmentModel(cfg, 8, 5, torch.randn(c, 12), c, text_seed=3)


def test_derangement_has_no_fixed_point_and_is_fixed_by_the_seed() -> None:
    for n in (2, 3, 5, 14):
        perms = [derangement(n, seed) for seed in range(40)]
        for seed, perm in enumerate(perms):
            assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n)), (n, seed, perm)
            assert derangement(n, seed) == perm  # deterministic
        if n > 3:
            assert len({tuple(p) for p in perms}) > 10  # the seed matters
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_shuffled_twin_differs_in_the_assignment_only() -> None:
    kept, shuffled = _heads(), _heads(text_order="shuffled")
    perm = derangement(6, 3)
    assert shuffled.text_assignment == perm and kept.text_assignment == list(range(6))
    assert torch.equal(shuffled.label_text, kept.label_text[perm])
    assert torch.equal(shuffled.text_basis, kept.text_basis) and torch.equal(
        shuffled.text_centre, kept.text_centre
    )
    with pytest.raises(ValueError, match="text_order=shuffled"):
        ModelConfig(visual=ENC, queries="learned", text_order="shuffled", aligner=True)


def test_fixed_text_map_keeps_the_geometry_and_stays_frozen_through_training() -> None:
    heads = _heads(text_proj="fixed")
    stages = {k: v.detach() for k, v in heads.label_stages().items()}
    centred = stages["centred"]
    gram, projected_gram = centred @ centred.T, stages["projected"] @ stages["projected"].T  # (C, C)
    scale = projected_gram.trace() / gram.trace()
    assert torch.allclose(projected_gram, scale * gram, atol=1e-4 * float(projected_gram.abs().max()))
    assert stages["projected"].norm(dim=1).mean() == pytest.approx(16**0.5, rel=1e-5)  # sqrt(d)
    assert not any("text" in name for name, _ in heads.named_parameters())
    before = {k: v.clone() for k, v in heads.state_dict().items()}

    tokens = torch.randn(40, 5, 8)
    labels = (torch.rand(40, 6) < 0.3).float().numpy()
    data = FeatureDataset(tokens, tokens.mean(1), labels, np.zeros(40, dtype=np.int64))
    train = TrainConfig(epochs=1, batch_size=20, lr=1e-2, device="cpu", amp=False)

    fit(
        OnFeatures(heads),
        data,
        data,
        [str(i) for i in range(6)],
        train,
        LossConfig(semantic=0.5),
        progress=False,
    )
    after = heads.state_dict()
    for name in ("text_basis", "label_text", "text_centre"):
        assert torch.equal(after[name], before[name]), name
    assert torch.equal(heads.label_stages()["projected"].detach(), stages["projected"])
    assert not torch.equal(
        after["t2.layers.0.linear1.weight"], before["t2.layers.0.linear1.weight"]
    )  # it trained
    assert "heads.text_basis" in trained_state(
        OnFeatures(heads)
    )  # saved with the checkpoint, so a resumed run has it


def test_adapter_starts_at_the_fixed_map_and_only_its_residual_trains() -> None:
    fixed, adapter = _heads(text_proj="fixed"), _heads(text_proj="adapter", text_rank=2)
    assert torch.equal(adapter.label_stages()["projected"], fixed.label_stages()["projected"])
    trainable = {n: p.numel() for n, p in adapter.named_parameters() if n.startswith("text")}
    assert trainable == {"text_adapter.0.weight": 2 * 16, "text_adapter.1.weight": 16 * 2}
    basis = adapter.text_basis.clone()
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-2)
    adapter(torch.randn(4, 5, 8), torch.randn(4, 8))["logits"].sum().backward()
    opt.step()
    assert torch.equal(adapter.text_basis, basis)
    assert not torch.equal(adapter.label_stages()["projected"], fixed.label_stages()["projected"])
    free = _heads(text_proj="free")
    assert free.text_proj is not None and free.text_proj.weight.requires_grad and free.text_adapter is None


@pytest.fixture(scope="module")
def full_cells() -> dict[str, tuple[int, AlignmentModel]]:
    """Trainable parameters and heads of the full matrix's text cells and controls, built as a run builds them
    (stand-in architectures; weights are irrelevant to the count, so none are pretrained)."""
    from cxrfa.models import model as model_module

    names = [*TEXT_CELLS, *(n for pair in CONTROL_PAIRS for n in pair), "align-clip"]
    encoders: dict[str, object] = {}

    def build_once(cfg: BackboneConfig, device: object) -> object:  # each stand-in is built once
        if cfg.arch not in encoders:
            encoders[cfg.arch] = build_encoder(cfg, device)
        return encoders[cfg.arch]

    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "build_encoder", build_once)
        for cfg in expand(load_matrix("full"), DEMO_BACKBONES, seeds=[0], cells=names):
            backbones = {k: getattr(cfg.model, k) for k in ("visual", "text")}
            update = {k: b.model_copy(update={"pretrained": None}) for k, b in backbones.items() if b}
            model_cfg = cfg.model.model_copy(update=update)
            model = build_model(model_cfg, list(NIH14), report=cfg.loss.report > 0, seed=cfg.seed)
            out[cfg.cell] = (int(parameter_counts(model)["model/params_trainable"]), model.heads)
    return out


def test_text_cells_and_their_controls_have_equal_trainable_parameters(full_cells: dict) -> None:
    counts = {name: n for name, (n, _) in full_cells.items()}
    base = counts["dual-clip"]
    for name in TEXT_CELLS:
        assert abs(counts[name] - base) / base < 0.01, counts
    assert counts["dual-clip-shuffled"] == base  # the twin differs in the assignment only
    for text_cell, control in CONTROL_PAIRS:
        assert abs(counts[control] - counts[text_cell]) / counts[text_cell] < 0.01, (text_cell, counts)


def test_image_proj_is_built_only_with_the_report_term(full_cells: dict) -> None:
    for name, (_, heads) in full_cells.items():
        assert (heads.image_proj is not None) == (name == "align-clip"), name


def test_procrustes_residual_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
    assert procrustes_residual(x, y) == pytest.approx(procrustes(x, y)[2], abs=1e-12)
    assert procrustes_residual(y, x) == pytest.approx(procrustes(x, y)[2], abs=1e-12)
    wide = rng.normal(size=(9, 8))  # different widths: scipy on the zero-padded narrow set
    assert procrustes_residual(x, wide) == pytest.approx(procrustes(np.pad(x, ((0, 0), (0, 3))), wide)[2])
    # the residual is ||A - s B R||² with scipy's orthogonal R for the standardised sets
    a, b = x - x.mean(0), y - y.mean(0)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    rot, s = orthogonal_procrustes(b, a)
    assert procrustes_residual(x, y) == pytest.approx(np.sum((a - s * b @ rot) ** 2), abs=1e-12)
    # a rotated, scaled and shifted copy keeps the geometry exactly
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    assert procrustes_residual(x, 3.0 * x @ q + 1.5) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same C"):
        procrustes_residual(x, x[:4])


def test_mean_angle_in_degrees() -> None:
    angles = np.radians([0.0, 30.0, 90.0, 150.0])
    before = np.tile([[1.0, 0.0]], (4, 1))
    after = 2.5 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert mean_angle_deg(before, after) == pytest.approx(67.5)


def test_learned_queries_log_their_drift() -> None:
    cfg = ModelConfig(visual=ENC, queries="learned", width=16, heads=2, t2_layers=1, aligner=True)
    torch.manual_seed(0)
    heads = AlignmentModel(cfg, 8, 5, None, 6)
    initial = label_prototypes(heads)
    still = drift_metrics(heads, initial)
    assert set(still) == {"drift/angle_deg", "drift/procrustes_init"}
    assert still["drift/angle_deg"] == pytest.approx(0.0, abs=1e-3)
    assert still["drift/procrustes_init"] == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        heads.query_emb[1:3] = heads.query_emb[0]  # three labels' queries collapse into one
    moved = drift_metrics(heads, initial)
    assert moved["drift/angle_deg"] > 10 and moved["drift/procrustes_init"] > 0.1, moved


def test_a_run_logs_its_size_drift_and_text_assignment(tmp_path: Path) -> None:
    from cxrfa.cell import run_cell
    from cxrfa.tracking import Tracker

    small = {"data.demo_n": 240, "data.demo_size": 64, "model.width": 32, "model.heads": 2}
    small |= {"train.epochs": 1, "train.batch_size": 32}
    (cfg,) = expand(
        load_matrix("full"), DEMO_BACKBONES, seeds=[1], cells=["dual-clip-shuffled"], overrides=small
    )
    tracker = Tracker(str(tmp_path / "store"), "controls")
    result = run_cell(cfg, tracker, progress=False, explore=())
    logged = tracker.get(result.run_id)
    for key in (
        "drift/angle_deg",
        "drift/procrustes_init",
        "drift/procrustes_text",
        "drift/procrustes_text_chance",
    ):
        assert np.isfinite(logged.metrics[key]) and logged.metrics[key] == result.metrics[key], key
    assert logged.metrics["drift/procrustes_text"] < logged.metrics["drift/procrustes_text_chance"]
    assert logged.metrics["model/params_trainable"] < logged.metrics["model/params_total"]  # frozen encoder
    given = json.loads(logged.tags["cxrfa.text_assignment"])
    assert "model.text_assignment" not in logged.params  # params stay the config, shared by the seeds
    assert len(given) == 14 and all(label != text for label, text in given.items())
    assert sorted(given.values()) == sorted(given)
