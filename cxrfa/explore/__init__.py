"""Embedding exploration: the modality gap and its shift, UMAP views, label-similarity heatmaps, zero-shot.

Pure functions on numpy arrays or torch tensors; figures are returned, never shown or saved here (except in
:mod:`cxrfa.explore.report`, which writes files for the CLI).
"""

from __future__ import annotations

from cxrfa.explore._common import l2_normalise
from cxrfa.explore.gap import (
    GapResult,
    balanced_gap,
    cosine_scores,
    default_deltas,
    gap_shift_experiment,
    modality_gap,
    plot_gap_shift,
    shift,
)
from cxrfa.explore.model import ExploreResult, explore_model
from cxrfa.explore.similarity import mean_offdiag, similarity_matrix, similarity_panels
from cxrfa.explore.umap_page import umap_html, umap_plotly
from cxrfa.explore.umap_view import (
    UmapLayout,
    image_attributes,
    image_groups,
    label_slots,
    name_positions,
    umap_embed,
    umap_figure,
    umap_layout,
    umap_place,
)
from cxrfa.explore.zeroshot import encode_split, prompt_embeddings, zero_shot, zero_shot_probs

__all__ = [
    "ExploreResult",
    "GapResult",
    "UmapLayout",
    "balanced_gap",
    "cosine_scores",
    "default_deltas",
    "encode_split",
    "explore_model",
    "gap_shift_experiment",
    "image_attributes",
    "image_groups",
    "l2_normalise",
    "label_slots",
    "mean_offdiag",
    "modality_gap",
    "name_positions",
    "plot_gap_shift",
    "prompt_embeddings",
    "shift",
    "similarity_matrix",
    "similarity_panels",
    "umap_embed",
    "umap_figure",
    "umap_html",
    "umap_layout",
    "umap_place",
    "umap_plotly",
    "zero_shot",
    "zero_shot_probs",
]
