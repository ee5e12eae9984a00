"""``cxrfa explore``: look inside a backbone's embeddings — modality gap, UMAP, label similarity, zero-shot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrfa.cli._common import BackbonesOpt, DataOpt, NoCacheOpt, TrackingUriOpt, console, user_errors

if TYPE_CHECKING:
    import numpy as np

    from cxrfa.data.manifest import Manifest
    from cxrfa.models.encoders import Encoder

explore_app = typer.Typer(
    help="Explore a backbone's embeddings: modality gap, UMAP, label similarity, zero-shot.",
    no_args_is_help=True,
)

BackboneOpt = Annotated[
    str, typer.Option("--backbone", help="Backbone with a text tower: clip or biomedclip.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the PNG/HTML/JSON outputs.", file_okay=False)]
SplitOpt = Annotated[str, typer.Option("--split", help="Manifest split whose images are encoded.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="A trained run (id): explore its aligned features and label embeddings, log results on it.",
    ),
]


def _open(
    backbone: str, backbones: str, data: Path | None, device: str, split: str | None = None
) -> tuple[Manifest, Encoder]:
    """The manifest (its ``split`` checked to be non-empty first) and the backbone's encoder."""
    from cxrfa.explore._common import step
    from cxrfa.explore.report import load_backbone, load_data
    from cxrfa.explore.zeroshot import require_split

    # no spinners: synthesis and stand-in pretraining log and show bars of their own
    with step(
        "loading the data" + (" (the demo is synthesised once)" if data is None else ""), spinner=False
    ):
        manifest = load_data(data)
    if split is not None:
        require_split(manifest, split)
    with step(f"preparing backbone {backbone} (a demo stand-in is pretrained once)", spinner=False):
        return manifest, load_backbone(backbone, backbones, manifest, device)


def _encode(
    encoder: Encoder, manifest: Manifest, split: str, batch_size: int, no_cache: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Manifest]:
    """Image embeddings (N, De), label text embeddings (C, De), labels (N, C) and the split's manifest."""
    from cxrfa.explore import encode_split, prompt_embeddings
    from cxrfa.models.cache import FeatureCache

    cache = FeatureCache(enabled=not no_cache)
    img, y_true, part = encode_split(encoder, manifest, split, cache, batch_size, progress=True)
    return img, prompt_embeddings(encoder, part.labels), y_true, part


def _explore_run(run: str, tracking_uri: str | None, part: str, out: Path, **kwargs: int) -> None:
    from cxrfa.postrun import explore_run
    from cxrfa.tracking import Tracker

    _wrote(explore_run(Tracker(tracking_uri, "Default"), run, [part], out, **kwargs))
    console.print(f"logged on run {run}")


def _wrote(paths: dict[str, Path]) -> None:
    for path in paths.values():
        console.print(f"wrote {path}", highlight=False)


