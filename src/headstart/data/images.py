"""Image sources: a folder per class, a CSV of path + label, or in-memory arrays.

Every item is checked when the source is built, so a bad file is named before training
starts, not an hour into it. With ``skip_bad=True`` unreadable images are dropped and
counted instead (``source.skipped``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .medical import (
    MEDICAL_EXTENSIONS,
    MedicalError,
    check_medical,
    expand_slices,
    is_medical,
    item_path,
    load_medical,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)


class DataError(ValueError):
    """Bad input data; the message names the file or row and the fix."""


@dataclass
class ImageSource:
    """Items (file paths or HxW[xC] arrays) with integer labels into ``classes``."""

    items: list
    labels: np.ndarray
    classes: list[str]
    origin: str
    skipped: list[str] = field(default_factory=list)
    # patient / study id of each item (grouped splits keep a group together), or None
    groups: np.ndarray | None = None
    window: str | None = None  # DICOM / NIfTI: how values become grey levels (medical.Window)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        item = self.items[i]
        return str(item) if isinstance(item, (str, Path)) else f"{self.origin}[{i}]"

    def subset(self, indices) -> ImageSource:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSource(
            [self.items[i] for i in indices],
            self.labels[indices],
            self.classes,
            self.origin,
            groups=None if self.groups is None else self.groups[indices],
            window=self.window,
        )

    def fingerprint(self) -> str:
        """Identity of the data for feature caching: paths + sizes + mtimes, or pixel bytes."""
        import hashlib

        h = hashlib.sha256()
        if self.window not in (None, "file"):
            h.update(f"window={self.window}|".encode())
        for item in self.items:
            if isinstance(item, (str, Path)):
                st = os.stat(item_path(item))
                h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}".encode())
            else:
                arr = np.ascontiguousarray(item)
                h.update(f"{arr.shape}{arr.dtype}".encode())
                h.update(arr.tobytes())
        return h.hexdigest()[:24]


def load_image(item, window: str | None = None) -> Image.Image:
    """Any supported image as 8-bit RGB: grey, RGBA/LA (on white), palette, 16-bit, float;
    DICOM / NIfTI windowed as ``window`` says (:mod:`.medical`)."""
    if is_medical(item):
        return load_medical(item, window, high_depth=False)
    if isinstance(item, (str, Path)):
        with Image.open(item) as img:
            img.load()
            return to_rgb(img)
    return to_rgb(array_to_image(np.asarray(item)))


def load_pixels(item, window: str | None = None) -> Image.Image:
    """What the network's input is made from: :func:`load_image`, but a grey DICOM / NIfTI
    image stays float (PIL mode ``F``, 0-255 unrounded) so its depth survives resizing."""
    if is_medical(item):
        return load_medical(item, window, high_depth=True)
    return load_image(item)


def grey_rgb(img: Image.Image) -> Image.Image:
    """A float grey PIL image (mode ``F``, 0-255) as 8-bit RGB (rounded)."""
    arr = np.clip(np.asarray(img, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def uint8_rgb(img: Image.Image) -> np.ndarray:
    """An image as ``uint8 [H, W, 3]`` (a float grey one rounded and repeated)."""
    if img.mode == "F":
        return np.asarray(grey_rgb(img), dtype=np.uint8)
    return np.asarray(img, dtype=np.uint8)


def array_to_image(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise DataError(
            f"arrays of dtype {arr.dtype} are not supported: use uint8 (0-255), "
            "uint16 or float (0-1)"
        )
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise DataError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got {arr.shape}")
    return Image.fromarray(arr)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit: keep the absolute scale (same as uint16 arrays), never stretch per image
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16)
        return array_to_image(arr).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return array_to_image(np.clip(arr, 0, 1) if arr.max() <= 1 else arr / arr.max()).convert(
            "RGB"
        )
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _check_file(path: str) -> str | None:
    """None if the image decodes, else the reason."""
    if is_medical(path):
        return check_medical(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.size[0] < 1 or img.size[1] < 1:
                return "empty image"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_files(
    paths: list[str], skip_bad: bool, what: str, check=None, kind: str = "unreadable image(s)"
) -> tuple[list[int], list[str]]:
    """Run ``check`` (default: decode as an image; it returns None or the reason) on every
    file (threads); return kept indices and skipped names, or raise naming the bad ones."""
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(check or _check_file, paths, chunksize=64))
    bad = [(p, why) for p, why in zip(paths, problems) if why]
    if bad and not skip_bad:
        listed = "\n".join(f"  {p}: {why}" for p, why in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{len(bad)} {kind} in {what}:\n{listed}{more}\n"
            "Fix or remove these files, or pass skip_bad=True (--skip-bad) to leave them out "
            "and report the count."
        )
    if bad:
        log.warning("skipped %d %s in %s (first: %s: %s)", len(bad), kind, what, *bad[0])
    keep = [i for i, why in enumerate(problems) if not why]
    return keep, [p for p, _ in bad]


def _image_files(folder: Path) -> list[str]:
    """Image files anywhere below ``folder``, sorted."""
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file()
        and (p.suffix.lower() in IMAGE_EXTENSIONS or p.name.lower().endswith(MEDICAL_EXTENSIONS))
    )


def existing_path(entry) -> Path | None:
    """``entry`` as a Path when it is a str/Path naming an existing file or folder, else
    None: a text that cannot be a path (a word over 255 bytes, a NUL byte) is None, not
    the OSError a filesystem check raises (a missing file is then its own error row)."""
    if not isinstance(entry, (str, Path)) or (isinstance(entry, str) and not entry.strip()):
        return None  # "" is Path("."), the working folder: an empty text, not a folder
    try:
        path = Path(entry)
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def _csv_path(csv_path: Path, value: str) -> Path:
    """A path from a CSV cell: absolute as is, relative to the CSV's folder otherwise."""
    return Path(value) if Path(value).is_absolute() else csv_path.parent / value


