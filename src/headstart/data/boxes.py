"""Object-detection data: images with labelled boxes, in COCO JSON, Pascal VOC XML or YOLO txt.

Every reader returns a :class:`BoxSource` - one :class:`BoxSample` per image, boxes as
absolute ``xmin, ymin, xmax, ymax`` pixels - and every writer takes one, so any format
converts to any other (``headstart convert-boxes``). Each box is checked when read: a box
outside its image, of zero area, or of a class the model does not know stops with an error
that names the file and the box and says how to fix it (``fix="clip"`` clips boxes that
stick out of the image, ``fix="drop"`` drops the bad ones and counts them).

Large images are cut into overlapping tiles (:func:`tile_windows`) for training and
inference; :func:`merge_tile_detections` puts the tiles' boxes back together.

Long file: three annotation formats, their checks and tiling, kept together so a box read in
one format is written in another by the same code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .images import IMAGE_EXTENSIONS, DataError

log = logging.getLogger(__name__)

FORMATS = ("coco", "voc", "yolo")
FIXES = ("error", "clip", "drop")


@dataclass
class BoxSample:
    """One image and its boxes. ``window`` (x0, y0, x1, y1) restricts the sample to a part
    of the image (a spatial train/validation split); ``None`` = the whole image."""

    path: str
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32 xmin, ymin, xmax, ymax (absolute pixels)
    labels: list[str]
    window: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = [str(v) for v in self.labels]
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{self.path}: {len(self.boxes)} boxes but {len(self.labels)} labels")

    @property
    def name(self) -> str:
        base = Path(self.path).name
        return base if self.window is None else f"{base}@{','.join(map(str, self.window))}"

    def region(self) -> tuple[int, int, int, int]:
        return self.window or (0, 0, self.width, self.height)


@dataclass
class BoxSource:
    """Images with boxes; ``classes`` fixes the class order (index 0 = the first class)."""

    samples: list[BoxSample]
    classes: list[str]
    origin: str
    dropped: list[str] = field(default_factory=list)  # "file: box k ..." with fix="drop"

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_boxes(self) -> int:
        return sum(len(s.boxes) for s in self.samples)

    def subset(self, indices) -> BoxSource:
        return BoxSource([self.samples[i] for i in indices], self.classes, self.origin)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.samples:
            st = os.stat(s.path)
            h.update(f"{s.path}|{st.st_size}|{st.st_mtime_ns}|{s.window}|".encode())
            h.update(s.boxes.tobytes())
            h.update("|".join(s.labels).encode())
        h.update("|".join(self.classes).encode())
        return h.hexdigest()[:24]

    def label_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for s in self.samples:
            for label in s.labels:
                counts[label] = counts.get(label, 0) + 1
        return counts


# ----------------------------------------------------------------------------- checks
def check_boxes(
    path: str,
    width: int,
    height: int,
    boxes: np.ndarray,
    labels: list[str],
    classes: list[str] | None,
    fix: str = "error",
    where: list[str] | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Validate boxes of one image; returns (boxes, labels, dropped descriptions).

    ``where``: how to name each box in messages (default ``box k``)."""
    if fix not in FIXES:
        raise ValueError(f"fix={fix!r}: choose one of {', '.join(FIXES)}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    keep, dropped = [], []
    for k, (box, label) in enumerate(zip(boxes, labels)):
        name = where[k] if where else f"box {k}"
        x0, y0, x1, y1 = (float(v) for v in box)
        coords = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        problem = None
        if not np.all(np.isfinite(box)):
            problem = f"{name} {coords} has a non-numeric coordinate"
        elif classes is not None and label not in classes:
            problem = (
                f"{name} {coords} has class {label!r}, which is not one of the "
                f"model's classes {classes}; rename it or train a model with it"
            )
        elif x1 <= x0 or y1 <= y0:
            problem = (
                f"{name} {coords} has zero or negative area (xmax must exceed xmin and "
                "ymax ymin); fix or delete it"
            )
        elif x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            if fix == "clip":
                box[:] = (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height))
                if box[2] <= box[0] or box[3] <= box[1]:
                    problem = f"{name} {coords} lies entirely outside the {width}x{height} image"
            else:
                problem = (
                    f"{name} {coords} lies outside the {width}x{height} image; fix it, "
                    "or clip such boxes to the image (fix='clip', CLI --fix-boxes clip)"
                )
        if problem is None:
            keep.append(k)
        elif fix == "error":
            raise DataError(f"{path}: {problem}")
        else:
            dropped.append(f"{path}: {problem}")
    return boxes[keep], [labels[k] for k in keep], dropped


