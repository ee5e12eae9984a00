"""The speed paths: the GPU benchmark's tiny CPU run, and the ``--workers auto`` layout."""

from __future__ import annotations

import csv
import importlib.util
import math
import signal
from pathlib import Path

import pytest

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


def test_auto_layout_one_single_thread_worker_per_core_when_runs_share_out() -> None:
    from cxrfa.tuning.queue import auto_layout

    full = auto_layout(39, cores=2, gpus=0)  # the demo on this kind of machine
    assert (full.count, full.threads, full.devices) == (2, 1, ())
    assert "1 thread" in full.reason
    few = auto_layout(2, cores=2, gpus=0)  # under two runs per core: a worker's start-up would not pay
    assert (few.count, few.threads) == (1, 1)
    big = auto_layout(100, cores=16, gpus=0)
    assert (big.count, big.threads) == (16, 1)
    gpu = auto_layout(8, cores=16, gpus=2)
    assert (gpu.count, gpu.threads, gpu.devices) == (2, 8, ("cuda:0", "cuda:1"))


def test_cpu_workers_default_to_one_thread_whatever_their_number() -> None:
    from cxrfa.tuning.queue import cpu_threads, threads_per_worker

    assert cpu_threads(1, gpus=0) == cpu_threads(2, gpus=0) == 1  # the same sums in every layout
    assert cpu_threads(2, gpus=2) == threads_per_worker(2, None)


def test_workers_option_rejects_a_non_count_in_one_line(workdir: Path) -> None:
    from typer.testing import CliRunner

    from cxrfa.cli import app

    result = CliRunner().invoke(app, ["ablate", "--matrix", "smoke", "--workers", "two"])
    assert result.exit_code == 2
    assert "--workers 'two'" in result.output and "or auto" in result.output
    assert "Traceback" not in result.output
    assert not (workdir / "mlruns").exists()  # refused before the store is opened


def test_plot_curves_equal_scikit_learn() -> None:
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    from cxrfa.plots import pr_points, roc_points

    rng = np.random.default_rng(3)
    for n, levels in ((40, 5), (300, 1000), (7, 2)):
        y = rng.integers(0, 2, n).astype(np.float64)
        y[:2] = (0, 1)  # both classes
        p = rng.integers(0, levels, n) / levels  # ties when levels is small
        fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
        ours = roc_points(y, p)
        np.testing.assert_array_equal(ours[0], fpr)
        np.testing.assert_array_equal(ours[1], tpr)
        precision, recall, _ = precision_recall_curve(y, p)
        ours = pr_points(y, p)
        np.testing.assert_array_equal(ours[0], precision)
        np.testing.assert_array_equal(ours[1], recall)


_HEAVY = ("torch", "mlflow", "optuna", "sklearn", "scipy", "matplotlib", "open_clip")
_PROBE = """
import sys
from typer.testing import CliRunner
from cxrfa.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_help_and_data_commands_import_no_heavy_library(tmp_path: Path) -> None:
    import subprocess
    import sys

    from cxrfa.data.synth import synthesize

    manifest = synthesize(tmp_path / "data", n=24, size=32, seed=0)
    probe = _PROBE.format(heavy=_HEAVY)
    for args in (["--help"], ["data", "--help"], ["data", "stats", str(manifest)]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True, cwd=REPO
        )
        assert done.stdout.strip().splitlines()[-1:] in ([], [""]), (args, done.stdout[-300:])


def test_fit_keeps_the_kept_epochs_val_prediction_for_evaluation() -> None:
    """Evaluation reads val from ``fit`` instead of predicting it again: it must be the kept weights' own."""
    import numpy as np
    import torch
    from _helpers import OnFeatures, tiny_heads

    from cxrfa.config import LossConfig, TrainConfig
    from cxrfa.data.features import FeatureDataset
    from cxrfa.train import fit, make_loader, predict

    torch.manual_seed(0)
    heads = tiny_heads(labels=4, tokens=5, dim=8)

    tokens = torch.randn(60, 5, 8)
    labels = (torch.rand(60, 4) < 0.4).float().numpy()
    train_set = FeatureDataset(tokens[:40], tokens[:40].mean(1), labels[:40], np.zeros(40, dtype=np.int64))
    val_set = FeatureDataset(tokens[40:], tokens[40:].mean(1), labels[40:], np.zeros(20, dtype=np.int64))
    cfg = TrainConfig(epochs=4, batch_size=8, lr=3e-2, device="cpu", amp=False, patience=4)
    model = OnFeatures(heads)
    result = fit(model, train_set, val_set, list("abcd"), cfg, LossConfig(semantic=0.5), progress=False)
    assert result.best_val is not None and result.best_val.shape == (20, 4)
    loader = make_loader(val_set, cfg.batch_size * 2, shuffle=False, cfg=cfg, device=torch.device("cpu"))
    assert np.array_equal(result.best_val, predict(model, loader, torch.device("cpu"), cfg.amp)[0])


