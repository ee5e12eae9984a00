"""GPU path benchmark: cxrfa's frozen-encoder path against bare open_clip, and a head epoch cached vs re-encoding.

Made for a CUDA machine (it runs anywhere; on a CPU the numbers say little about a GPU):

    .venv/bin/python benchmarks/bench_gpu.py --arch ViT-B-16 --n 2048 --batch-size 256 --loader-workers 8

Three measures, each as img/s or seconds in one result row:

1. bare open_clip: ``model.encode_image`` at the encoder's input size (224 px for ViT-B-16, random weights: no
   download) fed by a pinned-memory DataLoader, under bf16 autocast on CUDA;
2. cxrfa: :meth:`cxrfa.models.FeatureCache.encode_dataset` on the same images and encoder, into an empty
   feature cache (what the first frozen cell of an ablation pays), under the same autocast;
3. one epoch of a frozen cell's heads (:class:`cxrfa.models.AlignmentModel`, the cell's losses) on the cached
   features against the same epoch re-encoding every batch.

Goals: cxrfa's encode >= 90% of bare open_clip's img/s; the cached head epoch >= 10x faster than re-encoding.
Rows go to ``--out`` (CSV: measure, value, unit, device, arch, n, batch_size) and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from cxrfa.config import BackboneConfig, LossConfig, ModelConfig  # noqa: E402
from cxrfa.data.dataset import load_image  # noqa: E402
from cxrfa.data.manifest import read_manifest  # noqa: E402
from cxrfa.data.synth import synthesize  # noqa: E402
from cxrfa.losses import compute_terms, weighted_total  # noqa: E402
from cxrfa.models import AlignmentModel, FeatureCache, build_encoder  # noqa: E402
from cxrfa.models.model import num_tokens  # noqa: E402

FIELDS = ("measure", "value", "unit", "device", "arch", "n", "batch_size")
ENCODE_GOAL = 0.90  # cxrfa's encode img/s over bare open_clip's
EPOCH_GOAL = 10.0  # re-encoding epoch seconds over cached epoch seconds


class _Images(Dataset):
    """Preprocessed images, decoded in the DataLoader's workers: (3, S, S) float each."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[..., torch.Tensor]) -> None:
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(load_image(self.paths[i]))


def _autocast(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA (as ``train.amp`` does); fp32 on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs, with the device synchronised around each."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Run the three measures; return the result rows (see :data:`FIELDS`)."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="cxrfa-bench-gpu-"))
    manifest = read_manifest(synthesize(work / "data", n=args.n, size=args.size, seed=0))
    paths = manifest.image_paths()
    encoder = build_encoder(BackboneConfig(name="clip", arch=args.arch), device)  # random weights
    model = encoder.model  # the bare open_clip model
    bs = args.batch_size

    def loader() -> Iterator[torch.Tensor]:
        return iter(
            DataLoader(
                _Images(paths, encoder.preprocess),
                batch_size=bs,
                num_workers=args.loader_workers,
                pin_memory=device.type == "cuda",
                persistent_workers=False,
            )
        )

    def bare() -> None:
        with torch.inference_mode(), _autocast(device):
            for x in loader():  # (b, 3, S, S)
                model.encode_image(x.to(device, non_blocking=True))

    caches = iter(range(1_000_000))

    def ours() -> None:  # an empty cache each time: encode every image and write its features
        with _autocast(device):
            FeatureCache(work / f"cache-{next(caches)}").encode_dataset(
                encoder, manifest, batch_size=bs, progress=False
            )

    bare()  # warm-up: kernels, allocator, the page cache of the images
    t_bare = _timed(bare, device, args.repeats)
    t_ours = _timed(ours, device, args.repeats)

    # a frozen cell's heads: cached features vs re-encoding every batch
    cache = FeatureCache(work / "cache")
    with _autocast(device):
        tokens, emb = cache.encode_dataset(
            encoder, manifest, batch_size=bs, progress=False
        )  # (M, N, Dv), (M, De)
    tokens, emb = tokens.to(device), emb.to(device)
    targets = (
        torch.nan_to_num(torch.from_numpy(manifest.label_matrix()), nan=0.0).float().to(device)
    )  # (M, C)
    cfg = ModelConfig(visual=BackboneConfig(name="clip", arch=args.arch), width=128, heads=4, t1_layers=1)
    heads = AlignmentModel(cfg, encoder.image_dim, num_tokens(encoder), None, len(manifest.labels)).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    loss_cfg = LossConfig()

    def step(tok: torch.Tensor, em: torch.Tensor, y: torch.Tensor) -> None:
        with _autocast(device):
            out = heads(tok.float(), em.float())
            loss = weighted_total(compute_terms(out, y, loss_cfg), loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def epoch_cached() -> None:
        for s in range(0, len(paths), bs):
            step(tokens[s : s + bs], emb[s : s + bs], targets[s : s + bs])

    def epoch_reencode() -> None:
        for s, x in zip(range(0, len(paths), bs), loader(), strict=True):
            with torch.no_grad(), _autocast(device):
                tok, em = encoder.encode_image(x.to(device, non_blocking=True))
            step(tok, em, targets[s : s + bs])

    t_cached = _timed(epoch_cached, device, args.repeats)
    t_reenc = _timed(epoch_reencode, device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    common = {"device": name, "arch": args.arch, "n": args.n, "batch_size": bs}
    values = [
        ("bare open_clip encode_image", args.n / t_bare, "img/s"),
        ("cxrfa encode_dataset (empty cache)", args.n / t_ours, "img/s"),
        ("cxrfa / bare encode", t_bare / t_ours, "ratio"),
        ("head epoch, cached features", t_cached, "s"),
        ("head epoch, re-encoding", t_reenc, "s"),
        ("re-encoding / cached epoch", t_reenc / t_cached, "ratio"),
    ]
    return [{"measure": m, "value": v, "unit": u, **common} for m, v, u in values]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture, random weights")
    parser.add_argument("--n", type=int, default=2048, help="synthetic images")
    parser.add_argument("--size", type=int, default=224, help="side of the synthetic images (px)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--loader-workers", type=int, default=8, help="DataLoader worker processes")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:N or cpu")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.csv"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    """Run the benchmark, write its rows to ``--out`` and print them as a Markdown table."""
    args = parse(argv)
    rows = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    first = rows[0]
    print(f"## {first['arch']} on {first['device']}: {args.n} images, batch {args.batch_size}")
    print("| measure | value | unit |\n|---|---:|---|")
    for r in rows:
        print(f"| {r['measure']} | {float(r['value']):.3g} | {r['unit']} |")  # type: ignore[arg-type]
    value = {r["measure"]: float(r["value"]) for r in rows}  # type: ignore[arg-type]
    encode_ok = value["cxrfa / bare encode"] >= ENCODE_GOAL
    epoch_ok = value["re-encoding / cached epoch"] >= EPOCH_GOAL
    print(f"encode goal (>= {ENCODE_GOAL:.0%} of bare): {'met' if encode_ok else 'NOT met'}")
    print(f"epoch goal (cached >= {EPOCH_GOAL:.0f}x faster): {'met' if epoch_ok else 'NOT met'}")
    return rows


if __name__ == "__main__":
    main()
