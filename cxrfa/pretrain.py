"""CLIP-style contrastive pretraining on image–report pairs (CheXzero-style), from scratch or from init weights.

The result is an open_clip state_dict, so it loads through the ``clip``/``biomedclip`` encoder path like any
checkpoint (``pretrained: /path/to/file.pt``). Used to make the demo stand-ins and to adapt real CLIP models.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from tqdm.auto import tqdm

from cxrfa.data.dataset import load_image
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_path
from cxrfa.models.weights import create_open_clip

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    out: Path  # the checkpoint written
    arch: str
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    recall_at_1: float = 0.0  # val image -> report retrieval; a hit = a report with the same findings
    recall_at_5: float = 0.0
    chance_at_1: float = 0.0  # the same recall for a random ranking (exact)
    chance_at_5: float = 0.0
    n_train: int = 0
    n_val: int = 0


def has_reports(manifest: Manifest) -> bool:
    """Whether any row of the manifest has a non-empty report."""
    reports = manifest.frame.get("report")
    return reports is not None and bool(reports.dropna().astype(str).str.strip().ne("").any())


def _pairs(manifest: Manifest, split: str) -> Manifest:
    """The split's image-report pairs; for a manifest without any report, every image paired with a sentence
    built from its labels (:func:`cxrfa.data.reports.label_sentence`)."""
    part = manifest.split(split)
    if not has_reports(manifest):
        from cxrfa.data.reports import label_sentences

        frame = part.frame.assign(report=label_sentences(list(part.labels), part.label_matrix()))
        return Manifest(frame.reset_index(drop=True), part.root, part.labels, part.label_set, part.source)
    has_report = part.frame["report"].notna() & (part.frame["report"].astype(str).str.strip() != "")
    frame = part.frame[has_report.to_numpy(dtype=bool)].reset_index(drop=True)
    return Manifest(frame, part.root, part.labels, part.label_set, part.source)


def _images(part: Manifest, rows: np.ndarray, preprocess: object, memo: dict[int, Tensor]) -> Tensor:
    """(b, 3, H, W) preprocessed images; kept in memory after first use (small demo images)."""
    for i in rows:
        if int(i) not in memo:
            memo[int(i)] = preprocess(load_image(part.image_path(int(i))))  # type: ignore[operator]
    return torch.stack([memo[int(i)] for i in rows])


def chance_recall(keys: Sequence[Hashable], k: int) -> float:
    """Expected recall@k of a random ranking, when a hit is any report whose key equals the true one's."""
    n = len(keys)
    counts: dict[Hashable, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    k = min(k, n)
    # P(at least one of the m matching reports in a random top-k) = 1 - C(n-m, k) / C(n, k)
    return float(np.mean([1 - math.comb(n - counts[key], k) / math.comb(n, k) for key in keys]))


def retrieval_recall(image_emb: Tensor, text_emb: Tensor, keys: Sequence[Hashable], k: int) -> float:
    """Fraction of images (N, De) whose top-k retrieved reports (N, De) include one with the true key.

    With ``keys`` = the report texts this is exact-report recall; :func:`pretrain` uses the label vectors,
    so a report describing the same findings in other words counts as a hit.
    """
    sims = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # (N, N)
    top = sims.topk(min(k, len(keys)), dim=1).indices  # (N, k)
    return float(np.mean([any(keys[j] == keys[i] for j in top[i].tolist()) for i in range(len(keys))]))


def finding_keys(part: Manifest) -> list[tuple[float, ...]]:
    """One key per row: its label vector (unknown as -1)."""
    return [tuple(row) for row in np.nan_to_num(part.label_matrix(), nan=-1.0).tolist()]


@torch.no_grad()
def _embed(
    model: torch.nn.Module,
    part: Manifest,
    tokens: Tensor,
    preprocess: object,
    memo: dict[int, Tensor],
    batch_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    imgs, txts = [], []
    for start in range(0, len(part), batch_size):
        rows = np.arange(start, min(start + batch_size, len(part)))
        imgs.append(model.encode_image(_images(part, rows, preprocess, memo).to(device)).float().cpu())
        txts.append(model.encode_text(tokens[rows].to(device)).float().cpu())
    return torch.cat(imgs), torch.cat(txts)  # (N, De), (N, De)


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
) -> PretrainResult:
    """Contrastive image–report pretraining on the train split; retrieval is measured on val.

    Args:
        manifest: a manifest (or its path); without reports, label sentences stand in for them.
        arch: open_clip architecture (``cxrfa-tiny-clip``, ``cxrfa-tiny-biomedclip``, ``ViT-B-16``, ...).
        out: checkpoint file to write (atomically).
        epochs: passes over the train pairs.
        init: starting weights (tag, file or folder); None = from scratch.
        batch_size, lr, weight_decay: AdamW optimisation (constant lr after a short linear warmup).
        seed: random init and shuffling.
        device: torch device.

    Returns:
        per-epoch losses and val image->report recall@1/@5 next to their chance levels.

    Raises:
        CxrfaError: no reports in the train split, or weights unavailable.
    """
    with torch.random.fork_rng():  # leave the caller's random state as it was
        return _pretrain(manifest, arch, out, epochs, init, batch_size, lr, weight_decay, seed, device)


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
) -> PretrainResult:
    import open_clip

    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if not has_reports(manifest):
        log.info(
            "%s has no reports: pretraining on sentences built from the labels", manifest.source or "data"
        )
    train, val = _pairs(manifest, "train"), _pairs(manifest, "val")
    if len(train) < 2:
        where = manifest.source or "manifest"
        raise CxrfaError(
            f"{where}: pretraining needs image-report pairs; the train split has {len(train)} reports"
        )
    torch.manual_seed(seed)
    dev = torch.device(device)
    bundle = create_open_clip(arch, init, dev)
    model, preprocess, tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
    train_tokens = tokenizer(train.frame["report"].astype(str).tolist())  # (M, L)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    steps_per_epoch = max(1, len(train) // batch_size)
    warmup = max(1, steps_per_epoch // 2)
    rng = np.random.default_rng(seed)
    memo: dict[int, Tensor] = {}
    result = PretrainResult(out=Path(out), arch=arch, n_train=len(train), n_val=len(val))
    step = 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train))
        total, count = 0.0, 0
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
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup)
            images = _images(train, rows, preprocess, memo).to(dev)  # (b, 3, H, W)
            img = model.encode_image(images, normalize=True)  # (b, De)
            txt = model.encode_text(train_tokens[rows].to(dev), normalize=True)  # (b, De)
            loss = loss_fn(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            total, count, step = total + loss.item() * len(rows), count + len(rows), step + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        result.losses.append(total / max(count, 1))
        log.info("pretrain %s epoch %d/%d: loss %.4f", arch, epoch + 1, epochs, result.losses[-1])
    if len(val) >= 2:
        model.eval()
        texts = val.frame["report"].astype(str).tolist()
        img_emb, txt_emb = _embed(model, val, tokenizer(texts), preprocess, {}, batch_size, dev)
        keys = finding_keys(val)
        result.recall_at_1, result.recall_at_5 = (retrieval_recall(img_emb, txt_emb, keys, k) for k in (1, 5))
        result.chance_at_1, result.chance_at_5 = (chance_recall(keys, k) for k in (1, 5))
        log.info(
            "val retrieval R@1 %.3f (chance %.3f), R@5 %.3f (chance %.3f)",
            result.recall_at_1,
            result.chance_at_1,
            result.recall_at_5,
            result.chance_at_5,
        )
    with atomic_path(out) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    return result