def _image_size(path: Path, origin: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(
            f"{origin}: the image {path} does not exist; fix the file name or put the image there"
        ) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{origin}: the image {path} cannot be read ({exc})") from None


def _finish(
    samples: list[BoxSample], classes: list[str] | None, origin: str, dropped: list[str]
) -> BoxSource:
    if not samples:
        raise DataError(f"{origin}: no annotated images found")
    if classes is None:
        classes = sorted({label for s in samples for label in s.labels})
    if not classes:
        raise DataError(f"{origin}: no boxes at all; a detector needs labelled boxes")
    if dropped:
        log.warning("%s: dropped %d bad box(es), e.g. %s", origin, len(dropped), dropped[0])
    return BoxSource(samples, list(classes), origin, dropped)


# ----------------------------------------------------------------------------- VOC
def read_voc(
    path: str | Path,
    classes: list[str] | None = None,
    fix: str = "error",
    images: str | Path | None = None,
    label_map: dict | None = None,
) -> BoxSource:
    """Pascal VOC: one XML per image (a file, or a folder searched recursively). The image
    is ``<filename>`` beside the XML, in ``images``, or in a sibling ``JPEGImages``."""
    path = Path(path)
    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .xml annotation files found")
    samples, dropped = [], []
    for xml in files:
        try:
            root = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            raise DataError(f"{xml}: not a readable Pascal VOC XML file ({exc})") from None
        if root.tag != "annotation":
            raise DataError(
                f"{xml}: the root element is <{root.tag}>, not <annotation>: not a Pascal VOC file"
            )
        filename = root.findtext("filename")
        if not filename:
            raise DataError(f"{xml}: no <filename>: which image do these boxes belong to?")
        image = _find_image(xml, filename.strip(), images, root.findtext("path"))
        width, height = _image_size(image, str(xml))
        size = root.find("size")
        if size is not None and size.findtext("width"):
            try:
                declared = (
                    int(float(size.findtext("width") or "")),
                    int(float(size.findtext("height") or "")),
                )
            except ValueError:
                raise DataError(
                    f"{xml}: <size> needs a numeric <width> and <height>; fix them or remove <size>"
                ) from None
            if declared != (width, height):
                raise DataError(
                    f"{xml}: <size> says {declared[0]}x{declared[1]} but {image} is "
                    f"{width}x{height}; fix <size> or the image"
                )
        boxes, labels, where = [], [], []
        for k, obj in enumerate(root.findall("object")):
            name = (obj.findtext("name") or "").strip()
            bb = obj.find("bndbox")
            if bb is None:
                raise DataError(f"{xml}: <object> {k} ({name!r}) has no <bndbox>")
            try:
                boxes.append(
                    [float(bb.findtext(t) or "") for t in ("xmin", "ymin", "xmax", "ymax")]
                )
            except (TypeError, ValueError):
                raise DataError(
                    f"{xml}: <object> {k} ({name!r}): <bndbox> needs numeric xmin, ymin, xmax, ymax"
                ) from None
            labels.append(label_map.get(name, name) if label_map else name)
            where.append(f"<object> {k} ({name!r})")
        b, lab, bad = check_boxes(
            str(xml), width, height, np.array(boxes), labels, classes, fix, where
        )
        dropped += bad
        samples.append(BoxSample(str(image), width, height, b, lab))
    return _finish(samples, classes, str(path), dropped)


def _find_image(
    ann: Path, filename: str, images: str | Path | None, recorded: str | None = None
) -> Path:
    candidates = [Path(images) / filename] if images else []
    candidates += [ann.parent / filename, ann.parent.parent / "JPEGImages" / filename]
    if recorded and recorded.strip():  # <path>: where the image was when it was annotated
        candidates.append(Path(recorded.strip()))
    for c in candidates:
        if c.is_file():
            return c
    stem = Path(filename).stem  # VOC files often name a .tif that was converted to .png
    for folder in {c.parent for c in candidates}:
        for ext in IMAGE_EXTENSIONS:
            c = folder / f"{stem}{ext}"
            if c.is_file():
                return c
    raise DataError(
        f"{ann}: its image {filename!r} was not found (looked in "
        f"{', '.join(str(c.parent) for c in candidates)}); pass the image folder"
    )


def write_voc(source: BoxSource, out: str | Path) -> Path:
    """One XML per image into ``out`` (images are referenced by path, not copied)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in _whole_images(source):
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = str(Path(s.path).parent)
        ET.SubElement(root, "filename").text = Path(s.path).name
        ET.SubElement(root, "path").text = str(Path(s.path).resolve())
        size = ET.SubElement(root, "size")
        for tag, v in (("width", s.width), ("height", s.height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for box, label in zip(s.boxes, s.labels):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = label
            ET.SubElement(obj, "difficult").text = "0"
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bb, tag).text = f"{float(v):.10g}"
        ET.indent(root)
        _atomic_text(out / f"{Path(s.path).stem}.xml", ET.tostring(root, encoding="unicode"))
    return out


# ----------------------------------------------------------------------------- COCO
def read_coco(
    path: str | Path,
    classes: list[str] | None = None,
    fix: str = "error",
    images: str | Path | None = None,
    label_map: dict | None = None,
) -> BoxSource:
    """COCO JSON (``images``, ``annotations`` with ``bbox`` = x, y, width, height,
    ``categories``); image paths are relative to ``images`` or the JSON's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable COCO JSON file ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{path}: no {key!r} list: not a COCO detection file")
    cats = {c["id"]: (label_map or {}).get(c["name"], c["name"]) for c in data["categories"]}
    by_image: dict = {img["id"]: [] for img in data["images"]}
    for k, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in by_image:
            raise DataError(
                f"{path}: annotation {k} (id {ann.get('id')}) refers to image_id "
                f"{ann.get('image_id')}, which is not in 'images'"
            )
        by_image[ann["image_id"]].append((k, ann))
    root = Path(images) if images else path.parent
    samples, dropped = [], []
    for img in data["images"]:
        image = root / img["file_name"]
        width, height = _image_size(image, str(path))
        if (img.get("width"), img.get("height")) not in ((None, None), (width, height)):
            raise DataError(
                f"{path}: image {img['file_name']!r} is declared "
                f"{img.get('width')}x{img.get('height')} but is {width}x{height}"
            )
        boxes, labels, where = [], [], []
        for k, ann in by_image[img["id"]]:
            if ann.get("category_id") not in cats:
                raise DataError(
                    f"{path}: annotation {k} (id {ann.get('id')}) of "
                    f"{img['file_name']!r} has category_id {ann.get('category_id')}, "
                    f"which is not in 'categories' ({sorted(cats)})"
                )
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    f"{path}: annotation {k} (id {ann.get('id')}) needs a 'bbox' "
                    "of 4 numbers [x, y, width, height]"
                ) from None
            boxes.append([x, y, x + w, y + h])
            labels.append(cats[ann["category_id"]])
            where.append(f"annotation {k} (id {ann.get('id')}, {labels[-1]!r})")
        b, lab, bad = check_boxes(
            f"{path} [{img['file_name']}]",
            width,
            height,
            np.array(boxes),
            labels,
            classes,
            fix,
            where,
        )
        dropped += bad
        samples.append(BoxSample(str(image), width, height, b, lab))
    if classes is None:
        names = []
        for c in data["categories"]:
            name = cats[c["id"]]
            if name not in names:
                names.append(name)
        classes = names
    return _finish(samples, classes, str(path), dropped)


