"""Transforms derived from the backbone's preprocessing config, and the image dataset.

Augmentation draws its randomness from a generator seeded by (seed, epoch, item), so an
epoch's batches are identical whatever the number of workers and after a resume.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from ..zoo.base import PreprocessConfig
from .images import DataError, ImageSource, load_image

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
             "lanczos": Image.LANCZOS}

AUGMENT = {
    # scale range of random resized crops, flip, colour jitter strength
    "none": None,
    "light": {"scale": (0.7, 1.0), "flip": True, "jitter": 0.0},
    "strong": {"scale": (0.35, 1.0), "flip": True, "jitter": 0.3},
}


# Small images are enlarged at most this much (then rounded up to 32 px): enough for
# ImageNet features to see the object at a familiar scale, without paying for the
# backbone's full resolution. Fashion-MNIST (28 px) with Lite0 features + linear probe,
# 3000 test images: 96 px 80.5%, 128 px 83.0%, 160 px 83.3%, 192 px 83.7%; LP-FT at 160 px
# 85.7% vs ~85% at 128 px.
UPSCALE_CAP = 5


def resolve_image_size(requested: int | None, preprocess: PreprocessConfig,
                       median_side: float | None) -> int:
    """The side to feed the backbone: as asked, else its own size, capped for small images."""
    if requested:
        return int(requested)
    size = preprocess.input_size
    if median_side:
        size = min(size, max(64, int(math.ceil(UPSCALE_CAP * median_side / 32) * 32)))
    return size


def median_side(source: ImageSource, sample: int = 64) -> float:
    """Median shorter side over (a sample of) the images, read from headers only."""
    step = max(1, len(source) // sample)
    sides = []
    for item in source.items[::step][:sample]:
        if isinstance(item, np.ndarray):
            shape = item.shape if item.ndim == 2 or item.shape[-1] in (1, 3, 4) else item.shape[1:]
            sides.append(min(shape[:2]))
        else:
            with Image.open(item) as img:
                sides.append(min(img.size))
    return float(np.median(sides)) if sides else 0.0


class ImageTransform:
    """PIL image -> normalised CHW float tensor at ``size``.

    Evaluation: resize the shorter side to ``size / crop_pct``, centre-crop ``size``
    (the weights' own recipe). Training with augmentation: random resized crop with the
    preset's scale range, horizontal flip, optional colour jitter.
    """

    def __init__(self, size: int, preprocess: PreprocessConfig, augment: str = "none"):
        if augment not in AUGMENT:
            raise ValueError(f"augment={augment!r}: choose one of {', '.join(AUGMENT)}")
        self.size = int(size)
        self.preprocess = preprocess
        self.augment = AUGMENT[augment]
        self.resample = _RESAMPLE.get(preprocess.interpolation, Image.BICUBIC)
        self.mean = torch.tensor(preprocess.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std).view(3, 1, 1)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.augment is None or rng is None:
            img = self.center_crop(img)
        else:
            img = self._random(img, rng)
        t = F.pil_to_tensor(img).float().div_(255.0)
        return t.sub_(self.mean).div_(self.std)

    def center_crop(self, img: Image.Image) -> Image.Image:
        scale_size = int(math.floor(self.size / self.preprocess.crop_pct))
        w, h = img.size
        if w <= h:
            nw, nh = scale_size, max(1, int(round(h * scale_size / w)))
        else:
            nw, nh = max(1, int(round(w * scale_size / h))), scale_size
        img = img.resize((nw, nh), self.resample)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def _random(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = img.size
        area = w * h
        lo, hi = self.augment["scale"]
        box = None
        for _ in range(10):
            target = area * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                left = int(rng.integers(0, w - cw + 1))
                top = int(rng.integers(0, h - ch + 1))
                box = (left, top, left + cw, top + ch)
                break
        if box is None:  # fall back to a centred square crop
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        img = img.resize((self.size, self.size), self.resample, box=box)
        if self.augment["flip"] and rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        jitter = self.augment["jitter"]
        if jitter:
            t = F.pil_to_tensor(img)
            t = F.adjust_brightness(t, 1 + rng.uniform(-jitter, jitter))
            t = F.adjust_contrast(t, 1 + rng.uniform(-jitter, jitter))
            t = F.adjust_saturation(t, 1 + rng.uniform(-jitter, jitter))
            img = F.to_pil_image(t)
        return img


class ImageDataset(Dataset):
    """(tensor, label) pairs; ``set_epoch`` changes the augmentation draw."""

    def __init__(self, source: ImageSource, transform: ImageTransform, seed: int = 0,
                 train: bool = False):
        self.source = source
        self.transform = transform
        self.seed = int(seed)
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.source.items[i])
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.source.name(i)}: cannot read this image ({exc}); fix or "
                            "remove it") from exc
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        return self.transform(img, rng), int(self.source.labels[i])
