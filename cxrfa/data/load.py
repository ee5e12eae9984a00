"""The manifest a run config names: a file, or the built-in synthetic demo (synthesised once, then cached)."""

from __future__ import annotations

from cxrfa.config import DataConfig
from cxrfa.data.manifest import Manifest, read_manifest


def load_data(cfg: DataConfig, progress: bool = True) -> Manifest:
    """The manifest ``cfg.manifest`` names, or the demo dataset ``cfg``'s demo fields describe."""
    if cfg.manifest is not None:
        return read_manifest(cfg.manifest)
    from cxrfa.data.synth import demo_manifest  # synthesis (PIL, rendering) only for the demo

    return read_manifest(demo_manifest(cfg))
