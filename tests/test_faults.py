"""Faults and hostile input: secrets in URLs, a full disk, stop signals, poisoned caches, damaged studies, bad
input where it enters. Each case broke once; each test runs the real code (a tmpfs that fills up, signals sent to
real processes, a FIFO) and fails if the handling is removed.

Cases that live beside their neighbours: unsafe open_clip weights refused in preflight and refusal reasons cut
at a word (test_security.py); NaN/NA patient ids, a FIFO among the images or as the label CSV, and the
';'-separated CSV (test_data_bad_inputs.py).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
import yaml
from _helpers import cxrfa_cmd
from test_services import PASSWORD, PG_BIN, postgres  # noqa: F401 - the throw-away PostgreSQL server
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.tracking import TAG_FAILURE, TAG_STORAGE, RedactingFilter, Tracker, redact, redact_text

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
SECRET = "S3cr3tPw"


def _lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.strip()]


def _matrix(folder: Path, name: str, epochs: int) -> Path:
    """The smoke matrix as ``<folder>/ablations/<name>.yaml`` with ``epochs`` epochs (patience as long).

    ``folder`` is a ``lab`` (its own ablations/ folder, never the repository's).
    """
    spec = yaml.safe_load((REPO / "ablations" / "smoke.yaml").read_text())
    spec["name"] = name
    spec["base"]["train"].update({"epochs": epochs, "patience": epochs})
    path = folder / "ablations" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _runs(store: Path) -> list[tuple[str, str, str | None]]:
    """(name, status, cxrfa.failure) of every run in a local store, read with sqlite3 (no MLflow)."""
    with sqlite3.connect(store / "mlflow.db") as db:
        return db.execute(
            "select r.name, r.status, t.value from runs r left join tags t "
            f"on t.run_uuid = r.run_uuid and t.key = '{TAG_FAILURE}' order by r.start_time"
        ).fetchall()


# ---------------------------------------------------------------------------------------------------------
# 1. secrets never leave the process


URL_FORMS = {
    "userinfo": f"postgresql://cxrfa:{SECRET}@127.0.0.1:5/cxrfa",
    "query password": f"postgresql://cxrfa@127.0.0.1:5/cxrfa?password={SECRET}",
    "sslpassword": f"postgresql://cxrfa@127.0.0.1:5/cxrfa?sslmode=require&sslpassword={SECRET}",
    "token": f"https://mlflow.example/api?token={SECRET}",
    "access_token": f"http://127.0.0.1:5/?access_token={SECRET}&x=1",
    "http userinfo token": f"https://{SECRET}@mlflow.example/",
    "encoded password": f"postgresql://cxrfa:{SECRET}%2F%40x@127.0.0.1:5/cxrfa",
}


@pytest.mark.parametrize("form", list(URL_FORMS))
def test_redaction_hides_every_url_form(form: str) -> None:
    url = URL_FORMS[form]
    assert SECRET not in redact(url) and "***" in redact(url)
    assert "127.0.0.1" in redact(url) or "mlflow.example" in redact(url)  # where it points stays readable
    # a driver's error that quotes the password alone, percent-decoded, or the whole URL
    message = f"connection to {url} failed: password {SECRET}/@x rejected (user cxrfa)"
    hidden = redact_text(message, url)
    assert SECRET not in hidden and "user cxrfa" in hidden  # a user name is no secret


def test_environment_passwords_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET + "tok")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a token, but no secret
    text = f"FATAL: password authentication failed ({SECRET}); bearer {SECRET}tok; amp false"
    assert SECRET not in redact_text(text) and SECRET not in redact(f"postgresql://h/db?x={SECRET}")
    assert redact_text(text).endswith("amp false")


def test_log_records_are_redacted_arguments_and_tracebacks_too() -> None:
    url = URL_FORMS["query password"]
    try:
        raise RuntimeError(f"cannot connect to {url}")
    except RuntimeError:
        record = logging.LogRecord("cxrfa", logging.ERROR, __file__, 1, "store %s", (url,), sys.exc_info())
    assert RedactingFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert SECRET not in formatted and "store postgresql://" in formatted and "RuntimeError" in formatted


def test_tags_params_and_overlays_never_hold_the_secret(tmp_path: Path) -> None:
    from cxrfa.tuning.overlays import write_overlay

    tracker = Tracker(str(tmp_path / "store"), "exp")
    run = tracker.start("r", {}, None, "")
    for form, url in URL_FORMS.items():
        run.set_tags({f"{TAG_STORAGE}.{form.replace(' ', '_')}": url})
    run.log_params({"storage": URL_FORMS["query password"], "tracking": URL_FORMS["access_token"]})
    overlay = write_overlay(
        tmp_path / "ablations" / "tuned" / "smoke" / "align-clip.yaml",
        {"loss.semantic": 0.3},
        [f"cxrfa tune --storage {URL_FORMS['sslpassword']}", f"Study s ({URL_FORMS['query password']})"],
    )
    assert "sslpassword=***" in overlay.read_text()  # the storage is recorded, its secret is not
    info = tracker.get(run.run_id)
    assert not any(SECRET in v for v in [*info.tags.values(), *info.params.values()])
    _assert_nowhere(tmp_path)


def _assert_nowhere(root: Path, *outputs: str, secrets: tuple[str, ...] = (SECRET,)) -> None:
    """``grep -r SECRET`` over every file under ``root`` (databases included) and the outputs finds nothing."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(secret.encode() in data for secret in secrets), path
    for output in outputs:
        assert not any(secret in output for secret in secrets), output


@pytest.mark.parametrize("form", ["query password", "sslpassword"])
def test_command_errors_never_show_the_secret(workdir: Path, form: str) -> None:
    url = URL_FORMS[form]  # port 5: nothing listens, so every command fails when it connects
    outputs = []
    for args in (
        ["tune", "-m", "smoke", "--cell", "visual-clip", "--trials", "1", "--storage", url],
        ["ablate", "-m", "smoke", "--storage", url],
        ["ablate", "-m", "smoke", "--tracking-uri", url],
        ["compare", "--experiment", "smoke", "--tracking-uri", url],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert _lines(result.output)[-1].startswith("error: "), result.output
        outputs.append(result.output)
    _assert_nowhere(workdir, *outputs)


@pytest.mark.services
@pytest.mark.skipif(not (PG_BIN / "postgres").exists(), reason=f"PostgreSQL binaries not found in {PG_BIN}")
def test_query_string_password_on_a_real_postgres_never_reaches_a_file_or_output(
    lab: Path,
    postgres: str,  # noqa: F811 - the fixture imported above
) -> None:
    port = postgres.rsplit(":", 1)[1]
    url = f"postgresql://cxrfa@127.0.0.1:{port}/optuna?password={quote(PASSWORD, safe='')}"
    _matrix(lab, "pgq", epochs=1)
    outputs = []
    for args in (
        ["tune", "-m", "pgq", "--cell", "visual-clip", "-n", "1", "--storage", url],
        ["ablate", "-m", "pgq", "--cells", "visual-clip", "--storage", url, "--explore", ""],
        ["compare", "--experiment", "pgq", "--out", "out", "--n-boot", "50"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    overlay = lab / "ablations" / "tuned" / "pgq" / "visual-clip.yaml"
    assert "password=***" in overlay.read_text()  # the overlay records the storage, not its password
    _assert_nowhere(lab, *outputs, secrets=(PASSWORD, quote(PASSWORD, safe="")))


# ---------------------------------------------------------------------------------------------------------
# 2. a full disk: one line, exit 2, nothing left RUNNING; the rerun after freeing space finishes


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at a fresh folder (needs root); skipped where mounting is not permitted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:100]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _resize(mount: Path, size_bytes: int) -> None:
    kib = -(-size_bytes // 4096) * 4
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount)], check=True, capture_output=True)


def test_full_disk_fails_in_one_line_and_the_rerun_finishes(lab: Path, small_disk: Path) -> None:
    _matrix(lab, "disk", epochs=1)
    store = small_disk / "store"
    args = ["ablate", "-m", "disk", "--cells", "visual-clip", "--tracking-uri", str(store), "--explore", ""]
    from cxrfa.tuning.queue import open_queue

    open_queue(None, Tracker(str(store), "disk"))  # the store and its queue exist, as after an earlier run
    # room for the reserve and the runs' rows, not for the first checkpoint (about 250 KiB)
    _resize(small_disk, shutil.disk_usage(small_disk).used + 416 * 1024)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in _lines(result.output) if ln.startswith("error:")]
    assert str(small_disk) in line and "No space left on device" in line and "free some disk space" in line
    assert "Traceback" not in result.output
    runs = _runs(store)
    assert runs and all(status == "FAILED" for _, status, _ in runs), runs
    assert all("No space left on device" in (why or "") for _, _, why in runs), runs
    assert not list(store.rglob("*.tmp"))  # nothing half-written
    _resize(small_disk, 64 << 20)  # space freed
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    finished = [name for name, status, _ in _runs(store) if status == "FINISHED" and "/seed=" in name]
    assert finished == ["visual-clip/seed=0"]
    assert not list(store.glob(".cxrfa-reserve*"))  # the reserve goes with the command


