"""A planted effect: where label text is informative by construction, the kept-text cell must beat its
shuffled-text twin with the lab's own paired seed-level test; where the text is random, it must not.

The world: C findings, each a direction z_c in a k-dimensional latent space (k < C). An image's visual tokens
are noise plus, for each present finding, its pattern B z_c in one random token. The "text embedding" of label
c is a noisy linear image A z_c of the same direction. Labels are scarce (a handful of train positives each),
so a model can only score the rarely seen findings well through a map it learns from all of them: with the
kept text one linear map from the visual patterns to the text serves every label; with the text deranged
across labels no linear map does (C > k), and each label must be learned from its own few positives.

Margins with these sizes (4 model seeds, B = 499): on world 0, kept − shuffled test macro AUROC +0.134
(p = 0.002, the floor) with the planted text and −0.018 (p = 0.38) with random text. On the alternatives tried,
worlds 1, 2, 3 and world 0 with model seeds 10-13: +0.145, +0.153, +0.135, +0.144, each at p = 0.002; random
text −0.024 (p = 0.07), −0.043 (p = 0.02), +0.003 (p = 0.90), −0.035 (p = 0.06). Random text is not "no
effect" on one world: a fixed assignment of arbitrary vectors fits the planted geometry better or worse than
the average derangement, and the seeds do not average that out. So that side is checked one-sided, as the
claim is (random text must not beat its twin); with random orthonormal text, which makes every assignment the
same point set up to a rotation, one of four worlds still came out +0.062 (p = 0.002).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cxrfa.config import BackboneConfig, LossConfig, ModelConfig, TrainConfig
from cxrfa.data.features import FeatureDataset
from cxrfa.models.alignment import AlignmentModel
from cxrfa.stats import SeedTest, label_boot
from cxrfa.stats import paired_seed_test as stats_paired_seed_test
from cxrfa.train import fit, make_loader, predict

pytestmark = pytest.mark.slow

C, K, TOKENS, DV, DE = 12, 4, 4, 16, 12  # labels, latent dims (< C), visual tokens, token and text widths
N_TRAIN, N_VAL, N_TEST = 240, 160, 800
PREVALENCE = 0.03  # about 7 train positives per label
SEEDS = (0, 1, 2, 3)  # model seeds; the world is fixed, so every seed is scored on the same test images
N_BOOT = 499
ENCODER = BackboneConfig(name="clip", arch="planted")  # never built: the heads run on the tensors below
CFG = ModelConfig(
    visual=ENCODER, text=ENCODER, width=32, heads=2, t1_layers=0, aligner=True, output="b", dropout=0.0
)
TRAIN = TrainConfig(epochs=10, batch_size=60, lr=5e-3, patience=10, device="cpu", amp=False)
LOSS = LossConfig(semantic=0.5)
LABELS = [f"finding{c}" for c in range(C)]


@dataclass(frozen=True)
class World:
    """Feature datasets of one planted world and its label text (informative or random)."""

    train: FeatureDataset
    val: FeatureDataset
    test: FeatureDataset
    y_test: np.ndarray  # (N_TEST, C)
    text: Tensor  # (C, DE)


def _split(rng: np.random.Generator, n: int, patterns: np.ndarray) -> tuple[FeatureDataset, np.ndarray]:
    labels = (rng.random((n, C)) < PREVALENCE).astype(np.float64)  # (n, C)
    tokens = rng.normal(0.0, 1.0, (n, TOKENS, DV))  # (n, N, Dv)
    where = rng.integers(0, TOKENS, (n, C))  # the token that shows each finding
    for i, c in zip(*np.nonzero(labels), strict=True):
        tokens[i, where[i, c]] += patterns[c]
    tokens_t = torch.tensor(tokens, dtype=torch.float32)
    return FeatureDataset(tokens_t, tokens_t.mean(1), labels, np.zeros(n, dtype=np.int64)), labels


def make_world(informative: bool, seed: int = 0) -> World:
    """The planted world: shared latent directions, visual patterns, and label text per ``informative``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(C, K))
    z /= np.linalg.norm(z, axis=1, keepdims=True)  # (C, k) one direction per finding
    patterns = 2.5 * z @ np.linalg.qr(rng.normal(size=(DV, K)))[0].T  # (C, Dv): B z_c, B orthonormal
    if informative:
        text = z @ rng.normal(size=(K, DE)) + 0.05 * rng.normal(size=(C, DE))  # (C, De): A z_c + noise
    else:
        text = rng.normal(size=(C, DE))  # unrelated to the findings
    train, _ = _split(rng, N_TRAIN, patterns)
    val, _ = _split(rng, N_VAL, patterns)
    test, y_test = _split(rng, N_TEST, patterns)
    return World(train, val, test, y_test, torch.tensor(text, dtype=torch.float32))


