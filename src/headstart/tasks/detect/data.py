"""The detector's data: training tiles with their boxes (flips and colour jitter as
augmentation, seeded per epoch and item), the validation images, one collate for both,
and image decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...data.boxes import BoxSample, BoxSource
from ...data.images import DataError, _image_files, load_image


def load_rgb(path: str) -> np.ndarray:
    """An image file as HxWx3 uint8 (the classifiers' decoding: grey, 16-bit, RGBA on
    white); a missing or corrupt file is a DataError naming it."""
    from PIL import UnidentifiedImageError

    try:
        return np.asarray(load_image(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None


def list_images(X) -> list[str]:
    """Image files of ``X``: a file, a folder, or a list of them."""
    if isinstance(X, (str, Path)):
        X = [X]
    out = []
    for item in X:
        p = Path(item)
        if p.is_dir():
            found = _image_files(p)
            if not found:
                raise DataError(f"{p}: no images found in this folder")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p}: no such image or folder")
    return out


class TileDataset(torch.utils.data.Dataset):
    """Training tiles: (image tensor 0-1 CHW, target with boxes in tile pixels, labels
    1..K), with flips (and colour jitter with ``strong``) as augmentation, drawn from
    (seed, epoch, item): the same in a resumed fit and in every process."""

    def __init__(self, tiles: BoxSource, classes: list[str], augment: str, seed: int):
        self.tiles, self.index = tiles, {c: i + 1 for i, c in enumerate(classes)}
        self.augment, self.seed, self.epoch = augment, seed, 0
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, path: str) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = load_rgb(path)
        return self._cache[path]

    def __getitem__(self, i: int):
        s = self.tiles.samples[i]
        x0, y0, x1, y1 = s.region()
        pixels = torch.from_numpy(np.array(self.image(s.path)[y0:y1, x0:x1]))
        image = pixels.permute(2, 0, 1).float().div_(255)
        boxes = torch.as_tensor(s.boxes, dtype=torch.float32).reshape(-1, 4).clone()
        boxes[:, [0, 2]] -= x0
        boxes[:, [1, 3]] -= y0
        labels = torch.tensor([self.index[c] for c in s.labels], dtype=torch.int64)
        if self.augment != "none":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + i)
            w, h = x1 - x0, y1 - y0
            if torch.rand(1, generator=g) < 0.5:
                image = image.flip(-1)
                boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
            if self.augment == "strong":
                if torch.rand(1, generator=g) < 0.5:
                    image = image.flip(-2)
                    boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
                scale = 1 + 0.4 * (torch.rand(2, generator=g) - 0.5)  # brightness, contrast
                mean = image.mean()
                image = ((image - mean) * scale[1] + mean * scale[0]).clamp_(0, 1)
        return image, {"boxes": boxes, "labels": labels}


class ImageSet(torch.utils.data.Dataset):
    """Validation: the annotated images (or image windows) themselves, evaluated whole by
    tiled inference as predictions are."""

    def __init__(self, source: BoxSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> BoxSample:
        return self.source.samples[i]


def collate(batch):
    """Training tiles -> ((images, targets), boxes per tile); validation images -> (the
    samples, boxes per image). The second part is what the loop counts items by."""
    if isinstance(batch[0], BoxSample):
        return list(batch), torch.tensor([len(s.boxes) for s in batch])
    images, targets = [b[0] for b in batch], [b[1] for b in batch]
    return (images, targets), torch.tensor([len(t["boxes"]) for t in targets])
