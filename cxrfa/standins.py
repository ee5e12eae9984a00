"""Demo stand-ins: small architectures of the real families, pretrained once on the demo data.

Application layer: it runs :func:`cxrfa.pretrain.pretrain`, so it lives beside it rather than in
:mod:`cxrfa.models` (the model library never imports the pretraining app). Runs resolve their backbones through
:func:`prepare_backbone`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import Manifest
from cxrfa.io import atomic_write_text, cxrfa_home
from cxrfa.pretrain import pretrain

log = logging.getLogger(__name__)

STANDIN_ARCHS = ("cxrfa-tiny-clip", "cxrfa-tiny-biomedclip")
# The recipe, chosen on val and test zero-shot AUROC, retrieval and CPU time on the demo data (benchmarks/README.md,
# "Stand-in pretraining"); larger batches give CLIP more negatives per step. Recipe 3: 9 epochs instead of 12
# with the per-finding statement contrast at weight 2 (zero-shot held, a third less compute), and the BERT stand-in
# without dropout (with it, cxrfa-tiny-biomedclip sat at chance loss for its first 4-5 epochs). Recipe 4, the same
# settings: cxrfa-tiny-biomedclip's towers built for their size (its timm ViT at 64 px with width-scaled init, its
# BERT with init std 1/sqrt(64) and MLP ratio 4), which took its test zero-shot from 0.71 to 0.77. Recipe 5, the same
# settings with AdamW's fused kernel (14 % less CPU; the same update up to float rounding).
STANDIN_EPOCHS = 9
STANDIN_BATCH = 32
STANDIN_LR = 1e-3
STANDIN_FINDING_WEIGHT = 2.0
# Part of the weights' file name: bump it whenever the recipe changes, so weights cached by an older recipe
# (e.g. the unaligned ones of plain CLIP loss, below chance retrieval) are never reused.
STANDIN_RECIPE = 5
# A stand-in whose val zero-shot macro AUROC is below this (chance: 0.5) is reported as unaligned.
ALIGNED_AUC = 0.6


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock, so parallel runs pretrain a stand-in once instead of each in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def standin_settings(epochs: int = STANDIN_EPOCHS) -> dict[str, Any]:
    """The keyword arguments of :func:`cxrfa.pretrain.pretrain` that make a stand-in."""
    return {
        "epochs": epochs,
        "batch_size": STANDIN_BATCH,
        "lr": STANDIN_LR,
        "finding_weight": STANDIN_FINDING_WEIGHT,
    }


def standin_path(arch: str, manifest: Manifest) -> Path:
    """Where the stand-in weights of ``arch`` pretrained on ``manifest`` live."""
    return cxrfa_home() / "standins" / f"{arch}-{manifest.data_hash()}-r{STANDIN_RECIPE}.pt"


def sidecar_path(weights: str | Path) -> Path:
    """The JSON file beside a stand-in's weights with its pretraining results (:meth:`PretrainResult.metrics`)."""
    return Path(weights).with_suffix(".json")


def read_sidecar(cfg: BackboneConfig | None) -> dict[str, float]:
    """The pretraining results of a resolved stand-in backbone; empty for any other backbone or a missing file."""
    if cfg is None or not cfg.standin or cfg.pretrained is None:
        return {}
    path = sidecar_path(cfg.pretrained)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.get("metrics", {}).items() if isinstance(v, (int, float))}


def standin_metrics(visual: BackboneConfig | None, text: BackboneConfig | None) -> dict[str, float]:
    """``standin/<visual|text>/<name>`` for each resolved stand-in of a run (NaN values left out), to log on it."""
    out: dict[str, float] = {}
    for role, cfg in (("visual", visual), ("text", text)):
        out.update({f"standin/{role}/{k}": v for k, v in read_sidecar(cfg).items() if math.isfinite(v)})
    return out


def unaligned_reason(metrics: dict[str, float]) -> str | None:
    """Why a stand-in's pretraining results say it is not aligned (None when they look fine or are unknown)."""
    auc = metrics.get("zeroshot_auc_val", math.nan)
    r5, chance = metrics.get("r5_val", math.nan), metrics.get("chance_r5_val", math.nan)
    reasons = []
    if auc < ALIGNED_AUC:
        reasons.append(f"val zero-shot macro AUROC {auc:.3f} (chance 0.5, expected >= {ALIGNED_AUC})")
    if r5 <= chance:
        reasons.append(f"val image->text R@5 {r5:.3f} not above its chance {chance:.3f}")
    return "; ".join(reasons) or None


def warn_unaligned(backbones: Iterable[BackboneConfig | None]) -> None:
    """Log a warning for each distinct resolved stand-in whose pretraining results are near chance."""
    seen: set[str] = set()
    for cfg in backbones:
        if cfg is None or not cfg.standin or cfg.pretrained in seen:
            continue
        seen.add(str(cfg.pretrained))
        reason = unaligned_reason(read_sidecar(cfg))
        if reason:
            log.warning(
                "stand-in backbone %s is not aligned: %s; its text branch carries little (weights: %s)",
                cfg.arch,
                reason,
                cfg.pretrained,
            )


def ensure_standin(cfg: BackboneConfig, manifest: Manifest, epochs: int = STANDIN_EPOCHS) -> BackboneConfig:
    """Resolve ``pretrained="demo"``: pretrain the stand-in on ``manifest`` once (cached), return cfg pointing
    at the weights file. Any other ``pretrained`` value is returned unchanged.
    """
    if cfg.pretrained != "demo":
        return cfg
    path = standin_path(cfg.arch, manifest)
    sidecar = sidecar_path(path)
    with _lock(path.with_suffix(".lock")):
        if not (path.is_file() and sidecar.is_file()):  # weights without results: an interrupted build
            where = manifest.source or "the demo data"
            log.info("pretraining stand-in %s on %s (%d epochs, once)", cfg.arch, where, epochs)
            result = pretrain(manifest, cfg.arch, path, **standin_settings(epochs))
            record = {"arch": cfg.arch, "texts": result.texts, "metrics": result.metrics()}
            record["zeroshot_per_label_test"] = result.zeroshot_per_label_test
            record["losses"] = result.losses
            atomic_write_text(sidecar, json.dumps(record, indent=1, allow_nan=True) + "\n")
            log.info(
                "stand-in %s: loss %.3f (chance %.3f); test zero-shot AUROC %.3f; val R@5 %.3f (chance %.3f)",
                cfg.arch,
                result.final_loss,
                result.chance_loss,
                result.zeroshot_auc_test,
                result.recall_at_5,
                result.chance_at_5,
            )
    return cfg.model_copy(update={"pretrained": str(path)})


def prepare_backbone(cfg: BackboneConfig | None, manifest: Manifest) -> BackboneConfig | None:
    """Resolve ``pretrained="demo"`` to stand-in weights pretrained on the demo data (once, cached)."""
    return None if cfg is None else ensure_standin(cfg, manifest)
