"""Label sets, harmonisation between datasets, long-tail grouping, and the text prompts for each label.

The prompt templates themselves are data (:mod:`cxrfa.prompts`); :func:`prompts_for` fills a chosen set.

One canonical spelling per label set (NIH-14 keeps NIH's spellings, e.g. ``Pleural_Thickening``). Sources are
mapped onto a chosen set through :data:`SYNONYMS`; a label that a source lacks is *unknown*, never negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from cxrfa.errors import CxrfaError
from cxrfa.prompts import DEFAULT, PromptSet, load_prompt_set

# What an uncertain (-1) label becomes, and what a blank cell means (CheXpert-style sources, generic CSVs).
Uncertain = Literal["ones", "zeros", "ignore"]  # ignore = unknown (NaN)
Blank = Literal["zero", "unknown"]  # zero = the labeller's "not mentioned"

NIH14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

CHEXPERT14: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# CXR-LT 2023 (MIMIC-CXR long-tail challenge) label set.
CXR_LT26: tuple[str, ...] = (
    "Atelectasis",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fracture",
    "Hernia",
    "Infiltration",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
)

LABEL_SETS: dict[str, tuple[str, ...]] = {"nih14": NIH14, "chexpert14": CHEXPERT14, "cxr-lt26": CXR_LT26}

# Spellings that name the same finding across sources; each group maps to one concept key.
SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"Effusion", "Pleural Effusion"}),
    frozenset({"Pleural_Thickening", "Pleural Thickening"}),
)


def get_label_set(name: str) -> tuple[str, ...]:
    """Return the labels of a named set; raise a :class:`CxrfaError` listing the known sets otherwise."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise CxrfaError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}") from None


def concept(label: str) -> str:
    """A spelling-independent key for a label (synonyms share one key)."""
    for group in SYNONYMS:
        if label in group:
            return min(group)
    return label.replace("_", " ").strip().lower()


def harmonise(source_labels: Sequence[str], target: Sequence[str]) -> dict[str, str | None]:
    """Map each target label to the source column that carries it, or ``None`` when the source lacks it.

    A target label mapped to ``None`` must be filled with *unknown* (NaN), never with 0.
    """
    by_concept = {concept(s): s for s in source_labels}
    return {t: by_concept.get(concept(t)) for t in target}


def display_name(label: str) -> str:
    """Human-readable text for a label, as used in prompts (``Pleural_Thickening`` → ``pleural thickening``)."""
    return label.replace("_", " ").lower()


def prompts_for(label: str, negative: bool = False, prompts: str | PromptSet = DEFAULT) -> list[str]:
    """The prompt texts whose averaged text embeddings represent a label (or its absence, for zero-shot).

    Args:
        label: the label's name (its :func:`display_name` fills the templates).
        negative: use the negated templates.
        prompts: the prompt set (a shipped name such as ``default`` or ``chexzero``, a YAML path, or a set).

    Raises:
        CxrfaError: an unknown or malformed prompt set.
    """
    return load_prompt_set(prompts).texts(display_name(label), negative=negative)


def group_by_prevalence(
    prevalence: Mapping[str, float], head: float = 0.05, tail: float = 0.02
) -> dict[str, str]:
    """Assign each label to ``head`` (prevalence >= ``head``), ``tail`` (< ``tail``) or ``medium``.

    Prevalence is measured on the *train* split. The defaults split NIH ChestX-ray14 into 5 head labels
    (Infiltration ... Mass), 6 medium and 3 tail (Fibrosis, Pneumonia, Hernia).
    """
    return {
        label: "head" if p >= head else ("tail" if p < tail else "medium") for label, p in prevalence.items()
    }
