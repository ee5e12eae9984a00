"""Training examples a run reads: cached frozen-encoder outputs, report embeddings beside them, domain codes,
and :class:`EncodedSplits`, the memo that lets the cells of one process share one encoding of each split.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrfa.data.manifest import Manifest


class FeatureDataset(Dataset):
    """Cached encoder outputs as training examples: tokens (M, N, Dv), embedding (M, De), labels (M, C)."""

    def __init__(
        self, tokens: torch.Tensor, embedding: torch.Tensor, labels: np.ndarray, domain: np.ndarray
    ) -> None:
        self.tokens, self.embedding = tokens, embedding
        self.labels = torch.tensor(labels, dtype=torch.float32)
        self.domain = torch.tensor(domain, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "tokens": self.tokens[i],
            "embedding": self.embedding[i],
            "labels": self.labels[i],
            "domain": self.domain[i],
        }


class WithReports(Dataset):
    """Adds each row's frozen report embedding (De_t,) as ``report_emb`` to a dataset's items (NaN = none)."""

    def __init__(self, dataset: Dataset, reports: torch.Tensor) -> None:
        self.dataset, self.reports = dataset, reports

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[i], "report_emb": self.reports[i]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch's items, fetched as one batch when the wrapped dataset can (the custom CNN's images are
        augmented a batch at a time)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [{**item, "report_emb": self.reports[i]} for item, i in zip(items, indices, strict=True)]


def domain_codes(manifest: Manifest, split: Manifest) -> np.ndarray:
    """Integer domain code per row of ``split``, stable across splits of the same manifest."""
    values = sorted(manifest.frame["domain"].fillna("").astype(str).unique())
    lookup = {v: i for i, v in enumerate(values)}
    return split.frame["domain"].fillna("").astype(str).map(lookup).to_numpy(dtype=np.int64)


class FeatureSource(Protocol):
    """Where encoded images come from (:class:`cxrfa.models.cache.FeatureCache`)."""

    enabled: bool  # False: nothing is stored, every call really encodes

    def encode_dataset(
        self, encoder: Any, manifest: Manifest, batch_size: int = ..., progress: bool = ...
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (M, N, Dv) and embeddings (M, De) of every manifest row, in row order."""
        ...


class EncodedSplits:
    """Frozen-encoder outputs per (encoder, data, split), kept for the cells that one owner runs.

    Reading a split back from the on-disk feature cache costs thousands of file reads; an ablation's worker
    keeps one of these for all its cells, so every cell after the first with the same encoder and data reads
    nothing. A disabled source (``--no-feature-cache``) is never memoised: every cell really re-encodes.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(
        self, source: FeatureSource, encoder: Any, manifest: Manifest, split: str, progress: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (M, N, Dv) and embeddings (M, De) of ``manifest``'s ``split`` rows under ``encoder``."""
        if not source.enabled:
            return source.encode_dataset(encoder, manifest.split(split), progress=progress)
        key = (encoder.identity, manifest.data_hash(), split)
        if key not in self._memo:
            self._memo[key] = source.encode_dataset(encoder, manifest.split(split), progress=progress)
        return self._memo[key]

    def __len__(self) -> int:
        return len(self._memo)
