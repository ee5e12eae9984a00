"""The declarations: one :func:`register_term` per loss term, with the small adapters that read a term's
inputs and chance value from a :class:`TermBatch`. Importing the package registers them."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F

from cxrfa.config import LossConfig
from cxrfa.losses.alignment import coral, domain_alignment, orthogonality
from cxrfa.losses.classification import cls_criterion, expression
from cxrfa.losses.contrastive import clip_logits_loss, consistency, label_contrast, supcon
from cxrfa.losses.registry import LossTerm, TermBatch, list_terms, register_term


def _heads(out: Mapping[str, Tensor]) -> list[Tensor]:
    """The logits each classification loss applies to: each classifier on its own when there are two."""
    return [out["logits_a"], out["logits_b"]] if "logits_b" in out else [out["logits"]]


def _report_same(out: Mapping[str, Tensor]) -> Tensor | None:
    """The (R, R) same-report mask over the R rows with a report (None: no two reports are known to match)."""
    rows = out["has_report"]
    return out["report_same"][rows][:, rows] if "report_same" in out else None


def _report_logits(out: Mapping[str, Tensor], tau: float) -> Tensor:
    """(R, R) image-report cosine logits over the rows with a report."""
    rows = out["has_report"]
    img, rep = F.normalize(out["image_emb"][rows], dim=-1), F.normalize(out["report_emb"][rows], dim=-1)
    return img @ rep.T / tau


def _report_chance(batch: TermBatch) -> float:
    """Constant logits: only their (R, R) shape and the same-report mask matter."""
    r = int(batch.out["has_report"].sum())
    return float(clip_logits_loss(batch.out["image_emb"].new_zeros(r, r), _report_same(batch.out)))


def _pooled_sim(batch: TermBatch) -> Tensor:
    z = F.normalize(batch.out["pooled"], dim=-1)  # (B, d)
    return z @ z.T / batch.cfg.tau  # (B, B)


def _orth_chance(batch: TermBatch) -> float:
    """The penalty of the label text as the branch receives it: centred over the labels, as the model centres
    it before projecting (the raw prompts share one direction, cos ~0.99, so the uncentred text gave 0.903
    where an untrained branch gives 0.083); random directions in d dimensions for learned queries."""
    raw = batch.out.get("labels_raw")
    if raw is None:
        c, d = batch.out["labels_emb"].shape
        return (1 - 1 / c) / d
    return float(orthogonality(raw - raw.mean(0)))


def _domain_chance(batch: TermBatch) -> float:
    """log 2, the centroid contrast of constant scores (the gap part can reach 0 without the image), when a
    label has both a known positive and a known negative; otherwise the contrast is off (0)."""
    t = batch.targets
    return math.log(2.0) if bool(((t == 1).any(0) & (t == 0).any(0)).any()) else 0.0


def _batch_log(batch: TermBatch) -> float:
    b = batch.out["logits_a"].shape[0]
    return math.log(b) if b > 1 else 0.0


# Declaration order is computation, summation and logging order: keep it (the weighted total is summed in it).
register_term(
    LossTerm(
        "cls",
        lambda b: torch.stack([cls_criterion(b.cfg)(h, b.targets) for h in _heads(b.out)]).mean(),
        chance=lambda b: float(cls_criterion(b.cfg)(b.prevalence_logits, b.targets)),
        needs=("logits",),
    )
)
register_term(
    LossTerm(
        "semantic",
        lambda b: label_contrast(b.out["scores"], b.targets, b.cfg.tau),
        chance=lambda b: float(label_contrast(torch.zeros_like(b.out["scores"]), b.targets, b.cfg.tau)),
        needs=("scores",),
    )
)
register_term(
    LossTerm(
        "report",
        lambda b: clip_logits_loss(_report_logits(b.out, b.cfg.tau), _report_same(b.out)),
        chance=_report_chance,
        needs=("report_emb", "image_emb", "has_report"),
        ready=lambda b: int(b.out["has_report"].sum()) > 1,
    )
)
register_term(
    LossTerm(
        "domain",
        lambda b: domain_alignment(
            b.out["features"], b.out["scores"], b.out["labels_emb"], b.targets, b.cfg.tau, b.cfg.domain_kind
        ),
        chance=_domain_chance,
        needs=("features", "scores", "labels_emb"),
    )
)
register_term(
    LossTerm(
        "coral",
        lambda b: coral(b.out["pooled"], b.domains),  # type: ignore[arg-type]
        chance=None,  # a covariance gap has no image-free reference
        needs=("pooled",),
        ready=lambda b: b.domains is not None,
    )
)
register_term(
    LossTerm("orth", lambda b: orthogonality(b.out["labels_emb"]), chance=_orth_chance, needs=("labels_emb",))
)
register_term(
    LossTerm(
        "consistency",
        lambda b: consistency(b.out["logits_a"], b.out["logits_b"], b.cfg.tau),
        chance=_batch_log,
        needs=("logits_a", "logits_b"),
    )
)
register_term(
    LossTerm(
        "expression",
        lambda b: expression(b.out["logits"], b.targets),
        chance=lambda b: float(expression(b.prevalence_logits, b.targets)),
        needs=("logits",),
    )
)
register_term(
    LossTerm(
        "supcon",
        lambda b: supcon(_pooled_sim(b), b.targets),
        # constant similarities, made on the targets' device like every tensor of a term
        chance=lambda b: float(supcon(b.targets.new_zeros(len(b.targets), len(b.targets)), b.targets)),
        needs=("pooled",),
    )
)
_undeclared = set(LossConfig.term_names()) - set(list_terms())
if _undeclared:  # a weight field without a declaration would be tuned and logged as nothing
    raise RuntimeError(f"LossConfig weight field(s) without a loss term declaration: {sorted(_undeclared)}")
