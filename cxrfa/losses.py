"""Every loss term as a small function (or module) returning an unweighted scalar; weights are applied only
in :func:`weighted_total`, and :func:`chance_levels` gives each term's value for a model that ignores the image.

The alignment terms contrast *images* (with vs without a label, an image vs the other reports), never labels
against labels within one image, so none of them can be satisfied by features that ignore the image.

Targets are (B, C) floats: 1, 0 or NaN (unknown). Unknown entries are excluded exactly: they contribute
neither to a sum nor to its count.

Each term is declared once, as a :class:`LossTerm` in the registry at the end of this module (its function, its
chance value, the outputs it needs, and its weight field in :class:`LossConfig`): :func:`compute_terms`,
:func:`chance_levels`, the active-term rule and the logged curve names all read the declarations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cxrfa.config import LossConfig


def _known_mean(values: Tensor, known: Tensor) -> Tensor:
    """Mean of ``values`` over ``known`` entries (0, still differentiable, when none are known)."""
    total = (values * known).sum()
    return total / known.sum().clamp(min=1)


def _split(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(B, C) targets with NaN -> (targets with NaN as 0, known mask as float)."""
    known = torch.isfinite(targets)
    return torch.where(known, targets, torch.zeros_like(targets)), known.float()


class MaskedBCE(nn.Module):
    """Binary cross-entropy averaged over known (non-NaN) label entries."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:  # (B, C), (B, C)
        y, known = _split(targets)
        return _known_mean(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), known)


class Focal(nn.Module):
    """Focal loss: BCE scaled by (1 - p_t)^gamma; gamma = 0 is BCE."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split(targets)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, C)
        p_t = torch.exp(-bce)  # probability of the true class
        return _known_mean(bce * (1 - p_t).pow(self.gamma), known)


class ASL(nn.Module):
    """Asymmetric loss (Ridnik et al. 2021): separate focusing for positives/negatives, and a probability
    margin ``clip`` that discards easy negatives. gamma_pos = gamma_neg = clip = 0 is BCE."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        y, known = _split(targets)
        p = torch.sigmoid(logits)
        log_p = F.logsigmoid(logits)
        if self.clip > 0:
            p_neg = (p - self.clip).clamp(min=0)  # shifted probability for negatives
            log_1mp = torch.log((1 - p_neg).clamp(min=1e-8))
        else:
            p_neg = p
            log_1mp = F.logsigmoid(-logits)
        pos = y * log_p * (1 - p).pow(self.gamma_pos)
        neg = (1 - y) * log_1mp * p_neg.pow(self.gamma_neg)
        return _known_mean(-(pos + neg), known)


def multi_positive_nce(logits: Tensor, positive: Tensor) -> Tensor:
    """Mean over rows with a positive of -log(Σ_pos exp(logit) / Σ_all exp(logit)); (R, K) logits and mask."""
    rows = positive.any(1)
    if not rows.any():
        return logits.sum() * 0.0
    log_all = torch.logsumexp(logits[rows], dim=1)
    log_pos = torch.logsumexp(logits[rows].masked_fill(~positive[rows], float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def clip_logits_loss(logits: Tensor, positive: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE on a (B, B) logit matrix: row i matches column i, and any pair marked in the optional
    (B, B) ``positive`` mask (e.g. identical reports). Zero logits give the chance value."""
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    pos = eye if positive is None else positive | eye
    return 0.5 * (multi_positive_nce(logits, pos) + multi_positive_nce(logits.T, pos.T))


def clip_loss(a: Tensor, b: Tensor, tau: float, positive: Tensor | None = None) -> Tensor:
    """:func:`clip_logits_loss` of the cosine similarities of rows of a (B, d) and b (B, d), over τ."""
    return clip_logits_loss(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau, positive)


def label_contrast(scores: Tensor, targets: Tensor, tau: float) -> Tensor:
    """Per label, images that have it must score above images that do not (InfoNCE over the batch's images).

    For a known positive (b, c): ``log(exp(s_bc/τ) + Σ_{n ∈ neg(c)} exp(s_nc/τ)) - s_bc/τ``, averaged over the
    positives of labels that also have a known negative in the batch; unknown entries are neither. Scores that
    do not depend on the image give exactly ``log(1 + |neg(c)|)`` per positive: the chance value, and (by
    Jensen) a lower bound of the expected loss of any scores independent of the labels.

    Args:
        scores: (B, C) similarity of each image's label-c feature to prototype c.
        targets: (B, C) 1/0/NaN.
    """
    pos, neg = targets == 1, targets == 0
    valid = pos & neg.any(0, keepdim=True)
    if not valid.any():
        return scores.sum() * 0.0
    s = scores / tau
    neg_lse = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=0, keepdim=True)  # (1, C)
    return (torch.logaddexp(s, neg_lse) - s)[valid].mean()


