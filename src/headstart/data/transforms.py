"""Transforms derived from the backbone's preprocessing config, and the image dataset.

Augmentation draws its randomness from a generator seeded by (seed, epoch, item), so an
epoch's batches are identical whatever the number of workers and after a resume (the
torchvision policies run on torch's generator forked and seeded from it). Small sources get
gentler crops; test-time views (``TTA_VIEWS``) are evaluation specs of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from ..zoo.base import PreprocessConfig
from .images import DataError, ImageSource, load_pixels
from .medical import is_medical, medical_size

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

AUGMENT: dict[str, dict[str, Any] | None] = {
    # scale range of random resized crops, flip, colour jitter strength, then a policy of
    # torchvision.transforms.v2 (on the crop, at the input size)
    "none": None,
    "light": {"scale": (0.7, 1.0), "flip": True, "jitter": 0.0},
    "strong": {"scale": (0.35, 1.0), "flip": True, "jitter": 0.3},
    "trivial": {"scale": (0.7, 1.0), "flip": True, "jitter": 0.0, "policy": "trivial"},
    "randaugment": {"scale": (0.7, 1.0), "flip": True, "jitter": 0.0, "policy": "randaugment"},
}
ASPECT = (3 / 4, 4 / 3)  # aspect-ratio range of the random crops

# Tiny sources (median shorter side below SMALL_SOURCE px: sklearn's 8 px digits) are
# tightly framed: a crop of 0.7 of the area cuts the stroke of a digit. Their crops keep at
# least SMALL_CROP of the area with a narrower aspect jitter, SMALL_ASPECT. Not from 28 px
# on: there the floor measured worse (benchmarks/low_data.py; figures in docs/image.md).
SMALL_SOURCE = 20
SMALL_CROP = 0.85
SMALL_ASPECT = (0.9, 1 / 0.9)

# Test-time augmentation: the views whose probabilities are averaged. ``centre`` is the
# evaluation crop itself, ``flip`` its mirror image; the corners are crops of the same side
# from the image resized to ``size / min(crop_pct, 0.875)``.
TTA_VIEWS = {
    "flip": ("centre", "flip"),
    "flip+crops": ("centre", "flip", "top_left", "top_right", "bottom_left", "bottom_right"),
}


def augment_plan(
    augment: str, source_side: float | None = None, crop_min: float | None = None, flip: bool = True
) -> dict[str, Any] | None:
    """The random transforms of a training item: ``augment``'s preset, its crop's area range
    raised to ``crop_min`` when given, else to SMALL_CROP for a small source (median side
    ``source_side`` < SMALL_SOURCE px, with the narrower aspect range); no flip with
    ``flip=False``. None: no augmentation."""
    if augment not in AUGMENT:
        raise ValueError(f"augment={augment!r}: choose one of {', '.join(AUGMENT)}")
    preset = AUGMENT[augment]
    if preset is None:
        return None
    plan = {"policy": None, **preset, "aspect": ASPECT, "flip": preset["flip"] and flip}
    lo, hi = preset["scale"]
    small = crop_min is None and source_side is not None and 0 < source_side < SMALL_SOURCE
    if crop_min is not None:
        if not 0 < crop_min <= 1:
            raise ValueError(f"crop_min must be in (0, 1], got {crop_min}")
        lo = crop_min
    elif small:
        lo, plan["aspect"] = max(lo, SMALL_CROP), SMALL_ASPECT
    plan["scale"] = (lo, max(lo, hi))
    return plan


# Small images are enlarged at most this much (then rounded up to 32 px): enough for
# ImageNet features to see the object at a familiar scale, without paying for the
# backbone's full resolution (the accuracy per size on Fashion-MNIST: docs/image.md).
UPSCALE_CAP = 5


def resolve_image_size(
    requested: int | None, preprocess: PreprocessConfig, median_side: float | None
) -> int:
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
        elif is_medical(item):
            sides.append(min(medical_size(item)))
        else:
            with Image.open(item) as img:
                sides.append(min(img.size))
    return float(np.median(sides)) if sides else 0.0


@dataclass(frozen=True)
class ViewPreprocess(PreprocessConfig):
    """An evaluation input spec for one test-time view (``TTA_VIEWS``); its ``view`` is part
    of ``to_dict``, so the features of each view are cached apart."""

    view: str = "centre"


def tta_preprocesses(preprocess: PreprocessConfig, tta: str) -> list[PreprocessConfig]:
    """The input specs of ``tta``'s views; the centre view is ``preprocess`` itself (its
    features are the ones evaluation has cached already)."""
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta={tta!r}: choose one of none, {', '.join(TTA_VIEWS)}")
    base = {f.name: getattr(preprocess, f.name) for f in fields(PreprocessConfig)}
    return [preprocess if v == "centre" else ViewPreprocess(**base, view=v) for v in TTA_VIEWS[tta]]


class ImageTransform:
    """PIL image -> normalised CHW float tensor at ``size``.

    Evaluation: resize the shorter side to ``size / crop_pct``, centre-crop ``size``
    (the weights' own recipe); a :class:`ViewPreprocess` gives another view of it (its
    mirror image, a corner crop). Training with augmentation (:func:`augment_plan`): random
    resized crop with the preset's scale range (narrower for small sources), horizontal
    flip, optional colour jitter, then the preset's TrivialAugmentWide / RandAugment.
    Every random draw comes from the ``rng`` given per item (the policies run on torch's
    generator, forked and seeded from ``rng``).
    """

    def __init__(
        self,
        size: int,
        preprocess: PreprocessConfig,
        augment: str = "none",
        source_side: float | None = None,
        crop_min: float | None = None,
        flip: bool = True,
    ):
        self.size = int(size)
        self.preprocess = preprocess
        self.augment = augment_plan(augment, source_side, crop_min, flip)
        self.view = getattr(preprocess, "view", "centre")
        if self.view != "centre" and self.view not in TTA_VIEWS["flip+crops"]:
            raise ValueError(
                f"view={self.view!r}: choose one of {', '.join(TTA_VIEWS['flip+crops'])}"
            )
        self.resample = _RESAMPLE.get(preprocess.interpolation, Image.Resampling.BICUBIC)
        self.mean = torch.tensor(preprocess.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std).view(3, 1, 1)
        self.policy = _policy(self.augment["policy"]) if self.augment else None

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.augment is None or rng is None:
            img = self.eval_image(img)
        else:
            img = self._random(img, rng)
        if img.mode == "F":  # a DICOM / NIfTI grey image, float 0-255: depth kept to here
            grey = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).div_(255.0)
            return (grey.unsqueeze(0).expand(3, -1, -1) - self.mean) / self.std
        t = F.pil_to_tensor(img).float().div_(255.0)
        return t.sub_(self.mean).div_(self.std)

    def eval_image(self, img: Image.Image) -> Image.Image:
        """The evaluation crop (``size`` x ``size``) of this transform's view."""
        if self.view in ("centre", "flip"):
            img = self.center_crop(img)
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.view == "flip" else img
        img = self._resize_shorter(
            img, int(math.floor(self.size / min(self.preprocess.crop_pct, 0.875)))
        )
        w, h = img.size
        left = 0 if self.view.endswith("left") else w - self.size
        top = 0 if self.view.startswith("top") else h - self.size
        return img.crop((left, top, left + self.size, top + self.size))

    def center_crop(self, img: Image.Image) -> Image.Image:
        img = self._resize_shorter(img, int(math.floor(self.size / self.preprocess.crop_pct)))
        nw, nh = img.size
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def _resize_shorter(self, img: Image.Image, scale_size: int) -> Image.Image:
        w, h = img.size
        if w <= h:
            nw, nh = scale_size, max(1, int(round(h * scale_size / w)))
        else:
            nw, nh = max(1, int(round(w * scale_size / h))), scale_size
        return img.resize((nw, nh), self.resample)

    def _random(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        plan = self.augment
        assert plan is not None  # __call__ draws only with an augmentation plan
        w, h = img.size
        area = w * h
        lo, hi = plan["scale"]
        a_lo, a_hi = plan["aspect"]
        box = None
        for _ in range(10):
            target = area * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(math.log(a_lo), math.log(a_hi)))
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
        if plan["flip"] and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        jitter = plan["jitter"]
        if img.mode == "F" and (jitter or self.policy is not None):
            # colour jitter and the policies work on 8-bit RGB: round the grey image here
            img = Image.fromarray(np.clip(np.asarray(img) + 0.5, 0, 255).astype(np.uint8))
            img = img.convert("RGB")
        if jitter:
            t = F.pil_to_tensor(img)
            t = F.adjust_brightness(t, 1 + rng.uniform(-jitter, jitter))
            t = F.adjust_contrast(t, 1 + rng.uniform(-jitter, jitter))
            t = F.adjust_saturation(t, 1 + rng.uniform(-jitter, jitter))
            img = F.to_pil_image(t)
        if self.policy is not None:
            # torchvision's policies draw from torch's global generator: fork it and seed it
            # from the item's rng, so the draw is the item's whatever the process or worker
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**62)))
                img = self.policy(img)
        return img


def _policy(name: str | None):
    """The torchvision.transforms.v2 policy of an augment preset (None: none)."""
    if name is None:
        return None
    from torchvision.transforms import v2

    mode = v2.InterpolationMode.BILINEAR
    if name == "trivial":
        return v2.TrivialAugmentWide(interpolation=mode)
    return v2.RandAugment(interpolation=mode)


class ImageDataset(Dataset):
    """(tensor, label) pairs; ``set_epoch`` changes the augmentation draw."""

    def __init__(
        self, source: ImageSource, transform: ImageTransform, seed: int = 0, train: bool = False
    ):
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
            img = load_pixels(self.source.items[i], getattr(self.source, "window", None))
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{self.source.name(i)}: cannot read this image ({exc}); fix or remove it"
            ) from exc
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        return self.transform(img, rng), int(self.source.labels[i])
