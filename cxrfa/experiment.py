"""``run_cell``: one resolved config -> data -> model -> fit -> evaluate -> tracked MLflow run.

This is the single path every command takes (``train``, ``ablate``, ``tune``): a cell in an ablation and an
Optuna trial differ only in the config they pass and the callbacks they add.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrfa.config import BackboneConfig, ExternalSet, RunConfig
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
from cxrfa.train import (
    Callback,
    FitResult,
    NonFiniteLoss,
    fit,
    make_loader,
    predict,
    resolve_device,
    seed_everything,
    trained_state,
)

log = logging.getLogger(__name__)

TAG_TEXT_ASSIGNMENT = "cxrfa.text_assignment"  # shuffled text: label -> the label whose text it got
TAG_EXTERNAL_PREFIX = "cxrfa.external."  # + <name>.data_hash / <name>.labels: what an external set was
EXPLORE_SAMPLE = (
    512  # test images used for embedding exploration (tokens of a real test set don't fit in RAM)
)


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


class WithReports(Dataset):
    """Adds each row's frozen report embedding (De_t,) as ``report_emb`` to a dataset's items (NaN = none)."""

    def __init__(self, dataset: Dataset, reports: torch.Tensor) -> None:
        self.dataset, self.reports = dataset, reports

    def __len__(self) -> int:
        return len(self.reports)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[i], "report_emb": self.reports[i]}


def report_embeddings(cfg: RunConfig, model: Any, manifest: Manifest) -> torch.Tensor | None:
    """(M, De_t) train-split report embeddings for the report term, or None when it is off or impossible."""
    if cfg.loss.report <= 0 or model.text_encoder is None:
        return None
    reports = manifest.split("train").frame.get("report")
    if reports is None or not reports.dropna().astype(str).str.strip().ne("").any():
        log.info("report term skipped: %s has no reports", manifest.source or "the manifest")
        return None
    return model.encode_reports(reports.where(reports.notna(), None).tolist())


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


# ---------------------------------------------------------------------------------------------------------
# data + backbones


def domain_codes(manifest: Manifest, split: Manifest) -> np.ndarray:
    """Integer domain code per row of ``split``, stable across splits of the same manifest."""
    values = sorted(manifest.frame["domain"].fillna("").astype(str).unique())
    lookup = {v: i for i, v in enumerate(values)}
    return split.frame["domain"].fillna("").astype(str).map(lookup).to_numpy(dtype=np.int64)


_FEATURES: dict[tuple[str, str, str, bool], tuple[torch.Tensor, torch.Tensor]] = {}


def encoded_split(
    encoder: Any, manifest: Manifest, split: str, use_cache: bool, progress: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-encoder outputs for one split, from the on-disk feature cache (and a per-process memo)."""
    key = (encoder.identity, manifest.data_hash(), split, use_cache)
    if key not in _FEATURES:
        from cxrfa.models.cache import FeatureCache

        cache = FeatureCache(enabled=use_cache)
        _FEATURES[key] = cache.encode_dataset(encoder, manifest.split(split), progress=progress)
        if not use_cache:  # the memo is the cache: without it every cell really re-encodes
            return _FEATURES.pop(key)
    return _FEATURES[key]


