"""Frozen-feature cache: a frozen encoder runs once per (encoder, image bytes, preprocessing).

Layout under ``root`` (default ``cxrfa_home()/features``)::

    <encoder.identity>/<key[:2]>/<key>.bin    one file per image: fp16 tokens (N, Dv) and embedding (De)
    labels/<key[:2]>/<key>.bin                label text embeddings (see Encoder.label_embeddings)

Each file is a magic line, a JSON header (tensor names, dtypes, shapes, sha256 of the data) and the raw bytes.

``key`` = sha256(encoder identity, sha256 of the image file bytes, preprocessing id), so a change of weights,
image bytes or transform is a different key (a miss), never a stale hit. Files are written by atomic rename, so
concurrent writers are safe (identical content; last rename wins). A file that fails to load, whose checksum
does not match, or whose tensors are not what the encoder produces (names, dtypes, shapes, the encoder identity
in the header) is rebuilt, never trusted: one warning per cache, with the count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from cxrfa.io import atomic_path, cxrfa_home, file_sha256

if TYPE_CHECKING:
    from cxrfa.data.manifest import Manifest
    from cxrfa.models.encoders import Encoder

log = logging.getLogger(__name__)


_MAGIC = b"CXRFA1\n"
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _save(path: Path, payload: dict[str, Tensor], identity: str | None = None) -> None:
    """Write tensors as a small raw file: magic, JSON header (names, dtypes, shapes, sha256), then the bytes.

    Much faster to read back than a torch zip (thousands of per-image files per run).
    """
    arrays = {k: v.detach().cpu().contiguous() for k, v in payload.items()}
    blobs = [arrays[k].reshape(-1).view(torch.uint8).numpy().tobytes() for k in sorted(arrays)]
    body = b"".join(blobs)
    header = {
        "tensors": [
            [k, str(arrays[k].dtype).removeprefix("torch."), list(arrays[k].shape)] for k in sorted(arrays)
        ],
        "sha256": hashlib.sha256(body).hexdigest(),
        **({"identity": identity} if identity else {}),
    }
    head = json.dumps(header).encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(_MAGIC + len(head).to_bytes(4, "little") + head + body)


# tensor name -> (dtype, shape) a reader expects; None in a shape is any size
Spec = dict[str, tuple[torch.dtype, tuple[int | None, ...]]]


def _load(
    path: Path, spec: Spec | None = None, identity: str | None = None, problems: list[str] | None = None
) -> dict[str, Tensor] | None:
    """The tensors of a cache file, or None when it is missing, unreadable, fails its checksum or does not
    match ``spec`` / ``identity`` (a header written by another encoder).

    A problem is appended to ``problems`` (the caller warns once for many files), or logged when it is None.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        if not raw.startswith(_MAGIC):
            raise ValueError("bad magic")
        n = int.from_bytes(raw[len(_MAGIC) : len(_MAGIC) + 4], "little")
        start = len(_MAGIC) + 4 + n
        header = json.loads(raw[len(_MAGIC) + 4 : start])
        body = raw[start:]
        if hashlib.sha256(body).hexdigest() != header["sha256"]:
            raise ValueError("checksum mismatch")
        out: dict[str, Tensor] = {}
        offset = 0
        for name, dtype, shape in header["tensors"]:
            dt = _DTYPES[dtype]
            count = int(np.prod(shape)) * torch.tensor([], dtype=dt).element_size()
            flat = torch.frombuffer(bytearray(body[offset : offset + count]), dtype=torch.uint8)
            out[name] = flat.view(dt).reshape(shape)
            offset += count
        if offset != len(body):
            raise ValueError("trailing bytes")
        if identity is not None and header.get("identity", identity) != identity:
            raise ValueError(f"written by encoder {header['identity']}, not {identity}")
        for name, (dtype, shape) in (spec or {}).items():
            found = tuple(out[name].shape) if name in out else ()
            sizes_ok = len(found) == len(shape) and all(
                e is None or e == f for e, f in zip(shape, found, strict=False)
            )
            if name not in out or out[name].dtype != dtype or not sizes_ok:
                got = (str(out[name].dtype), tuple(out[name].shape)) if name in out else "nothing"
                raise ValueError(f"{name}: expected {dtype} {shape}, found {got}")
        return out
    except Exception as err:  # any corruption: truncation, bad header, wrong checksum, wrong shape
        if problems is None:
            log.warning("feature cache file %s is unusable (%s); rebuilding it", path, err)
        else:
            problems.append(f"{path}: {err}")
        return None


