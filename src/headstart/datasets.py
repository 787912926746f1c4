"""Real labeled datasets that install offline (see shared OFFLINE_ASSETS.md).

Each loader says exactly how to obtain its data when it is missing.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]


class DatasetMissing(FileNotFoundError):
    pass


def fashion_mnist(split: str = "train", root: str | Path | None = None):
    """Fashion-MNIST official split as (uint8 images N x 28 x 28, int64 labels, class names).

    Offline source: the Debian package ``dataset-fashion-mnist`` (MIT licence).
    """
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    root = Path(root) if root else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DatasetMissing(
            f"Fashion-MNIST not found in {root}. Install it offline with: apt-get update && "
            "apt-get install -y dataset-fashion-mnist (or pass root= to a folder holding the "
            "four IDX .gz files)")
    with gzip.open(images, "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels, "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x.copy(), y, list(FASHION_MNIST_CLASSES)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` items of every class, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} items, fewer than {per_class}")
        out.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))


def export_image_folder(images: np.ndarray, labels: np.ndarray, classes: list[str],
                        out: str | Path) -> Path:
    """Write images as PNGs in ``out/<class>/<index>.png`` (a folder any tool can read)."""
    from PIL import Image

    out = Path(out)
    safe = [c.replace("/", "-") for c in classes]
    for name in safe:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(out / safe[int(lab)] / f"{i:05d}.png")
    return out
