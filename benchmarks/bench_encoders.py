"""Encoder path benchmarks: (1) cxrfa encoding throughput vs a bare open_clip forward on the same images,
(2) one frozen-backbone head epoch from the feature cache vs re-encoding every batch, (3) peak memory.

    .venv/bin/python benchmarks/bench_encoders.py --n 512 --arch cxrfa-tiny-clip --threads 1

Results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cxrfa.config import BackboneConfig, LossConfig, ModelConfig  # noqa: E402
from cxrfa.data.dataset import load_image  # noqa: E402
from cxrfa.data.manifest import read_manifest  # noqa: E402
from cxrfa.data.synth import synthesize  # noqa: E402
from cxrfa.losses import compute_terms, weighted_total  # noqa: E402
from cxrfa.models import AlignmentModel, FeatureCache, build_encoder  # noqa: E402
from cxrfa.models.model import num_tokens  # noqa: E402


def peak_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """Best wall time of each function over ``repeats`` interleaved rounds (fair under a noisy, shared CPU)."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="synthetic images")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--arch", default="cxrfa-tiny-clip")
    parser.add_argument("--name", default="clip", choices=["clip", "biomedclip"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="cxrfa-bench-"))
    manifest = read_manifest(synthesize(work / "data", n=args.n, size=args.size, seed=0))
    labels = manifest.labels
    encoder = build_encoder(BackboneConfig(name=args.name, arch=args.arch))
    model = encoder.model  # the bare open_clip model
    paths = [manifest.root / p for p in manifest.frame["path"].astype(str)]
    bs = args.batch_size
    base_mem = peak_mib()

    # (1) throughput: bare open_clip (load + preprocess + encode_image) vs cxrfa's path without the cache
    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, len(paths), bs):
                batch = torch.stack([encoder.preprocess(load_image(p)) for p in paths[s : s + bs]])
                model.encode_image(batch)

    def ours() -> None:
        FeatureCache(enabled=False).encode_dataset(encoder, manifest, batch_size=bs, progress=False)

    t_bare, t_ours = best_of([bare, ours], args.repeats)
    enc_mem = peak_mib()

    # (2) one epoch of a frozen-backbone head: cached features vs re-encoding every batch
    cache = FeatureCache(work / "cache")
    tokens, emb = cache.encode_dataset(encoder, manifest, batch_size=bs, progress=False)  # fill the cache
    targets = torch.nan_to_num(torch.from_numpy(manifest.label_matrix()), nan=0.0)
    cfg = ModelConfig(visual=BackboneConfig(name=args.name, arch=args.arch), width=128, heads=4, t1_layers=1)
    heads = AlignmentModel(cfg, encoder.image_dim, num_tokens(encoder), None, len(labels))
    opt = torch.optim.AdamW(heads.parameters(), lr=1e-3)
    loss_cfg = LossConfig()

    def step(tok: torch.Tensor, em: torch.Tensor, y: torch.Tensor) -> None:
        out = heads(tok.float(), em.float())
        loss = weighted_total(compute_terms(out, y, loss_cfg), loss_cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def load_cached() -> None:
        cache.encode_dataset(encoder, manifest, batch_size=bs, progress=False)  # all hits, read from disk

    def epoch_cached() -> None:  # features are read once per run (then every epoch reuses them)
        for s in range(0, len(paths), bs):
            step(tokens[s : s + bs], emb[s : s + bs], targets[s : s + bs])

    def epoch_reencode() -> None:
        for s in range(0, len(paths), bs):
            batch = torch.stack([encoder.preprocess(load_image(p)) for p in paths[s : s + bs]])
            with torch.no_grad():
                tok, em = encoder.encode_image(batch)
            step(tok, em, targets[s : s + bs])

    t_cached, t_reenc, t_load = best_of([epoch_cached, epoch_reencode, load_cached], args.repeats)
    cache_mib = sum(f.stat().st_size for f in (work / "cache").rglob("*.bin")) / 2**20

    print(f"## {args.arch} — {args.n} images of {args.size}px, batch {bs}, {args.threads} thread(s)")
    print(f"tokens per image: {tuple(tokens.shape[1:])}, embedding: {tuple(emb.shape[1:])}")
    print(f"| bare open_clip encode | {args.n / t_bare:.1f} img/s |")
    print(
        f"| cxrfa encode_dataset (no cache) | {args.n / t_ours:.1f} img/s | overhead {100 * (t_ours / t_bare - 1):+.1f}% |"
    )
    print(f"| read all features from the cache (all hits) | {t_load:.2f} s |")
    print(f"| head epoch, cached features | {t_cached:.2f} s |")
    print(f"| head epoch, re-encoding | {t_reenc:.2f} s | ratio {t_reenc / t_cached:.1f}x |")
    print(f"| feature cache on disk | {cache_mib:.1f} MiB |")
    print(
        f"| peak RSS | after build {base_mem:.0f} MiB, after encoding {enc_mem:.0f} MiB, end {peak_mib():.0f} MiB |"
    )


if __name__ == "__main__":
    main()
