"""Checks before the first run: what a user can get wrong fails in seconds, before any MLflow run exists.

``train``, ``ablate`` and ``tune`` call :func:`preflight` with every config they are about to run, before they
open the tracking store: it reads each manifest (validated and confined, like ``cxrfa data index``) and resolves
every backbone the configs need to local files (weights, model config, text tower, tokenizer) without building
any model; every weights file (custom and open_clip alike) is opened tensors-only, so an unsafe one stops the
command before any run exists. Once the store is open, :func:`check_checkpoints` refuses a resume checkpoint that is not
tensors-only (a corrupt one is left for the run to move aside and restart). Without these, missing weights
would fail each cell in turn while the others train for minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cxrfa.config import BackboneConfig, RunConfig
from cxrfa.errors import CxrfaError
from cxrfa.safeload import CORRUPT_SUFFIX, CorruptCheckpoint, load_state

log = logging.getLogger(__name__)


def check_backbone(cfg: BackboneConfig) -> None:
    """Fail now if a backbone's weights (or, for open_clip models, config, text tower or tokenizer) are not
    available locally. Stand-ins (``pretrained: demo``) pass: they are pretrained on demand, offline.

    Raises:
        CxrfaError: one line naming what is missing and how to provide it.
    """
    from cxrfa.models.registry import check_encoder_name

    check_encoder_name(cfg.name)
    if cfg.standin or cfg.pretrained == "demo":
        return
    if cfg.name == "custom":
        if cfg.pretrained is None:
            return
        path = Path(cfg.pretrained).expanduser()
        if not path.is_file():
            raise CxrfaError(
                f"custom CNN weights {cfg.pretrained} not found; give a state_dict file or pretrained=null"
            )
        load_state(path, fix="give a state_dict file saved with torch.save", mmap=True)
        return
    from cxrfa.models.weights import _resolve, check_open_clip

    check_open_clip(cfg.arch, cfg.pretrained)
    weights = _resolve(cfg.arch, cfg.pretrained).weights_file
    # refused now like custom weights, not when the first run builds its model (a FAILED run per cell)
    if weights is not None and weights.suffix != ".safetensors":  # safetensors hold no code by design
        load_state(weights, fix="download the weights again", mmap=True)


def check_checkpoints(runs: Sequence[RunConfig], folder: Path) -> None:
    """Refuse, before anything runs, a resume checkpoint of these runs that holds more than tensors.

    Checkpoints are named after the config hash (``<hash>*.pt``); each is opened tensors-only with its
    storages memory-mapped, so the check costs little even for large ones.

    Raises:
        UnsafeCheckpoint: naming the file.
    """
    if not folder.is_dir():
        return
    for config_hash in sorted({cfg.config_hash() for cfg in runs}):
        for path in sorted(folder.glob(f"{config_hash}*")):
            if path.name.endswith(CORRUPT_SUFFIX) or not path.is_file() or path.name.startswith("."):
                continue
            try:
                load_state(path, mmap=True)
            except CorruptCheckpoint:
                pass  # the run moves it aside and restarts from scratch, with a warning


def preflight(runs: Sequence[RunConfig]) -> None:
    """Everything ``runs`` need from outside the store, checked before it is opened (seconds).

    Raises:
        CxrfaError: the first problem, in one line: a bad manifest, missing weights or tokenizer files.
    """
    from cxrfa.data.manifest import read_manifest

    for manifest in sorted({cfg.data.manifest for cfg in runs if cfg.data.manifest is not None}):
        read_manifest(manifest)
    seen: set[str] = set()
    for cfg in runs:
        for backbone in (cfg.model.visual, cfg.model.text):
            if backbone is None or (key := backbone.model_dump_json()) in seen:
                continue
            seen.add(key)
            check_backbone(backbone)
    log.debug("preflight: %d run(s), %d backbone(s) ready", len(runs), len(seen))