def _class_means(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Means over the batch of (B, C, *D) values where the (B, C) boolean mask holds -> (C, *D), has-any (C,)."""
    m = mask.to(values.dtype).reshape(*mask.shape, *[1] * (values.dim() - 2))  # (B, C, 1…): broadcasts over D
    return (values * m).sum(0) / m.sum(0).clamp(min=1), mask.any(0)


def modality_gap_vector(features: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
    """The class-balanced modality gap (D,): over the labels present in the batch, the mean of each label's
    image-side centroid (F̂[b, c] averaged over the images with c) minus the mean of their prototypes L̂[c].

    Each present label counts once on both sides, so perfectly aligned features (F̂[b, c] = L̂[c]) give exactly
    0 whatever the label frequencies. The one definition behind the ``domain`` loss, ``embed/modality_gap``,
    ``embed/modality_gap_pooled`` and ``cxrfa explore gap``; zero when no label is present.

    Args:
        features: (B, C, D) per-label image-side features, or (B, D) one embedding per image that stands for
            each of its labels (normalised here).
        prototypes: (C, D) label prototypes (normalised here).
        targets: (B, C) 1/0/NaN.
    """
    present_mask = targets == 1
    if features.dim() == 2:  # (B, D): class means as one product, without a (B, C, D) copy
        weights = present_mask.to(features.dtype)  # (B, C)
        centroids = weights.T @ F.normalize(features, dim=-1) / weights.sum(0).clamp(min=1).unsqueeze(-1)
        present = present_mask.any(0)
    else:
        centroids, present = _class_means(F.normalize(features, dim=-1), present_mask)  # (C, D), (C,)
    if not present.any():
        return features.sum() * 0.0 + features.new_zeros(features.shape[-1])
    return centroids[present].mean(0) - F.normalize(prototypes, dim=-1)[present].mean(0)


def centroid_contrast(scores: Tensor, targets: Tensor, tau: float) -> Tensor:
    """mean_c softplus(-(m⁺_c - m⁻_c) / τ) over labels with a known positive and a known negative, where m±_c is
    the mean (B, C) score of the images with / without c. Image-independent scores give log 2 (chance)."""
    m_pos, has_pos = _class_means(scores, targets == 1)
    m_neg, has_neg = _class_means(scores, targets == 0)
    both = has_pos & has_neg
    if not both.any():
        return scores.sum() * 0.0
    return F.softplus(-(m_pos - m_neg)[both] / tau).mean()


def domain_alignment(
    features: Tensor, scores: Tensor, prototypes: Tensor, targets: Tensor, tau: float, kind: str = "centroid"
) -> Tensor:
    """Domain-level alignment: close the modality gap class by class, without losing the image.

    ``‖gap‖²`` of :func:`modality_gap_vector` (``kind="mmd"``: the RBF MMD² between the present pairs' features
    and their prototypes), which a model could satisfy without looking at the image, plus
    :func:`centroid_contrast`, which it cannot: the term's chance value is log 2.

    Args:
        features: (B, C, D) per-label image-side features.
        scores: (B, C) cos(F[b, c], L̂[c]).
        prototypes: (C, D) label prototypes.
        targets: (B, C) 1/0/NaN.
    """
    if kind == "mmd":
        b_idx, c_idx = torch.nonzero(targets == 1, as_tuple=True)
        f_hat, p_hat = F.normalize(features[b_idx, c_idx], dim=-1), F.normalize(prototypes[c_idx], dim=-1)
        gap = rbf_mmd(f_hat, p_hat) if b_idx.numel() else features.sum() * 0.0
    else:
        gap = modality_gap_vector(features, prototypes, targets).pow(2).sum()
    return gap + centroid_contrast(scores, targets, tau)


def rbf_mmd(x: Tensor, y: Tensor, sigmas: tuple[float, ...] = (0.5, 1.0, 2.0)) -> Tensor:
    """Biased MMD² between sets x (n, d) and y (m, d) with a sum of RBF kernels; 0 for identical sets."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)  # (n, m)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in sigmas)  # type: ignore[return-value]

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def coral(x: Tensor, groups: Tensor) -> Tensor:
    """CORAL: mean squared Frobenius gap between each domain's feature covariance and the others' (pairs)."""
    covs = []
    for g in torch.unique(groups):
        xg = x[groups == g]
        if xg.shape[0] > 1:
            xc = xg - xg.mean(0, keepdim=True)
            covs.append(xc.T @ xc / (xg.shape[0] - 1))  # (d, d)
    if len(covs) < 2:
        return x.sum() * 0.0
    d = x.shape[1]
    gaps = [
        (covs[i] - covs[j]).pow(2).sum() / (4 * d * d)
        for i in range(len(covs))
        for j in range(i + 1, len(covs))
    ]
    return torch.stack(gaps).mean()


def orthogonality(labels_emb: Tensor) -> Tensor:
    """mean((L̂ L̂ᵀ - I)²) over normalised (C, d) label embeddings; 0 for orthonormal rows. Independent random
    directions in d dimensions give (1 - 1/C) / d in expectation (its chance value)."""
    lab = F.normalize(labels_emb, dim=-1)
    eye = torch.eye(lab.shape[0], device=lab.device)
    return (lab @ lab.T - eye).pow(2).mean()


def consistency(logits_a: Tensor, logits_b: Tensor, tau: float) -> Tensor:
    """Contrastive loss between the two classifiers' (B, C) outputs: the same image is the positive.

    Logits are centred per label over the batch first, so the term compares which findings an image has
    *relative to the batch* (probabilities of rare findings are near 0 for every image, which would make all
    vectors alike). Image-independent outputs give the chance value log B.
    """
    if logits_a.shape[0] < 2:
        return (logits_a.sum() + logits_b.sum()) * 0.0
    return clip_loss(logits_a - logits_a.mean(0), logits_b - logits_b.mean(0), tau)


def expression(logits: Tensor, targets: Tensor) -> Tensor:
    """Masked MSE between predicted probabilities and the label vector ("vector output expression")."""
    y, known = _split(targets)
    return _known_mean((torch.sigmoid(logits) - y).pow(2), known)


def supcon(sim: Tensor, targets: Tensor) -> Tensor:
    """Multi-label supervised contrastive loss on a (B, B) similarity/τ matrix of pooled image features:
    images sharing at least one present label (or both with none) are positives; zero ``sim`` is chance."""
    y = (targets == 1).float()  # unknown counts as not present
    y = torch.cat([y, (y.sum(1, keepdim=True) == 0).float()], dim=1)  # (B, C+1): a "no finding" column
    eye = torch.eye(y.shape[0], dtype=torch.bool, device=y.device)
    pos = (y @ y.T > 0) & ~eye  # (B, B)
    if not pos.any():
        return sim.sum() * 0.0
    log_prob = F.log_softmax(sim.masked_fill(eye, float("-inf")), dim=1).masked_fill(eye, 0.0)
    has_pos = pos.any(1)
    return (-(log_prob * pos).sum(1)[has_pos] / pos.sum(1)[has_pos]).mean()


def cls_criterion(cfg: LossConfig) -> nn.Module:
    """The classification loss a config chooses."""
    if cfg.cls == "asl":
        return ASL(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip)
    if cfg.cls == "focal":
        return Focal(cfg.focal_gamma)
    return MaskedBCE()


# ----------------------------------------------------------------------------------------------------------
# the registry: one declaration per loss term


@dataclass(frozen=True)
class TermBatch:
    """What every term reads for one batch.

    Attributes:
        out: the model's output dict (``logits``, ``logits_a``, optional ``logits_b``, ``scores``, ``features``,
            ``labels_emb``, ``labels_raw``, ``pooled``, ``image_emb``/``report_emb``/``has_report``/``report_same``).
        targets: (B, C) 1/0/NaN.
        cfg: the loss config (weights and hyper-parameters).
        domains: optional (B,) integer domain ids (CORAL).
    """

    out: Mapping[str, Tensor]
    targets: Tensor
    cfg: LossConfig
    domains: Tensor | None = None

    @cached_property
    def prevalence_logits(self) -> Tensor:
        """(B, C) logits of the constant predictor of each label's batch prevalence (known entries only)."""
        y, known = _split(self.targets)
        prevalence = (y * known).sum(0) / known.sum(0).clamp(min=1)  # (C,)
        return torch.logit(prevalence.clamp(1e-6, 1 - 1e-6)).expand_as(self.targets)


def _always(_: TermBatch) -> bool:
    return True


@dataclass(frozen=True)
class LossTerm:
    """One loss term, declared once: everything that computes, switches, logs or references it reads this.

    Attributes:
        name: the term's name: its weight field in :class:`LossConfig` (``cls`` has the fixed weight 1) and
            its logged curves ``train/loss_<name>`` and ``train/chance_<name>``.
        compute: the unweighted term on a batch (a differentiable scalar).
        chance: the value the term takes on this batch for a model that ignores the image (None: no reference).
        needs: the output keys it reads; a batch whose output lacks one skips the term (e.g. a visual-only
            model has no ``scores``).
        ready: a further condition on the batch (e.g. at least two reports).
    """

    name: str
    compute: Callable[[TermBatch], Tensor]
    chance: Callable[[TermBatch], float] | None
    needs: tuple[str, ...] = ()
    ready: Callable[[TermBatch], bool] = _always

    @property
    def metric(self) -> str:
        """The logged per-epoch curve of the term."""
        return f"train/loss_{self.name}"

    @property
    def chance_metric(self) -> str:
        """The logged per-epoch curve of its chance value."""
        return f"train/chance_{self.name}"

    def active(self, batch: TermBatch) -> bool:
        """On for this batch: weight > 0, every needed output present, and :attr:`ready`."""
        return (
            batch.cfg.weights[self.name] > 0
            and all(key in batch.out for key in self.needs)
            and self.ready(batch)
        )


_TERMS: dict[str, LossTerm] = {}


def register_term(term: LossTerm) -> LossTerm:
    """Add a term to the registry; terms are computed, summed and logged in registration order.

    Raises:
        ValueError: a name registered twice, or one without a weight field in :class:`LossConfig`.
    """
    if term.name in _TERMS:
        raise ValueError(f"loss term {term.name!r} is registered twice")
    if term.name not in LossConfig.term_names():
        raise ValueError(
            f"loss term {term.name!r} has no weight field in LossConfig; known: {', '.join(LossConfig.term_names())}"
        )
    _TERMS[term.name] = term
    return term


def list_terms() -> tuple[str, ...]:
    """Every registered term name, in computation order."""
    return tuple(_TERMS)


def get_term(name: str) -> LossTerm:
    """The declaration of one term.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if name not in _TERMS:
        raise KeyError(f"unknown loss term {name!r}; known: {', '.join(_TERMS)}")
    return _TERMS[name]


def active_terms(batch: TermBatch) -> list[LossTerm]:
    """The terms on for this batch, in computation order."""
    return [term for term in _TERMS.values() if term.active(batch)]


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
_undeclared = set(LossConfig.term_names()) - set(_TERMS)
if _undeclared:  # a weight field without a declaration would be tuned and logged as nothing
    raise RuntimeError(f"LossConfig weight field(s) without a loss term declaration: {sorted(_undeclared)}")


def compute_terms(
    out: Mapping[str, Tensor], targets: Tensor, cfg: LossConfig, domains: Tensor | None = None
) -> dict[str, Tensor]:
    """Unweighted loss terms for one batch: every declared term that is on (:meth:`LossTerm.active`).

    Args:
        out: the model's output dict (see :class:`TermBatch`).
        targets: (B, C) 1/0/NaN.
        cfg: which terms are on (weight > 0) and their hyper-parameters.
        domains: optional (B,) integer domain ids for CORAL.

    Returns:
        ``cls`` always (the mean of each classifier's own loss); every other term whose weight is > 0 and
        whose inputs exist in ``out``.
    """
    batch = TermBatch(out, targets, cfg, domains)
    return {term.name: term.compute(batch) for term in active_terms(batch)}


@torch.no_grad()
def chance_levels(
    out: Mapping[str, Tensor], targets: Tensor, cfg: LossConfig, domains: Tensor | None = None
) -> dict[str, float]:
    """The value each term of :func:`compute_terms` takes on this batch for a model that ignores the image.

    ``cls``/``expression``: a constant predictor of each label's batch prevalence; the contrastive terms
    (``semantic``, ``report``, ``consistency``, ``supcon``): constant scores; ``domain``: log 2 (its contrast
    part; the gap part can reach 0 without the image). A trained term below its chance value shows it used the
    image. ``orth`` involves no image: its reference is the penalty of the centred label text as the branch
    receives it (below it, the branch pushed the diseases apart), or of random directions for learned queries.
    ``coral`` has no chance level. Per batch: the training loop logs their epoch mean beside the term's.
    """
    batch = TermBatch(out, targets, cfg, domains)
    return {term.name: term.chance(batch) for term in active_terms(batch) if term.chance is not None}


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float] | LossConfig) -> Tensor:
    """Σ weight[name] · term — the one place weights are applied.

    Args:
        terms: from :func:`compute_terms`.
        weights: weight per term name, or a :class:`LossConfig` (then :attr:`LossConfig.weights`).

    Raises:
        KeyError: a term without a weight (a bug: every term must be tunable).
    """
    if isinstance(weights, LossConfig):
        weights = weights.weights
    missing = [name for name in terms if name not in weights]
    if missing:
        raise KeyError(f"no weight for loss term(s) {missing}; weights: {sorted(weights)}")
    return torch.stack([terms[name] * float(weights[name]) for name in terms]).sum()
