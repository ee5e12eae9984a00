"""Demo stand-ins: small architectures of the real families, pretrained once on the demo data.

Application layer: it runs :func:`cxrfa.pretrain.pretrain`, so it lives beside it rather than in
:mod:`cxrfa.models` (the model library never imports the pretraining app). Runs resolve their backbones through
:func:`prepare_backbone`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import Manifest
from cxrfa.io import cxrfa_home
from cxrfa.pretrain import pretrain

log = logging.getLogger(__name__)

# ~40 s per stand-in on the 1,400 demo train pairs (2 cores); larger batches give CLIP more negatives per step.
STANDIN_EPOCHS = 6
STANDIN_BATCH = 64
STANDIN_LR = 1e-3


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


def standin_path(arch: str, manifest: Manifest) -> Path:
    """Where the stand-in weights of ``arch`` pretrained on ``manifest`` live."""
    return cxrfa_home() / "standins" / f"{arch}-{manifest.data_hash()}.pt"


def ensure_standin(cfg: BackboneConfig, manifest: Manifest, epochs: int = STANDIN_EPOCHS) -> BackboneConfig:
    """Resolve ``pretrained="demo"``: pretrain the stand-in on ``manifest`` once (cached), return cfg pointing
    at the weights file. Any other ``pretrained`` value is returned unchanged.
    """
    if cfg.pretrained != "demo":
        return cfg
    path = standin_path(cfg.arch, manifest)
    with _lock(path.with_suffix(".lock")):
        if not path.is_file():
            where = manifest.source or "the demo data"
            log.info("pretraining stand-in %s on %s (%d epochs, once)", cfg.arch, where, epochs)
            result = pretrain(
                manifest, cfg.arch, path, epochs=epochs, batch_size=STANDIN_BATCH, lr=STANDIN_LR
            )
            log.info(
                "stand-in %s: val R@5 %.3f (chance %.3f)", cfg.arch, result.recall_at_5, result.chance_at_5
            )
    return cfg.model_copy(update={"pretrained": str(path)})


def prepare_backbone(cfg: BackboneConfig | None, manifest: Manifest) -> BackboneConfig | None:
    """Resolve ``pretrained="demo"`` to stand-in weights pretrained on the demo data (once, cached)."""
    return None if cfg is None else ensure_standin(cfg, manifest)