def _check_classes(labels: list[str], what: str) -> list[str]:
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(
            f"{what}: found only {len(classes)} class ({', '.join(classes) or 'none'})"
            "; a classifier needs items of at least two classes"
        )
    return classes


def class_folders(
    root: str | Path, list_files, kind: str, extensions: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """``root/<class>/<file>``: (paths, class names) of the files ``list_files(folder)``
    finds in each class subfolder; an empty class folder raises, named."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory (expected one subfolder per class)")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(
            f"{root}: no class subfolders; put each class's {kind} in {root}/<class name>/"
        )
    paths, labels = [], []
    for d in subdirs:
        files = list_files(d)
        if not files:
            raise DataError(
                f"{d}: class folder '{d.name}' has no {kind} "
                f"({', '.join(extensions)}); add {kind} or remove the folder"
            )
        paths += files
        labels += [d.name] * len(files)
    return paths, labels


def read_csv_rows(csv_path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) of a UTF-8 CSV that must have ``columns``."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            have = reader.fieldnames or []
            for col in columns:
                if col not in have:
                    hint = (
                        "; or, for a CSV of texts, use --task text (TextClassifier)"
                        if "text" in have and "text" not in columns
                        else ""
                    )
                    raise DataError(
                        f"{csv_path}: no column {col!r} (columns: "
                        f"{', '.join(have) or 'none'}); name the columns with "
                        "path_column= / label_column= (--path-column/--label-column)" + hint
                    )
            return list(enumerate(reader, start=2))
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not UTF-8 text ({exc}); save the CSV as UTF-8") from exc


def csv_files(
    csv_path: Path, path_column: str, label_column: str, skip_bad: bool, need_label: bool = True
) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, missing) of a CSV of file paths (relative to the CSV's folder, or
    absolute) and labels; rows naming a missing file raise, named by line, unless
    ``skip_bad``."""
    paths, labels, missing = [], [], []
    for line, row in read_csv_rows(csv_path, (path_column, label_column)):
        rel, label = (row.get(path_column) or "").strip(), (row.get(label_column) or "").strip()
        if not rel or (need_label and not label):
            raise DataError(
                f"{csv_path}, line {line}: empty {path_column!r} or "
                f"{label_column!r}; every row needs both"
            )
        p = _csv_path(csv_path, rel)
        if not p.is_file():
            missing.append(f"line {line}: {p}")
            continue
        paths.append(str(p))
        labels.append(label)
    if missing and not skip_bad:
        listed = "\n".join(f"  {m}" for m in missing[:10])
        raise DataError(
            f"{csv_path}: {len(missing)} row(s) name a file that does not exist:\n"
            f"{listed}\nFix the paths (relative paths are read from the CSV's "
            "folder), or pass skip_bad=True (--skip-bad) to leave them out."
        )
    return paths, labels, missing


def from_folder(
    root: str | Path,
    skip_bad: bool = False,
    classes: list[str] | None = None,
    window: str | None = None,
) -> ImageSource:
    """``root/<class>/<image>``: one subfolder per class, images anywhere below it (DICOM
    and NIfTI too; a multi-frame file or a volume gives one item per slice)."""
    paths, labels = class_folders(
        root, _image_files, "images", IMAGE_EXTENSIONS + MEDICAL_EXTENSIONS
    )
    return _make_source(paths, labels, str(root), skip_bad, classes, window=window)


# CSV columns that look like a patient / study id: a fit warns when one exists but no
# --group-column is set (a random split would put one patient on both sides).
_ID_LIKE = re.compile(
    r"(patient|subject|study|participant|case|person|series|mrn|accession)|(^|_)(pid|sid)$|_id$",
    re.I,
)


def id_like_columns(columns, used: tuple[str, ...]) -> list[str]:
    """The columns of ``columns`` (but ``used``) whose name looks like a patient / study id."""
    return [c for c in columns if c not in used and _ID_LIKE.search(c or "")]


def from_csv(
    csv_path: str | Path,
    path_column: str = "path",
    label_column: str = "label",
    skip_bad: bool = False,
    classes: list[str] | None = None,
    group_column: str | None = None,
    window: str | None = None,
) -> ImageSource:
    """A CSV with a path column (relative to the CSV's folder, or absolute) and a label;
    ``group_column``: a patient / study id per row, which every split keeps together."""
    csv_path = Path(csv_path)
    if group_column and classes is not None:  # data for a fitted model: ids are optional
        have = read_csv_rows(csv_path, (path_column, label_column))
        if have and group_column not in have[0][1]:
            log.info(
                "%s: no %r column; bootstrap intervals resample images, not patients",
                csv_path,
                group_column,
            )
            group_column = None
    columns = (path_column, label_column) + ((group_column,) if group_column else ())
    rows = read_csv_rows(csv_path, columns)
    if group_column is None and classes is None:
        suspects = id_like_columns(rows[0][1].keys() if rows else (), columns)
        if suspects:
            log.warning(
                "%s: column %r looks like a patient / study id but no group column is set: "
                "splits are random over images, so one patient's images can fall on both "
                "sides and inflate the validation score; pass --group-column %s "
                "(group_column=) to keep each one's images together",
                csv_path,
                suspects[0],
                suspects[0],
            )
    paths, labels, missing = csv_files(csv_path, path_column, label_column, skip_bad)
    groups = csv_groups(csv_path, rows, path_column, group_column, paths) if group_column else None
    source = _make_source(paths, labels, str(csv_path), skip_bad, classes, groups, window)
    source.skipped = missing + source.skipped
    return source


def csv_groups(csv_path: Path, rows, path_column: str, group_column: str, paths) -> list[str]:
    """The group id (patient, study, speaker) of each of ``paths`` from the CSV's
    ``group_column`` (``rows``: :func:`read_csv_rows` with that column); empty ids raise."""
    by_path = {}
    for line, row in rows:
        gid = (row.get(group_column) or "").strip()
        if not gid:
            raise DataError(
                f"{csv_path}, line {line}: empty {group_column!r}; every row needs its "
                "group id (patient, study, speaker) or drop --group-column"
            )
        by_path[str(_csv_path(csv_path, (row.get(path_column) or "").strip()))] = gid
    return [by_path[p] for p in paths]


def _make_source(paths, labels, origin, skip_bad, classes, groups=None, window=None) -> ImageSource:
    keep, skipped = check_files(paths, skip_bad, origin)
    paths = [paths[i] for i in keep]
    labels = [labels[i] for i in keep]
    groups = None if groups is None else [groups[i] for i in keep]
    try:
        paths, came_from = expand_slices(paths)  # a multi-frame file: one item per slice
    except MedicalError as exc:
        raise DataError(str(exc)) from exc
    labels = [labels[i] for i in came_from]
    groups = None if groups is None else [groups[i] for i in came_from]
    found = sorted(set(labels))
    if classes is None:  # training data: at least two classes
        classes = _check_classes(labels, origin)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{origin}: label(s) {', '.join(unknown)} are not among the model's "
            f"classes ({', '.join(classes)})"
        )
    index = {c: i for i, c in enumerate(classes)}
    source = ImageSource(
        paths,
        np.array([index[c] for c in labels], dtype=np.int64),
        classes,
        origin,
        skipped,
        groups=None if groups is None else np.asarray(groups, dtype=object),
        window=window,
    )
    counts = Counter(labels)
    log.info(
        "%s: %d images, %d classes (smallest %s: %d)%s",
        origin,
        len(paths),
        len(found),
        *min(counts.items(), key=lambda kv: kv[1]),
        f", skipped {len(skipped)} unreadable" if skipped else "",
    )
    return source


