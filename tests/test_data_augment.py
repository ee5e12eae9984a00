"""The in-memory image path of trainable encoders: batched augmentation and preprocessing (cxrfa.data.augment)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxrfa.config import DEMO_BACKBONES, LossConfig, ModelConfig, TrainConfig
from cxrfa.data.augment import BatchAugment, GrayPreprocess, affine_grid
from cxrfa.data.dataset import PixelCXRDataset, load_image
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.data.synth import synthesize
from cxrfa.models import build_encoder, build_model

CUSTOM = DEMO_BACKBONES.backbones["custom"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return read_manifest(synthesize(tmp_path_factory.mktemp("demo"), n=48, size=96, seed=3))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _images(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])


def test_eval_images_equal_the_encoders_per_image_preprocess(demo: Manifest, tmp_path: Path) -> None:
    """Without augmentation the batched path is the encoder's own transform, bit for bit, on the demo's
    images and on other sizes and modes (non-square, 16-bit, RGB)."""
    encoder = build_encoder(CUSTOM)
    data = PixelCXRDataset(demo, encoder.batch_preprocess)
    assert data.images.dtype == torch.uint8 and data.images.shape == (len(demo), 1, 64, 64)
    expected = torch.stack([encoder.preprocess(load_image(demo.image_path(i))) for i in range(len(demo))])
    assert torch.equal(_images(data.__getitems__(list(range(len(demo))))), expected)
    assert torch.equal(data[5]["image"], expected[5])

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 4096, (150, 110), dtype=np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "b.png")
    prep = encoder.batch_preprocess
    for name in ("a.png", "b.png"):
        image = load_image(tmp_path / name)
        got = prep.finish(prep.pixels(image).unsqueeze(0).float().div(255))[0]
        assert torch.equal(got, encoder.preprocess(image)), name


def test_train_batches_are_augmented_deterministically(demo: Manifest) -> None:
    """Train items keep the eval items' shape and dtype, differ from them, and depend on the global seed only;
    the DataLoader hands the batch to ``__getitems__``."""
    prep = GrayPreprocess(64)
    plain, train = PixelCXRDataset(demo, prep), PixelCXRDataset(demo, prep, BatchAugment())
    rows = [3, 17, 0, 40, 8, 8]
    reference = _images(plain.__getitems__(rows))

    def draw(seed: int) -> list[dict]:
        torch.manual_seed(seed)
        return train.__getitems__(rows)

    first = draw(0)
    augmented = _images(first)
    assert augmented.shape == reference.shape == (6, 3, 64, 64) and augmented.dtype == torch.float32
    assert [item["index"] for item in first] == rows
    assert torch.equal(torch.stack([item["labels"] for item in first]), plain.labels[rows])
    assert torch.equal(augmented, _images(draw(0)))
    assert not torch.equal(augmented, _images(draw(1)))
    change = (augmented - reference).abs().flatten(1).mean(1)  # (B,) per image
    # every image moved, none beyond recognition
    assert (change > 0.02).all() and (change < 0.6).all(), change
    assert not torch.equal(augmented[4], augmented[5])  # one draw per image, not per batch
    standardised = augmented.flatten(1)
    assert torch.allclose(standardised.mean(1), torch.zeros(6), atol=1e-5)
    assert torch.allclose(standardised.std(1), torch.ones(6), atol=1e-5)

    batches = iter(torch.utils.data.DataLoader(train, batch_size=6, sampler=rows))
    torch.manual_seed(0)  # after iter(): a loader without a generator draws its base seed from the global one
    assert torch.equal(next(batches)["image"], augmented)


def test_augmentation_is_light_and_keeps_laterality() -> None:
    """A bright right half stays on the right (no flip) through every draw; shapes and range are kept."""
    x = torch.zeros(32, 1, 48, 48)
    x[..., 30:] = 1.0
    torch.manual_seed(0)
    out = BatchAugment()(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out[..., 32:].mean((1, 2, 3)) > out[..., :16].mean((1, 2, 3)) + 0.5).all()


def test_affine_grid_equals_torchs() -> None:
    theta = torch.randn(5, 2, 3)
    for size in (17, 64):
        expected = F.affine_grid(theta, [5, 1, size, size], align_corners=False)
        assert torch.allclose(affine_grid(theta, size), expected, atol=1e-5)


class _Interrupt(Exception):
    pass


class _StopAfterFirstEpoch:
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        raise _Interrupt


def test_resume_is_bit_exact_with_batched_augmentation(demo: Manifest, tmp_path: Path) -> None:
    """A custom-CNN run stopped after its first epoch and resumed from the checkpoint ends with the weights of
    the uninterrupted run: the augmentation draws from the global generator, which the checkpoint saves."""
    from cxrfa.train import fit, seed_everything, trained_state

    prep = GrayPreprocess(64)
    train = PixelCXRDataset(demo.split("train"), prep, BatchAugment())
    val = PixelCXRDataset(demo.split("val"), prep)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, device="cpu", amp=False, patience=2)
    model_cfg = ModelConfig(visual=CUSTOM, width=32, heads=2)

    def run(checkpoint: Path | None, callbacks: tuple = ()) -> torch.nn.Module:
        seed_everything(0)
        model = build_model(model_cfg, demo.labels)
        fit(model, train, val, demo.labels, cfg, LossConfig(), checkpoint=checkpoint, callbacks=callbacks,
            progress=False)  # fmt: skip
        return model

    whole = trained_state(run(None))
    with pytest.raises(_Interrupt):
        run(tmp_path / "ckpt.pt", (_StopAfterFirstEpoch(),))
    resumed = trained_state(run(tmp_path / "ckpt.pt"))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_report_embeddings_ride_along_a_batched_dataset() -> None:
    """A dataset wrapped with its report embeddings is still fetched a batch at a time (its augmentation is
    batched), and each item gets its own row's report embedding."""
    from torch.utils.data import DataLoader, Dataset

    from cxrfa.data.features import WithReports

    class Batched(Dataset):
        def __init__(self) -> None:
            self.calls: list[list[int]] = []

        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            raise AssertionError("fetched one item at a time")

        def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
            self.calls.append(list(indices))
            return [{"x": torch.tensor(float(i))} for i in indices]

    inner, reports = Batched(), torch.arange(12.0).reshape(6, 2)
    batches = list(DataLoader(WithReports(inner, reports), batch_size=4, shuffle=False))
    assert inner.calls == [[0, 1, 2, 3], [4, 5]]
    assert torch.equal(batches[1]["x"], torch.tensor([4.0, 5.0]))
    assert torch.equal(batches[1]["report_emb"], reports[4:6])