def run_datasets(cfg: RunConfig, model: Any, manifest: Manifest, progress: bool) -> dict[str, Dataset]:
    """The train/val/test datasets a run trains and evaluates on: cached frozen features or images."""
    out: dict[str, Dataset] = {}
    encoder = model.encoder
    for split in ("train", "val", "test"):
        part = manifest.split(split)
        if len(part) == 0:
            raise CxrfaError(
                f"{manifest.source or 'manifest'}: split {split!r} is empty; re-index with a split"
            )
        if cfg.model.visual.frozen:
            tokens, embedding = encoded_split(encoder, manifest, split, cfg.train.feature_cache, progress)
            out[split] = FeatureDataset(tokens, embedding, part.label_matrix(), domain_codes(manifest, part))
        else:
            from torchvision.transforms import Compose

            from cxrfa.data.dataset import CXRDataset, fits_in_memory, train_augment

            transform = encoder.preprocess
            if split == "train" and cfg.data.augment:
                augment = train_augment(encoder.image_size)
                transform = Compose([augment, encoder.preprocess])
            out[split] = CXRDataset(
                part, transform, domains=domain_codes(manifest, part), keep_decoded=fits_in_memory(part)
            )
    reports = report_embeddings(cfg, model, manifest)
    if reports is not None:
        out["train"] = WithReports(out["train"], reports)
    return out


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
) -> CellResult:
    """Train and evaluate one config; track it as one MLflow run when a tracker is given.

    ``evaluate=False`` (tuning trials) stops after ``fit``: only the best validation value is reported and the
    test split is never predicted.

    The run ends FINISHED, FAILED (with the reason in ``cxrfa.failure``) or KILLED (interrupted / pruned);
    never left RUNNING by an exception raised here. Exceptions are re-raised after the run is closed.

    Runs of the same config left RUNNING by stopped processes are marked KILLED; with a queue ``claim`` (every
    worker of ``ablate``) that includes workers on other machines, and the cell resumes from their checkpoint.
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
) -> tuple[dict[str, float], FitResult]:
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
    data = run_datasets(cfg, model, train_manifest, progress)

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


def evaluate_model(
    cfg: RunConfig,
    model: Any,
    manifest: Manifest,
    data: Mapping[str, Dataset],
    result: FitResult,
    run: TrackedRun | None,
    explore: Sequence[str],
    device: torch.device,
) -> dict[str, float]:
    """Val picks thresholds, test reports; every number and file is logged on the run."""
    from cxrfa.plots import training_curves

    loaders = {
        s: make_loader(data[s], cfg.train.batch_size * 2, shuffle=False, cfg=cfg.train, device=device)
        for s in ("val", "test")
    }
    p_val, _ = predict(model, loaders["val"], device, cfg.train.amp)  # (Nv, C), in manifest row order
    p_test, _ = predict(model, loaders["test"], device, cfg.train.amp)  # (N, C)
    extra = {"val/best_" + cfg.train.monitor.removeprefix("val/"): result.best_value}
    extra["best_epoch"] = result.best_epoch
    figures: dict[str, Any] = {}  # plots/<name>.png of the exploration, logged with the run's other files
    if cfg.model.text is not None and explore:
        explored, figures = _explore(model, data["test"], manifest.labels, device, explore)
        extra.update(explored)
    for spec in cfg.data.external:  # external validation: the same model and thresholds on other manifests
        extra.update(_evaluate_external(cfg, spec, model, manifest, p_val, run, device))

    def trained_files(folder: Path) -> None:
        """The plots and the checkpoint, into the folder that is logged: the checkpoint is written once."""
        (folder / "plots").mkdir()
        for name, figure in {"training_curves": training_curves(result.history), **figures}.items():
            figure.savefig(folder / "plots" / f"{name}.png", format="png")
        (folder / "checkpoint").mkdir()
        torch.save(
            {
                "config": cfg.model_dump(mode="json"),
                "labels": manifest.labels,
                "state_dict": trained_state(model),
                "best_epoch": result.best_epoch,
            },
            folder / "checkpoint" / "model.pt",
        )

    return log_evaluation(cfg, manifest, p_val, p_test, run, extra, trained_files)


def log_evaluation(
    cfg: RunConfig,
    manifest: Manifest,
    p_val: np.ndarray,
    p_test: np.ndarray,
    run: TrackedRun | None,
    extra: Mapping[str, float],
    files: Callable[[Path], None] | None = None,
) -> dict[str, float]:
    """Score test predictions (thresholds from val) and log the metrics, predictions, labels and config.

    Shared by trained runs and the baseline cells (:mod:`cxrfa.baselines`), so every row of ``compare`` is
    scored and stored alike.

    Args:
        cfg: the run's config.
        manifest: the whole manifest (val and test rows in order).
        p_val: (Nv, C) val probabilities; p_test: (N, C) test probabilities.
        run: the tracked run, or None.
        extra: further final values logged with the test metrics (e.g. ``val/best_macro_auc``).
        files: writes the run's own further files (plots, checkpoint) into the folder that is logged.

    Returns:
        ``test/<metric>`` for every test metric, then ``extra``.
    """
    from cxrfa.evaluate import predictions_frame, score_split, write_evaluation

    test_part = manifest.split("test")
    test = score_split(manifest, "test", p_test, p_val, n_boot=200, seed=cfg.seed)
    scalars = {f"test/{k}": v for k, v in test.scalars.items()}
    scalars.update(extra)
    if run is None:
        return scalars
    run.log_metrics(scalars)  # final values at step 0: one bar per run in MLflow's chart view
    # every file in one folder, logged in one call: each MLflow artifact call is a store round trip
    with run.scratch() as tmp:
        write_evaluation(test, tmp / "evaluation")
        predictions_frame(list(test_part.frame["path"]), p_test, manifest.labels).to_csv(
            tmp / "test_predictions.csv", index=False
        )
        predictions_frame(list(manifest.split("val").frame["path"]), p_val, manifest.labels).to_csv(
            tmp / "val_predictions.csv", index=False
        )
        truth = test_part.frame[["path", *manifest.labels]]
        truth.to_csv(tmp / "test_labels.csv", index=False, float_format="%.0f")
        (tmp / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
        if files is not None:
            files(tmp)
        run.log_artifacts(tmp)
    return scalars


def _evaluate_external(
    cfg: RunConfig,
    spec: ExternalSet,
    model: Any,
    manifest: Manifest,
    p_val: np.ndarray,
    run: TrackedRun | None,
    device: torch.device,
) -> dict[str, float]:
    """Predict one external test set and score it on the labels it shares with the run (``external/<name>/``).

    Frozen encoders read the images through the feature cache, like the run's own splits. Logs the set's data
    hash as a tag, its metrics, predictions and evaluation files on the run.
    """
    from cxrfa.evaluate import external_rows, predictions_frame, score_external, write_evaluation

    rows, shared, data_hash = external_rows(spec, manifest.labels)
    domains = np.zeros(len(rows), dtype=np.int64)  # unseen sites: the domain code is used by training only
    if cfg.model.visual.frozen:
        from cxrfa.models.cache import FeatureCache

        cache = FeatureCache(enabled=cfg.train.feature_cache)
        tokens, embedding = cache.encode_dataset(model.encoder, rows, progress=False)
        dataset: Dataset = FeatureDataset(tokens, embedding, rows.label_matrix(), domains)
    else:
        from cxrfa.data.dataset import CXRDataset

        dataset = CXRDataset(rows, model.encoder.preprocess, domains=domains, keep_decoded=False)
    loader = make_loader(dataset, cfg.train.batch_size * 2, shuffle=False, cfg=cfg.train, device=device)
    probs, _ = predict(model, loader, device, cfg.train.amp)  # (N, C), in the external rows' order
    result = score_external(manifest, rows, list(shared), probs, p_val, n_boot=200, seed=cfg.seed)
    prefix = f"external/{spec.key}/"
    scalars = {prefix + k: v for k, v in result.scalars.items()}
    scalars[prefix + "n_images"] = float(len(rows))
    scalars[prefix + "n_labels"] = float(len(shared))
    if run is not None:
        run.set_tags(
            {
                f"{TAG_EXTERNAL_PREFIX}{spec.key}.data_hash": data_hash,
                f"{TAG_EXTERNAL_PREFIX}{spec.key}.labels": json.dumps(shared),
            }
        )
        with run.scratch() as tmp:
            write_evaluation(result, tmp / spec.key)
            keep = [manifest.labels.index(lab) for lab in shared]
            predictions_frame(list(rows.frame["path"]), probs[:, keep], list(shared)).to_csv(
                tmp / spec.key / "predictions.csv", index=False
            )
            run.log_artifacts(tmp / spec.key, f"external/{spec.key}")
    return scalars


def _explore(
    model: Any, test_set: Dataset, labels: list[str], device: torch.device, parts: Sequence[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Modality gap and label-similarity metrics and their figures (name -> figure) on a sample of the test
    set."""
    from cxrfa.explore import explore_model

    tokens, embedding, y_true = explore_sample(model, test_set, device)
    result = explore_model(model.heads, tokens, embedding, y_true, labels, parts=tuple(parts))
    return result.scalars, dict(result.figures)


def explore_sample(
    model: Any, test_set: Dataset, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Encoder tokens (M, N, Dv), embeddings (M, De) and labels (M, C) of the first EXPLORE_SAMPLE test images."""
    n = min(len(test_set), EXPLORE_SAMPLE)  # type: ignore[arg-type]
    items = [test_set[i] for i in range(n)]
    model.eval()
    with torch.no_grad():
        if "tokens" in items[0]:
            tokens = torch.stack([it["tokens"] for it in items]).float().to(device)
            embedding = torch.stack([it["embedding"] for it in items]).float().to(device)
        else:
            images = torch.stack([it["image"] for it in items]).to(device)
            tokens, embedding = model.encoder.encode_image(images)
    return tokens, embedding, torch.stack([it["labels"] for it in items]).numpy()