def from_arrays(
    images, labels, classes: list[str] | None = None, origin: str = "array"
) -> ImageSource:
    """In-memory images (N x H x W[xC] array or a list of arrays) and labels.

    Labels may be class names or integers; with ``classes`` given, a label matching a class
    name is that class, else an integer label is a position in ``classes``.
    """
    items = list(images)
    if len(items) != len(labels):
        raise DataError(f"{origin}: {len(items)} images but {len(labels)} labels")
    y, classes = resolve_labels(labels, classes, origin)
    if items:
        array_to_image(np.asarray(items[0]))  # shape/dtype check names the problem early
    return ImageSource(items, y, classes, origin)


def resolve_labels(labels, classes: list[str] | None, origin: str) -> tuple[np.ndarray, list[str]]:
    """In-memory labels -> (positions into the classes, the classes). Without ``classes``
    they are the sorted distinct labels (at least two); with them, a label matching a class
    name is that class, else an integer label is a position in ``classes``."""
    labels = list(np.asarray(labels).tolist())
    given_classes = classes
    if classes is None:
        classes = [str(c) for c in sorted(set(labels))]
        index = {c: i for i, c in enumerate(sorted(set(labels)))}
        y = np.array([index[v] for v in labels], dtype=np.int64)
    else:
        classes = [str(c) for c in classes]
        names = {c: i for i, c in enumerate(classes)}
        # a label is a class name first; an integer that names no class is a position
        y = np.array(
            [names[str(v)] if str(v) in names else v if isinstance(v, int) else -1 for v in labels],
            dtype=np.int64,
        )
        bad = [i for i, v in enumerate(y) if not 0 <= v < len(classes)]
        if bad:
            raise DataError(
                f"{origin}: label {labels[bad[0]]!r} at row {bad[0]} is not one of "
                f"the {len(classes)} classes {classes}"
            )
    if given_classes is None:
        _check_classes(classes, origin)
    return y, classes


