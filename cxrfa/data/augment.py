"""Batched image transforms for trainable grayscale encoders: augmentation and preprocessing as torch ops.

The per-image path (:func:`cxrfa.data.dataset.train_augment` then the encoder's ``preprocess``, on PIL images)
costs about 0.8 ms per train image on this machine's CPU, most of a from-scratch CNN's data time. Here a split is
decoded once into one uint8 tensor at the encoder's input size, and a whole batch is augmented and standardised
with a few tensor ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

# The draws of one image, in the columns of one torch.rand call (one call per batch, global generator).
_ANGLE, _TX, _TY, _SCALE, _AREA, _RATIO, _X0, _Y0, _BRIGHT, _CONTRAST = range(10)


@dataclass(frozen=True)
class BatchAugment:
    """Random affine, resized crop and brightness/contrast jitter of a batch, one draw per image.

    The distribution family of :func:`cxrfa.data.dataset.train_augment` (torchvision's RandomAffine,
    ColorJitter and RandomResizedCrop), with these differences: the image is sampled once, at the encoder's input
    size rather than the file's (the affine and the crop composed into one :func:`affine_grid` and a
    nearest-neighbour ``grid_sample``, zeros outside the image as RandomAffine's ``fill=0``); translations are continuous rather than whole pixels; a crop
    that would leave the image is clamped to it (torchvision redraws); brightness is applied before contrast
    (torchvision draws the order), and contrast blends towards the mean of the cropped image. No horizontal flip:
    chest anatomy is lateralised.

    Randomness comes from torch's global generator only (one ``torch.rand`` per batch), so a seeded run, and a
    run resumed from a checkpoint that saved the global state, sees the same augmented batches.
    """

    degrees: float = 5.0  # rotation, uniform in +-degrees
    translate: float = 0.04  # shift, uniform in +-translate of the side, each axis
    scale: tuple[float, float] = (0.95, 1.05)  # zoom of the affine
    crop_scale: tuple[float, float] = (0.85, 1.0)  # crop area as a share of the image
    crop_ratio: tuple[float, float] = (0.95, 1.05)  # crop width / height, log-uniform
    brightness: float = 0.15  # factor uniform in 1 +- brightness
    contrast: float = 0.15  # factor uniform in 1 +- contrast

    def __call__(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) float in [0, 1] -> (B, 1, S, S) float in [0, 1], augmented."""
        u = torch.rand(x.shape[0], 10, dtype=torch.float64)  # (B, 10) uniform draws
        grid = affine_grid(self._theta(u).to(x.dtype), x.shape[-1])  # (B, S, S, 2)
        # nearest, as RandomAffine's default: resampling the already resized image bilinearly blurred it (on 256
        # demo train images, mean |Laplacian| 0.189 against 0.257 for the eval images and 0.269 for the per-image
        # path's train images; nearest 0.277), and visual-custom's test AUROC fell by 0.014, 0.033, 0.052 on seeds 2-4
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        bright = _between(u[:, _BRIGHT], 1 - self.brightness, 1 + self.brightness).to(x.dtype)
        contrast = _between(u[:, _CONTRAST], 1 - self.contrast, 1 + self.contrast).to(x.dtype)
        x = (x * bright.view(-1, 1, 1, 1)).clamp_(0, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        c = contrast.view(-1, 1, 1, 1)
        return (x * c + mean * (1 - c)).clamp_(0, 1)

    def _theta(self, u: Tensor) -> Tensor:
        """(B, 10) draws -> (B, 2, 3) maps from output to input coordinates (normalised, [-1, 1])."""
        angle = torch.deg2rad(_between(u[:, _ANGLE], -self.degrees, self.degrees))
        shift = torch.stack([u[:, _TX], u[:, _TY]], 1) * (4 * self.translate) - 2 * self.translate  # (B, 2)
        zoom = _between(u[:, _SCALE], *self.scale)
        area = _between(u[:, _AREA], *self.crop_scale)
        ratio = torch.exp(_between(u[:, _RATIO], math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        half = torch.stack([(area * ratio).sqrt(), (area / ratio).sqrt()], 1).clamp(max=1.0)  # (B, 2) of side
        centre = (torch.stack([u[:, _X0], u[:, _Y0]], 1) * 2 - 1) * (1 - half)  # crop inside the image
        # output u -> crop point p = centre + half * u -> affine source q = R(-angle) (p - shift) / zoom
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        rot = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (B, 2, 2)
        linear = rot * half.unsqueeze(1)  # (B, 2, 2): columns scaled by the crop's half-sides
        offset = (rot @ (centre - shift).unsqueeze(2)).squeeze(2)  # (B, 2)
        return torch.cat([linear, offset.unsqueeze(2)], 2)


def affine_grid(theta: Tensor, size: int) -> Tensor:
    """``F.affine_grid(theta, (B, 1, size, size), align_corners=False)`` by broadcasting: (B, 2, 3) -> (B, S, S, 2).

    Equal to torch's to float rounding; torch's batched matrix product with an inner size of 3 took 4.7 ms for a
    batch of 64 at 64 px on one thread, this 2.0 ms.
    """
    c = (torch.arange(size, dtype=theta.dtype) * 2 + 1) / size - 1  # (S,) pixel centres in [-1, 1]
    a = theta.view(-1, 2, 3, 1, 1)
    x, y = c.view(1, 1, size), c.view(1, size, 1)
    return torch.stack([a[:, i, 0] * x + a[:, i, 1] * y + a[:, i, 2] for i in (0, 1)], -1)


def _between(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


@dataclass(frozen=True)
class GrayPreprocess:
    """An encoder's ``Grayscale(3) -> Resize((S, S)) -> ToTensor -> PerImageStandardize``, split in two.

    :meth:`pixels` is the per-image part, done once per image (8-bit grayscale at S x S), :meth:`finish` the
    rest, on a batch; together they give the same tensors as the per-image transform, bit for bit (tested).
    """

    size: int
    eps: float = 1e-6  # PerImageStandardize's

    def pixels(self, image: Image.Image) -> Tensor:
        """A PIL image -> (1, S, S) uint8: its grayscale resized as torchvision's ``Resize`` does (bilinear)."""
        gray = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(gray, dtype=np.uint8)).unsqueeze(0)

    def finish(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) float32 in [0, 1] (uint8 / 255, as ToTensor) -> (B, 3, S, S), each image standardised."""
        x = x.expand(-1, 3, -1, -1).contiguous()  # (B, 3, S, S): grayscale in three equal channels
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(self.eps)
        return (x - mean) / std
