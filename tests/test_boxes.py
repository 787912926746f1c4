"""Object-detection boxes: COCO / VOC / YOLO round trips, bad boxes named by file and box
(and fixed with fix="clip" / fix="drop"), spatial splits, crops, tiles and the merge of
tiled detections. Every image is a tiny PNG written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.data.boxes import (
    BoxSample,
    BoxSource,
    check_boxes,
    crop_sample,
    detect_format,
    merge_tile_detections,
    read_boxes,
    spatial_split,
    tile_source,
    tile_windows,
    write_boxes,
)
from headstart.data.images import DataError

W, H = 64, 48
CLASSES = ["cat", "dog"]
YOLO_ATOL = 1e-3  # YOLO stores 0-1 coordinates with 6 decimals


def make_image(path: Path, size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return path


@pytest.fixture
def source(tmp_path) -> BoxSource:
    """Three 64x48 images, two classes, non-integer boxes; c.png has no boxes."""
    folder = tmp_path / "imgs"
    boxes = {
        "a.png": ([[1.5, 2.25, 20.75, 30.5], [30.0, 10.0, 63.5, 47.0]], ["cat", "dog"]),
        "b.png": (
            [[0, 0, 64, 48], [10.1, 5.3, 15.9, 12.7], [40.2, 20.4, 50.6, 33.3]],
            ["dog", "cat", "cat"],
        ),
        "c.png": (np.zeros((0, 4)), []),
    }
    samples = [
        BoxSample(str(make_image(folder / name)), W, H, b, labels)
        for name, (b, labels) in boxes.items()
    ]
    return BoxSource(samples, list(CLASSES), str(folder))


def out_path(tmp_path: Path, fmt: str, tag: str = "out") -> Path:
    return tmp_path / tag / "ann.json" if fmt == "coco" else tmp_path / f"{tag}_{fmt}"


def assert_same_boxes(got: BoxSource, want: BoxSource, atol: float = 1e-4) -> None:
    assert got.classes == want.classes
    by_name = {Path(s.path).name: s for s in got.samples}
    assert sorted(by_name) == sorted(Path(s.path).name for s in want.samples)
    for s in want.samples:
        g = by_name[Path(s.path).name]
        assert (g.width, g.height) == (s.width, s.height)
        assert g.labels == s.labels, s.path
        assert g.boxes.shape == s.boxes.shape, s.path
        np.testing.assert_allclose(g.boxes, s.boxes, atol=atol, err_msg=s.path)


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_round_trip_each_format(tmp_path, source, fmt):
    out = write_boxes(source, out_path(tmp_path, fmt), fmt)
    assert detect_format(out) == fmt
    back = read_boxes(out)
    assert back.dropped == []
    assert_same_boxes(back, source, atol=YOLO_ATOL if fmt == "yolo" else 1e-4)
    empty = next(s for s in back.samples if Path(s.path).name == "c.png")
    assert empty.boxes.shape == (0, 4) and empty.labels == []


def test_round_trip_chain_coco_voc_yolo_coco(tmp_path, source):
    coco = read_boxes(write_boxes(source, tmp_path / "c1" / "ann.json", "coco"))
    voc = read_boxes(write_boxes(coco, tmp_path / "voc", "voc"))
    yolo = read_boxes(write_boxes(voc, tmp_path / "yolo", "yolo"))
    back = read_boxes(write_boxes(yolo, tmp_path / "c2" / "ann.json", "coco"))
    assert_same_boxes(back, source, atol=YOLO_ATOL)


def test_coco_folder_with_one_json_is_detected(tmp_path, source):
    out = write_boxes(source, tmp_path / "coco" / "ann.json", "coco")
    assert detect_format(out.parent) == "coco"
    assert_same_boxes(read_boxes(out.parent), source)


def test_yolo_missing_label_file_means_no_objects(tmp_path, source):
    out = write_boxes(source, tmp_path / "yolo", "yolo")
    (out / "labels" / "c.txt").unlink()
    (out / "labels" / "a.txt").write_text("")  # empty file: no objects either
    back = {Path(s.path).name: s for s in read_boxes(out).samples}
    assert set(back) == {"a.png", "b.png", "c.png"}
    assert len(back["a.png"].boxes) == 0 and len(back["c.png"].boxes) == 0
    assert back["b.png"].labels == ["dog", "cat", "cat"]


def test_voc_written_elsewhere_reads_back_without_image_folder(tmp_path, source):
    out = write_boxes(source, tmp_path / "voc", "voc")
    assert_same_boxes(read_boxes(out), source)


def test_detect_format_refuses_unknown_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot tell the box format"):
        detect_format(tmp_path)


# ---------------------------------------------------------------------------- bad boxes
GOOD = (2, 2, 20, 20)
OUTSIDE = (50, 18, 70, 30)  # xmax 70 > width 64
FLAT = (10, 18, 10, 30)  # zero width


def yolo_line(cls, box) -> str:
    x0, y0, x1, y1 = box
    return f"{cls} {(x0 + x1) / 2 / W} {(y0 + y1) / 2 / H} {(x1 - x0) / W} {(y1 - y0) / H}"


def coco_ann(category_id, box) -> dict:
    x0, y0, x1, y1 = box
    return {"category_id": category_id, "bbox": [x0, y0, x1 - x0, y1 - y0]}


def write_yolo_case(root: Path, lines: list[str]) -> Path:
    make_image(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    return root


def write_voc_case(root: Path, objects, filename="a.png", size=(W, H)) -> Path:
    if filename == "a.png":
        make_image(root / "a.png")
    root.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    xml = (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>"
    )
    (root / "a.xml").write_text(xml)
    return root / "a.xml"


def write_coco_case(root: Path, anns: list[dict], file_name="a.png") -> Path:
    if file_name == "a.png":
        make_image(root / "a.png")
    root.mkdir(parents=True, exist_ok=True)
    for k, ann in enumerate(anns):
        ann.update(id=k + 1, image_id=1)
    data = {
        "images": [{"id": 1, "file_name": file_name, "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


def write_case(root: Path, fmt: str, entries: list) -> Path:
    """``entries``: (class name, box) pairs, or raw format-native entries (str for YOLO,
    dict for COCO, (name, raw coords) for VOC)."""
    if fmt == "yolo":
        lines = [e if isinstance(e, str) else yolo_line(CLASSES.index(e[0]), e[1]) for e in entries]
        return write_yolo_case(root, lines)
    if fmt == "coco":
        anns = [
            e if isinstance(e, dict) else coco_ann(CLASSES.index(e[0]) + 1, e[1]) for e in entries
        ]
        return write_coco_case(root, anns)
    return write_voc_case(root, entries)


# Per format: how the second box (index 1) is named, and the raw bad entry for each case.
WHERE = {
    "yolo": ("a.txt", "line 2"),
    "voc": ("a.xml", "<object> 1"),
    "coco": ("ann.json", "annotation 1"),
}
BAD = {
    "outside": (
        {"yolo": ("cat", OUTSIDE), "voc": ("cat", OUTSIDE), "coco": ("cat", OUTSIDE)},
        ["(50, 18, 70, 30)", "outside the 64x48 image"],
    ),
    "zero_area": (
        {"yolo": ("cat", FLAT), "voc": ("cat", FLAT), "coco": ("cat", FLAT)},
        ["(10, 18, 10, 30)", "zero or negative area"],
    ),
    "unknown_class": (
        {"yolo": yolo_line(5, GOOD), "voc": ("bird", GOOD), "coco": coco_ann(7, GOOD)},
        [],
    ),
    "malformed": (
        {"yolo": "0 0.5 0.5 0.25", "voc": ("cat", ("abc", 2, 20, 20)), "coco": {"category_id": 1}},
        [],
    ),
}
UNKNOWN_CLASS_TEXT = {"yolo": "class 5", "voc": "'bird'", "coco": "category_id 7"}
MALFORMED_TEXT = {
    "yolo": "'0 0.5 0.5 0.25' is not 'class cx cy w h'",
    "voc": "needs numeric",
    "coco": "needs a 'bbox'",
}


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_box_is_named_by_file_and_box(tmp_path, fmt, case):
    bad, fragments = BAD[case]
    path = write_case(tmp_path / fmt, fmt, [("cat", GOOD), bad[fmt]])
    with pytest.raises(DataError) as info:
        read_boxes(path, classes=CLASSES)
    message = str(info.value)
    file_name, where = WHERE[fmt]
    assert file_name in message and where in message, message
    if case == "unknown_class":
        fragments = [UNKNOWN_CLASS_TEXT[fmt]]
    elif case == "malformed":
        fragments = [MALFORMED_TEXT[fmt]]
    for text in fragments:
        assert text in message, message


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_fix_clip_clips_box_to_image(tmp_path, fmt):
    path = write_case(tmp_path / fmt, fmt, [("cat", GOOD), ("dog", OUTSIDE)])
    src = read_boxes(path, fix="clip")
    (sample,) = src.samples
    assert sample.labels == ["cat", "dog"]
    np.testing.assert_allclose(sample.boxes, [GOOD, (50, 18, W, 30)], atol=1e-4)
    assert src.dropped == []


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_fix_drop_drops_bad_boxes_and_lists_them(tmp_path, fmt):
    # read with classes=["cat"]: the dog box is of a class the model does not know
    path = write_case(
        tmp_path / fmt, fmt, [("cat", GOOD), ("cat", OUTSIDE), ("cat", FLAT), ("dog", GOOD)]
    )
    src = read_boxes(path, classes=["cat"], fix="drop")
    (sample,) = src.samples
    assert sample.labels == ["cat"]
    np.testing.assert_allclose(sample.boxes, [GOOD], atol=1e-4)
    assert len(src.dropped) == 3
    file_name, _ = WHERE[fmt]
    names = {
        "yolo": ["line 2", "line 3", "line 4"],
        "voc": ["<object> 1", "<object> 2", "<object> 3"],
        "coco": ["annotation 1", "annotation 2", "annotation 3"],
    }[fmt]
    for entry, name, problem in zip(
        src.dropped, names, ["outside", "zero or negative area", "'dog'"]
    ):
        assert file_name in entry and name in entry and problem in entry, entry


def test_check_boxes_clip_drops_box_entirely_outside():
    boxes, labels, dropped = check_boxes(
        "x.png", W, H, [[70, 10, 80, 20], [-5, -5, 10, 10]], ["cat", "dog"], CLASSES, fix="clip"
    )
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10]])
    assert labels == ["dog"]
    assert len(dropped) == 1 and "x.png" in dropped[0] and "entirely outside" in dropped[0]


def test_check_boxes_non_numeric_coordinate():
    with pytest.raises(DataError, match=r"x\.png: box 0 .* non-numeric"):
        check_boxes("x.png", W, H, [[np.nan, 1, 5, 5]], ["cat"], CLASSES)


# ---------------------------------------------------------------------------- missing images
def test_voc_missing_image_is_named(tmp_path):
    xml = write_voc_case(tmp_path / "voc", [("cat", GOOD)], filename="missing.png")
    with pytest.raises(DataError) as info:
        read_boxes(xml)
    assert "a.xml" in str(info.value) and "missing.png" in str(info.value)


def test_coco_missing_image_is_named(tmp_path):
    path = write_coco_case(tmp_path / "coco", [coco_ann(1, GOOD)], file_name="missing.png")
    with pytest.raises(DataError, match="missing.png"):
        read_boxes(path)


def test_voc_size_disagreeing_with_image(tmp_path):
    xml = write_voc_case(tmp_path / "voc", [("cat", GOOD)], size=(100, 80))
    with pytest.raises(DataError) as info:
        read_boxes(xml)
    message = str(info.value)
    assert "a.xml" in message and "100x80" in message and "64x48" in message


@pytest.mark.parametrize("height", ["", "abc"])
def test_voc_size_without_numeric_height_is_named(tmp_path, height):
    xml = write_voc_case(tmp_path / "voc", [("cat", GOOD)], size=(64, height))
    xml.write_text(xml.read_text().replace("<height></height>", ""))
    with pytest.raises(DataError) as info:
        read_boxes(xml)
    assert "a.xml" in str(info.value) and "<size>" in str(info.value)


# ---------------------------------------------------------------------------- tile windows
@pytest.mark.parametrize(
    "width,height,size,overlap,origin",
    [
        (100, 70, 32, 0.25, (0, 0)),
        (257, 129, 64, 0.5, (10, 20)),
        (96, 96, 32, 0.0, (0, 0)),
        (50, 40, 30, 0.9, (0, 0)),
    ],
)
def test_tile_windows_cover_region_with_overlap(width, height, size, overlap, origin):
    windows = tile_windows(width, height, size, overlap, origin=origin)
    ox, oy = origin
    covered = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in windows:
        assert (x1 - x0, y1 - y0) == (size, size)
        assert ox <= x0 and oy <= y0 and x1 <= ox + width and y1 <= oy + height
        covered[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = True
    assert covered.all()
    for axis, extent, start in ((0, width, ox), (1, height, oy)):
        starts = sorted({w[axis] for w in windows})
        assert starts[0] == start and starts[-1] + size == start + extent  # ends at the edge
        for a, b in zip(starts, starts[1:]):
            assert size - (b - a) >= overlap * size  # shared part of neighbouring tiles


def test_tile_windows_region_smaller_than_tile():
    assert tile_windows(20, 10, 32) == [(0, 0, 20, 10)]
    assert tile_windows(32, 32, 32, origin=(5, 6)) == [(5, 6, 37, 38)]
    # wider than a tile, lower than one: one row of full-width tiles of the region's height
    windows = tile_windows(80, 10, 32)
    assert len(windows) > 1 and all(y0 == 0 and y1 == 10 for _, y0, _, y1 in windows)


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_tile_windows_rejects_bad_overlap(overlap):
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 32, overlap)


# ---------------------------------------------------------------------------- crops, tiles
def sample(boxes, labels=None, width=100, height=80) -> BoxSample:
    labels = labels if labels is not None else ["cat"] * len(boxes)
    return BoxSample("img.png", width, height, np.asarray(boxes, dtype=np.float32), labels)


def test_crop_sample_clips_and_applies_min_visible():
    s = sample(
        [
            [10, 10, 30, 20],  # fully inside
            [30, 0, 50, 10],  # 50% inside (x 30-40): kept, clipped
            [34, 30, 54, 40],  # 30% inside: dropped
            [60, 60, 70, 70],
        ],  # outside
        ["a", "b", "c", "d"],
    )
    t = crop_sample(s, (0, 0, 40, 50), min_visible=0.5)
    assert t.window == (0, 0, 40, 50) and t.labels == ["a", "b"]
    np.testing.assert_allclose(t.boxes, [[10, 10, 30, 20], [30, 0, 40, 10]])
    t = crop_sample(s, (0, 0, 40, 50), min_visible=0.25)
    assert t.labels == ["a", "b", "c"]
    np.testing.assert_allclose(t.boxes[2], [34, 30, 40, 40])


def test_tile_source_clips_boxes_and_keeps_every_box_whole_somewhere():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [88, 68], size=(25, 2))
    wh = rng.uniform(3, 12, size=(25, 2))  # biggest box 12 px < the 20 px overlap
    boxes = np.concatenate([xy, np.minimum(xy + wh, [100, 80])], 1)
    s = sample(boxes)
    tiles = tile_source(BoxSource([s], ["cat"], "mem"), size=40, overlap=0.5, min_visible=0.6)
    assert all(t.window is not None for t in tiles.samples)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    for t in tiles.samples:
        x0, y0, x1, y1 = t.window
        assert (x1 - x0, y1 - y0) == (40, 40)
        if len(t.boxes):
            assert (t.boxes[:, [0, 1]] >= [x0, y0]).all() and (t.boxes[:, [2, 3]] <= [x1, y1]).all()
        # what a tile holds is exactly the original boxes with >= 60% inside, clipped
        want = crop_sample(s, t.window, min_visible=0.6)
        np.testing.assert_allclose(t.boxes, want.boxes)
        clipped = np.clip(s.boxes, [x0, y0, x0, y0], [x1, y1, x1, y1])
        visible = area(clipped) / area(s.boxes)
        assert len(t.boxes) == int((visible >= 0.6).sum())
    for box in s.boxes:
        assert any(np.any(np.all(np.isclose(t.boxes, box), axis=1)) for t in tiles.samples), box


def test_spatial_split_one_image_bands():
    s = sample(
        [[5, 5, 20, 20], [30, 50, 40, 66], [50, 55, 60, 67], [60, 62, 90, 78], [0, 0, 100, 80]],
        ["a", "b", "c", "d", "e"],
    )  # centres y 12.5, 58, 61, 70, 40
    train, val = spatial_split(BoxSource([s], ["a", "b", "c", "d", "e"], "mem"), 0.25)
    (t,), (v,) = train.samples, val.samples
    assert t.window == (0, 0, 100, 60) and v.window == (0, 60, 100, 80)  # touching, disjoint
    assert t.window[3] <= v.window[1]
    # each box on exactly one side, the side holding its centre (cy < 60 -> train)
    assert sorted(t.labels + v.labels) == ["a", "b", "c", "d", "e"]
    assert t.labels == ["a", "b", "e"] and v.labels == ["c", "d"]
    assert (t.boxes[:, 3] <= 60).all() and (v.boxes[:, 1] >= 60).all()  # clipped to band
    np.testing.assert_allclose(t.boxes, [[5, 5, 20, 20], [30, 50, 40, 60], [0, 0, 100, 60]])
    np.testing.assert_allclose(v.boxes, [[50, 60, 60, 67], [60, 62, 90, 78]])


def test_spatial_split_many_images_splits_whole_images():
    samples = [sample([[1, 1, 5, 5]], width=10, height=10) for _ in range(6)]
    for k, s in enumerate(samples):
        s.path = f"img{k}.png"
    train, val = spatial_split(BoxSource(samples, ["cat"], "mem"), 0.3, seed=1)
    assert len(val) == 2 and len(train) == 4
    assert all(s.window is None for s in train.samples + val.samples)
    names = [s.path for s in train.samples] + [s.path for s in val.samples]
    assert sorted(names) == sorted(s.path for s in samples)
    assert spatial_split(train, 0) == (train, None)


# ---------------------------------------------------------------------------- tile merge
REGION = (0, 0, 112, 64)
TILE_A, TILE_B = (0, 0, 64, 64), (48, 0, 112, 64)  # overlap x 48-64


def det(boxes, scores, labels) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_merge_drops_object_cut_by_tile_edge():
    # object at x 40-60: whole in tile A; tile B (from x 48) sees only x 48-60, on its edge
    parts = [
        (TILE_A, det([[40, 10, 60, 30]], [0.6], [1])),
        (TILE_B, det([[0, 10, 12, 30]], [0.9], [1])),
    ]
    out = merge_tile_detections(parts, REGION)
    np.testing.assert_allclose(out["boxes"].numpy(), [[40, 10, 60, 30]])
    np.testing.assert_allclose(out["scores"].numpy(), [0.6])
    assert out["labels"].tolist() == [1]


def test_merge_nms_removes_duplicate_from_overlap():
    # object at x 51-61 lies whole in both tiles' shared part
    parts = [
        (TILE_A, det([[51, 10, 61, 30]], [0.8], [1])),
        (TILE_B, det([[3, 10, 13, 30]], [0.7], [1])),
    ]
    out = merge_tile_detections(parts, REGION)
    np.testing.assert_allclose(out["boxes"].numpy(), [[51, 10, 61, 30]])
    np.testing.assert_allclose(out["scores"].numpy(), [0.8])


def test_merge_keeps_different_classes_at_same_place():
    parts = [
        (TILE_A, det([[51, 10, 61, 30]], [0.8], [1])),
        (TILE_B, det([[3, 10, 13, 30]], [0.7], [2])),
    ]
    out = merge_tile_detections(parts, REGION)
    assert sorted(out["labels"].tolist()) == [1, 2]
    np.testing.assert_allclose(out["boxes"].numpy(), [[51, 10, 61, 30]] * 2)


def test_merge_shifts_boxes_into_image_coordinates():
    parts = [((100, 50, 164, 114), det([[10, 10, 20, 20], [30, 5, 40, 25]], [0.9, 0.5], [0, 3]))]
    out = merge_tile_detections(parts, (0, 0, 300, 300))
    order = out["scores"].argsort(descending=True)
    np.testing.assert_allclose(
        out["boxes"][order].numpy(), [[110, 60, 120, 70], [130, 55, 140, 75]]
    )
    assert out["labels"][order].tolist() == [0, 3]


def test_merge_empty():
    for parts in (
        [],
        [(TILE_A, det(np.zeros((0, 4)), [], [])), (TILE_B, det(np.zeros((0, 4)), [], []))],
    ):
        out = merge_tile_detections(parts, REGION)
        assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
        assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
