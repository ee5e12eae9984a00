"""The manifest a run config names: a file, or the built-in synthetic demo (synthesised once, then cached)."""

from __future__ import annotations

from cxrfa.config import DataConfig
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.data.splits import patient_disjoint


def load_data(cfg: DataConfig, progress: bool = True) -> Manifest:
    """The manifest ``cfg.manifest`` names, or the demo dataset ``cfg``'s demo fields describe."""
    if cfg.manifest is not None:
        manifest = read_manifest(cfg.manifest)
        frame = patient_disjoint(manifest.frame, str(manifest.source), cfg.keep_source_split)
        if frame is manifest.frame:
            return manifest
        return Manifest(frame, manifest.root, manifest.labels, manifest.label_set, manifest.source)
    from cxrfa.data.synth import demo_manifest  # synthesis (PIL, rendering) only for the demo

    return read_manifest(demo_manifest(cfg))
