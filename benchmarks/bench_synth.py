"""How fast is the synthetic CXR generator? Time ``synthesize`` (render + PNG + manifest) and the render alone.

Run:  python benchmarks/bench_synth.py --n 2000 --size 96
The figures are recorded in benchmarks/README.md ("Synthetic data generation").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrfa.data.synth import _film, _image_findings, _make_patient, synthesize
from cxrfa.data.synth_render import expose, render_density


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        synthesize(Path(tmp), args.n, args.size, seed=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"synthesize n={args.n} size={args.size}: {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"({1000 * cpu / args.n:.1f} ms/image CPU), load average {os.getloadavg()[0]:.1f}"
    )
    patients = [_make_patient(0, p) for p in range(1, 101)]
    jobs = []
    for i in range(300):
        rng = np.random.default_rng([0, 2, i])
        findings = _image_findings(rng, patients[i % 100])
        jobs.append((_film(rng, patients[i % 100], findings)[0], findings))
    start = time.process_time()
    for film, findings in jobs:
        rng = np.random.default_rng(0)
        expose(render_density(film, findings, args.size, rng), film, rng)
    print(f"render + expose only: {1000 * (time.process_time() - start) / len(jobs):.2f} ms/image CPU")


if __name__ == "__main__":
    main()
