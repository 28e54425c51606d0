"""Batched augmentation on the training device, and the per-epoch random stream.

Everything random about an epoch (order, crop offsets, flips) is drawn up front for the
whole data set from one generator seeded by (seed, epoch), then indexed by the sample's
position in that epoch. A process therefore needs only its slice of each global batch to
reproduce exactly what a single process would have done with it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "epoch_seed",
    "epoch_generator",
    "crop_flip",
    "RESIZED_CROP_SCALE",
    "random_resized_boxes",
    "resized_crop_flip",
    "normalize",
    "normalize_coefficients",
]

# ImageNet, and the authors' CIFAR-10 recipe, normalise with these (method document, section 5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A 63-bit seed mixed from (seed, epoch, ...), well separated for neighbouring inputs."""
    words = [int(v) for v in (seed, epoch, *more)]
    if any(v < 0 for v in words):
        raise ValueError(f"seed and epoch must be non-negative, got {tuple(words)}")
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for epoch ``epoch`` of a run seeded with ``seed``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(epoch_seed(seed, epoch))
    return g


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Random crop with zero padding and horizontal flip of a whole batch, in one gather.

    Equivalent, image by image, to zero-padding by ``pad`` on every side, cutting the
    H x W window whose top-left corner is ``offsets[i] = (dy, dx)`` in the padded image,
    and mirroring it left-right where ``flips[i]``.

    Args:
        images: (B, C, H, W), any dtype (uint8 keeps the gather cheap).
        offsets: (B, 2) integer (dy, dx), each in [0, 2 * pad].
        flips: (B,) bool.
        pad: padding on each side.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if offsets.shape != (b, 2) or flips.shape != (b,):
        raise ValueError(f"offsets must be ({b}, 2) and flips ({b},), got {tuple(offsets.shape)}, {tuple(flips.shape)}")
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    rows = offsets[:, :1].to(dev) + ys  # (B, H)
    # a flip reads the window's columns right to left
    xs_both = torch.where(flips.to(dev)[:, None], (w - 1) - xs, xs)
    cols = offsets[:, 1:].to(dev) + xs_both  # (B, W)
    # Gather rows, then columns, on a (B, C, ., .) view: two cheap index_select-like gathers
    # instead of one 4-index advanced index (which materialises B*C*H*W int64 indices).
    wp = padded.shape[-1]
    out = torch.gather(padded, 2, rows[:, None, :, None].expand(b, c, h, wp))
    return torch.gather(out, 3, cols[:, None, None, :].expand(b, c, h, w))


# Area fraction of a random resized crop. torchvision's 0.08 suits ImageNet's 1.28M images; a data
# set of a few thousand images learns faster from milder crops.
RESIZED_CROP_SCALE = (0.25, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_boxes(g: torch.Generator, n: int, scale: tuple[float, float] = RESIZED_CROP_SCALE,
                         ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> Tensor:
    """(n, 4) crop windows ``(left, top, width, height)`` as fractions of a square image's side.

    The area fraction is uniform in ``scale`` and the aspect ratio log-uniform in ``ratio``, as in
    RandomResizedCrop; a side longer than the image is cut to it (one draw, no retries, so the
    number of draws per sample is fixed and the stream does not depend on the values).
    """
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    log_ratio = torch.empty(n).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=g)
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    corner = torch.rand(n, 2, generator=g)
    return torch.stack([corner[:, 0] * (1 - w), corner[:, 1] * (1 - h), w, h], dim=1)


def resized_crop_flip(images: Tensor, boxes: Tensor, flips: Tensor, size: int) -> Tensor:
    """Cut each image's window ``boxes[i]`` (from :func:`random_resized_boxes`), resize it bilinearly to
    ``size`` x ``size`` and mirror it where ``flips[i]``: the whole batch in one ``grid_sample``.

    Args:
        images: (B, C, H, W), any dtype; the result is float32 in the same value range.
        boxes: (B, 4) ``(left, top, width, height)`` fractions of the side.
        flips: (B,) bool.
        size: output side.
    """
    if images.dim() != 4 or boxes.shape != (images.shape[0], 4) or flips.shape != (images.shape[0],):
        raise ValueError(f"images must be (B, C, H, W), boxes (B, 4) and flips (B,), got {tuple(images.shape)}, "
                         f"{tuple(boxes.shape)}, {tuple(flips.shape)}")
    b = images.shape[0]
    boxes = boxes.to(images.device, torch.float32)
    left, top, w, h = boxes.unbind(1)
    # affine_grid maps output coordinates in [-1, 1] to input ones in [-1, 1] (a side spans 2)
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32)
    theta = torch.zeros(b, 2, 3, device=images.device)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * left + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize_coefficients(
    mean: Sequence[float], std: Sequence[float], scale: float = 1.0 / 255, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """``(mul, add)`` of shape (1, C, 1, 1) with ``(x * scale - mean) / std == x * mul + add``.

    Loaders make them once, so no small host-to-device copy happens per batch.
    """
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need one entry per channel and std > 0, got {tuple(mean)}, {tuple(std)}")
    c = len(std)
    mul = torch.tensor([scale / s for s in std], dtype=torch.float32, device=device).view(1, c, 1, 1)
    add = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=device).view(1, c, 1, 1)
    return mul, add


def normalize(
    x: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float = 1.0 / 255,
    coefficients: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """float32 ``(x * scale - mean) / std`` per channel, as one fused multiply-add.

    Pass ``coefficients`` from :func:`normalize_coefficients` instead of ``mean``/``std``
    to skip rebuilding them.
    """
    if coefficients is None:
        if mean is None or std is None:
            raise ValueError("normalize needs mean and std, or coefficients")
        coefficients = normalize_coefficients(mean, std, scale, x.device)
    mul, add = coefficients
    if mul.shape[1] != x.shape[1]:
        raise ValueError(f"mean/std have {mul.shape[1]} entries for {x.shape[1]} channels")
    return torch.addcmul(add, x.to(torch.float32), mul)
