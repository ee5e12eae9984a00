"""``run_cell``: one resolved config -> data -> model -> fit -> evaluate -> tracked MLflow run.

This is the single path every command takes (``train``, ``ablate``, ``tune``): a cell in an ablation and an
Optuna trial differ only in the config they pass and the callbacks they add. The datasets it trains on live in
:mod:`cxrfa.data.features`, the evaluation of the trained model in :mod:`cxrfa.cell_evaluation`, and what a
scored run records on its MLflow run in :mod:`cxrfa.record`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from cxrfa.config import BackboneConfig, RunConfig
from cxrfa.data.features import EncodedSplits, FeatureDataset, WithReports, domain_codes
from cxrfa.data.fractions import subsample_train
from cxrfa.data.load import load_data
from cxrfa.data.manifest import Manifest
from cxrfa.errors import CxrfaError
from cxrfa.io import cxrfa_home
from cxrfa.prompts import prompt_tags
from cxrfa.standins import prepare_backbone, standin_metrics
from cxrfa.tracking import (
    TAG_AXIS_PREFIX,
    TAG_BACKBONE_SOURCE,
    TAG_CELL,
    TAG_CONFIG_HASH,
    TAG_DATA,
    TAG_DATA_HASH,
    TAG_RESUMED_FROM,
    TAG_SEED,
    TrackedRun,
    Tracker,
    side_path,
)
from cxrfa.train import Callback, FitResult, NonFiniteLoss, fit, resolve_device, seed_everything

log = logging.getLogger(__name__)

TAG_TEXT_ASSIGNMENT = "cxrfa.text_assignment"  # shuffled text: label -> the label whose text it got


class StopRun(Exception):
    """Raised by a callback to end a run early with a given MLflow status (e.g. a pruned trial: KILLED)."""

    status = "KILLED"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class CellResult:
    """The outcome of one cell x seed."""

    cfg: RunConfig
    status: str  # FINISHED | FAILED | SKIPPED | KILLED
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # final test/... and best val/...
    reason: str | None = None
    seconds: float = 0.0
    fit: FitResult | None = None


def report_embeddings(cfg: RunConfig, model: Any, manifest: Manifest) -> torch.Tensor | None:
    """(M, De_t) train-split report embeddings for the report term, or None when it is off or impossible."""
    if cfg.loss.report <= 0 or model.text_encoder is None:
        return None
    train = manifest.split("train")
    if not train.has_reports():
        log.info("report term skipped: %s has no reports", manifest.source or "the manifest")
        return None
    reports = train.frame["report"]
    return model.encode_reports(reports.where(reports.notna(), None).tolist())


# ---------------------------------------------------------------------------------------------------------
# data + backbones


def run_datasets(
    cfg: RunConfig, model: Any, manifest: Manifest, progress: bool, features: EncodedSplits | None = None
) -> dict[str, Dataset]:
    """The train/val/test datasets a run trains and evaluates on: cached frozen features or images.

    ``features`` keeps encoded splits for later cells of the same owner (a fresh memo when None).
    """
    from cxrfa.models.cache import FeatureCache

    out: dict[str, Dataset] = {}
    encoder = model.encoder
    source = FeatureCache(enabled=cfg.train.feature_cache)
    features = features if features is not None else EncodedSplits()
    for split in ("train", "val", "test"):
        part = manifest.split(split)
        if len(part) == 0:
            raise CxrfaError(
                f"{manifest.source or 'manifest'}: split {split!r} is empty; re-index with a split"
            )
        if cfg.model.visual.frozen:
            tokens, embedding = features.get(source, encoder, manifest, split, progress)
            out[split] = FeatureDataset(tokens, embedding, part.label_matrix(), domain_codes(manifest, part))
        else:
            out[split] = _image_dataset(cfg, encoder, manifest, part, augment=split == "train")
    reports = report_embeddings(cfg, model, manifest)
    if reports is not None:
        out["train"] = WithReports(out["train"], reports)
    return out


def _image_dataset(
    cfg: RunConfig, encoder: Any, manifest: Manifest, part: Manifest, augment: bool
) -> Dataset:
    """One split's images for a trainable encoder: held in memory and transformed a batch at a time when the
    encoder offers a batched preprocessing (``batch_preprocess``) and the split fits; else read per image."""
    from cxrfa.data.augment import BatchAugment
    from cxrfa.data.dataset import CXRDataset, PixelCXRDataset, fits_in_memory, train_augment

    augment = augment and cfg.data.augment
    domains, in_memory = domain_codes(manifest, part), fits_in_memory(part)
    batched = getattr(encoder, "batch_preprocess", None)
    if batched is not None and in_memory:
        return PixelCXRDataset(part, batched, BatchAugment() if augment else None, domains=domains)
    transform = encoder.preprocess
    if augment:
        from torchvision.transforms import Compose

        transform = Compose([train_augment(encoder.image_size), encoder.preprocess])
    return CXRDataset(part, transform, domains=domains, keep_decoded=in_memory)


# ---------------------------------------------------------------------------------------------------------
# the cell


def checkpoint_dir(tracker: Tracker | None) -> Path:
    """Where in-progress checkpoints live: with a local tracking store's side files, else under the cxrfa home."""
    local = side_path(tracker.uri, "checkpoints") if tracker is not None else None
    return local if local is not None else cxrfa_home() / "checkpoints"


