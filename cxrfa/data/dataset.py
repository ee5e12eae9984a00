"""Images for training: a robust image loader, the torch Dataset over a manifest, light augmentation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from cxrfa.data.augment import BatchAugment, GrayPreprocess
from cxrfa.data.image_limits import bomb_problem, oversized
from cxrfa.data.manifest import Manifest
from cxrfa.errors import CxrfaError
from cxrfa.io import require_regular


def _to_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    """Scale a 16-bit (or wider) grayscale array to 8 bits.

    The scale is the image's bit depth when its values use it (e.g. 12-bit stored in 16: max 4095), so a
    dark film stays dark; values are never clipped.
    """
    top = float(array.max()) if array.size else 0.0
    depth = max(8, int(np.ceil(np.log2(top + 1.0)))) if top > 0 else 8
    depth = min(depth, bits)
    return (array.astype(np.float64) * (255.0 / (2**depth - 1)) + 0.5).clip(0, 255).astype(np.uint8)


def load_image(path: Path) -> Image.Image:
    """Read a radiograph as an RGB PIL image.

    Handles 8-bit and 16-bit grayscale (16-bit scaled to 8-bit by its bit depth), palette, RGB and RGBA
    (alpha dropped) PNG and JPEG.

    Raises:
        CxrfaError: the file is missing, truncated, not an image or too large to decode safely (the message
            names the file).
    """
    path = require_regular(path, "image")  # a FIFO or device in the data would block the loader forever
    try:
        with Image.open(path) as img:
            if problem := oversized(*img.size):
                raise CxrfaError(f"{path}: {problem}; remove the row or downscale the image")
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
                array = np.asarray(img)
                bits = 16 if img.mode.startswith("I;16") else 32
                return Image.fromarray(_to_uint8(array.astype(np.int64).clip(0), bits), mode="L").convert(
                    "RGB"
                )
            if img.mode == "F":
                array = np.asarray(img, dtype=np.float64)
                lo, hi = float(array.min()), float(array.max())
                scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
                return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                return img.convert("RGBA").convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise CxrfaError(f"{path}: image not found; check the manifest's root and path column") from None
    except Image.DecompressionBombError as err:
        raise CxrfaError(f"{path}: {bomb_problem(err)}; remove the row or downscale the image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CxrfaError(f"{path}: cannot decode image ({err}); the file is corrupt or truncated") from None


class CXRDataset(torch.utils.data.Dataset):
    """One item per manifest row.

    Items are dicts: ``image`` (transform output), ``labels`` (float32 (C,), NaN = unknown), ``index``
    (row in the manifest), ``report`` (str, ``""`` when absent) and ``domain`` (int code; the sorted unique
    ``domain`` values of the manifest, so codes are stable for a given manifest).
    """

    def __init__(
        self,
        manifest: Manifest,
        transform: Callable[[Image.Image], torch.Tensor],
        domains: np.ndarray | None = None,
        keep_decoded: bool = False,
    ) -> None:
        """Args:
        manifest: the rows to serve (often one split of a larger manifest).
        transform: PIL image -> tensor (augmentation composed with the backbone's preprocessing).
        domains: (N,) int domain codes to use instead of this manifest's own, so that the codes of a split
            match those of the full manifest it came from.
        keep_decoded: keep every decoded image in memory after its first read, so later epochs skip file
            I/O and decoding (for datasets that fit in RAM, e.g. the demo; see :func:`fits_in_memory`).
        """
        self.manifest = manifest
        self._decoded: dict[int, Image.Image] | None = {} if keep_decoded else None
        self.transform = transform
        self.labels = torch.from_numpy(manifest.label_matrix())  # (N, C) float32
        values = manifest.frame["domain"].fillna("").astype(str)
        self.domain_names: list[str] = sorted(set(values))
        if domains is None:
            lookup = {name: k for k, name in enumerate(self.domain_names)}
            domains = np.asarray([lookup[d] for d in values], dtype=np.int64)
        if len(domains) != len(manifest):
            raise ValueError(f"domains has {len(domains)} codes for {len(manifest)} rows")
        self.domains = np.asarray(domains, dtype=np.int64)  # (N,)
        self.reports = manifest.frame["report"].fillna("").astype(str).tolist()

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._decoded is None:
            image = load_image(self.manifest.image_path(i))
        elif (image := self._decoded.get(i)) is None:
            image = self._decoded[i] = load_image(self.manifest.image_path(i))
        return self._item(i, self.transform(image))

    def _item(self, i: int, image: torch.Tensor) -> dict[str, Any]:
        """Row ``i``'s item with its transformed ``image``."""
        return {
            "image": image,
            "labels": self.labels[i],
            "index": int(i),
            "report": self.reports[i],
            "domain": int(self.domains[i]),
        }


class PixelCXRDataset(CXRDataset):
    """A split held in memory as one uint8 tensor (N, 1, S, S), transformed a batch at a time with torch ops.

    For trainable grayscale encoders (the custom CNN): each image is decoded and resized once, here, and every
    batch is augmented (train) and standardised as a whole (:mod:`cxrfa.data.augment`). A
    :class:`~torch.utils.data.DataLoader` calls :meth:`__getitems__` with a batch's indices; the items are those
    of :class:`CXRDataset`. Without ``augment`` an image equals the encoder's per-image ``preprocess`` bit for bit.
    """

    def __init__(
        self,
        manifest: Manifest,
        preprocess: GrayPreprocess,
        augment: BatchAugment | None = None,
        domains: np.ndarray | None = None,
    ) -> None:
        """Args:
        manifest: the rows to serve; every image is read now (see :func:`fits_in_memory`).
        preprocess: the encoder's preprocessing, split into the per-image and the batched part.
        augment: the train-time augmentation, drawn from torch's global generator; None for eval splits.
        domains: as :class:`CXRDataset`'s.
        """
        super().__init__(manifest, preprocess.pixels, domains=domains)
        self.preprocess, self.augment = preprocess, augment
        size = preprocess.size
        self.images = torch.empty((len(manifest), 1, size, size), dtype=torch.uint8)  # (N, 1, S, S)
        for i in range(len(manifest)):
            self.images[i] = preprocess.pixels(load_image(manifest.image_path(i)))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        x = self.images[indices].float().div_(255)  # (B, 1, S, S) in [0, 1], as ToTensor
        if self.augment is not None:
            x = self.augment(x)
        images = self.preprocess.finish(x)  # (B, 3, S, S)
        return [self._item(i, images[k]) for k, i in enumerate(indices)]


class PerImageStandardize(torch.nn.Module):
    """(3, H, W) tensor -> zero mean, unit standard deviation over the whole image.

    For CNNs trained from scratch on radiographs: exposure, windowing and bit-depth scaling differ between
    sites, scanners and datasets, so a fixed mean/std (0.5/0.5, or one dataset's statistics) leaves each image's
    brightness and contrast as a feature the network must learn to ignore, and one held-out set's statistics
    are not another's. Standardising each image removes both; a constant image maps to zeros.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / x.std().clamp_min(self.eps)

    def __repr__(self) -> str:  # part of the encoder identity (cache keys): keep it stable and explicit
        return f"{type(self).__name__}(eps={self.eps})"


def train_augment(size: int) -> Callable[[Image.Image], Image.Image]:
    """Light train-time augmentation on PIL images, to compose before a backbone's own transform.

    Small rotation/translation/scale and brightness/contrast jitter; no horizontal flip, because chest
    anatomy is lateralised (the heart is on the patient's left).

    Args:
        size: the side the backbone expects; the random scale crops relative to it.
    """
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomAffine(degrees=5, translate=(0.04, 0.04), scale=(0.95, 1.05), fill=0),
            T.ColorJitter(brightness=0.15, contrast=0.15),
            T.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True),
        ]
    )


def fits_in_memory(manifest: Manifest, budget_bytes: int = 1 << 30) -> bool:
    """Whether every image of ``manifest``, decoded to 8-bit RGB at the size of its first image, fits the budget."""
    if len(manifest) == 0:
        return True
    try:
        with Image.open(manifest.image_path(0)) as first:
            width, height = first.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return False  # reading it fails later, with the file named
    return len(manifest) * width * height * 3 <= budget_bytes
