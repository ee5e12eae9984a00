"""Frozen-feature cache: hits, invalidation on every key part, corruption, concurrent writers, disabled mode."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cxrfa.config import BackboneConfig
from cxrfa.data.manifest import Manifest, read_manifest
from cxrfa.data.synth import synthesize
from cxrfa.io import file_sha256
from cxrfa.models import FeatureCache, build_encoder
from cxrfa.models.cache import _save
from cxrfa.models.encoders import Encoder

CNN = BackboneConfig(name="custom", arch="cxrfa-cnn-small", frozen=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth"), n=10, size=64, seed=3)


@pytest.fixture
def manifest(data: Path, tmp_path: Path) -> Manifest:
    """A private copy (tests edit image bytes)."""
    import shutil

    shutil.copytree(data.parent, tmp_path / "d")
    return read_manifest(tmp_path / "d" / data.name)


def _encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return build_encoder(CNN)


def _counting(encoder: Encoder) -> list[int]:
    """Record the batch size of every encode_image call."""
    calls: list[int] = []
    original = encoder.encode_image

    def wrapped(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(x.shape[0])
        return original(x)

    encoder.encode_image = wrapped  # type: ignore[method-assign]
    return calls


def test_hit_reuses_and_matches_direct_encoding(manifest: Manifest, tmp_path: Path) -> None:
    enc = _encoder()
    calls = _counting(enc)
    cache = FeatureCache(tmp_path / "cache")
    tokens, emb = cache.encode_dataset(enc, manifest, batch_size=4, progress=False)
    assert calls == [4, 4, 2]
    assert tokens.dtype == emb.dtype == torch.float16
    assert tokens.shape == (10, 64, 128) and emb.shape == (10, 128)
    calls.clear()
    tokens2, emb2 = cache.encode_dataset(enc, manifest, batch_size=4, progress=False)
    assert calls == []  # every row came from disk
    assert torch.equal(tokens, tokens2) and torch.equal(emb, emb2)
    with torch.no_grad():  # row order and values match a direct forward
        x = torch.stack([enc.preprocess(Image.open(manifest.image_path(i))) for i in (0, 7)])
        _, direct = enc.encode_image(x)
    assert torch.allclose(emb[[0, 7]].float(), direct, atol=1e-2)


def test_each_key_part_invalidates(manifest: Manifest, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    enc = _encoder()
    base_tokens, _ = cache.encode_dataset(enc, manifest, progress=False)
    # weights: another initialisation is another identity -> all rows recomputed
    other = _encoder(seed=1)
    calls = _counting(other)
    cache.encode_dataset(other, manifest, progress=False)
    assert sum(calls) == 10
    # image bytes: only the edited image is recomputed
    calls = _counting(enc)
    img = Image.open(manifest.image_path(3)).convert("L")
    img.putpixel((0, 0), 255 - img.getpixel((0, 0)))
    img.save(manifest.image_path(3))
    tokens, _ = cache.encode_dataset(enc, manifest, progress=False)
    assert calls == [1]
    assert torch.equal(tokens[[0, 1, 2, 4]], base_tokens[[0, 1, 2, 4]])
    # preprocessing: a different transform is a different key for every image
    calls.clear()
    enc.preprocess = T.Compose([T.Grayscale(3), T.Resize((64, 64)), T.ToTensor()])
    cache.encode_dataset(enc, manifest, progress=False)
    assert sum(calls) == 10


def test_corrupt_file_is_rebuilt(manifest: Manifest, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    enc = _encoder()
    tokens, emb = cache.encode_dataset(enc, manifest, progress=False)
    files = sorted((tmp_path / "cache" / enc.identity).rglob("*.bin"))
    assert len(files) == 10
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    raw = bytearray(files[1].read_bytes())  # complete file, one data byte flipped: the checksum must catch it
    raw[-3] ^= 0xFF
    files[1].write_bytes(bytes(raw))
    calls = _counting(enc)
    tokens2, emb2 = cache.encode_dataset(enc, manifest, progress=False)
    assert sum(calls) == 2
    assert torch.equal(tokens, tokens2) and torch.equal(emb, emb2)
    calls.clear()
    cache.encode_dataset(enc, manifest, progress=False)
    assert calls == []  # the rebuilt files are trusted again


def test_disabled_cache_neither_reads_nor_writes(manifest: Manifest, tmp_path: Path) -> None:
    enc = _encoder()
    FeatureCache(tmp_path / "cache").encode_dataset(enc, manifest, progress=False)
    calls = _counting(enc)
    off = FeatureCache(tmp_path / "cache", enabled=False)
    tokens, _ = off.encode_dataset(enc, manifest, progress=False)
    assert sum(calls) == 10 and tokens.shape[0] == 10
    fresh = FeatureCache(tmp_path / "empty", enabled=False)
    fresh.encode_dataset(enc, manifest, progress=False)
    assert not (tmp_path / "empty").exists()


def _worker(manifest_path: str, root: str, out: str) -> None:
    torch.set_num_threads(1)
    enc = _encoder()
    tokens, emb = FeatureCache(Path(root)).encode_dataset(
        enc, read_manifest(manifest_path), batch_size=3, progress=False
    )
    torch.save({"tokens": tokens, "emb": emb}, out)


def test_two_processes_writing_at_once(manifest: Manifest, tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    root = tmp_path / "shared-cache"
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    procs = [ctx.Process(target=_worker, args=(str(manifest.source), str(root), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    a, b = (torch.load(o, weights_only=True) for o in outs)
    # one process encodes, the other waits for the encoder's lock and reads what it wrote: bit for bit the same
    # (encoding the images in other batches could round the last fp16 bit of a conv differently)
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["emb"], b["emb"])
    enc = _encoder()
    calls = _counting(enc)
    tokens, emb = FeatureCache(root).encode_dataset(enc, manifest, progress=False)
    assert calls == []
    assert torch.equal(tokens, a["tokens"]) and torch.equal(emb, a["emb"])
    assert not list(root.rglob("*.tmp"))  # no temporary files left behind


def test_an_encoding_waits_for_another_one_of_the_same_encoder_and_reads_it(
    manifest: Manifest, tmp_path: Path
) -> None:
    """While another process holds the encoder's lock (it is encoding these images), a second encoding waits,
    then reads the files written meanwhile instead of encoding the images again."""
    import threading

    from filelock import FileLock

    root = tmp_path / "cache"
    writer, reader = _encoder(), _encoder()
    calls = _counting(reader)
    lock = FileLock(str(root / writer.identity / ".encode.lock"))
    (root / writer.identity).mkdir(parents=True)
    out: dict[str, torch.Tensor] = {}

    def second() -> None:
        out["tokens"], out["emb"] = FeatureCache(root).encode_dataset(reader, manifest, progress=False)

    with lock:  # the "other process": holds the lock while it encodes and writes
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waiting for the lock, having found nothing cached
        written = FeatureCache(root, enabled=False).encode_dataset(writer, manifest, progress=False)
        cache = FeatureCache(root)
        for path, tok, emb in zip(manifest.image_paths(), *written, strict=True):
            key = cache.key(writer, file_sha256(path))
            _save(cache.path(writer, key), {"tokens": tok, "embedding": emb}, writer.identity)
    thread.join(60)
    assert calls == []  # read, not encoded again
    assert torch.equal(out["tokens"], written[0]) and torch.equal(out["emb"], written[1])
