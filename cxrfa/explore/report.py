"""From a backbone or embedding arrays to files on disk: the steps behind ``cxrfa explore``.

Each ``write_*`` function takes plain arrays, so the same reports can be made from a tracked run's
embeddings as from a freshly encoded backbone. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from cxrfa.errors import CxrfaError
from cxrfa.explore._common import ArrayLike, step, to_numpy
from cxrfa.explore.gap import default_deltas, gap_shift_experiment, measured_gap, no_image_gap, plot_gap_shift
from cxrfa.explore.similarity import mean_offdiag, similarity_matrix, similarity_panels
from cxrfa.explore.umap_page import umap_html
from cxrfa.explore.umap_view import umap_figure, umap_layout
from cxrfa.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from cxrfa.config import BackboneConfig
    from cxrfa.data.manifest import Manifest
    from cxrfa.models.encoders import Encoder

log = logging.getLogger(__name__)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write a Figure as PNG atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def write_json(obj: Any, path: Path) -> Path:
    """Write JSON atomically (NaN written as null); returns ``path``."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float | np.floating):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        return v

    atomic_write_text(path, json.dumps(clean(obj), indent=2) + "\n")
    return path


def load_data(data: Path | None) -> Manifest:
    """The manifest at ``data``, or the built-in demo dataset (generated once) when None."""
    from cxrfa.config import DataConfig
    from cxrfa.data.load import load_data as load_run_data

    return load_run_data(DataConfig(manifest=None if data is None else str(data)))


def load_backbone(
    name: str, backbones: str, prepare: Callable[[BackboneConfig], BackboneConfig], device: str = "auto"
) -> Encoder:
    """Build the encoder ``name`` of a backbone set (``demo``, ``real`` or a YAML file).

    ``prepare`` makes the backbone's weights ready first and returns the config to build (the command passes
    the demo stand-ins' one-off pretraining: exploring never starts a pretraining run itself).

    Raises:
        CxrfaError: unknown backbone set or name, missing weights.
    """
    from cxrfa.models.registry import build_encoder, load_backbones

    bset = load_backbones(backbones)
    if name not in bset.backbones:
        raise CxrfaError(
            f"--backbone {name!r} is not in backbone set {bset.name!r}; known: {', '.join(bset.backbones)}"
        )
    from cxrfa.train import resolve_device

    return build_encoder(prepare(bset.backbones[name]), resolve_device(device))


def write_gap_report(
    img: ArrayLike, txt_labels: ArrayLike, y_true: ArrayLike, out: Path, step: float = 0.25
) -> dict[str, Path]:
    """Modality gap and the gap-shift sweep: ``gap.json``, ``gap_shift.csv``, ``gap_shift.png`` in ``out``."""
    gap = measured_gap(img, txt_labels, y_true)
    frame = gap_shift_experiment(img, txt_labels, y_true, default_deltas(gap.norm, step))
    origin = frame[np.isclose(frame["delta"], 0.0)].iloc[0]
    paths = {
        "json": write_json(
            {
                "modality_gap": gap.norm,
                "modality_gap_no_image": no_image_gap(img, txt_labels, y_true).norm,  # its reference
                "macro_auc": float(origin["macro_auc"]),
                "n_images": int(to_numpy(img).shape[0]),
                "gap_vector": gap.vector.tolist(),
            },
            out / "gap.json",
        ),
        "csv": out / "gap_shift.csv",
        "png": save_figure(plot_gap_shift(frame), out / "gap_shift.png"),
    }
    atomic_write_text(paths["csv"], frame.to_csv(index=False))
    log.info("modality gap %.4f; zero-shot macro AUROC %.4f at delta 0", gap.norm, origin["macro_auc"])
    return paths


def write_umap_report(
    img: ArrayLike,
    txt_labels: ArrayLike,
    y_true: ArrayLike,
    labels: Sequence[str],
    out: Path,
    dims: int = 2,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
    attributes: Mapping[str, Sequence[str]] | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """UMAP of images and label texts in one space: ``umap.png`` and the interactive ``umap.html``.

    Args:
        img, txt_labels, y_true, labels, dims, seed, image_ids, attributes: see
            :func:`cxrfa.explore.umap_view.umap_layout`.
        out: output folder.
        max_images: lay out a seeded random subset of this many images when there are more (the title says
            so); UMAP time and page size grow with N.
        progress: spinners for the UMAP steps.
    """
    x, y = to_numpy(img), to_numpy(y_true)
    n_all = x.shape[0]
    ids = list(image_ids) if image_ids is not None else [f"image {i}" for i in range(n_all)]
    attrs = {k: list(v) for k, v in (attributes or {}).items()}
    keep = np.arange(n_all)
    if max_images is not None and n_all > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(n_all, size=max_images, replace=False))
        ids = [ids[i] for i in keep]
        attrs = {k: [v[i] for i in keep] for k, v in attrs.items()}
    layout = umap_layout(
        x[keep],
        txt_labels,
        y[keep],
        labels,
        dims=dims,
        seed=seed,
        image_ids=ids,
        attributes=attrs,
        progress=progress,
    )
    subset = f" (a random {len(keep)} of {n_all}, seed {seed})" if len(keep) < n_all else ""
    title = f"UMAP ({dims}-D) of {len(keep)} images{subset} and {len(labels)} label texts"
    html_path = out / "umap.html"
    with step("writing umap.html and umap.png", progress):
        atomic_write_text(html_path, umap_html(layout, title))
        png = save_figure(umap_figure(layout, title), out / "umap.png")
    return {"png": png, "html": html_path}


def write_similarity_report(
    stages: dict[str, ArrayLike],
    labels: Sequence[str],
    out: Path,
    title: str = "Label-embedding cosine similarity",
) -> dict[str, Path]:
    """Cosine-similarity heatmaps per stage (``similarity.png``) and the matrices (``similarity.json``)."""
    summary = {
        stage: {"mean_offdiag": mean_offdiag(sim), "matrix": sim.tolist()}
        for stage, sim in ((s, similarity_matrix(e)) for s, e in stages.items())
    }
    return {
        "json": write_json({"labels": list(labels), "stages": summary}, out / "similarity.json"),
        "png": save_figure(similarity_panels(stages, labels, title), out / "similarity.png"),
    }


def write_zeroshot_report(per_label: dict[str, float], macro: float, out: Path) -> Path:
    """``zeroshot.json``: macro AUROC and AUROC per label (null where undefined)."""
    return write_json({"macro_auc": macro, "auc": per_label}, out / "zeroshot.json")
