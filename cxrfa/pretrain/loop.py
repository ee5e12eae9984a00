"""CLIP-style contrastive pretraining on image–report pairs (CheXzero-style), from scratch or from init weights.

The result is an open_clip state_dict, so it loads through the ``clip``/``biomedclip`` encoder path like any
checkpoint (``pretrained: /path/to/file.pt``). Used to make the demo stand-ins and to adapt real CLIP models.

Two things make small models trained from scratch actually align. Pairs with the same findings are positives of
one another (most demo reports say "normal": plain CLIP loss would treat them as negatives and punish the true
matches), and images are also paired with varied statements of their labels, with a per-finding contrast of a
stated against a negated finding. After training, the saved weights are loaded the way runs load them and
scored: CheXzero-style zero-shot AUROC (:mod:`cxrfa.zeroshot`) and image->text retrieval, each beside its chance.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cxrfa.data.dataset import load_image
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_path
from cxrfa.models.weights import create_open_clip
from cxrfa.pretrain.objectives import finding_loss, loss_floor, multi_positive_clip_loss, positive_mask
from cxrfa.pretrain.retrieval import chance_recall, finding_keys, retrieval_recall
from cxrfa.train import fused_optimizer

log = logging.getLogger(__name__)

SENTENCE_SHARE = 0.5  # how often an image with a report is paired with a label sentence instead
SENTENCE_VARIANTS = 4  # label sentences phrased per train image, tokenised once
FINDING_WEIGHT = 1.0  # weight of the per-finding statement contrast (:func:`finding_loss`) in the loss


@dataclass
class PretrainResult:
    """What a pretraining run produced: its loss against chance, and how aligned the weights came out.

    Retrieval: image -> text recall@k over a gallery of one entry per distinct finding set (label vector) of the
    split, balanced over the sets (:func:`retrieval_recall`); ``chance_*`` = ``k / G`` for ``G`` sets, exactly
    what a ranking that ignores the image scores. Zero-shot: CheXzero-style macro AUROC over the labels with both
    classes among known rows (:mod:`cxrfa.zeroshot`); 0.5 is chance. ``val`` numbers are for choosing (recipes,
    warnings), ``test`` numbers for reporting.
    """

    out: Path  # the checkpoint written
    arch: str
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    final_loss: float = math.nan  # the last epoch's mean loss
    chance_loss: float = math.nan  # what features that ignore the image score over the same batches
    floor_loss: float = math.nan  # what perfectly aligned features score (the targets' entropy)
    recall_at_1: float = math.nan  # val
    recall_at_5: float = math.nan
    chance_at_1: float = math.nan
    chance_at_5: float = math.nan
    test_recall_at_1: float = math.nan
    test_recall_at_5: float = math.nan
    test_chance_at_1: float = math.nan
    test_chance_at_5: float = math.nan
    zeroshot_auc_val: float = math.nan
    zeroshot_auc_test: float = math.nan
    zeroshot_per_label_test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time, evaluation included
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    texts: str = "reports"  # what the images were paired with: "reports" or "label sentences"

    def metrics(self) -> dict[str, float]:
        """The scalar results under the names runs log them (``standin/<role>/<name>``) and sidecars store."""
        return {
            "final_loss": self.final_loss,
            "chance_loss": self.chance_loss,
            "floor_loss": self.floor_loss,
            "zeroshot_auc_val": self.zeroshot_auc_val,
            "zeroshot_auc_test": self.zeroshot_auc_test,
            "r1_val": self.recall_at_1,
            "r5_val": self.recall_at_5,
            "chance_r1_val": self.chance_at_1,
            "chance_r5_val": self.chance_at_5,
            "r1_test": self.test_recall_at_1,
            "r5_test": self.test_recall_at_5,
            "chance_r1_test": self.test_chance_at_1,
            "chance_r5_test": self.test_chance_at_5,
            "epochs": float(len(self.losses)),
            "seconds": self.seconds,
        }


def _pairs(manifest: Manifest, split: str) -> Manifest:
    """The split's image-report pairs; for a manifest without any report, every image paired with a sentence
    built from its labels (:func:`cxrfa.data.reports.label_sentence`)."""
    part = manifest.split(split)
    if not manifest.has_reports():
        from cxrfa.data.reports import label_sentences

        frame = part.frame.assign(report=label_sentences(list(part.labels), part.label_matrix()))
        return Manifest(frame.reset_index(drop=True), part.root, part.labels, part.label_set, part.source)
    frame = part.frame[part.report_rows()].reset_index(drop=True)
    return Manifest(frame, part.root, part.labels, part.label_set, part.source)


def _image_stack(part: Manifest, preprocess: Callable[[Any], Tensor]) -> Tensor:
    """(M, 3, H, W) every image of ``part``, read and preprocessed once (the pretraining images are small)."""
    return torch.stack([preprocess(load_image(path)) for path in part.image_paths()])


class _StatementTokens:
    """Each label's stated and negated phrasings (:func:`cxrfa.data.reports.finding_statements`), tokenised
    once; each step encodes one random phrasing per label and polarity."""

    def __init__(self, labels: list[str], tokenizer: Callable[[list[str]], Tensor]) -> None:
        from cxrfa.data.reports import finding_statements

        phrasings = [finding_statements(label) for label in labels]
        self.stated = [tokenizer(present) for present, _ in phrasings]  # C x (P, L)
        self.negated = [tokenizer(absent) for _, absent in phrasings]  # C x (Q, L)

    def embed(
        self, model: torch.nn.Module, rng: np.random.Generator, dev: torch.device, which: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """(c, De) stated and (c, De) negated statement embeddings of the labels ``which`` (c indices),
        L2-normalised, one phrasing each.

        Only the labels :func:`finding_loss` scores in a batch need encoding: the others would cost a third
        of a step's compute and get no gradient.
        """
        stated, negated = [self.stated[c] for c in which], [self.negated[c] for c in which]
        pick = [t[int(rng.integers(len(t)))] for t in (*stated, *negated)]
        emb = model.encode_text(torch.stack(pick).to(dev), normalize=True)  # (2c, De)
        return emb[: len(which)], emb[len(which) :]


def _texts(part: Manifest, with_reports: bool, variants: int, rng: np.random.Generator) -> list[list[str]]:
    """Per train row, the texts it may be paired with: its report (if any) and ``variants`` label sentences."""
    from cxrfa.data.reports import varied_label_sentences

    sentences = varied_label_sentences(list(part.labels), part.label_matrix(), rng, variants)
    if not with_reports:
        return sentences
    return [[report, *alt] for report, alt in zip(part.frame["report"].astype(str), sentences, strict=True)]


def pretrain(
    manifest: Manifest | str | os.PathLike[str],
    arch: str,
    out: str | os.PathLike[str],
    epochs: int = 10,
    init: str | None = None,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: str = "cpu",
    sentence_share: float = SENTENCE_SHARE,
    finding_weight: float = FINDING_WEIGHT,
) -> PretrainResult:
    """Contrastive image-text pretraining on the train split, then zero-shot and retrieval on val and test.

    Every pair of a batch with the same findings is a positive (:func:`multi_positive_clip_loss`). Each image is
    paired with its report or, with probability ``sentence_share``, with a freshly phrased statement of its
    labels (:func:`cxrfa.data.reports.varied_label_sentence`); without reports, always with the latter.

    Args:
        manifest: a manifest (or its path); without reports, label sentences stand in for them.
        arch: open_clip architecture (``cxrfa-tiny-clip``, ``cxrfa-tiny-biomedclip``, ``ViT-B-16``, ...).
        out: checkpoint file to write (atomically).
        epochs: passes over the train pairs.
        init: starting weights (tag, file or folder); None = from scratch.
        batch_size, lr, weight_decay: AdamW optimisation (linear warmup over half an epoch, cosine decay).
        seed: random init, shuffling and sentence phrasing.
        device: torch device.
        sentence_share: how often an image with a report is paired with a label sentence instead.
        finding_weight: weight of the per-finding contrast of a stated against a negated finding
            (:func:`finding_loss`); 0 = image-text pairs only.

    Returns:
        per-epoch losses (image-text contrast plus the weighted finding contrast) with their chance value, val/test retrieval and zero-shot AUROC, wall time.

    Raises:
        CxrfaError: no image-text pairs in the train split, or weights unavailable.
    """
    with torch.random.fork_rng():  # leave the caller's random state as it was
        started = time.perf_counter()
        result = _pretrain(
            manifest,
            arch,
            out,
            epochs,
            init,
            batch_size,
            lr,
            weight_decay,
            seed,
            device,
            sentence_share,
            finding_weight,
        )
        result.seconds = time.perf_counter() - started
    return result


def _pretrain(
    manifest: Manifest | str | os.PathLike[str],
    arch: str,
    out: str | os.PathLike[str],
    epochs: int,
    init: str | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: str,
    sentence_share: float,
    finding_weight: float,
) -> PretrainResult:
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    with_reports = manifest.has_reports()
    if not with_reports:
        log.info(
            "%s has no reports: pretraining on sentences built from the labels", manifest.source or "data"
        )
    train = _pairs(manifest, "train")
    if len(train) < 2:
        where = manifest.source or "manifest"
        raise CxrfaError(
            f"{where}: pretraining needs image-report pairs; the train split has {len(train)} reports"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    bundle = create_open_clip(arch, init, dev)
    model, tokenizer = bundle.model, bundle.tokenizer
    images = _image_stack(train, bundle.preprocess)  # (M, 3, H, W)
    options = _texts(train, with_reports, SENTENCE_VARIANTS, rng)  # M lists of texts, the report first
    tokens = tokenizer([t for texts in options for t in texts])  # (M * T, L)
    per_row = len(options[0])
    keys = train.label_matrix()  # (M, C): pairs with equal rows are positives
    statements = _StatementTokens(list(train.labels), tokenizer)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr,
        weight_decay=weight_decay,
        fused=fused_optimizer(dev),
    )
    steps_per_epoch = math.ceil((len(train) - 1) / batch_size)
    total_steps, warmup = steps_per_epoch * epochs, max(1, steps_per_epoch // 2)
    result = PretrainResult(out=Path(out), arch=arch, n_train=len(train))
    result.texts = "reports" if with_reports else "label sentences"
    step = 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        total, count, chance, floor = 0.0, 0, 0.0, 0.0
        bar = tqdm(
            range(0, len(order) - 1, batch_size),
            desc=f"pretrain {arch} epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=None,
            dynamic_ncols=True,
        )
        for start in bar:
            rows = order[start : start + batch_size]
            if len(rows) < 2:
                continue
            # warmup, then cosine decay to zero: the few epochs end on small, settling steps
            decay = min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total_steps)))
            for group in opt.param_groups:
                group["lr"] = lr * decay
            if with_reports:  # the report, or with probability sentence_share one of the label sentences
                pick = np.where(
                    rng.random(len(rows)) < sentence_share, rng.integers(1, per_row, len(rows)), 0
                )
            else:
                pick = rng.integers(0, per_row, len(rows))
            img = model.encode_image(images[rows].to(dev), normalize=True)  # (b, De)
            txt = model.encode_text(tokens[rows * per_row + pick].to(dev), normalize=True)  # (b, De)
            positive = positive_mask(keys[rows]).to(dev)  # (b, b)
            scale = model.logit_scale.exp()
            loss = multi_positive_clip_loss(scale * img @ txt.T, positive)
            k = keys[rows]
            scored = np.flatnonzero((k == 1).any(0) & (k == 0).any(0))  # the labels the finding term scores
            if finding_weight > 0 and len(scored):
                stated, negated = statements.embed(model, rng, dev, scored)  # (c, De) each
                margin = scale * (img @ stated.T - img @ negated.T)  # (b, c)
                target = torch.as_tensor(k[:, scored]).to(dev)  # (b, c)
                loss = loss + finding_weight * finding_loss(margin, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            b = len(rows)
            total, count, step = total + loss.item() * b, count + b, step + 1
            chance += (math.log(b) + finding_weight * math.log(2) * bool(len(scored))) * b
            floor += loss_floor(positive) * b
            bar.set_postfix(loss=f"{total / count:.4f}")
        result.losses.append(total / max(count, 1))
        result.chance_loss, result.floor_loss = chance / max(count, 1), floor / max(count, 1)
        log.info(
            "pretrain %s epoch %d/%d: loss %.4f (chance %.4f, floor %.4f)",
            arch,
            epoch + 1,
            epochs,
            result.losses[-1],
            result.chance_loss,
            result.floor_loss,
        )
    result.final_loss = result.losses[-1] if result.losses else math.nan
    with atomic_path(out) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    del model, opt, images
    _evaluate(result, manifest, arch, dev)
    return result


def _evaluate(result: PretrainResult, manifest: Manifest, arch: str, dev: torch.device) -> None:
    """Zero-shot AUROC and retrieval on val and test, with the saved weights loaded the way runs load them."""
    from cxrfa.config import BackboneConfig
    from cxrfa.models.registry import build_encoder, list_encoders
    from cxrfa.zeroshot import zero_shot_auc

    name = next((e.name for e in list_encoders() if arch in e.archs and e.has_text), "clip")
    encoder = build_encoder(BackboneConfig(name=name, arch=arch, pretrained=str(result.out)), dev)
    encoder.eval()
    labels = list(manifest.labels)
    with torch.inference_mode():
        pos = encoder.label_embeddings(labels)  # (C, De), its prompt templates averaged
        neg = encoder.label_embeddings(labels, negative=True)  # (C, De)
        for split in ("val", "test"):
            part = _pairs(manifest, split)
            if len(part) < 2:
                continue
            img = torch.cat(
                [
                    encoder.encode_image(batch.to(dev))[1].float().cpu()
                    for batch in _image_stack(part, encoder.preprocess).split(256)
                ]
            )  # (N, De)
            texts = part.frame["report"].astype(str).tolist()
            txt = torch.cat(
                [encoder.encode_text(texts[i : i + 256]).float().cpu() for i in range(0, len(texts), 256)]
            )
            auc = zero_shot_auc(part.label_matrix(), img, pos, neg, labels)
            keys = finding_keys(part)
            recall = [retrieval_recall(img, txt, keys, k) for k in (1, 5)]
            chance = [chance_recall(keys, k) for k in (1, 5)]
            if split == "val":
                result.n_val, result.zeroshot_auc_val = len(part), auc[1]
                result.recall_at_1, result.recall_at_5 = recall
                result.chance_at_1, result.chance_at_5 = chance
            else:
                result.n_test, result.zeroshot_auc_test, result.zeroshot_per_label_test = (
                    len(part),
                    auc[1],
                    auc[0],
                )
                result.test_recall_at_1, result.test_recall_at_5 = recall
                result.test_chance_at_1, result.test_chance_at_5 = chance
            log.info(
                "%s: zero-shot macro AUROC %.3f; image->text R@1 %.3f (chance %.3f), R@5 %.3f (chance %.3f)",
                split,
                auc[1],
                *[v for pair in zip(recall, chance, strict=True) for v in pair],
            )