def write_coco(source: BoxSource, out: str | Path) -> Path:
    """One COCO JSON; ``file_name`` is relative to the JSON's folder where it can be."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cat_id = {c: i + 1 for i, c in enumerate(source.classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, s in enumerate(_whole_images(source), start=1):
        images.append(
            {
                "id": i,
                "file_name": _relative(s.path, out.parent),
                "width": s.width,
                "height": s.height,
            }
        )
        for box, label in zip(s.boxes, s.labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cat_id[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id[c], "name": c} for c in source.classes],
    }
    _atomic_text(out, json.dumps(data, indent=1))
    return out


# ----------------------------------------------------------------------------- YOLO
def read_yolo(
    path: str | Path,
    classes: list[str] | None = None,
    fix: str = "error",
    images: str | Path | None = None,
    label_map: dict | None = None,
) -> BoxSource:
    """YOLO txt: ``images/`` and ``labels/`` folders (``labels/x.txt`` for
    ``images/x.jpg``), one ``class cx cy w h`` line per box in 0-1 image units; class
    names from ``classes.txt`` or ``data.yaml`` (``names``) in the folder."""
    path = Path(path)
    image_dir = Path(images) if images else path / "images"
    label_dir = path / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise DataError(f"{path}: a YOLO dataset needs images/ and labels/ folders")
    names = _yolo_names(path)
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{image_dir}: no images")
    samples, dropped = [], []
    for image in files:
        txt = label_dir / image.relative_to(image_dir).with_suffix(".txt")
        width, height = _image_size(image, str(txt))
        boxes, labels, where = [], [], []
        lines = txt.read_text().splitlines() if txt.is_file() else []  # none = no objects
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                if len(parts) != 5:
                    raise ValueError
            except (ValueError, IndexError):
                raise DataError(
                    f"{txt}: line {n} {line.strip()!r} is not 'class cx cy w h'"
                ) from None
            if not 0 <= cls < len(names):
                raise DataError(
                    f"{txt}: line {n}: class {cls} is not in the dataset's "
                    f"{len(names)} class names {names}; fix the line or "
                    "classes.txt / data.yaml"
                )
            name = names[cls]
            labels.append(label_map.get(name, name) if label_map else name)
            boxes.append(
                [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ]
            )
            where.append(f"line {n}")
        b, lab, bad = check_boxes(
            str(txt), width, height, np.array(boxes), labels, classes, fix, where
        )
        dropped += bad
        samples.append(BoxSample(str(image), width, height, b, lab))
    if classes is None:
        classes = [label_map.get(n, n) if label_map else n for n in names]
        classes = list(dict.fromkeys(classes))
    return _finish(samples, classes, str(path), dropped)


def _yolo_names(path: Path) -> list[str]:
    if (path / "classes.txt").is_file():
        return [n.strip() for n in (path / "classes.txt").read_text().splitlines() if n.strip()]
    if (path / "data.yaml").is_file():
        import yaml

        names = (yaml.safe_load((path / "data.yaml").read_text()) or {}).get("names")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise DataError(
        f"{path}: YOLO class names not found: write classes.txt (one name per "
        "line) or data.yaml with names"
    )


def write_yolo(source: BoxSource, out: str | Path) -> Path:
    """``out/images`` (links, or copies where links fail), ``out/labels``, classes.txt."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "classes.txt", "\n".join(source.classes) + "\n")
    index = {c: i for i, c in enumerate(source.classes)}
    for s in _whole_images(source):
        target = out / "images" / Path(s.path).name
        if not target.exists():
            try:
                target.symlink_to(Path(s.path).resolve())
            except OSError:
                import shutil

                shutil.copyfile(s.path, target)
        lines = []
        for box, label in zip(s.boxes, s.labels):
            x0, y0, x1, y1 = (float(v) for v in box)
            lines.append(
                f"{index[label]} {(x0 + x1) / 2 / s.width:.6f} "
                f"{(y0 + y1) / 2 / s.height:.6f} {(x1 - x0) / s.width:.6f} "
                f"{(y1 - y0) / s.height:.6f}"
            )
        _atomic_text(
            out / "labels" / f"{Path(s.path).stem}.txt", "\n".join(lines) + ("\n" if lines else "")
        )
    return out