def cached_tensor(kind: str, key: str, compute: Callable[[], Tensor], root: Path | None = None) -> Tensor:
    """A tensor cached on disk under ``root/kind`` by a hash of ``key``; computed (and stored) on a miss."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = (root or cxrfa_home() / "features") / kind / digest[:2] / f"{digest}.bin"
    hit = _load(path)
    if hit is not None and "value" in hit:
        return hit["value"]
    value = compute().detach().cpu()
    _save(path, {"value": value})
    return value


def _image_paths(manifest: Manifest) -> list[Path]:
    return manifest.image_paths()  # confined to the manifest's root (symlinks resolved), in one pass


class FeatureCache:
    """Encodes a manifest's images with a frozen encoder, reusing per-image results stored on disk.

    Args:
        root: cache folder.
        enabled: False computes every time and neither reads nor writes (``--no-feature-cache``).
    """

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else cxrfa_home() / "features"
        self.enabled = enabled

    def key(self, encoder: Encoder, image_hash: str) -> str:
        """Cache key of one image under one encoder and preprocessing."""
        blob = f"{encoder.identity}|{image_hash}|{encoder.preprocess_id}"
        return hashlib.sha256(blob.encode()).hexdigest()

    def path(self, encoder: Encoder, key: str) -> Path:
        return self.root / encoder.identity / key[:2] / f"{key}.bin"

    def encode_dataset(
        self, encoder: Encoder, manifest: Manifest, batch_size: int = 64, progress: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Tokens and embeddings of every manifest row, in row order.

        Returns:
            tokens (M, N, Dv) fp16 and embeddings (M, De) fp16, on the CPU.
        """
        m = len(manifest)
        paths = _image_paths(manifest)
        keys = [self.key(encoder, file_sha256(p)) for p in paths] if self.enabled else []
        tokens: list[Tensor | None] = [None] * m
        embeds: list[Tensor | None] = [None] * m
        if self.enabled:
            spec: Spec = {
                "tokens": (torch.float16, (None, encoder.image_dim)),  # (N, Dv): N checked across files below
                "embedding": (torch.float16, (encoder.embed_dim,)),  # (De,)
            }
            problems: list[str] = []
            for i, key in enumerate(keys):
                hit = _load(self.path(encoder, key), spec, encoder.identity, problems)
                if hit is not None:
                    tokens[i], embeds[i] = hit["tokens"], hit["embedding"]
            problems += _odd_token_counts(tokens, [self.path(encoder, k) for k in keys])
            if problems:  # one line for a cache, however many of its files are bad
                log.warning(
                    "feature cache %s: %d file(s) unusable and rebuilt (first: %s)",
                    self.root / encoder.identity,
                    len(problems),
                    problems[0],
                )
        todo = [i for i in range(m) if tokens[i] is None]
        with contextlib.ExitStack() as stack:
            if todo and self.enabled:
                # one process encodes an encoder's images at a time: another one waiting here (two workers
                # starting cells of the same encoder) then reads what the first wrote instead of encoding it too
                folder = self.root / encoder.identity
                folder.mkdir(parents=True, exist_ok=True)
                stack.enter_context(FileLock(str(folder / ".encode.lock")))
                for i in todo:
                    hit = _load(self.path(encoder, keys[i]), spec, encoder.identity, [])
                    if hit is not None:
                        tokens[i], embeds[i] = hit["tokens"], hit["embedding"]
                todo = [i for i in todo if tokens[i] is None]
            self._encode(encoder, paths, keys, todo, tokens, embeds, batch_size, progress)
        fresh = set(todo)
        cached = [i for i in range(m) if i not in fresh]
        if fresh and cached and tokens[todo[0]].shape != tokens[cached[0]].shape:  # type: ignore[union-attr]
            # the cached files agreed on a token count the encoder does not produce: none of them is usable
            log.warning(
                "feature cache %s: token counts differ from the encoder's; rebuilding it",
                self.root / encoder.identity,
            )
            for i in cached:
                self.path(encoder, keys[i]).unlink(missing_ok=True)
            return self.encode_dataset(encoder, manifest, batch_size, progress)
        return torch.stack(tokens), torch.stack(embeds)  # type: ignore[arg-type]

    def _encode(
        self,
        encoder: Encoder,
        paths: list[Path],
        keys: list[str],
        todo: list[int],
        tokens: list[Tensor | None],
        embeds: list[Tensor | None],
        batch_size: int,
        progress: bool,
    ) -> None:
        """Encode the ``todo`` rows in batches into ``tokens`` / ``embeds`` (and the cache, when enabled)."""
        from tqdm.auto import tqdm

        from cxrfa.data.dataset import load_image

        m = len(paths)
        if todo:
            log.info(
                "encoding %d of %d images with %s (%d cached)", len(todo), m, encoder.source, m - len(todo)
            )
        device = encoder.device
        was_training = encoder.training
        encoder.eval()
        bar = tqdm(total=len(todo), desc="encode", unit="img", disable=not progress or not todo, leave=False)
        with torch.inference_mode():
            for start in range(0, len(todo), batch_size):
                rows = todo[start : start + batch_size]
                batch = torch.stack([encoder.preprocess(load_image(paths[i])) for i in rows])
                tok, emb = encoder.encode_image(batch.to(device))  # (b, N, Dv), (b, De)
                tok, emb = tok.half().cpu(), emb.half().cpu()
                for j, i in enumerate(rows):
                    tokens[i], embeds[i] = tok[j].clone(), emb[j].clone()
                    if self.enabled:
                        payload = {"tokens": tokens[i], "embedding": embeds[i]}
                        _save(self.path(encoder, keys[i]), payload, encoder.identity)
                bar.update(len(rows))
        bar.close()
        encoder.train(was_training)


def _odd_token_counts(tokens: list[Tensor | None], paths: list[Path]) -> list[str]:
    """Drop (set to None) cached tokens whose count N differs from most files' N; returns their problems.

    N depends on the architecture and preprocessing, which the key hashes but the encoder does not state.
    """
    counts = Counter(t.shape[0] for t in tokens if t is not None)
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    problems = []
    for i, t in enumerate(tokens):
        if t is not None and t.shape[0] != usual:
            problems.append(f"{paths[i]}: {t.shape[0]} tokens where the others have {usual}")
            tokens[i] = None
    return problems