def test_encoded_splits_encode_each_split_once_unless_the_cache_is_off() -> None:
    """An ablation worker's cells share one encoding per split; with the cache off every cell re-encodes."""
    import numpy as np
    import pandas as pd
    import torch

    from cxrfa.data.features import EncodedSplits
    from cxrfa.data.manifest import Manifest

    frame = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(6)],
            "patient_id": [str(i) for i in range(6)],
            "A": [1.0, 0.0] * 3,
        }
    )
    frame["split"] = ["train", "train", "val", "val", "test", "test"]
    manifest = Manifest(frame, Path("."), ["A"], "custom")

    class Source:
        def __init__(self, enabled: bool) -> None:
            self.enabled, self.calls = enabled, []

        def encode_dataset(self, encoder, rows, batch_size=64, progress=True):
            self.calls.append(list(rows.frame["path"]))
            return torch.zeros(len(rows), 2, 3), torch.zeros(len(rows), 3)

    class Encoder:
        identity = "enc"

    memo, cached, off = EncodedSplits(), Source(enabled=True), Source(enabled=False)
    for _ in range(3):
        tokens, _ = memo.get(cached, Encoder(), manifest, "train", progress=False)
        memo.get(off, Encoder(), manifest, "test", progress=False)
    assert cached.calls == [["0.png", "1.png"]] and tokens.shape == (2, 2, 3) and len(memo) == 1
    assert off.calls == [["4.png", "5.png"]] * 3
    assert np.isfinite(tokens.numpy()).all()


def test_the_queue_hands_out_one_unit_per_stand_in_first_then_the_longest() -> None:
    """Workers starting together each pretrain a different stand-in (the first unit needing the CLIP stand-in,
    then the first needing the BiomedCLIP one), then take the trainable custom-CNN cells (10 epochs), then the
    6-epoch cells: the last units to start are short."""
    from cxrfa.config import DEMO_BACKBONES, expand, load_matrix
    from cxrfa.tuning.queue import UnitState, queue_order

    runs = expand(load_matrix("full"), DEMO_BACKBONES)
    order = [st.cfg for st in queue_order([UnitState(cfg, 0) for cfg in runs])]
    assert sorted(c.config_hash() for c in order) == sorted(c.config_hash() for c in runs)  # each unit once

    def standins(cfg):  # noqa: ANN001, ANN202
        return {
            b.arch for b in (cfg.model.visual, cfg.model.text) if b is not None and b.pretrained == "demo"
        }

    assert standins(order[0]) == {"cxrfa-tiny-clip"} and standins(order[1]) == {"cxrfa-tiny-biomedclip"}
    assert order[0].cell == "dual-custom"  # the longest unit that needs the CLIP stand-in
    rest = [(c.kind != "trained", c.model.visual.frozen, -c.train.epochs) for c in order[2:]]
    assert rest == sorted(rest)  # trainable encoders, then frozen ones, then baselines; more epochs first
    assert [c.cell for c in order[2:10]] == ["visual-custom"] * 3 + ["dual-custom"] * 2 + [
        "dual-learned-custom"
    ] * 3
    assert {c.cell for c in order[-9:]} == {"zeroshot-clip", "probe-clip", "pixels"}  # no heads to fit: last


def test_with_several_workers_the_parent_builds_nothing_and_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several workers, ablate's own process starts them and polls the queue (the workers build what
    their cells need); a stop signal goes on to each worker."""
    import types

    from cxrfa import ablate
    from cxrfa.tuning import queue as q

    events: list[str] = []

    class Proc:
        def poll(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def send_signal(self, signum: int) -> None:
            events.append(f"signal {signum}")

    def spawn(args, env, log_path):  # noqa: ANN001, ANN202
        events.append("spawn")
        return Proc()

    class Queue:
        def __init__(self, stop: bool = False) -> None:
            self.stop = stop

        def reap(self) -> None: ...

        def refresh(self, states: object) -> bool:
            events.append("poll")
            if self.stop:
                raise KeyboardInterrupt
            return True

    monkeypatch.setattr(q, "spawn", spawn)
    monkeypatch.setattr(ablate, "prepare", lambda *a, **k: events.append("build"))
    bar = types.SimpleNamespace(update=lambda: None)
    pool = ablate.Workers(count=2, logs=tmp_path)
    ablate._supervise(Queue(), {}, None, pool, bar)  # type: ignore[arg-type]
    assert events == ["spawn", "spawn", "poll"]

    events.clear()
    with pytest.raises(KeyboardInterrupt):
        ablate._supervise(Queue(stop=True), {}, None, pool, bar)  # type: ignore[arg-type]
    assert events == ["spawn", "spawn", "poll"] + [f"signal {int(signal.SIGINT)}"] * 2


def test_after_the_workers_the_parent_resolves_only_built_stand_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's warning pass after the workers (``_shared(build=False)``) pretrains nothing: a stand-in
    whose weights a worker built resolves to them, one never built is left out."""
    from cxrfa import ablate, standins
    from cxrfa.config import DEMO_BACKBONES, expand, load_matrix
    from cxrfa.data import load

    runs = expand(load_matrix("full"), DEMO_BACKBONES, seeds=[0], cells=["dual-clip", "dual-biomedclip"])
    built = tmp_path / "clip.pt"
    built.write_bytes(b"weights")
    monkeypatch.setattr(load, "load_data", lambda cfg, progress: object())
    monkeypatch.setattr(
        standins,
        "standin_path",
        lambda arch, manifest: built if arch == "cxrfa-tiny-clip" else tmp_path / "no",
    )
    monkeypatch.setattr(standins, "pretrain", lambda *a, **k: pytest.fail("pretrained in the parent"))
    resolved = ablate._shared(runs, progress=False, build=False)
    assert [(b.arch, b.pretrained) for b in resolved] == [("cxrfa-tiny-clip", str(built))]