# ----------------------------------------------------------------------------- any format
def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.suffix.lower() == ".json":
        return "coco"
    if path.suffix.lower() == ".xml":
        return "voc"
    if path.is_dir():
        if (path / "labels").is_dir() and (path / "images").is_dir():
            return "yolo"
        if any(path.rglob("*.xml")):
            return "voc"
        jsons = list(path.glob("*.json"))
        if len(jsons) == 1:
            return "coco"
    raise DataError(
        f"{path}: cannot tell the box format; give a COCO .json, a folder of "
        "Pascal VOC .xml files, or a YOLO folder with images/ and labels/"
    )


def read_boxes(
    path,
    classes: list[str] | None = None,
    fix: str = "error",
    format: str | None = None,
    images=None,
    label_map: dict | None = None,
) -> BoxSource:
    """Read any of the three formats (guessed from ``path`` unless ``format`` is given)."""
    if isinstance(path, BoxSource):
        if classes is None:
            return path
        for s in path.samples:
            check_boxes(s.path, s.width, s.height, s.boxes, s.labels, classes)
        return BoxSource(path.samples, list(classes), path.origin)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    fmt = format or detect_format(path)
    if fmt == "coco" and path.is_dir():
        path = next(path.glob("*.json"))
    reader = {"coco": read_coco, "voc": read_voc, "yolo": read_yolo}[fmt]
    return reader(path, classes=classes, fix=fix, images=images, label_map=label_map)


