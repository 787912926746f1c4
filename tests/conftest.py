"""Shared fixtures: small separable image data (arrays, folders, CSVs) and a network block.

The data are tiny on purpose: every test here runs on the random-init ``tiny:cnn`` backbone
(3 layer groups, 32-d features, 32 px input) so the whole fast suite runs in seconds.
Classes differ by colour (class k has channel k bright): global-average-pooled features
separate them, and neither flips nor crops (the light augmentation) change the class.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import types
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

for _name in (
    "headstart",
    "PIL",
    "timm",
    "huggingface_hub",
    "accelerate",
    "httpx",
    "urllib3",
    "filelock",
    "matplotlib",
):
    logging.getLogger(_name).setLevel(logging.WARNING)

CLASS_NAMES = ("a", "b", "c")

# Settings that make tiny:cnn fit the separable data quickly and reliably.
FAST = dict(
    epochs=2,
    head_epochs=2,
    batch_size=16,
    eval_batch_size=64,
    lr=1e-2,
    head_lr=1e-2,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=0,
)


def make_arrays(n: int = 48, size: int = 16, n_classes: int = 2, seed: int = 0):
    """``n`` uint8 RGB images (n, size, size, 3) and their class names, balanced.

    Class k has its channel k bright (170-249) over a noisy dark background (0-79).
    """
    if not 2 <= n_classes <= len(CLASS_NAMES):
        raise ValueError("n_classes must be 2 or 3")
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, size=(n, size, size, 3)).astype(np.uint8)
    labels = np.arange(n) % n_classes
    for i, c in enumerate(labels):
        images[i, :, :, c] += 170
    return images, np.array([CLASS_NAMES[c] for c in labels])


def write_folder(root: Path, images, labels) -> Path:
    """``root/<class>/<i>.png`` for every image."""
    from PIL import Image

    root = Path(root)
    for i, (img, lab) in enumerate(zip(images, labels)):
        (root / str(lab)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / str(lab) / f"{i:03d}.png")
    return root


def write_csv(root: Path, images, labels, name: str = "labels.csv") -> Path:
    """PNGs in ``root/img/`` and ``root/<name>`` with ``path,label`` rows (relative paths)."""
    from PIL import Image

    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png,{lab}")
    csv_path = root / name
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


LETTER_WORDS = ["abc", "bad", "cafe", "dead", "face", "bead", "fade", "aged", "ebb", "gag"]
DIGIT_WORDS = ["123", "456", "789", "2024", "314", "999", "1010", "42", "777", "808"]
# tiny:bert settings for the texts below: chunks of 16 tokens (14 + [CLS]/[SEP]), up to 3
# per text, so the longer texts have several
TEXT_FIT = dict(
    epochs=2,
    head_epochs=6,
    batch_size=8,
    eval_batch_size=32,
    lr=1e-3,
    head_lr=5e-2,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=0,
    val_fraction=0.2,
    truncation="chunks",
    max_length=16,
    max_chunks=3,
    contrastive=0.0,
    min_steps=0,
    baseline=False,
)


def make_texts(
    n: int,
    seed: int,
    max_words: int = 8,
    letters=LETTER_WORDS,
    digits=DIGIT_WORDS,
    min_words: int = 1,
) -> tuple[list[str], list[str]]:
    """Alternately letter words ("letters") and digit words ("digits"),
    min_words..max_words each."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "letters" if i % 2 == 0 else "digits"
        words = letters if label == "letters" else digits
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))))
        labels.append(label)
    return texts, labels


def make_multi_label_texts(
    n: int,
    seed: int,
    min_words: int = 1,
    max_words: int = 5,
    letters=LETTER_WORDS,
    digits=DIGIT_WORDS,
) -> tuple[list[str], list[list[str]]]:
    """Letter words ("letters"), digit words ("digits"), or both (both labels), in turn;
    min_words..max_words of each kind."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        kind = [["letters"], ["digits"], ["digits", "letters"]][i % 3]
        words = [
            rng.choice(letters if k == "letters" else digits)
            for k in kind
            for _ in range(rng.randint(min_words, max_words))
        ]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(kind)
    return texts, labels


@pytest.fixture
def arrays():
    """48 separable 16x16 RGB images, 2 classes ("a", "b")."""
    return make_arrays()


@pytest.fixture
def arrays3():
    """60 separable 16x16 RGB images, 3 classes."""
    return make_arrays(n=60, n_classes=3)


@pytest.fixture
def image_folder(tmp_path, arrays):
    return write_folder(tmp_path / "folder", *arrays)


@pytest.fixture
def image_csv(tmp_path, arrays):
    return write_csv(tmp_path / "csvdata", *arrays)


@pytest.fixture
def make_folder(tmp_path):
    """Factory: ``make_folder(name, n=..., n_classes=..., seed=...)`` -> folder path."""

    def make(name: str = "data", **kw) -> Path:
        return write_folder(tmp_path / name, *make_arrays(**kw))

    return make


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or DNS lookup raises OSError("network blocked by test")."""

    def blocked(*args, **kwargs):
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    yield


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (env and the constants read at import), and no sleeping
    between huggingface_hub's download retries (they would add ~45 s to a blocked call)."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        import huggingface_hub.constants as hf_constants
        import huggingface_hub.utils._http as hf_http
    except ImportError:  # pragma: no cover
        return cache
    monkeypatch.setattr(hf_constants, "HF_HOME", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    fast_time = types.SimpleNamespace(
        **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    )
    fast_time.sleep = lambda seconds: None
    monkeypatch.setattr(hf_http, "time", fast_time)
    return cache


# ---------------------------------------------------------------------- text (tiny:bert)
@pytest.fixture(scope="module")
def tok():
    from headstart.zoo.hf_text import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_bert():
    from headstart.zoo import create_backbone

    return create_backbone("tiny:bert").eval()


@pytest.fixture(scope="module")
def text_data():
    """(train texts, labels), (test texts, labels) of the letters / digits task."""
    from text_common import make_texts

    return make_texts(40, seed=0), make_texts(20, seed=1)
