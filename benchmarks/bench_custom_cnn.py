"""The custom CNN's training step, in CPU milliseconds on one torch thread (two alternating repeats each).

    OMP_NUM_THREADS=1 python benchmarks/bench_custom_cnn.py --manifest ~/.cache/cxrfa/demo/synth-n2000-s96-seed0/manifest.csv

``items``: one batch of 64 train items of the manifest's train split, through the per-image PIL path
(``train_augment`` + the encoder's ``preprocess``, decoded images kept in memory as before) and through
:class:`cxrfa.data.dataset.PixelCXRDataset` (one uint8 tensor, batched torch ops). ``convs``: forward and
backward of ``cxrfa-cnn-small`` on a batch of 64 at 64 px, contiguous against channels-last. Results are recorded
in benchmarks/README.md, "The custom CNN's batched image path".
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _ms(step: Callable[[], object], repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        step()
    return (time.process_time() - start) / repeats * 1000


def items(manifest_path: Path) -> None:
    """CPU ms per batch of 64 train items, per-image path against the batched one."""
    from torchvision.transforms import Compose

    from cxrfa.config import DEMO_BACKBONES
    from cxrfa.data.augment import BatchAugment
    from cxrfa.data.dataset import CXRDataset, PixelCXRDataset, train_augment
    from cxrfa.data.manifest import read_manifest
    from cxrfa.models import build_encoder

    train = read_manifest(manifest_path).split("train")
    encoder = build_encoder(DEMO_BACKBONES.backbones["custom"])
    per_image = CXRDataset(
        train, Compose([train_augment(encoder.image_size), encoder.preprocess]), keep_decoded=True
    )
    batched = PixelCXRDataset(train, encoder.batch_preprocess, BatchAugment())
    batches = [list(range(k, k + 64)) for k in range(0, len(train) - 63, 64)]
    for i in range(len(train)):  # decode once, as a first epoch does
        per_image[i]
    paths = {"per-image": lambda b: [per_image[i] for i in b], "batched": batched.__getitems__}
    for repeat in range(2):
        for name, get in paths.items():
            ms = _ms(lambda get=get: [get(b) for b in batches], 1) / len(batches)
            print(f"items  repeat {repeat}  {name:9s}  {ms:6.2f} ms CPU per batch of 64")


def convs() -> None:
    """CPU ms of forward + backward of the custom CNN, contiguous against channels-last."""
    from cxrfa.models.encoders import _cnn_small

    torch.manual_seed(0)
    net, _ = _cnn_small()
    x = torch.randn(64, 3, 64, 64)
    for repeat in range(2):
        for layout in (torch.contiguous_format, torch.channels_last):
            net.to(memory_format=layout)

            def step(layout: torch.memory_format = layout) -> None:
                net(x.contiguous(memory_format=layout)).mean().backward()

            step()
            print(f"convs  repeat {repeat}  {str(layout):26s}  {_ms(step, 10):6.1f} ms CPU per batch of 64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest", type=Path, required=True, help="a demo manifest (its train split is read)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    items(args.manifest)
    convs()


if __name__ == "__main__":
    main()
