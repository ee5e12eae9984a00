"""Prompt sensitivity of zero-shot classification: AUROC per template of a prompt set, and their spread.

Zero-shot results depend on the wording of the prompts (CheXzero, BiomedCLIP report it). For a prompt set
(:mod:`cxrfa.prompts`) this scores each template pair (positive i against negated i) on its own and the set's
ensemble (every template's embedding averaged, the prototypes training uses), and summarises the templates'
macro AUROC by min / max / std. The scoring is :mod:`cxrfa.explore.zeroshot`'s: the same image embeddings
(through the feature cache), the same positive-vs-negated softmax and the same masked AUROC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrfa.explore._common import to_numpy
from cxrfa.explore.report import write_json
from cxrfa.explore.zeroshot import encode_split, zero_shot_probs
from cxrfa.metrics import masked_auc
from cxrfa.prompts import DEFAULT, PromptSet, load_prompt_set

if TYPE_CHECKING:
    from cxrfa.data.manifest import Manifest
    from cxrfa.models.cache import FeatureCache
    from cxrfa.models.encoders import Encoder

log = logging.getLogger(__name__)

__all__ = ["prompt_spread", "spread_summary", "write_prompt_spread"]


def _single(prompts: PromptSet, i: int) -> PromptSet:
    """Template pair ``i`` of a set as a set of its own (so its embeddings are cached like any set's)."""
    return PromptSet(
        f"{prompts.name}#{i}", (prompts.positive[i],), (prompts.negative[i],), source=prompts.source
    )


def _score(
    encoder: Encoder, img: np.ndarray, y_true: np.ndarray, labels: list[str], prompts: PromptSet
) -> tuple[dict[str, float], float]:
    pos = to_numpy(encoder.label_embeddings(labels, prompts=prompts))  # (C, De)
    neg = to_numpy(encoder.label_embeddings(labels, negative=True, prompts=prompts))  # (C, De)
    return masked_auc(y_true, zero_shot_probs(img, pos, neg), labels)


def spread_summary(values: list[float]) -> dict[str, float]:
    """``min``, ``max``, ``range`` and ``std`` (ddof=1; 0 for one value) of the finite values (NaN if none)."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"min": float("nan"), "max": float("nan"), "range": float("nan"), "std": float("nan")}
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "range": float(finite.max() - finite.min()),
        "std": std,
    }


def prompt_spread(
    encoder: Encoder,
    manifest: Manifest,
    split: str = "test",
    prompts: str | PromptSet = DEFAULT,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot AUROC of every template pair of a prompt set and of the set's ensemble, with their spread.

    Args:
        encoder: a CLIP-style encoder with a text tower.
        manifest: the dataset.
        split: the split scored.
        prompts: the prompt set (name, YAML path or set).
        cache: the feature cache for the image embeddings (None: compute without one).
        batch_size: images per encoder batch.
        progress: show a progress bar while encoding.

    Returns:
        A JSON-ready dict: ``prompt_set``, ``prompt_hash``, ``split``, ``n_images``, ``ensemble``
        (``macro_auc``, ``auc`` per label), ``templates`` (one entry per pair: ``positive``, ``negative``,
        ``macro_auc``, ``auc``) and ``spread`` (``macro_auc``: min/max/range/std over the templates; ``auc``:
        the same per label).

    Raises:
        CxrfaError: the encoder has no text tower, the split is empty, or the prompt set is unknown/malformed.
    """
    from cxrfa.explore.zeroshot import _require_text

    chosen = load_prompt_set(prompts)
    _require_text(encoder)
    img, y_true, part = encode_split(encoder, manifest, split, cache, batch_size, progress)
    labels = list(part.labels)
    per_label, macro = _score(encoder, img, y_true, labels, chosen)
    templates = []
    for i in range(len(chosen.positive)):
        t_label, t_macro = _score(encoder, img, y_true, labels, _single(chosen, i))
        templates.append(
            {
                "positive": chosen.positive[i],
                "negative": chosen.negative[i],
                "macro_auc": t_macro,
                "auc": t_label,
            }
        )
    log.info(
        "zero-shot with prompt set %s (%s): ensemble macro AUROC %.4f over %d template(s)",
        chosen.name,
        chosen.content_hash,
        macro,
        len(templates),
    )
    return {
        "prompt_set": chosen.name,
        "prompt_hash": chosen.content_hash,
        "split": split,
        "n_images": len(part),
        "ensemble": {"macro_auc": macro, "auc": per_label},
        "templates": templates,
        "spread": {
            "macro_auc": spread_summary([t["macro_auc"] for t in templates]),
            "auc": {lab: spread_summary([t["auc"][lab] for t in templates]) for lab in labels},
        },
    }


def write_prompt_spread(spread: dict[str, Any], out: Path) -> Path:
    """Add one prompt set's :func:`prompt_spread` to ``out/zeroshot.json`` under ``prompt_sets.<name>``.

    The file's other keys (the zero-shot report's ``macro_auc``/``auc``) and other sets' entries are kept, so
    several prompt sets can be written into one report.

    Returns:
        The path of ``zeroshot.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "zeroshot.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    report.setdefault("prompt_sets", {})[spread["prompt_set"]] = spread
    return write_json(report, path)