def run_tags(cfg: RunConfig, manifest: Manifest, backbone_source: str) -> dict[str, str]:
    """The ``cxrfa.*`` tags of a child run (DESIGN.md)."""
    tags = {
        TAG_CELL: cfg.cell,
        TAG_SEED: str(cfg.seed),
        TAG_CONFIG_HASH: cfg.config_hash(),
        TAG_DATA_HASH: manifest.data_hash(),
        TAG_BACKBONE_SOURCE: backbone_source,
        TAG_DATA: str(manifest.source or "demo"),
    }
    tags.update({f"{TAG_AXIS_PREFIX}{k}": v for k, v in cfg.axes.items()})
    return tags


def describe(cfg: RunConfig) -> str:
    """A cell run's description in the MLflow UI: the model and losses in words."""
    if cfg.kind != "trained":
        from cxrfa.baselines import describe_baseline

        return describe_baseline(cfg)
    m, on = cfg.model, [k for k, w in cfg.loss.weights.items() if w > 0]
    text = f"text {m.text.name} ({m.text.source})" if m.text is not None else "no text branch"
    heads = [f"transformer1 x{m.t1_layers}"] + [f"transformer2 x{m.t2_layers}"] * (m.t2_layers > 0)
    heads += ["orthogonal module"] * m.orthogonal + ["label-query aligner"] * m.aligner
    return (
        f"**{cfg.cell}**, seed {cfg.seed}: visual {m.visual.name} ({m.visual.source}), {text}; "
        f"{', '.join(heads)}; output {m.output}; losses {', '.join(on)} ({cfg.loss.cls}); "
        f"{cfg.train.epochs} epochs, lr {cfg.train.lr:g}. Config hash `{cfg.config_hash()}`."
    )


class CellClaim(Protocol):
    """A work-queue claim on one cell x seed (:mod:`cxrfa.tuning.queue`): while it is held no other worker runs the
    same config, so its runs still RUNNING belong to stopped workers and their checkpoints may be taken over."""

    def fetch_checkpoint(self, tracker: Tracker, checkpoint: Path) -> str | None:
        """Put a stopped worker's last checkpoint at ``checkpoint``; returns where it came from, if anywhere."""
        ...

    def callbacks(self, run: TrackedRun, checkpoint: Path) -> list[Callback]:
        """Epoch callbacks: keep the checkpoint where other workers can read it; stop if the claim was lost."""
        ...

    def check(self) -> None:
        """Raise :class:`StopRun` when the claim was lost (the engine gave the cell to another worker)."""
        ...


