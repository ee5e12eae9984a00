"""``cxrfa explore``: look inside a backbone's embeddings — modality gap, UMAP, label similarity, zero-shot."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrfa.cli._common import (
    BackbonesOpt,
    DataOpt,
    DeviceOpt,
    NoCacheOpt,
    TrackingUriOpt,
    console,
    user_errors,
)

if TYPE_CHECKING:
    import numpy as np

    from cxrfa.data.manifest import Manifest
    from cxrfa.models.cache import FeatureCache
    from cxrfa.models.encoders import Encoder

explore_app = typer.Typer(
    help="Explore a backbone's embeddings: modality gap, UMAP, label similarity, zero-shot.",
    no_args_is_help=True,
)

BackboneOpt = Annotated[
    str, typer.Option("--backbone", help="Backbone with a text tower: clip or biomedclip.")
]
OutOpt = Annotated[
    Path, typer.Option("--out", help="Folder for the PNG/HTML/JSON outputs (printed).", file_okay=False)
]
OUT = Path("out/explore")  # + the command's name: the default --out, under the current folder
SplitOpt = Annotated[str, typer.Option("--split", help="Manifest split whose images are encoded.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="A trained run (id): explore its aligned features and label embeddings, log results on it.",
    ),
]


# Option groups: the options several explore commands take, declared once with their defaults. A command takes
# a group as one parameter; :func:`_options` shows Typer the group's fields in its place.


@dataclasses.dataclass(frozen=True)
class Source:
    """Whose embeddings of which data (every explore command)."""

    backbone: BackboneOpt = "clip"
    backbones: BackbonesOpt = "demo"
    data: DataOpt = None
    device: DeviceOpt = "auto"


@dataclasses.dataclass(frozen=True)
class Images:
    """Which images are encoded, and how (the commands that encode a split)."""

    split: SplitOpt = "test"
    batch_size: BatchSizeOpt = 64
    no_feature_cache: NoCacheOpt = False


@dataclasses.dataclass(frozen=True)
class Trained:
    """A logged run explored instead of a bare backbone (the commands that take ``--run``)."""

    run: RunOpt = None
    tracking_uri: TrackingUriOpt = None


def _options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` as Typer should read it: each option-group parameter (a dataclass) replaced by the group's
    fields, which come back to ``command`` as one instance of the group."""
    signature = inspect.signature(command, eval_str=True)
    groups = {
        p.name: p.annotation for p in signature.parameters.values() if dataclasses.is_dataclass(p.annotation)
    }
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = []
    for param in signature.parameters.values():
        group = groups.get(param.name)
        if group is None:
            params.append(param.replace(kind=keyword))
        else:
            hints = typing.get_type_hints(group, include_extras=True)  # the Annotated options
            params += [
                inspect.Parameter(f.name, keyword, annotation=hints[f.name], default=f.default)
                for f in dataclasses.fields(group)
            ]

    @functools.wraps(command)
    def flat(**options: Any) -> None:
        for name, group in groups.items():
            options[name] = group(**{f.name: options.pop(f.name) for f in dataclasses.fields(group)})
        return command(**options)

    flat.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return flat


def _open(source: Source, split: str | None = None) -> tuple[Manifest, Encoder]:
    """The manifest (its ``split`` checked to be non-empty first) and the backbone's encoder."""
    from cxrfa.explore._common import step
    from cxrfa.explore.report import load_backbone, load_data
    from cxrfa.explore.zeroshot import require_split
    from cxrfa.standins import ensure_standin

    # no spinners: synthesis and stand-in pretraining log and show bars of their own
    demo = " (the demo is synthesised once)" if source.data is None else ""
    with step(f"loading the data{demo}", spinner=False):
        manifest = load_data(source.data)
    if split is not None:
        require_split(manifest, split)
    with step(f"preparing backbone {source.backbone} (a demo stand-in is pretrained once)", spinner=False):
        prepare = functools.partial(ensure_standin, manifest=manifest)
        return manifest, load_backbone(source.backbone, source.backbones, prepare, source.device)


def _encode(source: Source, images: Images) -> tuple[np.ndarray, np.ndarray, np.ndarray, Manifest]:
    """Image embeddings (N, De), label text embeddings (C, De), labels (N, C) and the split's manifest."""
    from cxrfa.explore import encode_split, prompt_embeddings
    from cxrfa.models.cache import FeatureCache

    manifest, encoder = _open(source, images.split)
    cache = FeatureCache(enabled=not images.no_feature_cache)
    img, y_true, part = encode_split(encoder, manifest, images.split, cache, images.batch_size, progress=True)
    return img, prompt_embeddings(encoder, part.labels), y_true, part


def _explore_run(run: str, tracking_uri: str | None, part: str, out: Path, **kwargs: int) -> None:
    from cxrfa.postrun import explore_run
    from cxrfa.tracking import Tracker

    # reads the run by id: no experiment, folder or database is created for a mistyped store
    _wrote(explore_run(Tracker(tracking_uri, None, create=False), run, [part], out, **kwargs))
    console.print(f"logged on run {run}")


def _wrote(paths: dict[str, Path]) -> None:
    for path in paths.values():
        console.print(f"wrote {path}", highlight=False)


