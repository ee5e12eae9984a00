"""``fit``: a plain, resumable PyTorch training loop that knows nothing of MLflow or Optuna.

It reports through callbacks (``on_epoch_end(epoch, metrics)``); a callback may raise to stop the run (a
pruned Optuna trial, for instance). AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on
CUDA, early stopping on the monitored validation metric, and a checkpoint after every epoch from which an
interrupted run continues bit-for-bit on CPU: data order is drawn from a generator seeded by (seed, epoch) and the
global RNG state is saved with the weights.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrfa.config import LossConfig, TrainConfig
from cxrfa.io import atomic_path
from cxrfa.losses import chance_levels, compute_terms, get_term, weighted_total
from cxrfa.metrics import compute_metrics
from cxrfa.safeload import load_resume_state

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
RESUME_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "epoch",
    "best_value",
    "best_epoch",
    "bad_epochs",
    "history",
    "best_state",
)


class Callback(Protocol):
    """Receives the metrics of each finished epoch (``train/loss``, ``train/loss_<term>``, ``val/...``)."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None: ...


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; ``reason`` says where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FitResult:
    """What :func:`fit` returns. The model passed in holds the best epoch's weights afterwards."""

    best_epoch: int
    best_value: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: int | None = None  # epoch the run continued after, if it resumed from a checkpoint
    # (Nv, C) val probabilities of the kept weights, as predicted at their epoch (evaluation needs not predict
    # val again); None when the kept epoch ran before a resume
    best_val: np.ndarray | None = field(default=None, repr=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when enabled; a disabled context on CPU (fp32 there is both faster and exact)."""
    on = enabled and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


def fused_optimizer(device: torch.device) -> bool:
    """Whether AdamW runs as one fused kernel per step on ``device``: one pass over each parameter instead of a
    dozen elementwise ops; 6 % of a frozen-encoder cell's ``fit`` and 14 % of a stand-in's pretraining on this
    CPU (benchmarks/README.md). The same update up to float rounding."""
    return device.type in ("cpu", "cuda")


def _to(batch: Batch, device: torch.device) -> Batch:
    non_blocking = device.type == "cuda"  # pinned host memory makes this copy asynchronous
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Run the model on raw images or on cached encoder outputs, whichever the batch carries (with the
    batch's report embeddings when it has them)."""
    report = batch.get("report_emb")
    if "tokens" in batch:
        return model.forward_features(batch["tokens"].float(), batch["embedding"].float(), report)
    return model(batch["image"], report)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    cfg: TrainConfig,
    device: torch.device,
) -> DataLoader:
    """A loader whose shuffle order depends only on (seed, epoch), so a resumed epoch sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Batch], device: torch.device, amp: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for every row of a loader, in order: ((N, C), (N, C) with NaN = unknown)."""
    model.eval()
    probs, labels = [], []
    for batch in loader:
        batch = _to(batch, device)
        with autocast(device, amp):
            out = forward(model, batch)
        probs.append(torch.sigmoid(out["logits"].float()).cpu())
        labels.append(batch["labels"].float().cpu())
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(labels).numpy().astype(np.float64)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state that training changes: every buffer and every parameter except frozen ones.

    A frozen encoder's weights are identified by its config (and re-loaded from there), so checkpoints stay
    the size of the heads instead of a ViT-B/16 (hundreds of MB) per epoch and run.
    """
    return {
        k: v
        for k, v in model.state_dict(keep_vars=True).items()
        if not (isinstance(v, nn.Parameter) and not v.requires_grad)
    }


def load_trained_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load :func:`trained_state` output; every key it holds must match, frozen parameters are left as built."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(set(missing) - frozen)[:5]}, unexpected {unexpected[:5]}"
        )


START_IMAGES = 512  # images whose initial cosines set classifier B's start (64 left a 3 % label at 0.66x)


@torch.no_grad()
def start_at_prior(
    model: nn.Module, train_set: Dataset, cfg: TrainConfig, seed: int, device: torch.device
) -> None:
    """Set classifier B's thresholds from its initial cosines on the first :data:`START_IMAGES` training images
    of epoch 0 (in eval mode), so it starts at the prior; a no-op for models without it. The global random
    state is left as it was.

    Args:
        model: a model whose heads (``model.heads`` or the model itself) may have ``init_threshold_b``.
        train_set / cfg / seed: the batches of epoch 0 are those :func:`make_loader` draws from them.
        device: where the model lives.
    """
    heads = getattr(model, "heads", model)
    init = getattr(heads, "init_threshold_b", None)
    if init is None:
        return
    scores: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):  # augmentation draws from the global generator
        loader = make_loader(
            train_set, cfg.batch_size, shuffle=True, seed=seed, epoch=0, cfg=cfg, device=device
        )
        for batch in loader:
            with autocast(device, cfg.amp):
                out = forward(model, _to(batch, device))
            if "scores" not in out:
                break
            scores.append(out["scores"].float())  # (B, C)
            if sum(len(s) for s in scores) >= START_IMAGES:
                break
    model.train(was_training)
    if scores:
        init(torch.cat(scores))  # (M, C)


def _schedule(total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_frac)) if warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save(path: Path, state: dict[str, Any]) -> None:
    # through a Python file object: a full disk then surfaces as OSError(ENOSPC) behind torch's RuntimeError,
    # which atomic_path reports as DiskFull (torch's own file writer loses the errno)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    labels: Sequence[str],
    train_cfg: TrainConfig,
    loss_cfg: LossConfig,
    *,
    seed: int = 0,
    checkpoint: Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> FitResult:
    """Train ``model`` and keep the epoch with the best validation metric.

    Args:
        model: a module with ``forward(images)`` and ``forward_features(tokens, embedding)`` returning a dict
            with ``logits`` (B, C) and whatever the loss terms need.
        train_set / val_set: datasets of batches dicts (``image`` or ``tokens``+``embedding``, ``labels``
            (C,) with NaN = unknown, optional ``domain``).
        labels: label names (for metric names).
        train_cfg / loss_cfg: optimisation and loss settings.
        seed: drives the shuffle order (with the epoch number).
        checkpoint: file written after every epoch; if it exists, training continues from it.
        callbacks: receive each epoch's metrics; may raise to stop training.
        progress: show a progress bar.

    Returns:
        A :class:`FitResult`; ``model`` holds the best weights.

    Raises:
        NonFiniteLoss: the loss became NaN/inf (the reason names the epoch, step and term).
    """
    device = resolve_device(train_cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=fused_optimizer(device)
    )
    steps_per_epoch = max(1, math.ceil(len(train_set) / train_cfg.batch_size))  # type: ignore[arg-type]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(steps_per_epoch * train_cfg.epochs, train_cfg.warmup_frac)
    )
    val_loader = make_loader(val_set, train_cfg.batch_size * 2, shuffle=False, cfg=train_cfg, device=device)
    monitor = train_cfg.monitor.removeprefix("val/")

    start_epoch, best_value, best_epoch, bad_epochs = 0, -math.inf, -1, 0
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_val: np.ndarray | None = None
    resumed_from = None
    if checkpoint is not None and (state := load_resume_state(checkpoint, "cpu", RESUME_KEYS)) is not None:
        load_trained_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, best_value, best_epoch = state["epoch"] + 1, state["best_value"], state["best_epoch"]
        bad_epochs, history, best_state = state["bad_epochs"], state["history"], state["best_state"]
        resumed_from = state["epoch"]
        log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])

    if resumed_from is None:  # a resumed run's thresholds are in its checkpoint
        start_at_prior(model, train_set, train_cfg, seed, device)

    from tqdm.auto import tqdm

    stopped_early = False
    epoch = start_epoch - 1
    bar = tqdm(
        range(start_epoch, train_cfg.epochs),
        desc="epochs",
        initial=start_epoch,
        total=train_cfg.epochs,
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    for epoch in bar:
        if bad_epochs >= train_cfg.patience:
            stopped_early = True
            break
        loader = make_loader(
            train_set,
            train_cfg.batch_size,
            shuffle=True,
            seed=seed,
            epoch=epoch,
            cfg=train_cfg,
            device=device,
        )
        metrics = _train_epoch(
            model, loader, optimizer, scheduler, train_cfg, loss_cfg, device, epoch, progress
        )
        y_prob, y_true = predict(model, val_loader, device, train_cfg.amp)
        val = compute_metrics(y_true, y_prob, list(labels), n_boot=0).scalars
        metrics.update(
            {"val/macro_auc": val["macro_auc"], "val/map": val["map"], "lr": scheduler.get_last_lr()[0]}
        )
        history.append(metrics)
        value = metrics[f"val/{monitor}"]
        if value > best_value or best_epoch < 0 or (math.isnan(best_value) and not math.isnan(value)):
            best_value, best_epoch, bad_epochs = value, epoch, 0
            best_state = {k: v.detach().clone() for k, v in trained_state(model).items()}
            best_val = y_prob
        else:
            bad_epochs += 1
        bar.set_postfix_str(
            f"loss {metrics['train/loss']:.4f}  val/{monitor} {value:.4f}  best {best_value:.4f}"
        )
        log.debug("epoch %d  train/loss %.4f  val/%s %.4f", epoch, metrics["train/loss"], monitor, value)
        if checkpoint is not None:
            _save(
                checkpoint,
                {
                    "model": trained_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "best_state": best_state,
                },
            )
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)

    if best_state is not None:
        load_trained_state(model, best_state)
    return FitResult(best_epoch, best_value, epoch + 1, history, stopped_early, resumed_from, best_val)


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_cfg: TrainConfig,
    loss_cfg: LossConfig,
    device: torch.device,
    epoch: int,
    progress: bool,
) -> dict[str, float]:
    from tqdm.auto import tqdm

    model.train()
    # per curve: (sum, batches it was on), so a term and its chance value are both the mean over the batches
    # where the term was computed (the report term is off in a batch with fewer than two reports)
    sums: dict[str, tuple[float, int]] = {}

    def add(key: str, value: float) -> None:
        total, count = sums.get(key, (0.0, 0))
        sums[key] = (total + value, count + 1)

    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        batch = _to(batch, device)
        with autocast(device, train_cfg.amp):
            out = forward(model, batch)
        out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
        terms = compute_terms(out, batch["labels"].float(), loss_cfg, batch.get("domain"))
        chance = chance_levels(out, batch["labels"].float(), loss_cfg, batch.get("domain"))
        loss = weighted_total(terms, loss_cfg.weights)
        if not torch.isfinite(loss):
            bad = [name for name, value in terms.items() if not torch.isfinite(value)] or ["total"]
            raise NonFiniteLoss(f"non-finite loss at epoch {epoch}, step {step} (term: {', '.join(bad)})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        add("train/loss", loss.item())
        for name, value in terms.items():
            add(get_term(name).metric, value.item())
        for name, level in chance.items():
            add(get_term(name).chance_metric, level)
        bar.set_postfix(loss=f"{sums['train/loss'][0] / sums['train/loss'][1]:.4f}")
    return {key: total / count for key, (total, count) in sums.items()}