def run_cell(
    cfg: RunConfig,
    tracker: Tracker | None,
    *,
    parent_id: str | None = None,
    callbacks: Sequence[Callback] = (),
    extra_tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    explore: Sequence[str] = ("gap", "similarity"),
    progress: bool = True,
    evaluate: bool = True,
    claim: CellClaim | None = None,
    features: EncodedSplits | None = None,
) -> CellResult:
    """Train and evaluate one config; track it as one MLflow run when a tracker is given.

    ``evaluate=False`` (tuning trials) stops after ``fit``: only the best validation value is reported and the
    test split is never predicted.

    The run ends FINISHED, FAILED (with the reason in ``cxrfa.failure``) or KILLED (interrupted / pruned);
    never left RUNNING by an exception raised here. Exceptions are re-raised after the run is closed.

    Runs of the same config left RUNNING by stopped processes are marked KILLED; with a queue ``claim`` (every
    worker of ``ablate``) that includes workers on other machines, and the cell resumes from their checkpoint.

    ``features``: encoded splits shared with the caller's other cells (an ablation worker keeps one for all
    the cells it runs); None encodes (or reads the feature cache) for this cell alone.
    """
    started = time.monotonic()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    manifest = load_data(cfg.data, progress)
    if manifest.label_set != cfg.data.label_set and cfg.data.manifest is not None:
        log.info(
            "manifest label set is %r (config says %r); using the manifest's labels",
            manifest.label_set,
            cfg.data.label_set,
        )
    visual = prepare_backbone(cfg.model.visual, manifest)
    text = prepare_backbone(cfg.model.text, manifest)
    subset = subsample_train(manifest, cfg.train.label_fraction)  # the whole manifest at fraction 1
    seed_everything(cfg.seed)  # after any stand-in pretraining: a cold and a warm cache train alike
    source = visual.source + (f" | text {text.source}" if text is not None else "")  # type: ignore[union-attr]
    run: TrackedRun | None = None
    ckpt = checkpoint_dir(tracker) / f"{cfg.config_hash()}.pt"
    resumed = None
    if tracker is not None:
        tracker.abandon_unfinished(cfg.config_hash(), claimed=claim is not None)
        resumed = claim.fetch_checkpoint(tracker, ckpt) if claim is not None else None
        tags = {**run_tags(cfg, manifest, source), **subset.tags(), **(extra_tags or {})}
        if cfg.model.text is not None:
            tags.update(prompt_tags(cfg.model.prompts))
        run = tracker.start(run_name or f"{cfg.cell}/seed={cfg.seed}", tags, parent_id, describe(cfg))
        run.log_params(cfg.flat())
        run.log_metrics(subset.metrics())
        run.log_metrics(standin_metrics(visual, text))  # how aligned the stand-in weights came out, if any
        if claim is not None:
            callbacks = [*callbacks, *claim.callbacks(run, ckpt)]
    try:
        if cfg.kind != "trained":  # the field's baselines fit no heads (cxrfa.baselines)
            from cxrfa.baselines import run_baseline

            metrics, fit_result = run_baseline(cfg, manifest, subset.manifest, visual, run, evaluate)  # type: ignore[arg-type]
        else:
            metrics, fit_result = _train_and_evaluate(
                cfg,
                manifest,
                subset.manifest,
                visual,
                text,
                run,
                ckpt,
                callbacks,
                explore,
                progress,
                evaluate,
                features,
            )  # type: ignore[arg-type]
        if claim is not None:
            claim.check()
    except StopRun as stop:
        if run is not None:
            run.end(stop.status, stop.reason)
        raise
    except NonFiniteLoss as err:
        if run is not None:
            run.fail(err.reason)
        raise
    except KeyboardInterrupt as err:
        from cxrfa.signals import reason

        if run is not None:
            run.end("KILLED", reason(err))  # "interrupted", or "stopped by SIGTERM"
        raise
    except BaseException as err:
        if run is not None:
            run.fail(f"{type(err).__name__}: {err}")
        raise
    if run is not None:
        if fit_result.resumed_from is not None:
            where = resumed or "local checkpoint"
            run.set_tags({TAG_RESUMED_FROM: f"epoch {fit_result.resumed_from} ({where})"})
        run.finish()
    ckpt.unlink(missing_ok=True)
    return CellResult(
        cfg,
        "FINISHED",
        run.run_id if run else None,
        metrics,
        seconds=time.monotonic() - started,
        fit=fit_result,
    )


def _train_and_evaluate(
    cfg: RunConfig,
    manifest: Manifest,
    train_manifest: Manifest,
    visual: BackboneConfig,
    text: BackboneConfig | None,
    run: TrackedRun | None,
    ckpt: Path,
    callbacks: Sequence[Callback],
    explore: Sequence[str],
    progress: bool,
    evaluate: bool,
    features: EncodedSplits | None,
) -> tuple[dict[str, float], FitResult]:
    from cxrfa.cell_evaluation import evaluate_model
    from cxrfa.models import build_model
    from cxrfa.models.drift import drift_metrics, label_prototypes
    from cxrfa.models.model import parameter_counts

    device = resolve_device(cfg.train.device)
    model_cfg = cfg.model.model_copy(update={"visual": visual, "text": text})
    prior = list(train_manifest.prevalence("train").values())
    model = build_model(
        model_cfg, manifest.labels, device, prior=prior, report=cfg.loss.report > 0, seed=cfg.seed
    )
    initial = label_prototypes(model.heads)  # (C, d) as built: the reference of the drift metrics
    sizes = parameter_counts(model)
    if run is not None:
        run.log_metrics(sizes)  # at build, so failed and pruned runs show their size too
        if cfg.model.text_order == "shuffled":  # label -> the label whose text it was given
            labels, assigned = manifest.labels, model.heads.text_assignment
            given = {lab: labels[j] for lab, j in zip(labels, assigned, strict=True)}
            # a tag, not a param: params are the config, which a cell shares across seeds (compare keys on it)
            run.set_tags({TAG_TEXT_ASSIGNMENT: json.dumps(given)})
    # the label fraction's train rows; val/test (and the long-tail groups of evaluation) from the whole manifest
    data = run_datasets(cfg, model, train_manifest, progress, features)

    class _Log:
        def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
            if run is not None:
                run.log_metrics(metrics, step=epoch)

    result = fit(
        model,
        data["train"],
        data["val"],
        manifest.labels,
        cfg.train,
        cfg.loss,
        seed=cfg.seed,
        checkpoint=ckpt,
        callbacks=[_Log(), *callbacks],
        progress=progress,
    )
    drift = drift_metrics(model.heads, initial)  # of the kept (best-epoch) prototypes
    if not evaluate:
        scalars = {
            "val/best_" + cfg.train.monitor.removeprefix("val/"): result.best_value,
            "best_epoch": result.best_epoch,
            **drift,
        }
        if run is not None:
            run.log_metrics(scalars)  # final values at step 0: one bar per run in MLflow's chart view
        return {**scalars, **sizes}, result
    scalars = evaluate_model(cfg, model, manifest, data, result, run, explore, device)
    if run is not None:
        run.log_metrics(drift)
    return {**scalars, **sizes, **drift}, result
