"""The speed paths: the GPU benchmark's tiny CPU run, and the ``--workers auto`` layout."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_gpu():  # benchmarks/ is not a package: load the script as a module
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_writes_its_rows_on_cpu(tmp_path: Path) -> None:
    bench = _bench_gpu()
    out = tmp_path / "gpu.csv"
    argv = ["--arch", "cxrfa-tiny-clip", "--n", "12", "--size", "48", "--batch-size", "4"]
    bench.main([*argv, "--loader-workers", "0", "--device", "cpu", "--repeats", "1", "--out", str(out)])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == bench.FIELDS
    measures = {r["measure"]: float(r["value"]) for r in rows}
    assert set(measures) == {
        "bare open_clip encode_image",
        "cxrfa encode_dataset (empty cache)",
        "cxrfa / bare encode",
        "head epoch, cached features",
        "head epoch, re-encoding",
        "re-encoding / cached epoch",
    }
    assert all(math.isfinite(v) and v > 0 for v in measures.values())
    bare, ours = measures["bare open_clip encode_image"], measures["cxrfa encode_dataset (empty cache)"]
    assert math.isclose(measures["cxrfa / bare encode"], ours / bare, rel_tol=1e-9)
    assert {r["device"] for r in rows} == {"cpu"} and {r["n"] for r in rows} == {"12"}