@explore_app.command("gap")
@user_errors
def gap(
    out: OutOpt,
    backbone: BackboneOpt = "clip",
    backbones: BackbonesOpt = "demo",
    data: DataOpt = None,
    split: SplitOpt = "test",
    step: Annotated[
        float, typer.Option("--step", min=0.01, help="Shift step as a fraction of the measured gap.")
    ] = 0.25,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    no_feature_cache: NoCacheOpt = False,
    run: RunOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Modality gap between image and label-text embeddings, and zero-shot AUROC as the gap is shifted.

    With --run: the gap between a trained model's image-side disease features and its label embeddings,
    and the alignment-head AUROC as the gap is shifted; logged as embed/modality_gap on the run.
    """
    from cxrfa.explore.report import write_gap_report

    if run is not None:
        return _explore_run(run, tracking_uri, "gap", out)
    manifest, encoder = _open(backbone, backbones, data, device, split)
    img, txt, y_true, _ = _encode(encoder, manifest, split, batch_size, no_feature_cache)
    _wrote(write_gap_report(img, txt, y_true, out, step=step))


@explore_app.command("umap")
@user_errors
def umap(
    out: OutOpt,
    backbone: BackboneOpt = "clip",
    backbones: BackbonesOpt = "demo",
    data: DataOpt = None,
    split: SplitOpt = "test",
    dims: Annotated[int, typer.Option("--dims", min=2, max=3, help="2-D or 3-D layout.")] = 2,
    seed: Annotated[
        int, typer.Option("--seed", help="UMAP random state (and of the --max-images subset).")
    ] = 0,
    max_images: Annotated[
        int,
        typer.Option(
            "--max-images",
            min=4,
            help="Lay out a random subset of this many images when the split is larger.",
        ),
    ] = 5000,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    no_feature_cache: NoCacheOpt = False,
    run: RunOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """UMAP of image embeddings with the label-text embeddings placed among them: umap.html (interactive,
    offline; colour by finding, site, view, sex, age or one label) and umap.png.

    With --run: a trained model's pooled image features and label embeddings; PNG + HTML logged on the run.
    """
    from cxrfa.explore import image_attributes
    from cxrfa.explore.report import write_umap_report

    if run is not None:
        return _explore_run(run, tracking_uri, "umap", out, seed=seed, dims=dims)
    manifest, encoder = _open(backbone, backbones, data, device, split)
    img, txt, y_true, part = _encode(encoder, manifest, split, batch_size, no_feature_cache)
    paths = write_umap_report(
        img,
        txt,
        y_true,
        part.labels,
        out,
        dims=dims,
        seed=seed,
        image_ids=part.frame["path"].astype(str).tolist(),
        attributes=image_attributes(part.frame),
        max_images=max_images,
        progress=True,
    )
    _wrote(paths)


@explore_app.command("similarity")
@user_errors
def similarity(
    out: OutOpt,
    backbone: BackboneOpt = "clip",
    backbones: BackbonesOpt = "demo",
    data: DataOpt = None,
    device: DeviceOpt = "auto",
    run: RunOpt = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Cosine similarity between the label-text embeddings (positive and negated prompts).

    With --run: the raw text-encoder label embeddings vs after transformer2 / the orthogonal module, side by
    side, with embed/mean_offdiag_sim/<stage> logged on the run.
    """
    from cxrfa.explore import prompt_embeddings
    from cxrfa.explore.report import write_similarity_report

    if run is not None:
        return _explore_run(run, tracking_uri, "similarity", out)
    manifest, encoder = _open(backbone, backbones, data, device)
    stages = {
        "label prompts": prompt_embeddings(encoder, manifest.labels),
        "negated prompts": prompt_embeddings(encoder, manifest.labels, negative=True),
    }
    title = f"Label-text cosine similarity ({backbone}, {encoder.source})"
    _wrote(write_similarity_report(stages, manifest.labels, out, title=title))


@explore_app.command("zeroshot")
@user_errors
def zeroshot(
    backbone: BackboneOpt = "clip",
    backbones: BackbonesOpt = "demo",
    data: DataOpt = None,
    split: SplitOpt = "test",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for zeroshot.json (default: print only).", file_okay=False),
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 64,
    no_feature_cache: NoCacheOpt = False,
) -> None:
    """CheXzero-style zero-shot AUROC: softmax over positive vs negated prompts for each label."""
    from rich.console import Console
    from rich.table import Table

    from cxrfa.explore import zero_shot
    from cxrfa.explore.report import write_zeroshot_report
    from cxrfa.models.cache import FeatureCache

    manifest, encoder = _open(backbone, backbones, data, device, split)
    cache = FeatureCache(enabled=not no_feature_cache)
    per_label, macro = zero_shot(encoder, manifest, split, cache, batch_size, progress=True)
    table = Table(title=f"zero-shot AUROC, {backbone} ({encoder.source}), split {split}")
    table.add_column("label")
    table.add_column("AUROC", justify="right")
    for label, auc in per_label.items():
        table.add_row(label, "n/a (one class)" if math.isnan(auc) else f"{auc:.4f}")
    table.add_row("[bold]macro[/]", f"[bold]{macro:.4f}[/]")
    Console().print(table)  # stdout: the result; logs and errors go to stderr
    if out is not None:
        _wrote({"json": write_zeroshot_report(per_label, macro, out)})


def register(app: typer.Typer) -> None:
    """Add the ``explore`` command group to the app."""
    app.add_typer(explore_app, name="explore")
