"""Image -> report retrieval as the pretraining scores it: one gallery entry per distinct finding set, recall@k
balanced over the sets, and its chance level, exact for any ranking that ignores the image."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from cxrfa.data.manifest import Manifest


def chance_recall(keys: Sequence[Hashable], k: int) -> float:
    """Recall@k (:func:`retrieval_recall`) of any ranking that ignores the image: ``min(k, G) / G``, exactly,
    for ``G`` distinct keys."""
    distinct = len(set(keys))
    return min(k, distinct) / distinct


def retrieval_recall(image_emb: Tensor, text_emb: Tensor, keys: Sequence[Hashable], k: int) -> float:
    """Image -> text recall@k over a gallery with one entry per distinct key (finding set), balanced over keys.

    The split's texts are pooled by key: a key's gallery entry is the normalised mean of its texts' unit
    embeddings (the way zero-shot averages a label's prompt templates). An image hits when its own key's entry is
    among its ``k`` nearest; recall is the mean hit rate of each key's images, averaged over keys.

    Why this gallery: texts with the same findings are all true matches of an image (most demo reports are the
    same "normal" text, and reports of one finding set differ only in phrasing), so with every text in the gallery
    an image has many positives and the chance of a random ranking depends on how the model orders texts among
    themselves (a model that groups reports by findings spends its k picks on one set, a random ranking spreads
    them over several and scores higher). One entry per finding set leaves each image exactly one positive; one
    per distinct report text would keep several (phrasings of the same findings). Why balanced over keys: an
    image-blind model that always ranks the commonest set ("normal") first would score that set's share at R@1
    under a plain mean over images; averaged over keys, any one ranking used for every image scores exactly
    :func:`chance_recall`, and a random ranking does in expectation.

    Args:
        image_emb: (N, De) image embeddings.
        text_emb: (N, De) the paired texts' embeddings.
        keys: (N,) each pair's finding key (:func:`finding_keys`); with the report texts themselves as keys this
            is exact-report recall over the distinct reports.
        k: how many gallery entries count.
    """
    codes: dict[Hashable, int] = {}
    key_ids = torch.as_tensor([codes.setdefault(key, len(codes)) for key in keys])  # (N,)
    n_keys = len(codes)
    txt = F.normalize(text_emb.detach().float().cpu(), dim=-1)
    gallery = torch.zeros(n_keys, txt.shape[1]).index_add_(0, key_ids, txt)  # (G, De) per-key sums
    sims = F.normalize(image_emb.detach().float().cpu(), dim=-1) @ F.normalize(gallery, dim=-1).T  # (N, G)
    top = sims.topk(min(k, n_keys), dim=1).indices  # (N, k)
    hit = (top == key_ids[:, None]).any(1).double()  # (N,)
    per_key = torch.zeros(n_keys, dtype=torch.float64).index_add_(0, key_ids, hit) / key_ids.bincount()
    return float(per_key.mean())


def finding_keys(part: Manifest) -> list[tuple[float, ...]]:
    """One key per row: its label vector (unknown as -1)."""
    return [tuple(row) for row in np.nan_to_num(part.label_matrix(), nan=-1.0).tolist()]
