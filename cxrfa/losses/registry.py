"""The loss-term registry and its composer: each term is declared once as a :class:`LossTerm` (its function,
its chance value, the outputs it needs, and its weight field in :class:`LossConfig`); :func:`compute_terms`,
:func:`chance_levels`, the active-term rule and the logged curve names all read the declarations, and
:func:`weighted_total` is the one place weights are applied."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from cxrfa.config import LossConfig
from cxrfa.losses.classification import _split


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