class _Heads(nn.Module):
    """The heads as ``fit`` calls a model on cached features."""

    def __init__(self, heads: AlignmentModel) -> None:
        super().__init__()
        self.heads = heads

    def forward_features(self, tokens: Tensor, embedding: Tensor, report: Tensor | None = None) -> dict:
        return self.heads(tokens, embedding, report)


def trained_probabilities(world: World, text_order: str, seed: int) -> np.ndarray:
    """Train one cell on the world with ``fit`` (val selects the epoch) -> (N_TEST, C) test probabilities."""
    torch.manual_seed(seed)
    cfg = CFG.model_copy(update={"text_order": text_order})
    heads = AlignmentModel(cfg, DV, TOKENS, world.text, C, text_seed=seed)
    heads.init_prior(torch.full((C,), PREVALENCE))
    model = _Heads(heads)
    fit(model, world.train, world.val, LABELS, TRAIN, LOSS, seed=seed, progress=False)
    loader = make_loader(world.test, 512, shuffle=False, cfg=TRAIN, device=torch.device("cpu"))
    return predict(model, loader, torch.device("cpu"), amp=False)[0]


def paired_seed_test(y_true: np.ndarray, cell: list[np.ndarray], base: list[np.ndarray]) -> SeedTest:
    """The test `cxrfa compare` runs on a declared contrast: test macro AUROC of cell − base, seed k paired
    with seed k, its seed spread plus the patient variance the pairs share (common patient resamples)."""
    scores = [[label_boot(y_true, p, N_BOOT, seed=0).macro("macro_auc") for p in ps] for ps in (cell, base)]
    replicates = np.stack([c.boot - b.boot for c, b in zip(*scores, strict=True)])  # (K, B)
    return stats_paired_seed_test(
        [s.point for s in scores[0]],
        [s.point for s in scores[1]],
        replicates=replicates,
        n_patients=len(y_true),
    )


@pytest.fixture(scope="module")
def outcomes() -> dict[bool, SeedTest]:
    """The paired test of kept − shuffled for the informative (True) and the random (False) text."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the per-test one-thread fixture; tiny models
    try:
        out = {}
        for informative in (True, False):
            world = make_world(informative)
            kept = [trained_probabilities(world, "kept", s) for s in SEEDS]
            shuffled = [trained_probabilities(world, "shuffled", s) for s in SEEDS]
            out[informative] = paired_seed_test(world.y_test, kept, shuffled)
    finally:
        torch.set_num_threads(threads)
    return out


def test_informative_text_beats_its_shuffled_twin(outcomes: dict[bool, SeedTest]) -> None:
    est = outcomes[True]
    assert est.value > 0 and est.p < 0.05, est


def test_random_text_does_not_beat_its_shuffled_twin(outcomes: dict[bool, SeedTest]) -> None:
    # one-sided, as the claim is: a fixed assignment of random vectors is itself a fixed effect of the world
    # that seeds do not average out, so on other worlds the kept cell came out below its twin (by up to 0.04)
    est = outcomes[False]
    assert not (est.value > 0 and est.p < 0.05), est
    assert est.value < outcomes[True].value / 2