@explore_app.command("gap")
@user_errors
@_options
def gap(
    *,
    out: OutOpt = OUT / "gap",
    source: Source,
    images: Images,
    step: Annotated[
        float, typer.Option("--step", min=0.01, help="Shift step as a fraction of the measured gap.")
    ] = 0.25,
    trained: Trained,
) -> None:
    """Modality gap between image and label-text embeddings, and zero-shot AUROC as the gap is shifted.

    With --run: the gap between a trained model's image-side disease features and its label embeddings,
    and the alignment-head AUROC as the gap is shifted; logged as embed/modality_gap on the run.
    """
    from cxrfa.explore.report import write_gap_report

    if trained.run is not None:
        return _explore_run(trained.run, trained.tracking_uri, "gap", out)
    img, txt, y_true, _ = _encode(source, images)
    _wrote(write_gap_report(img, txt, y_true, out, step=step))


@explore_app.command("umap")
@user_errors
@_options
def umap(
    *,
    out: OutOpt = OUT / "umap",
    source: Source,
    images: Images,
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
    trained: Trained,
) -> None:
    """UMAP of image embeddings with the label-text embeddings placed among them: umap.html (interactive,
    offline; colour by finding, site, view, sex, age or one label) and umap.png.

    With --run: a trained model's pooled image features and label embeddings; PNG + HTML logged on the run.
    """
    from cxrfa.explore import image_attributes
    from cxrfa.explore.report import write_umap_report

    if trained.run is not None:
        return _explore_run(trained.run, trained.tracking_uri, "umap", out, seed=seed, dims=dims)
    img, txt, y_true, part = _encode(source, images)
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
@_options
def similarity(*, out: OutOpt = OUT / "similarity", source: Source, trained: Trained) -> None:
    """Cosine similarity between the label-text embeddings (positive and negated prompts).

    With --run: the raw text-encoder label embeddings vs after transformer2 / the orthogonal module, side by
    side, with embed/mean_offdiag_sim/<stage> logged on the run.
    """
    from cxrfa.explore import prompt_embeddings
    from cxrfa.explore.report import write_similarity_report

    if trained.run is not None:
        return _explore_run(trained.run, trained.tracking_uri, "similarity", out)
    manifest, encoder = _open(source)
    stages = {
        "label prompts": prompt_embeddings(encoder, manifest.labels),
        "negated prompts": prompt_embeddings(encoder, manifest.labels, negative=True),
    }
    title = f"Label-text cosine similarity ({source.backbone}, {encoder.source})"
    _wrote(write_similarity_report(stages, manifest.labels, out, title=title))


@explore_app.command("zeroshot")
@user_errors
@_options
def zeroshot(
    *,
    source: Source,
    images: Images,
    out: OutOpt = OUT / "zeroshot",
    prompts: Annotated[
        list[str] | None,
        typer.Option(
            "--prompts",
            metavar="SET",
            help="Prompt set (name or YAML) to score per template too; repeatable.",
        ),
    ] = None,
) -> None:
    """CheXzero-style zero-shot AUROC: softmax over positive vs negated prompts for each label."""
    from rich.console import Console
    from rich.table import Table

    from cxrfa.explore import zero_shot
    from cxrfa.explore.report import write_zeroshot_report
    from cxrfa.models.cache import FeatureCache

    manifest, encoder = _open(source, images.split)
    cache = FeatureCache(enabled=not images.no_feature_cache)
    per_label, macro = zero_shot(encoder, manifest, images.split, cache, images.batch_size, progress=True)
    table = Table(title=f"zero-shot AUROC, {source.backbone} ({encoder.source}), split {images.split}")
    table.add_column("label")
    table.add_column("AUROC", justify="right")
    for label, auc in per_label.items():
        table.add_row(label, "n/a (one class)" if math.isnan(auc) else f"{auc:.4f}")
    table.add_row("[bold]macro[/]", f"[bold]{macro:.4f}[/]")
    Console().print(table)  # stdout: the result; logs and errors go to stderr
    _wrote({"json": write_zeroshot_report(per_label, macro, out)})
    _prompt_spreads(encoder, manifest, images, cache, prompts or [], out)


def _prompt_spreads(
    encoder: Encoder,
    manifest: Manifest,
    images: Images,
    cache: FeatureCache,
    prompts: list[str],
    out: Path | None,
) -> None:
    """Per prompt set: zero-shot AUROC per template and its spread, printed and added to zeroshot.json."""
    from cxrfa.explore.prompt_spread import prompt_spread, write_prompt_spread

    for spec in prompts:
        spread = prompt_spread(encoder, manifest, images.split, spec, cache, images.batch_size)
        s = spread["spread"]["macro_auc"]
        typer.echo(
            f"prompts {spread['prompt_set']} ({spread['prompt_hash']}): ensemble macro AUROC "
            f"{spread['ensemble']['macro_auc']:.4f}; {len(spread['templates'])} template(s) "
            f"min {s['min']:.4f} max {s['max']:.4f} std {s['std']:.4f}"
        )
        if out is not None:
            write_prompt_spread(spread, out)


def register(app: typer.Typer) -> None:
    """Add the ``explore`` command group to the app."""
    app.add_typer(explore_app, name="explore")
