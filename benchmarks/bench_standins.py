"""Stand-in pretraining: how aligned do the two demo stand-ins come out, and how long does it take?

Pretrains ``cxrfa-tiny-clip`` and ``cxrfa-tiny-biomedclip`` cold with the stand-in recipe (the settings
``ensure_standin`` uses) on the demo data and prints, per stand-in, the final loss against its chance value,
val/test image->text R@1/R@5 against their exact chance values, val/test zero-shot macro AUROC, wall time and
CPU seconds; first the data synthesis's, which is cold in an empty ``CXRFA_HOME``.

Run:  python benchmarks/bench_standins.py                       # the full demo data (2,000 images, 96 px)
      python benchmarks/bench_standins.py --no-reports          # the same manifest with its report column dropped
The figures are recorded in benchmarks/README.md ("Stand-in pretraining").
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from cxrfa.config import DataConfig
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.data.synth import demo_manifest
from cxrfa.pretrain import pretrain
from cxrfa.standins import STANDIN_ARCHS, standin_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DataConfig().demo_n)
    parser.add_argument("--size", type=int, default=DataConfig().demo_size)
    parser.add_argument("--no-reports", action="store_true", help="drop the report column (NIH-like data)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arch", action="append", help="only these stand-ins (default: both)")
    parser.add_argument("--set", action="append", default=[], help="override a setting: key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    started, cpu = time.perf_counter(), time.process_time()
    manifest = read_manifest(demo_manifest(DataConfig(demo_n=args.n, demo_size=args.size)))
    # cold only in an empty CXRFA_HOME: the demo data are cached there
    print(
        f"data synthesis: {time.perf_counter() - started:.1f} s wall, {time.process_time() - cpu:.1f} s CPU"
    )
    if args.no_reports:
        frame = manifest.frame.drop(columns=["report"])
        manifest = Manifest(frame, manifest.root, manifest.labels, manifest.label_set, manifest.source)
    overrides = {
        k: float(v) if "." in v or "e" in v else int(v) for k, v in (s.split("=", 1) for s in args.set)
    }
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or STANDIN_ARCHS:
            started, cpu = time.perf_counter(), time.process_time()
            result = pretrain(manifest, arch, Path(tmp) / f"{arch}.pt", **{**standin_settings(), **overrides})
            rows[arch] = {
                **result.metrics(),
                "wall_s": time.perf_counter() - started,
                "cpu_s": time.process_time() - cpu,
            }
            rows[arch]["losses"] = [round(v, 4) for v in result.losses]
            print(
                arch,
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[arch].items()}),
            )
    wall, cpu = (sum(r[k] for r in rows.values()) for k in ("wall_s", "cpu_s"))
    print(f"both stand-ins: {wall:.1f} s wall, {cpu:.1f} s CPU")


if __name__ == "__main__":
    main()
