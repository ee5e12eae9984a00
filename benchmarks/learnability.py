"""Is the synthetic data learnable but not trivial? Train a tiny CNN briefly and report test macro AUROC.

Run:  python benchmarks/learnability.py --n 2000 --size 96 --epochs 6
The figure is recorded in benchmarks/README.md ("Synthetic data learnability").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from cxrfa.data.manifest import read_manifest
from cxrfa.data.synth import synthesize


def _load(manifest, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    part = manifest.split(split)
    images = np.stack(
        [np.asarray(Image.open(part.image_path(i)), dtype=np.float32) / 255.0 for i in range(len(part))]
    )
    return torch.from_numpy(images)[:, None], torch.from_numpy(part.label_matrix())  # (N, 1, S, S), (N, C)


def _cnn(n_labels: int) -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(1, 16),
        block(16, 32),
        block(32, 48),
        block(48, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, n_labels),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="existing synthetic folder (else generated)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        if args.data is None or not (folder / "manifest.csv").exists():
            synthesize(folder, args.n, args.size, args.seed)
        manifest = read_manifest(folder / "manifest.csv")
        x_tr, y_tr = _load(manifest, "train")
        x_te, y_te = _load(manifest, "test")
    model = _cnn(y_tr.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    pos = y_tr.mean(0).clamp(min=1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((1 - pos) / pos).sqrt())
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(x_tr)).split(64):
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x_te[i : i + 256]) for i in range(0, len(x_te), 256)]).numpy()
    y = y_te.numpy()
    aucs = {
        lab: roc_auc_score(y[:, j], scores[:, j])
        for j, lab in enumerate(manifest.labels)
        if 0 < y[:, j].sum() < len(y)
    }
    for lab, auc in aucs.items():
        print(f"  {lab:20s} AUROC {auc:.3f}  (test positives {int(y[:, manifest.labels.index(lab)].sum())})")
    print(
        f"test macro AUROC {np.mean(list(aucs.values())):.3f} over {len(aucs)} labels; "
        f"train {time.perf_counter() - start:.0f} s ({args.epochs} epochs, {len(x_tr)} images, {args.size} px)"
    )


if __name__ == "__main__":
    main()