def write_boxes(source: BoxSource, out, format: str) -> Path:
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    return {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}[format](source, out)


def _whole_images(source: BoxSource) -> list[BoxSample]:
    if any(s.window is not None for s in source.samples):
        raise ValueError(
            "this source holds parts of images (a spatial split); write the "
            "source it was split from"
        )
    return source.samples


def _relative(path: str, folder: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), folder.resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def _atomic_text(path: Path, text: str) -> None:
    from ..artifacts import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


# ----------------------------------------------------------------------------- splits, tiles
def spatial_split(
    source: BoxSource, fraction: float, seed: int = 0
) -> tuple[BoxSource, BoxSource | None]:
    """Hold out ``fraction`` for validation without leaking pixels: whole images when there
    are at least 5, else the bottom ``fraction`` band of every image (a box goes to the
    side holding its centre, clipped to it)."""
    if fraction <= 0:
        return source, None
    n = len(source)
    if n >= 5:
        order = np.random.default_rng(seed).permutation(n)
        k = max(1, int(round(fraction * n)))
        return source.subset(sorted(order[k:])), source.subset(sorted(order[:k]))
    train, val = [], []
    for s in source.samples:
        x0, y0, x1, y1 = s.region()
        cut = int(round(y1 - fraction * (y1 - y0)))
        train.append(crop_sample(s, (x0, y0, x1, cut), by="centre"))
        val.append(crop_sample(s, (x0, cut, x1, y1), by="centre"))
    return (
        BoxSource(train, source.classes, source.origin),
        BoxSource(val, source.classes, source.origin + " (validation band)"),
    )