def open_source(
    data,
    labels=None,
    *,
    classes=None,
    skip_bad: bool = False,
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
    window: str | None = None,
    groups=None,
) -> ImageSource:
    """Anything users pass as image data -> ImageSource. ``groups``: for in-memory images,
    a patient / study id per image."""
    if isinstance(data, ImageSource):
        if classes is not None and list(classes) != data.classes:  # labels by class name
            names = [data.classes[i] for i in data.labels]
            unknown = sorted(set(names) - set(classes))
            if unknown:
                raise DataError(
                    f"{data.origin}: label(s) {', '.join(unknown)} are not among the "
                    f"model's classes ({', '.join(classes)})"
                )
            index = {c: i for i, c in enumerate(classes)}
            return ImageSource(
                data.items,
                np.array([index[c] for c in names], dtype=np.int64),
                list(classes),
                data.origin,
                data.skipped,
                data.groups,
                data.window,
            )
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.is_dir():
            if group_column:
                raise DataError(
                    f"{p}: group_column={group_column!r} needs a CSV (path, label and the id "
                    "column); a folder of classes has no patient ids"
                )
            return from_folder(p, skip_bad=skip_bad, classes=classes, window=window)
        if p.suffix.lower() == ".csv":
            if not p.is_file():
                raise DataError(f"{p}: no such CSV file")
            return from_csv(
                p,
                path_column,
                label_column,
                skip_bad=skip_bad,
                classes=classes,
                group_column=group_column,
                window=window,
            )
        raise DataError(
            f"{p}: expected a folder with one subfolder per class, or a .csv of path,label rows"
        )
    if labels is None:
        raise DataError("in-memory images need labels: fit(images, labels)")
    source = from_arrays(data, labels, classes=classes)
    if groups is not None:
        if len(groups) != len(source):
            raise DataError(f"{len(source)} images but {len(groups)} group ids")
        source.groups = np.asarray(list(groups), dtype=object)
    return source


def open_inputs(data, *, path_column: str = "path", window: str | None = None) -> ImageSource:
    """Inputs to predict on (labels, if any, are ignored): a folder (flat or per class), a
    CSV with a path column, a list of paths, or arrays. Unreadable files raise, named."""
    if isinstance(data, ImageSource):
        return data
    if isinstance(data, (str, Path)):
        p = Path(data)
        if p.is_dir():
            paths = _image_files(p)
            if not paths:
                raise DataError(f"{p}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
        elif p.suffix.lower() == ".csv" and p.is_file():
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if path_column not in (reader.fieldnames or []):
                    raise DataError(f"{p}: no column {path_column!r}")
                paths = [str(_csv_path(p, r[path_column])) for r in reader]
        elif p.is_file():
            paths = [str(p)]
        else:
            raise DataError(f"{p}: no such file or directory")
        check_files(paths, skip_bad=False, what=str(p))
        paths = _slices(paths)
        return ImageSource(paths, np.zeros(len(paths), dtype=np.int64), [], str(p), window=window)
    items = list(data)
    if items and isinstance(items[0], (str, Path)):
        check_files([str(i) for i in items], skip_bad=False, what="inputs")
        items = _slices([str(i) for i in items])
    return ImageSource(items, np.zeros(len(items), dtype=np.int64), [], "inputs", window=window)


def _slices(paths: list[str]) -> list[str]:
    try:
        return expand_slices(paths)[0]
    except MedicalError as exc:
        raise DataError(str(exc)) from exc
