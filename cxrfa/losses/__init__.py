"""Every loss term as a small function (or module) returning an unweighted scalar; weights are applied only
in :func:`weighted_total`, and :func:`chance_levels` gives each term's value for a model that ignores the image.

The alignment terms contrast *images* (with vs without a label, an image vs the other reports), never labels
against labels within one image, so none of them can be satisfied by features that ignore the image.

Targets are (B, C) floats: 1, 0 or NaN (unknown). Unknown entries are excluded exactly: they contribute
neither to a sum nor to its count.

Each term is declared once, as a :class:`LossTerm` in ``terms`` (its function, its chance value, the outputs
it needs, and its weight field in :class:`LossConfig`): :func:`compute_terms`, :func:`chance_levels`, the
active-term rule and the logged curve names all read the declarations (``registry``). The term functions live
by family: ``classification`` (``cls``, ``expression``), ``contrastive`` (``semantic``, ``report``,
``consistency``, ``supcon``), ``alignment`` (``domain``, ``coral``, ``orth`` and the modality gap). The names
below are the package's interface; importing it registers every term.
"""

from __future__ import annotations

# the declarations: registers every term, in summation order
from cxrfa.losses import terms  # noqa: F401
from cxrfa.losses.alignment import (
    centroid_contrast,
    coral,
    domain_alignment,
    modality_gap_vector,
    orthogonality,
    rbf_mmd,
)
from cxrfa.losses.classification import (
    ASL,
    Focal,
    MaskedBCE,
    cls_criterion,
    expression,
)
from cxrfa.losses.contrastive import (
    clip_logits_loss,
    clip_loss,
    consistency,
    label_contrast,
    multi_positive_nce,
    supcon,
)
from cxrfa.losses.registry import (
    LossTerm,
    TermBatch,
    active_terms,
    chance_levels,
    compute_terms,
    get_term,
    list_terms,
    register_term,
    weighted_total,
)

__all__ = [
    "ASL",
    "Focal",
    "LossTerm",
    "MaskedBCE",
    "TermBatch",
    "active_terms",
    "centroid_contrast",
    "chance_levels",
    "clip_logits_loss",
    "clip_loss",
    "cls_criterion",
    "compute_terms",
    "consistency",
    "coral",
    "domain_alignment",
    "expression",
    "get_term",
    "label_contrast",
    "list_terms",
    "modality_gap_vector",
    "multi_positive_nce",
    "orthogonality",
    "rbf_mmd",
    "register_term",
    "supcon",
    "weighted_total",
]
