"""Wall time of ``cxrfa ablate --workers 2`` against ``--workers 1`` on this machine, threads pinned.

Each measurement runs the whole matrix into a fresh tracking store (nothing to skip) with a warm cxrfa home:
the demo data, the stand-in backbones and the frozen-feature cache are built by an untimed warm-up run (one seed)
first,
so the two timings compare only the runs themselves. ``--workers 1`` trains with all cores' threads;
``--workers 2`` gives each worker cores / 2 threads, so workers x threads never exceeds the cores.

    python benchmarks/bench_workers.py --matrix full          # the full demo: ~40 min on 2 cores
    python benchmarks/bench_workers.py --matrix smoke --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ablate(store: Path, matrix: str, seeds: str | None, workers: int, threads: int) -> float:
    """Seconds one ``cxrfa ablate`` takes into ``store``."""
    cmd = [sys.executable, "-m", "cxrfa.cli", "ablate", "--matrix", matrix, "--tracking-uri", str(store)]
    cmd += ["--workers", str(workers), "--threads", str(threads)] + (["--seeds", seeds] if seeds else [])
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--matrix", default="full")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds replacing the matrix's")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrfa-bench-workers-") as tmp:
        first_seed = args.seeds.split(",")[0] if args.seeds else "0"  # every cell once builds every cache
        warm = ablate(Path(tmp) / "warm", args.matrix, first_seed, 1, args.cores)
        print(f"warm-up (data, stand-ins, feature cache; seed {first_seed}): {warm:.0f} s", flush=True)
        one = ablate(Path(tmp) / "one", args.matrix, args.seeds, 1, args.cores)
        print(f"--workers 1 --threads {args.cores}: {one:.0f} s", flush=True)
        two = ablate(Path(tmp) / "two", args.matrix, args.seeds, 2, max(1, args.cores // 2))
        print(f"--workers 2 --threads {max(1, args.cores // 2)}: {two:.0f} s", flush=True)
    print(f"speed-up: {one / two:.2f}x ({args.matrix}, {args.cores} cores)")


if __name__ == "__main__":
    main()
