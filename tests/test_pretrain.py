"""CLIP pretraining on image-report pairs: the loss falls, retrieval beats chance, the checkpoint loads."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import read_manifest, write_manifest
from cxrfa.data.synth import synthesize
from cxrfa.models import build_encoder
from cxrfa.pretrain import chance_recall, finding_keys, pretrain, retrieval_recall
from cxrfa.standins import ensure_standin, standin_path

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 synthetic images; half of the patients moved to val so retrieval is measured on ~100 pairs."""
    folder = tmp_path_factory.mktemp("synth")
    manifest = read_manifest(synthesize(folder, n=240, size=64, seed=0))
    patients = sorted(manifest.frame["patient_id"].unique())
    val = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 2])
    manifest.frame["split"] = ["val" if p in val else "train" for p in manifest.frame["patient_id"]]
    return write_manifest(manifest, folder / "pairs.csv")


def test_loss_falls_and_retrieval_beats_chance(manifest_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    # 123 pairs, 10 epochs: R@5 0.378 against chance 0.25 (20 finding sets in val); R@1 needs every rare set
    # nearest to its own images and stays at chance at this size
    result = pretrain(manifest_path, "cxrfa-tiny-clip", out, epochs=10, batch_size=16, lr=1e-3)
    assert len(result.losses) == 10 and result.n_val > 80
    assert result.losses[-1] < result.losses[0] - 0.2
    assert result.recall_at_5 > result.chance_at_5 + 0.08
    assert 0 < result.chance_at_1 < result.chance_at_5 < 1
    # the checkpoint loads through the ordinary clip path and retrieves the same way
    enc = build_encoder(BackboneConfig(name="clip", arch="cxrfa-tiny-clip", pretrained=str(out)))
    val = read_manifest(manifest_path).split("val")
    texts = val.frame["report"].astype(str).tolist()
    from cxrfa.data.dataset import load_image

    with torch.no_grad():
        imgs = torch.stack([enc.preprocess(load_image(val.image_path(i))) for i in range(len(val))])
        recall = retrieval_recall(enc.encode_image(imgs)[1], enc.encode_text(texts), finding_keys(val), 5)
    assert recall == pytest.approx(result.recall_at_5, abs=1e-6)


def test_recall_has_one_gallery_entry_per_finding_set() -> None:
    """A hand-worked case: four pairs, three finding sets; the gallery entry of set "a" is the mean of its two
    texts, and recall is averaged over the three sets, not the four images."""
    keys = ["a", "a", "b", "c"]
    assert chance_recall(keys, 1) == pytest.approx(1 / 3)
    assert chance_recall(keys, 2) == pytest.approx(2 / 3)
    assert chance_recall(keys, 5) == 1.0
    txt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    # gallery (unit): a = (1, 1, 0) / sqrt 2, b = (0, 0, 1), c = (-1, 0, 0)
    img = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # set a: nearest a (0.71), then b (0), c (-1) -> hit at 1
            [0.0, 0.0, 1.0],  # set a: nearest b, then a -> hit at 2 only
            [0.0, 0.0, 1.0],  # set b: hit at 1
            [1.0, 0.2, 0.0],  # set c: a, b, c -> hit at 3 only
        ]
    )
    assert retrieval_recall(img, txt, keys, 1) == pytest.approx((0.5 + 1 + 0) / 3)
    assert retrieval_recall(img, txt, keys, 2) == pytest.approx((1 + 1 + 0) / 3)
    assert retrieval_recall(img, txt, keys, 3) == 1.0


def _demo_like_keys(rng: np.random.Generator, n: int = 200) -> list[int]:
    """Keys shaped like the demo val split's label vectors: one group of 55% ("normal"), a few mid-sized
    findings, a tail of rare combinations and singletons."""
    sizes = [110, 15, 8, 8, 6, 5, 4, 4, 3, 3, 2, 2, 2, 2] + [1] * 26
    keys = [g for g, size in enumerate(sizes) for _ in range(size)]
    assert len(keys) == n
    return [int(k) for k in rng.permutation(keys)]


def test_retrieval_positive_controls() -> None:
    """The recall definition against known answers, on demo-shaped keys (40 finding sets, 55% normal): an
    oracle embedding (image and report both encode the findings) scores 1 at every k; random embeddings, blind
    images with reports grouped by findings, and one ranking shared by every image all score the chance
    ``k / 40``; images that find their own set among noisy, clustered reports are not penalised for the
    clustering."""
    rng = np.random.default_rng(0)
    keys = _demo_like_keys(rng)
    groups = torch.nn.functional.one_hot(torch.tensor(keys)).float()  # (N, G): the findings, exactly
    n, g = groups.shape
    assert g == 40
    for k in (1, 5):
        chance = chance_recall(keys, k)
        assert chance == pytest.approx(k / 40)
        noisy = [groups + 1e-3 * torch.randn(n, g) for _ in range(2)]
        assert retrieval_recall(*noisy, keys, k) == 1.0
        for image, text in (
            (lambda: torch.randn(n, 16), lambda: torch.randn(n, 16)),  # random
            (lambda: torch.randn(n, g), lambda: groups),  # blind images, reports clustered by findings
        ):
            draws = [retrieval_recall(image(), text(), keys, k) for _ in range(300)]
            se = np.std(draws) / np.sqrt(len(draws))
            assert abs(np.mean(draws) - chance) < 4 * se
        # the same image for all: a fixed ranking, e.g. "normal" always first, scores chance exactly
        same = groups[keys.index(0)].expand(n, g) + 1e-3 * torch.arange(g)  # normal first, then a fixed order
        assert retrieval_recall(same, groups, keys, k) == pytest.approx(chance)
    # reports in tight per-set clusters with noise of their own; images near their set: well above chance
    text = groups + 0.1 * torch.randn(n, g)
    image = groups + 0.1 * torch.randn(n, g)
    assert retrieval_recall(image, text, keys, 5) > 0.9


def test_ensure_standin_pretrains_once(manifest_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_manifest(manifest_path)
    cfg = BackboneConfig(name="biomedclip", arch="cxrfa-tiny-biomedclip", pretrained="demo", standin=True)
    resolved = ensure_standin(cfg, manifest, epochs=1)
    assert (
        resolved.pretrained == str(standin_path(cfg.arch, manifest)) and Path(resolved.pretrained).is_file()
    )
    assert resolved.source == "stand-in:cxrfa-tiny-biomedclip"
    import cxrfa.pretrain as pretrain_module

    monkeypatch.setattr(pretrain_module, "pretrain", lambda *a, **k: pytest.fail("pretrained twice"))
    assert ensure_standin(cfg, manifest, epochs=1) == resolved
    enc = build_encoder(resolved)
    assert enc.source == "stand-in:cxrfa-tiny-biomedclip"
    plain = cfg.model_copy(update={"pretrained": None})
    assert ensure_standin(plain, manifest) is plain


def test_cli_pretrain_and_offline_error(
    manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.pt"
    data = ["pretrain", "--data", str(manifest_path)]
    res = runner.invoke(
        app, [*data, "--arch", "cxrfa-tiny-clip", "--out", str(out), "--epochs", "1", "--batch-size", "32"]
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and "R@5" in res.output and "chance" in res.output
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    start = time.perf_counter()
    res = runner.invoke(
        app, [*data, "--arch", "ViT-B-16", "--init", "openai", "--out", str(tmp_path / "vit.pt")]
    )
    assert time.perf_counter() - start < 5
    assert res.exit_code == 2
    assert "error:" in res.output and "ViT-B-16/openai" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "biomedclip" in res.output and "cxrfa-cnn-small" in res.output