def test_disk_errors_are_found_behind_torch_and_sqlite_wrappers(tmp_path: Path) -> None:
    from cxrfa.io import DiskFull, atomic_path, resource_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 88576") from None
    except RuntimeError as err:
        assert resource_error(err).errno == errno.ENOSPC  # type: ignore[union-attr]
    assert resource_error(sqlite3.OperationalError("database or disk is full")).errno == errno.ENOSPC  # type: ignore[union-attr]
    assert resource_error(RuntimeError("unrelated")) is None
    with pytest.raises(DiskFull, match="quota"), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, the target never appeared


# ---------------------------------------------------------------------------------------------------------
# 3. stop signals


def test_sigterm_and_sighup_raise_like_ctrl_c_with_their_exit_status() -> None:
    from cxrfa.signals import Terminated, exit_status, reason, stop_signals_interrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(Terminated) as caught, stop_signals_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # interrupted at once
        assert isinstance(caught.value, KeyboardInterrupt) and exit_status(caught.value) == 128 + sig
        assert reason(caught.value) == f"stopped by {signal.Signals(sig).name}"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the block


def test_a_worker_dies_with_its_supervisor() -> None:
    parent = subprocess.run(  # a parent that starts a long child with die_with_parent, then is SIGKILLed
        [
            sys.executable,
            "-c",
            "import os, signal, subprocess; from cxrfa.signals import die_with_parent; "
            "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent, stdout=subprocess.DEVNULL); "
            "print(p.pid, flush=True); "
            "os.kill(os.getpid(), signal.SIGKILL)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the orphaned worker kept running"


def test_spawned_workers_ask_to_die_with_their_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrfa.signals import die_with_parent
    from cxrfa.tuning import queue as scheduler

    seen: dict[str, object] = {}
    monkeypatch.setattr(scheduler.subprocess, "Popen", lambda *a, **kw: seen.update(kw))
    scheduler.spawn(["ablate", "--worker"], {}, tmp_path / "w.log")
    assert seen["preexec_fn"] is die_with_parent


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be read


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_sigterm_to_the_supervisor_stops_every_worker_and_the_rerun_resumes(lab: Path) -> None:
    # frozen features come from the cache, so an epoch can take a fraction of a second: six leave time to stop
    _matrix(lab, "term", epochs=6)
    store = lab / "mlruns"
    # one cell on two workers: one trains, one waits for work; both must stop, the first mid-training
    cmd = cxrfa_cmd("ablate", matrix="term", cells="visual-clip", workers=2, explore="")
    with open(lab / "out.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=lab, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(list((store / "checkpoints").glob("*.pt"))) < 1:  # a cell is in the middle of training
            assert proc.poll() is None, (lab / "out.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        workers = [p for p in _children(proc.pid) if "--worker" in _cmdline(p)]
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        while any(_alive(w) for w in workers) and time.monotonic() - stopped < 10:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a worker outlived its supervisor by 10 s"
    finally:
        if proc.poll() is None:
            proc.kill()
    runs = _runs(store)
    assert ("term [demo]", "KILLED", "stopped by SIGTERM") in runs, runs
    cells = [r for r in runs if "/seed=" in r[0]]
    assert cells and all(r[1:] == ("KILLED", "stopped by SIGTERM") for r in cells if r[1] != "FINISHED"), runs
    kept = list((store / "checkpoints").glob("*.pt"))
    assert kept  # the epochs done are kept for the rerun
    result = runner.invoke(app, ["ablate", "-m", "term", "--cells", "visual-clip", "--explore", ""])
    assert result.exit_code == 0, result.output
    (finished,) = Tracker(None, "term").search("attributes.status = 'FINISHED' and tags.`cxrfa.cell` != ''")
    assert finished.name == "visual-clip/seed=0"
    # resumed from its checkpoint, not redone
    assert finished.tags["cxrfa.resumed_from"].startswith("epoch "), finished.tags


# ---------------------------------------------------------------------------------------------------------
# 4. a poisoned feature cache is rebuilt, with one warning per cache


def test_cache_file_with_valid_checksum_but_wrong_shape_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cxrfa.config import BackboneConfig
    from cxrfa.data.manifest import read_manifest
    from cxrfa.data.synth import synthesize
    from cxrfa.models import FeatureCache, build_encoder
    from cxrfa.models.cache import _save

    manifest = read_manifest(synthesize(tmp_path / "d", n=6, size=64, seed=1))
    torch.manual_seed(0)
    encoder = build_encoder(BackboneConfig(name="custom", arch="cxrfa-cnn-small", frozen=True))
    cache = FeatureCache(tmp_path / "cache")
    tokens, embeds = cache.encode_dataset(encoder, manifest, progress=False)
    files = sorted((tmp_path / "cache" / encoder.identity).rglob("*.bin"))
    # a well-formed file, checksum and all, of the wrong shape / dtype / encoder: planted or from a bug
    _save(files[0], {"tokens": torch.zeros(3, 7, dtype=torch.float16), "embedding": embeds[0]})
    _save(files[1], {"tokens": tokens[1].float(), "embedding": embeds[1].float()})
    _save(files[2], {"tokens": tokens[2], "embedding": embeds[2]}, identity="another-encoder")
    for path in files[3:]:
        path.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="cxrfa.models.cache"):
        again = cache.encode_dataset(encoder, manifest, progress=False)
    assert torch.equal(again[0], tokens) and torch.equal(again[1], embeds)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    (warning,) = warnings  # one line for the cache, with the count
    assert "6 file(s) unusable and rebuilt" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrfa.models.cache"):
        cache.encode_dataset(encoder, manifest, progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # rebuilt files are trusted again


# ---------------------------------------------------------------------------------------------------------
# 5. a damaged Optuna journal or SQLite study


def _journal(path: Path, trials: int) -> Path:
    import optuna

    from cxrfa.tuning import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage, _ = open_storage(str(path))
    study = optuna.create_study(study_name="smoke.visual-clip", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return path


@pytest.mark.parametrize("damage", [b"\xff\xfe not text\n", b'{"op_code": 4, "worker_id"\n'])
def test_damaged_journal_is_one_line_and_its_recipe_recovers_it(workdir: Path, damage: bytes) -> None:
    import optuna

    from cxrfa.tuning import open_storage

    path = _journal(workdir / "optuna.journal", trials=2)
    good = path.read_bytes()
    path.write_bytes(good + damage + b'{"op_code": 0}\n')
    lines = good.count(b"\n")
    result = runner.invoke(
        app, ["tune", "-m", "smoke", "--cell", "visual-clip", "-n", "1", "--storage", str(path)]
    )
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert f"{path}: the Optuna journal is damaged at line {lines + 1}" in line and "Traceback" not in line
    recipe = line.split("with `", 1)[1].split("`", 1)[0]  # the commands the line gives, run as given
    subprocess.run(recipe, shell=True, check=True)
    storage, _ = open_storage(str(path))
    assert len(optuna.load_study(study_name="smoke.visual-clip", storage=storage).trials) == 2
    assert path.with_name(path.name + ".corrupt").read_bytes().startswith(good)


def test_damaged_sqlite_study_says_to_move_it_aside(workdir: Path) -> None:
    db = workdir / "study.db"
    db.write_bytes(b"SQLite format 3\0" + os.urandom(2000))
    result = runner.invoke(
        app, ["tune", "-m", "smoke", "--cell", "visual-clip", "-n", "1", "--storage", f"sqlite:///{db}"]
    )
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert f"mv {db} {db}.corrupt" in line


# ---------------------------------------------------------------------------------------------------------
# 6-7. input checked where it enters: patient ids, regular files only


def test_na_patient_ids_are_refused_or_dropped_and_counted(tmp_path: Path) -> None:
    from PIL import Image

    for name in "abcd":
        Image.new("L", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "l.csv").write_text("path,patient_id,Mass\na.png,p1,1\nb.png,NA,0\nc.png,NaN,1\nd.png,p2,0\n")
    args = ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv")]
    out = tmp_path / "m.csv"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "row 3" in result.output and "patient id 'NA'" in result.output
    assert not out.exists()
    result = runner.invoke(app, [*args, "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "2 no patient id" in " ".join(result.output.split()), result.output


def test_fifo_images_are_refused_without_being_opened(tmp_path: Path) -> None:
    from cxrfa.data.dataset import load_image
    from cxrfa.errors import CxrfaError
    from cxrfa.io import file_sha256

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)  # open() on it would block: each check must stat first
    for read in (load_image, file_sha256):
        with pytest.raises(CxrfaError, match=r"x\.png: the .* is a named pipe \(FIFO\), not a regular file"):
            read(fifo)


# ---------------------------------------------------------------------------------------------------------
# 8. validation where the config enters


@pytest.mark.parametrize(
    ("text", "args", "needle"),
    [
        ("name: m\ncells:\n  a: {}\n  a: {train: {lr: 0.1}}\n", [], "key 'a' appears twice"),
        ("name: m\ncells: {}\n", [], "'cells' is empty"),
        ("name: m\nseeds: []\ncells: {a: {}}\n", [], "'seeds' is empty"),
        (
            "name: m\nbase: {model: {visual: clip}, train: {device: banana}}\ncells: {a: {}}\n",
            [],
            "'banana' is not a device",
        ),
        ("name: m\ncells: {a: {}}\n", ["--seeds=-1"], "seed -1"),
        ("name: m\ncells: {a: {}}\n", ["--seeds", "12345678901234567890"], "outside 0 … 4294967295"),
    ],
)
def test_bad_matrix_or_seed_is_one_line_before_anything_runs(
    workdir: Path, text: str, args: list[str], needle: str
) -> None:
    path = workdir / "m.yaml"
    path.write_text("base: {model: {visual: clip}}\n" + text if "base:" not in text else text)
    result = runner.invoke(app, ["ablate", "-m", str(path), *args, "--dry-run"])
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert line.startswith("error: ") and needle in line, line
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps", "auto"])
def test_known_devices_are_accepted(device: str) -> None:
    from cxrfa.config import TrainConfig

    assert TrainConfig(device=device).device == device