def crop_sample(
    s: BoxSample, window: tuple[int, int, int, int], by: str = "visible", min_visible: float = 0.5
) -> BoxSample:
    """The part of ``s`` inside ``window``; boxes clipped to it. ``by="centre"`` keeps the
    boxes whose centre is inside, ``"visible"`` those with >= ``min_visible`` of their
    area inside."""
    x0, y0, x1, y1 = window
    b = s.boxes
    clipped = (
        np.stack(
            [
                np.clip(b[:, 0], x0, x1),
                np.clip(b[:, 1], y0, y1),
                np.clip(b[:, 2], x0, x1),
                np.clip(b[:, 3], y0, y1),
            ],
            1,
        )
        if len(b)
        else b.copy()
    )
    if by == "centre":
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    else:
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = inside >= min_visible * area
    keep &= (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return replace(
        s,
        boxes=clipped[keep],
        labels=[lab for lab, k in zip(s.labels, keep) if k],
        window=(int(x0), int(y0), int(x1), int(y1)),
    )


def tile_windows(
    width: int, height: int, size: int, overlap: float = 0.25, origin: tuple[int, int] = (0, 0)
) -> list[tuple[int, int, int, int]]:
    """Windows of ``size`` px covering a ``width`` x ``height`` region, neighbours sharing
    ``overlap`` of a tile; the last row/column is moved back to end at the edge, so every
    window is full size unless the region is smaller than a tile."""
    if not 0 <= overlap < 1:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    step = max(1, int(size * (1 - overlap)))

    def starts(extent: int) -> list[int]:
        if extent <= size:
            return [0]
        out = list(range(0, extent - size, step)) + [extent - size]
        return sorted(set(out))

    ox, oy = origin
    return [
        (ox + x, oy + y, ox + min(x + size, width), oy + min(y + size, height))
        for y in starts(height)
        for x in starts(width)
    ]


def tile_source(
    source: BoxSource,
    size: int,
    overlap: float = 0.25,
    min_visible: float = 0.5,
    keep_empty: bool = True,
) -> BoxSource:
    """Every sample cut into overlapping tiles (boxes with >= ``min_visible`` of their area
    in a tile are kept, clipped)."""
    tiles = []
    for s in source.samples:
        x0, y0, x1, y1 = s.region()
        for w in tile_windows(x1 - x0, y1 - y0, size, overlap, origin=(x0, y0)):
            t = crop_sample(s, w, by="visible", min_visible=min_visible)
            if len(t.boxes) or keep_empty:
                tiles.append(t)
    return BoxSource(tiles, source.classes, f"{source.origin} ({size}px tiles)")


def merge_tile_detections(
    parts: list[tuple[tuple[int, int, int, int], dict]],
    region: tuple[int, int, int, int],
    iou: float = 0.5,
    edge: float = 2.0,
) -> dict:
    """Boxes of overlapping tiles -> boxes of the whole region.

    ``parts``: (tile window in image pixels, {"boxes" in tile pixels, "scores", "labels"}).
    A box touching a tile edge that is not the region's edge is a cut-off object; it is
    dropped when a box found whole in another tile covers half of it or more. Then
    class-wise NMS at ``iou`` removes the duplicates of the overlaps."""
    import torch
    from torchvision.ops import batched_nms, box_area

    rx0, ry0, rx1, ry1 = region
    boxes, scores, labels, cut = [], [], [], []
    for (x0, y0, x1, y1), det in parts:
        b = torch.as_tensor(det["boxes"], dtype=torch.float32).reshape(-1, 4).clone()
        b[:, [0, 2]] += x0
        b[:, [1, 3]] += y0
        touches = torch.zeros(len(b), dtype=torch.bool)
        if x0 > rx0:
            touches |= b[:, 0] <= x0 + edge
        if y0 > ry0:
            touches |= b[:, 1] <= y0 + edge
        if x1 < rx1:
            touches |= b[:, 2] >= x1 - edge
        if y1 < ry1:
            touches |= b[:, 3] >= y1 - edge
        boxes.append(b)
        scores.append(torch.as_tensor(det["scores"], dtype=torch.float32).reshape(-1))
        labels.append(torch.as_tensor(det["labels"], dtype=torch.int64).reshape(-1))
        cut.append(touches)
    if not boxes:
        return {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
        }
    b, s, lab, c = torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(cut)
    if c.any() and (~c).any():
        whole, part = b[~c], b[c]
        lt = torch.max(part[:, None, :2], whole[None, :, :2])
        rb = torch.min(part[:, None, 2:], whole[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)
        same = lab[c][:, None] == lab[~c][None, :]
        covered = ((inter / box_area(part)[:, None].clamp(min=1e-6)) * same).amax(1) >= 0.5
        drop = torch.zeros_like(c)
        drop[c.nonzero().flatten()[covered]] = True
        b, s, lab = b[~drop], s[~drop], lab[~drop]
    keep = batched_nms(b, s, lab, iou)
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
