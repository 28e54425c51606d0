"""Batched crop/flip/normalise against hand-checked cases and a per-image reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recu.data.augment import IMAGENET_MEAN, IMAGENET_STD, crop_flip, epoch_generator, epoch_seed, normalize


def reference(images, offsets, flips, pad):
    padded = F.pad(images, (pad,) * 4)
    h, w = images.shape[-2:]
    out = []
    for img, (dy, dx), f in zip(padded, offsets.tolist(), flips.tolist()):
        crop = img[:, dy:dy + h, dx:dx + w]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


def test_centre_offset_is_identity_and_shift_moves_pixels():
    img = torch.arange(1, 3 * 32 * 32 + 1).reshape(1, 3, 32, 32).to(torch.int32)
    no = torch.tensor([False])
    assert torch.equal(crop_flip(img, torch.tensor([[4, 4]]), no, 4), img)
    # corner (0, 0) of the padded image: 4 zero rows/cols on top/left, then the image shifted down-right
    out = crop_flip(img, torch.tensor([[0, 0]]), no, 4)
    assert torch.all(out[..., :4, :] == 0) and torch.all(out[..., :, :4] == 0)
    assert torch.equal(out[..., 4:, 4:], img[..., :28, :28])
    # corner (8, 5): up by 4 rows, left by 1 column, zeros enter bottom rows and right column
    out = crop_flip(img, torch.tensor([[8, 5]]), no, 4)
    assert torch.equal(out[..., :28, :31], img[..., 4:, 1:])
    assert torch.all(out[..., 28:, :] == 0) and torch.all(out[..., :, 31:] == 0)


def test_flip_is_torch_flip_of_the_crop():
    torch.manual_seed(1)
    img = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.randint(0, 9, (5, 2))
    plain = crop_flip(img, offsets, torch.zeros(5, dtype=torch.bool), 4)
    flipped = crop_flip(img, offsets, torch.ones(5, dtype=torch.bool), 4)
    assert torch.equal(flipped, torch.flip(plain, dims=[-1]))
    assert torch.equal(crop_flip(img, torch.full((5, 2), 4), torch.ones(5, dtype=torch.bool), 4), img.flip(-1))


@pytest.mark.parametrize("pad,shape,dtype", [(4, (16, 3, 32, 32), torch.uint8), (1, (9, 1, 8, 8), torch.float32),
                                             (2, (4, 2, 5, 7), torch.int64)])
def test_matches_per_image_reference(pad, shape, dtype):
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 200, shape, generator=g).to(dtype)
    offsets = torch.randint(0, 2 * pad + 1, (shape[0], 2), generator=g)
    flips = torch.randint(0, 2, (shape[0],), generator=g).bool()
    out = crop_flip(img, offsets, flips, pad)
    assert out.dtype == dtype and out.shape == img.shape
    assert torch.equal(out, reference(img, offsets, flips, pad))


def test_crop_flip_rejects_bad_shapes():
    with pytest.raises(ValueError, match="offsets"):
        crop_flip(torch.zeros(2, 3, 4, 4), torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="B, C, H, W"):
        crop_flip(torch.zeros(3, 4, 4), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.bool), 1)


def test_normalize_uses_imagenet_statistics():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], -mean / std)  # the padding value: zero pixels
    assert torch.allclose(out[1, :, 1, 1], (1 - mean) / std)
    with pytest.raises(ValueError, match="channels"):
        normalize(x, (0.5,), (0.5,))


def test_epoch_stream_is_a_function_of_seed_and_epoch():
    assert epoch_seed(0, 1) == epoch_seed(0, 1)
    seeds = {epoch_seed(s, e) for s in range(4) for e in range(50)}
    assert len(seeds) == 200  # (seed, epoch) pairs never collide here, unlike seed + epoch
    a = torch.randperm(100, generator=epoch_generator(7, 3))
    b = torch.randperm(100, generator=epoch_generator(7, 3))
    c = torch.randperm(100, generator=epoch_generator(7, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        epoch_seed(-1, 0)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), pad=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_crop_flip_property(b, c, h, w, pad, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
    flips = torch.randint(0, 2, (b,), generator=g).bool()
    assert torch.equal(crop_flip(img, offsets, flips, pad), reference(img, offsets, flips, pad))
