"""Object detection end to end on synthetic scenes: red squares ("square") and green circles
("circle") with exact boxes on a noisy dark background, learned by torchvision detectors
on the random-init ``tiny:cnn`` backbone. Covers training (loss, mAP), prediction, tiled
inference, save/load, the strategies and BatchNorm modes, resume, the CLI, the offline
errors of COCO-pretrained torchvision detectors, and the metrics on hand-made boxes.

Fitted models are shared through module-scoped fixtures; short fits use a few images and
no validation so that the whole file stays fast on two CPU cores.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from headstart.data.boxes import BoxSample, BoxSource, read_boxes, tile_windows, write_boxes
from headstart.tasks.detect import (
    DETECT_STRATEGIES,
    TORCHVISION_DETECTORS,
    ObjectDetector,
    TileDataset,
    build_torchvision_detector,
    detection_metrics,
    fit_anchor_sizes,
)
from headstart.zoo.base import OfflineError, ZooError

CLASSES = ["square", "circle"]
SIDE = 96  # scene side = tile side of every model here
COLOURS = {"square": (230, 40, 40), "circle": (40, 220, 60)}

# Settings of the short fits (plumbing: strategies, resume, BatchNorm): few steps, no
# validation. The tiny:cnn backbone counts as pre-trained (its id has no "scratch:").
QUICK = dict(
    detector="fcos",
    image_size=SIDE,
    fpn_channels=32,
    epochs=1,
    batch_size=2,
    lr=3e-3,
    head_lr=3e-3,
    early_stopping=0,
    val_fraction=0.0,
    device="cpu",
    seed=0,
)


# ----------------------------------------------------------------------------- scenes
def draw_scene(path: Path, width: int, height: int, shapes, seed: int) -> BoxSample:
    """A noisy dark RGB image with filled shapes (kind, x, y, side); exact boxes."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    for kind, x, y, s in shapes:
        corners = [x, y, x + s - 1, y + s - 1]  # PIL's rectangle/ellipse include the end
        if kind == "square":
            draw.rectangle(corners, fill=COLOURS[kind])
        else:
            draw.ellipse(corners, fill=COLOURS[kind])
        boxes.append([x, y, x + s, y + s])
        labels.append(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return BoxSample(
        str(path), width, height, np.array(boxes, dtype=np.float32).reshape(-1, 4), labels
    )


def random_shapes(rng, width: int, height: int, n: int) -> list:
    """``n`` shapes of side 14-30 px, at least 2 px apart (no two boxes overlap)."""
    shapes, placed = [], []
    while len(shapes) < n:
        s = int(rng.integers(14, 31))
        x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
        pad = (x - 2, y - 2, x + s + 2, y + s + 2)
        if any(pad[0] < b[2] and b[0] < pad[2] and pad[1] < b[3] and b[1] < pad[3] for b in placed):
            continue
        placed.append((x, y, x + s, y + s))
        shapes.append(("square" if rng.random() < 0.5 else "circle", x, y, s))
    return shapes


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def found(truth: BoxSample, pred: dict, min_score: float = 0.5, min_iou: float = 0.5) -> int:
    """How many true boxes have a predicted box of their class with IoU >= min_iou."""
    n = 0
    for tb, tl in zip(truth.boxes, truth.labels):
        if any(
            lab == tl and s >= min_score and iou(tb, pb) >= min_iou
            for pb, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"])
        ):
            n += 1
    return n


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on two cores shared with other work, two threads contend and every
    fit here gets several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """16 scenes of 96x96 px with 1-3 shapes each: (BoxSource, COCO json path)."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    samples = [
        draw_scene(
            root / "img" / f"scene{i:02d}.png",
            SIDE,
            SIDE,
            random_shapes(rng, SIDE, SIDE, 1 + i % 3),
            seed=i,
        )
        for i in range(16)
    ]
    source = BoxSource(samples, list(CLASSES), str(root / "img"))
    coco = write_boxes(source, root / "scenes.json", "coco")
    return source, coco


@pytest.fixture(scope="module")
def source(scenes) -> BoxSource:
    return scenes[0]


@pytest.fixture(scope="module")
def small(source) -> BoxSource:
    """4 scenes (8 boxes, both classes) for the short plumbing fits."""
    sub = source.subset(range(4, 8))
    assert set(label for s in sub.samples for label in s.labels) == set(CLASSES)
    return sub


@pytest.fixture(scope="module")
def detector(source) -> ObjectDetector:
    """The shared, properly trained model: Faster R-CNN, BatchNorm trained (random-init
    backbone), 25% of the scenes held out for validation, tiles overlapping by 0.4."""
    return ObjectDetector(
        "tiny:cnn",
        detector="fasterrcnn",
        strategy="finetune",
        epochs=10,
        bn="train",
        image_size=SIDE,
        fpn_channels=32,
        lr=3e-3,
        head_lr=3e-3,
        early_stopping=0,
        val_fraction=0.25,
        tile_overlap=0.4,
        device="cpu",
        seed=0,
    ).fit(source)


@pytest.fixture(scope="module")
def saved(detector, tmp_path_factory) -> Path:
    return detector.save(tmp_path_factory.mktemp("saved_run"))


def body_state(det: ObjectDetector) -> dict[str, torch.Tensor]:
    """The backbone body's parameters and buffers (a copy)."""
    return {k: v.detach().clone() for k, v in det.model_.backbone.body.state_dict().items()}


def fresh_body_state() -> dict[str, torch.Tensor]:
    """tiny:cnn's initial weights (its init is seeded: the same every time)."""
    from headstart.zoo import create_backbone

    return {
        k: v.detach().clone()
        for k, v in create_backbone("tiny:cnn", pretrained=True).state_dict().items()
    }


def changed(before: dict, after: dict, prefix: str = "") -> list[str]:
    return [
        k
        for k in before
        if k.startswith(prefix)
        and k in after
        and before[k].is_floating_point()
        and not torch.equal(before[k], after[k])
    ]


# ----------------------------------------------------------------------------- 1. training
def test_training_reduces_loss_and_finds_the_shapes(detector, source):
    h = detector.history_
    assert [r["epoch"] for r in h] == list(range(1, 11))
    assert h[-1]["train_loss"] < 0.6 * h[0]["train_loss"]
    assert all(math.isfinite(r["train_loss"]) for r in h)
    assert all("val_map_50" in r for r in h)
    assert detector.best_["val_map_50"] >= 0.5
    assert detector.metrics_["validation"]["map_50"] == pytest.approx(
        detector.best_["val_map_50"]
    )  # the best epoch's weights are the ones kept

    m = detector.evaluate(source)
    assert m["images"] == 16 and m["boxes"] == source.num_boxes
    assert m["map_50"] > 0.6, m
    assert m["map_50"] >= m["map"] >= 0
    assert m["recall"] >= 0.8  # boxes scoring >= 0.5 matched at IoU 0.5
    assert set(m["per_class"]) == set(CLASSES)
    for c in CLASSES:
        v = m["per_class"][c]
        assert not math.isnan(v["ap"]) and v["ap"] > 0.2, (c, v)
        assert v["support"] == sum(lab == c for s in source.samples for lab in s.labels)
    assert detector.score(source) == pytest.approx(m["map_50"])


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_each_detector_reduces_the_loss(source, arch):
    det = ObjectDetector(
        "tiny:cnn",
        detector=arch,
        strategy="finetune",
        epochs=3,
        image_size=SIDE,
        fpn_channels=32,
        lr=3e-3,
        head_lr=3e-3,
        early_stopping=0,
        val_fraction=0.0,
        device="cpu",
        seed=0,
    ).fit(source.subset(range(8)))
    losses = [r["train_loss"] for r in det.history_]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert det.best_ is None and "validation" not in det.metrics_  # no validation asked
    parts = {
        "retinanet": {"classification", "bbox_regression"},
        "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    }[arch]
    assert parts <= set(det.history_[0])


def test_fasterrcnn_loss_parts_recorded(detector):
    # the shared model is the Faster R-CNN: its RPN and box-head losses are in the history
    first, last = detector.history_[0], detector.history_[-1]
    for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        assert k in first and math.isfinite(last[k])
    assert first["train_loss"] == pytest.approx(
        sum(
            first[k]
            for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
        ),
        rel=1e-5,
    )


def test_fit_anchor_sizes():
    assert fit_anchor_sizes(np.zeros((0, 4)), 3) == [32.0, 64.0, 128.0]
    boxes = np.array([[0, 0, s, s] for s in range(14, 31)], dtype=np.float32)
    sizes = fit_anchor_sizes(boxes, 5)
    assert len(sizes) == 5 and sizes == sorted(sizes)
    assert 14 <= sizes[0] <= 16 and 28 <= sizes[-1] <= 30
    same = fit_anchor_sizes(np.array([[0, 0, 20, 20]] * 4, dtype=np.float32), 4)
    assert same[0] == 20.0 and same[-1] == pytest.approx(30.0)  # spread at least 1.5x


def test_tile_dataset_flips_boxes_with_the_image(source):
    """Whatever the augmentation draws, every target box still frames its shape."""
    data = TileDataset(source, CLASSES, "strong", seed=0)
    flipped = 0
    for epoch in range(3):
        data.epoch = epoch
        for i in range(len(data)):
            image, target = data[i]
            assert image.shape == (3, SIDE, SIDE) and 0 <= image.min() <= image.max() <= 1
            assert target["labels"].tolist() == [
                CLASSES.index(c) + 1 for c in source.samples[i].labels
            ]
            for box, label in zip(target["boxes"], target["labels"]):
                x0, y0, x1, y1 = (int(round(float(v))) for v in box)
                cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
                r, g = image[0, cy, cx].item(), image[1, cy, cx].item()
                # the centre pixel has the shape's colour (contrast jitter may dim it)
                assert (r > g) == (label == 1), (i, epoch, box, r, g)
            flipped += not torch.equal(target["boxes"], torch.as_tensor(source.samples[i].boxes))
    assert flipped > 0


# ----------------------------------------------------------------------------- 2. predict
def test_predict_boxes_scores_labels(detector, source):
    paths = [s.path for s in source.samples[:6]]
    preds = detector.predict(paths, score_threshold=0.0)
    assert [p["path"] for p in preds] == paths
    total = 0
    for p in preds:
        b, s = np.asarray(p["boxes"]), np.asarray(p["scores"])
        assert b.ndim == 2 and b.shape[1] == 4 and len(b) == len(s) == len(p["labels"])
        assert p["region"] == [0, 0, SIDE, SIDE]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= SIDE).all() and (b[:, 3] <= SIDE).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (np.diff(s) <= 0).all(), "scores must be sorted best first"
        assert set(p["labels"]) <= set(CLASSES)
        total += len(b)
    assert total > 0
    # each scene's best box is one of its shapes
    for p, truth in zip(preds, source.samples[:6]):
        assert any(iou(p["boxes"][0], tb) >= 0.5 for tb in truth.boxes)

    strict = detector.predict(paths, score_threshold=0.5)
    for lo, hi in zip(preds, strict):
        keep = lo["scores"] >= 0.5
        assert np.array_equal(hi["boxes"], lo["boxes"][keep])
        assert np.array_equal(hi["scores"], lo["scores"][keep])
        assert hi["labels"] == [lab for lab, k in zip(lo["labels"], keep) if k]
    assert sum(len(p["boxes"]) for p in strict) < total
    none = detector.predict(paths[:2], score_threshold=1.01)
    assert all(len(p["boxes"]) == 0 and p["labels"] == [] for p in none)


def test_predict_takes_folders_and_sources(detector, source):
    folder = Path(source.samples[0].path).parent
    by_folder = detector.predict(folder, score_threshold=0.3)
    assert len(by_folder) == 16
    by_source = detector.predict(source.subset(range(2)), score_threshold=0.3)
    assert [p["path"] for p in by_source] == [s.path for s in source.samples[:2]]
    for a, b in zip(by_folder[:2], by_source):
        assert np.array_equal(a["boxes"], b["boxes"])


def test_predict_and_evaluate_errors(detector, tmp_path):
    from headstart.data.images import DataError
    from headstart.tasks.base import NotFittedError

    with pytest.raises(NotFittedError):
        ObjectDetector("tiny:cnn").predict([str(tmp_path)])
    with pytest.raises(DataError, match="no such image"):
        detector.predict([str(tmp_path / "missing.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read"):
        detector.predict([str(bad)])


# ----------------------------------------------------------------------------- 3. tiles
def test_tiled_inference_on_a_larger_scene(detector, tmp_path):
    width, height = 300, 220
    # tiles of 96 px overlapping 0.4: x starts 0, 57, 114, 171, 204; y 0, 57, 114, 124
    starts_x = sorted({w[0] for w in tile_windows(width, height, SIDE, 0.4)})
    assert starts_x == [0, 57, 114, 171, 204]
    shapes = [  # several straddle where tiles meet (x = 96, 153, 210; y = 96, 153)
        ("square", 84, 20, 24),
        ("circle", 140, 30, 26),
        ("square", 198, 10, 22),
        ("circle", 20, 86, 22),
        ("square", 120, 90, 28),
        ("circle", 240, 80, 26),
        ("circle", 60, 140, 24),
        ("square", 180, 142, 24),
        ("square", 262, 180, 26),
        ("circle", 10, 185, 20),
    ]
    truth = draw_scene(tmp_path / "big.png", width, height, shapes, seed=99)
    assert detector.config_.tile_overlap == 0.4 and detector.tile_size == SIDE
    pred = detector.predict([truth.path], score_threshold=0.0)[0]
    b = np.asarray(pred["boxes"])
    assert pred["region"] == [0, 0, width, height]
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= width).all()
    assert (b[:, 1] >= 0).all() and (b[:, 3] <= height).all()
    assert (np.diff(pred["scores"]) <= 0).all()
    assert found(truth, pred) >= 8, "the tiled model should find most shapes"
    sure = [
        (pb, lab) for pb, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"]) if s >= 0.5
    ]
    dups = [
        (a, c)
        for i, (a, la) in enumerate(sure)
        for c, lc in sure[i + 1 :]
        if la == lc and iou(a, c) > 0.5
    ]
    assert not dups, f"duplicate boxes from overlapping tiles: {dups}"
    m = detection_metrics([pred], [truth], CLASSES)
    assert m["map_50"] > 0.5 and m["recall"] >= 0.8


def test_nms_iou_setting_thins_overlapping_boxes(detector, source):
    paths = [s.path for s in source.samples[:6]]
    loose = detector.predict(paths, score_threshold=0.0)
    before = detector.config_.nms_iou
    try:
        detector.config_.nms_iou = 0.1
        tight = detector.predict(paths, score_threshold=0.0)
    finally:
        detector.config_.nms_iou = before
    assert sum(len(p["boxes"]) for p in tight) < sum(len(p["boxes"]) for p in loose)
    for p in tight:
        pairs = [
            (a, c)
            for i, (a, la) in enumerate(zip(p["boxes"], p["labels"]))
            for c, lc in zip(p["boxes"][i + 1 :], p["labels"][i + 1 :])
            if la == lc
        ]
        assert all(iou(a, c) <= 0.1 + 1e-6 for a, c in pairs)


def test_fit_on_large_images_uses_tiles(tmp_path):
    width, height = 200, 150
    rng = np.random.default_rng(5)
    big = draw_scene(
        tmp_path / "big.png", width, height, random_shapes(rng, width, height, 8), seed=5
    )
    src = BoxSource([big], list(CLASSES), str(tmp_path))
    det = ObjectDetector("tiny:cnn", strategy="finetune", **dict(QUICK, tile_overlap=0.25)).fit(src)
    windows = tile_windows(width, height, SIDE, 0.25)
    assert det.metrics_["train_tiles"] == len(windows) == 6  # 3 columns x 2 rows
    assert det.metrics_["train_boxes"] >= 8  # each shape is whole in some tile
    pred = det.predict([big.path], score_threshold=0.0)[0]
    b = np.asarray(pred["boxes"])
    assert pred["region"] == [0, 0, width, height] and len(b)
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= width).all() and (b[:, 3] <= height).all()


def test_few_images_validate_on_a_held_out_band(source):
    """Under 5 images, validation is the bottom band of each image: predicted in its window."""
    three = source.subset(range(1, 4))
    det = ObjectDetector("tiny:cnn", strategy="finetune", **dict(QUICK, val_fraction=0.25)).fit(
        three
    )
    assert "val_map_50" in det.history_[0]
    assert det.metrics_["validation"]["images"] == 3
    band = (0, 72, SIDE, SIDE)
    sample = BoxSample(three.samples[0].path, SIDE, SIDE, np.zeros((0, 4)), [], window=band)
    pred = det.predict(BoxSource([sample], list(CLASSES), "band"), score_threshold=0.0)[0]
    assert pred["region"] == list(band)
    b = np.asarray(pred["boxes"])
    if len(b):
        assert (b[:, 1] >= 72).all() and (b[:, 3] <= SIDE).all()


def test_draw_writes_pictures(detector, source, tmp_path):
    written = detector.draw(source.subset(range(2)), tmp_path / "pics")
    assert len(written) == 2
    for path in written:
        with Image.open(path) as im:
            assert im.size == (SIDE, SIDE) and im.format == "PNG"
    titles = [t for t, _ in detector.render(source.subset(range(2)))]
    assert all("predicted" in t and "true" in t for t in titles)


# ----------------------------------------------------------------------------- 4. save/load
def test_save_load_predicts_the_same(detector, saved, source):
    from headstart.tasks import load_estimator

    paths = [s.path for s in source.samples[:4]]
    want = detector.predict(paths, score_threshold=0.05)
    for loaded in (ObjectDetector.load(saved), load_estimator(saved)):
        assert isinstance(loaded, ObjectDetector)
        assert loaded.classes_ == CLASSES and loaded.tile_size == SIDE
        got = loaded.predict(paths, score_threshold=0.05)
        for a, b in zip(want, got):
            assert np.array_equal(a["boxes"], b["boxes"])
            assert np.array_equal(a["scores"], b["scores"])
            assert a["labels"] == b["labels"]
    config = json.loads((saved / "config.json").read_text())
    assert config["task"] == "detect" and config["classes"] == CLASSES
    det = config["detector"]
    assert det["arch"] == "fasterrcnn" and det["tile_size"] == SIDE
    assert det["tile_overlap"] == 0.4 and det["fpn_channels"] == 32
    assert det["anchor_sizes"] == pytest.approx(detector.anchor_sizes_)
    assert len(det["anchor_sizes"]) == 4 and det["anchor_sizes"] == sorted(det["anchor_sizes"])
    assert config["fit_config"]["detector"] == "fasterrcnn"
    with open(saved / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert float(rows[0]["train_loss"]) == pytest.approx(detector.history_[0]["train_loss"])
    assert (saved / "model.safetensors").is_file()


def test_load_refuses_a_classifier_run(tmp_path, saved):
    run = tmp_path / "notdet"
    shutil.copytree(saved, run)
    config = json.loads((run / "config.json").read_text())
    config["task"] = "image"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a detector"):
        ObjectDetector.load(run)


# ----------------------------------------------------------------------------- 5. strategies
def test_feature_extract_freezes_the_backbone(small):
    det = ObjectDetector("tiny:cnn", strategy="feature_extract", **QUICK).fit(small)
    before, after = fresh_body_state(), body_state(det)
    assert set(after) <= set(before) and after
    assert not changed(before, after), "feature_extract must not touch the backbone"
    assert det.stage_summaries_[0]["trainable_groups"] == []
    # the new layers did train
    assert det.history_[0]["train_loss"] > 0
    assert any(p.requires_grad for p in det.model_.head.parameters())


def test_partial_trains_only_the_last_groups(small):
    det = ObjectDetector("tiny:cnn", strategy="partial", partial_groups=1, **QUICK).fit(small)
    before, after = fresh_body_state(), body_state(det)
    assert det.stage_summaries_[0]["trainable_groups"] == ["block2"]
    assert not changed(before, after, "stem.") and not changed(before, after, "block1.")
    assert "block2.0.weight" in changed(before, after, "block2.")
    # BatchNorm is frozen on a pre-trained backbone: block2's BN is untouched too
    assert not [k for k in changed(before, after, "block2.") if k.startswith("block2.1.")]

    two = ObjectDetector("tiny:cnn", strategy="partial", partial_groups=2, **QUICK).fit(small)
    assert two.stage_summaries_[0]["trainable_groups"] == ["block1", "block2"]
    moved = changed(before, body_state(two))
    assert "block1.0.weight" in moved and not changed(before, body_state(two), "stem.")


def test_batchnorm_frozen_by_default_and_trained_on_request(small):
    frozen = ObjectDetector("tiny:cnn", strategy="finetune", **QUICK).fit(small)
    assert frozen.stage_summaries_[0]["bn"] == "frozen"
    before, after = fresh_body_state(), body_state(frozen)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 6
    assert not [k for k in stats if not torch.equal(before[k], after[k])]
    # the convolutions did train (finetune), BN affine weights did not
    assert {"stem.0.weight", "block1.0.weight", "block2.0.weight"} <= set(changed(before, after))
    assert not [k for k in changed(before, after) if ".1." in k]

    trained = ObjectDetector("tiny:cnn", strategy="finetune", bn="train", **QUICK).fit(small)
    assert trained.stage_summaries_[0]["bn"] == "train"
    after = body_state(trained)
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert int(after["stem.1.num_batches_tracked"]) > 0


def test_bn_mode_depends_on_the_source():
    from headstart.config import FitConfig

    det = ObjectDetector()
    assert det._bn_mode(FitConfig(backbone="tiny:cnn")) == "frozen"
    assert det._bn_mode(FitConfig(backbone="scratch:tiny:cnn")) == "train"
    assert det._bn_mode(FitConfig(backbone="scratch:tiny:cnn", bn="frozen")) == "frozen"


def test_lp_ft_runs_two_stages(small):
    det = ObjectDetector("tiny:cnn", strategy="lp_ft", head_epochs=1, **QUICK).fit(small)
    assert [s["stage"] for s in det.stage_summaries_] == ["heads", "finetune"]
    assert [(r["stage"], r["global_epoch"]) for r in det.history_] == [
        ("heads", 1),
        ("finetune", 2),
    ]
    heads, full = det.stage_summaries_
    assert heads["trainable_params"] < full["trainable_params"]


def test_fcos_accepts_16_fpn_channels(small):
    det = ObjectDetector("tiny:cnn", strategy="finetune", **dict(QUICK, fpn_channels=16)).fit(small)
    assert len(det.history_) == 1


@pytest.mark.parametrize("strategy", ["lora", "gradual"])
def test_unsupported_strategy(strategy, small):
    with pytest.raises(ValueError) as err:
        ObjectDetector("tiny:cnn", strategy=strategy, **QUICK).fit(small)
    for allowed in DETECT_STRATEGIES:
        assert allowed in str(err.value)
    assert strategy in str(err.value)


def test_unknown_setting_is_a_type_error(small):
    with pytest.raises(TypeError, match="no_such_setting"):
        ObjectDetector("tiny:cnn", no_such_setting=1).fit(small)


# ----------------------------------------------------------------------------- 6. resume
class Interrupt(Exception):
    pass


def test_resume_continues_where_it_stopped(small, tmp_path):
    settings = dict(QUICK, epochs=4)
    run = tmp_path / "run"

    def stop_in_epoch_3(row):  # epoch 3 ends but is never checkpointed: a kill in epoch 3
        if row["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        ObjectDetector("tiny:cnn", strategy="finetune", run_dir=run, **settings).fit(
            small, callbacks=[stop_in_epoch_3]
        )
    assert (run / "checkpoints" / "last").is_dir()  # the shared loop's checkpoint
    assert not (run / "config.json").exists()  # the run was not finished

    seen = []
    det = ObjectDetector("tiny:cnn", strategy="finetune", run_dir=run, **settings).fit(
        small, resume=True, callbacks=[seen.append]
    )
    assert [r["epoch"] for r in seen] == [3, 4], "resume must continue, not restart"
    assert [r["epoch"] for r in det.history_] == [1, 2, 3, 4]
    assert [r["global_epoch"] for r in det.history_] == [1, 2, 3, 4]
    assert (run / "checkpoints" / "last").is_dir() and (run / "config.json").is_file()
    with open(run / "history.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]

    # the same as a run that was never interrupted
    ref = ObjectDetector("tiny:cnn", strategy="finetune", run_dir=tmp_path / "ref", **settings).fit(
        small
    )
    assert [r["train_loss"] for r in det.history_] == pytest.approx(
        [r["train_loss"] for r in ref.history_], rel=1e-4
    )
    for k, v in ref.model_.state_dict().items():
        assert torch.allclose(v.float(), det.model_.state_dict()[k].float(), atol=1e-5), k

    # resuming a finished run trains nothing more and keeps its weights
    again = []
    done = ObjectDetector("tiny:cnn", strategy="finetune", run_dir=run, **settings).fit(
        small, resume=True, callbacks=[again.append]
    )
    assert again == [] and [r["epoch"] for r in done.history_] == [1, 2, 3, 4]
    for k, v in det.model_.state_dict().items():
        assert torch.equal(v, done.model_.state_dict()[k]), k

    with pytest.raises(ValueError, match="other settings"):
        ObjectDetector("tiny:cnn", strategy="finetune", run_dir=run, **dict(settings, lr=1e-3)).fit(
            small, resume=True
        )


def test_resume_without_a_checkpoint_says_so(small, tmp_path, caplog):
    import logging

    run = tmp_path / "new"
    with caplog.at_level(logging.WARNING, logger="headstart"):
        ObjectDetector("tiny:cnn", strategy="finetune", run_dir=run, **QUICK).fit(
            small, resume=True
        )
    assert f"no checkpoint in {run / 'checkpoints' / 'last'}; starting a new fit" in caplog.text
    assert (run / "config.json").is_file()


# ----------------------------------------------------------------------------- 7. CLI
def cli(capsys, *argv) -> tuple[int, str, str]:
    from headstart.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def cli_run(scenes, tmp_path_factory):
    """`headstart fit --task detect ... --test DATA` run once: (rc, stdout, run dir)."""
    from headstart.cli import main

    _, coco = scenes
    run = tmp_path_factory.mktemp("cli") / "run"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                "-q",
                "fit",
                str(coco),
                "--task",
                "detect",
                "--backbone",
                "tiny:cnn",
                "--detector",
                "fcos",
                "--strategy",
                "finetune",
                "--epochs",
                "3",
                "--image-size",
                "96",
                "--fpn-channels",
                "32",
                "--out",
                str(run),
                "--test",
                str(coco),
                "--device",
                "cpu",
            ]
        )
    return rc, out.getvalue(), run


def test_cli_fit_detect_writes_run_and_report(cli_run):
    rc, out, run = cli_run
    assert rc == 0, out
    assert "mAP@0.5" in out and "test" in out and "fcos on tiny:cnn" in out
    assert (run / "config.json").is_file() and (run / "model.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "detect" and config["detector"]["arch"] == "fcos"
    assert config["fit_config"]["epochs"] == 3 and "test" in config["metrics"]
    html = (run / "report.html").read_text()
    assert "mAP@0.5" in html
    found_img = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", html)
    assert found_img, "the report embeds the pictures"
    assert base64.b64decode(found_img.group(1))[:2] == b"\xff\xd8"  # a JPEG


def test_cli_evaluate_detect(cli_run, scenes, capsys):
    _, coco = scenes
    rc, out, err = cli(capsys, "-q", "evaluate", cli_run[2], coco)
    assert rc == 0, err
    assert "mAP@0.5" in out and "square" in out and "circle" in out
    rc, out, err = cli(capsys, "-q", "evaluate", cli_run[2], coco, "--json")
    assert rc == 0, err
    m = json.loads(out)
    assert 0 <= m["map_50"] <= 1 and m["boxes"] == scenes[0].num_boxes


def test_cli_predict_detect_csv(cli_run, source, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for s in source.samples[:3]:
        shutil.copy(s.path, folder / Path(s.path).name)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG but not really an image")
    out_csv = tmp_path / "boxes.csv"
    rc, out, err = cli(
        capsys, "-q", "predict", cli_run[2], folder, "--out", out_csv, "--min-score", "0.1"
    )
    assert rc == 0, err
    with open(out_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert header == ["item", "xmin", "ymin", "xmax", "ymax", "label", "score", "error"]
    broken = [r for r in rows if r["item"].endswith("zz_broken.png")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["xmin"] == ""
    good = [r for r in rows if not r["item"].endswith("zz_broken.png")]
    assert {Path(r["item"]).name for r in good} == {Path(s.path).name for s in source.samples[:3]}
    assert all(r["error"] == "" for r in good)
    boxes = [r for r in good if r["xmin"] != ""]
    for r in boxes:
        assert r["label"] in CLASSES and float(r["score"]) >= 0.1
        # <=: a barely trained FCOS also emits (near) zero-size boxes, written as x, x
        assert 0 <= float(r["xmin"]) <= float(r["xmax"]) <= SIDE
        assert 0 <= float(r["ymin"]) <= float(r["ymax"]) <= SIDE
    assert "1 image(s) failed" in err


def test_cli_convert_boxes_round_trip(scenes, tmp_path, capsys):
    source, coco = scenes
    rc, out, err = cli(capsys, "convert-boxes", coco, "--to", "yolo", "--out", tmp_path / "Y")
    assert rc == 0, err
    assert f"{source.num_boxes} boxes" in out
    rc, out, err = cli(
        capsys, "convert-boxes", tmp_path / "Y", "--to", "voc", "--out", tmp_path / "V"
    )
    assert rc == 0, err
    voc = read_boxes(tmp_path / "V")
    assert voc.num_boxes == source.num_boxes and len(voc) == len(source)
    assert sorted(voc.classes) == sorted(CLASSES)
    by_name = {Path(s.path).name: s for s in voc.samples}
    for s in source.samples:
        np.testing.assert_allclose(by_name[Path(s.path).name].boxes, s.boxes, atol=0.01)
        assert by_name[Path(s.path).name].labels == s.labels


def test_cli_fit_bad_box(source, tmp_path, capsys):
    coco = write_boxes(source.subset(range(6)), tmp_path / "bad.json", "coco")
    data = json.loads(coco.read_text())
    data["annotations"][2]["bbox"] = [80.0, 80.0, 40.0, 40.0]  # sticks out of the image
    coco.write_text(json.dumps(data))
    args = [
        "-q",
        "fit",
        coco,
        "--task",
        "detect",
        "--backbone",
        "tiny:cnn",
        "--detector",
        "fcos",
        "--strategy",
        "finetune",
        "--epochs",
        "1",
        "--image-size",
        "96",
        "--fpn-channels",
        "32",
        "--val-fraction",
        "0",
        "--device",
        "cpu",
    ]
    rc, out, err = cli(capsys, *args, "--out", tmp_path / "r1")
    assert rc == 2
    assert "bad.json" in err and "annotation 2" in err and "outside" in err
    assert "(80, 80, 120, 120)" in err
    assert not (tmp_path / "r1" / "config.json").exists()
    rc, out, err = cli(capsys, *args, "--out", tmp_path / "r2", "--fix-boxes", "drop")
    assert rc == 0, err
    config = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert config["metrics"]["train_boxes"] == source.subset(range(6)).num_boxes - 1


def test_cli_export_refuses_a_detector(saved, capsys):
    rc, out, err = cli(capsys, "export", saved)
    assert rc == 2
    assert "exporting detectors is not supported" in err


def test_serve_refuses_a_detector(saved):
    from headstart.serve import create_app

    with pytest.raises(ValueError, match="serving detectors is not supported"):
        create_app({"m": str(saved)})


# ----------------------------------------------------------------------------- 8. offline
@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch):
    import torch.hub

    hub = tmp_path / "torch_home"
    hub.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub / "hub"))
    return hub


def test_torchvision_detector_offline_error(no_network, empty_torch_hub, small):
    import time

    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        ObjectDetector(
            "torchvision:fasterrcnn_resnet50_fpn_v2",
            strategy="finetune",
            image_size=SIDE,
            epochs=1,
            val_fraction=0.0,
            device="cpu",
        ).fit(small)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "packaged:efficientnet_lite0" in msg
    assert "fasterrcnn_resnet50_fpn_v2" in msg and "download.pytorch.org" in msg


def test_unknown_torchvision_detector(no_network, empty_torch_hub, small):
    with pytest.raises(ZooError) as err:
        ObjectDetector(
            "torchvision:yolo_v99", image_size=SIDE, epochs=1, val_fraction=0.0, device="cpu"
        ).fit(small)
    msg = str(err.value)
    assert "yolo_v99" in msg
    for name in TORCHVISION_DETECTORS:
        assert f"torchvision:{name}" in msg


def test_build_torchvision_detector_without_weights(no_network, empty_torch_hub):
    model = build_torchvision_detector(
        "fasterrcnn_mobilenet_v3_large_fpn", 2, pretrained=False, detections=50
    )
    predictor = model.roi_heads.box_predictor
    assert predictor.cls_score.out_features == 3  # 2 classes + background
    assert predictor.bbox_pred.out_features == 12
    assert model.roi_heads.detections_per_img == 50
    assert not any((empty_torch_hub / "hub").rglob("*.pth"))  # nothing was downloaded


# ----------------------------------------------------------------------------- 9. metrics
def _truths():
    return [
        BoxSample("a.png", 100, 100, [[10, 10, 30, 30], [50, 50, 80, 90]], ["square", "circle"]),
        BoxSample("b.png", 100, 100, [[5, 60, 25, 80]], ["square"]),
    ]


def _pred(boxes, scores, labels):
    return {
        "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "scores": np.array(scores, dtype=np.float32),
        "labels": list(labels),
    }


def test_metrics_perfect_predictions():
    truths = _truths()
    preds = [_pred(t.boxes, [0.9] * len(t.boxes), t.labels) for t in truths]
    m = detection_metrics(preds, truths, CLASSES)
    assert m["map_50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    assert m["images"] == 2 and m["boxes"] == 3
    assert m["per_class"]["square"]["support"] == 2 and m["per_class"]["circle"]["support"] == 1
    assert m["per_class"]["square"]["ap"] == pytest.approx(1.0)
    assert m["per_class"]["square"]["ap_50"] == pytest.approx(1.0)


def test_metrics_missing_box_lowers_recall():
    truths = _truths()
    preds = [_pred(truths[0].boxes, [0.9, 0.8], truths[0].labels), _pred([], [], [])]
    m = detection_metrics(preds, truths, CLASSES)
    assert m["precision"] == 1.0
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["square"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["circle"]["recall"] == 1.0
    assert m["map_50"] < 1.0
    assert m["per_class"]["square"]["ap_50"] == pytest.approx(0.5, abs=0.02)  # 1 of 2 found
    assert m["per_class"]["circle"]["ap_50"] == pytest.approx(1.0)


def test_metrics_false_positive_lowers_precision():
    truths = _truths()
    extra = _pred([[60, 5, 90, 25]], [0.7], ["circle"])  # nothing there
    preds = [
        _pred(
            np.vstack([truths[0].boxes, extra["boxes"]]),
            [0.9, 0.8, 0.7],
            truths[0].labels + ["circle"],
        ),
        _pred(truths[1].boxes, [0.9], truths[1].labels),
    ]
    m = detection_metrics(preds, truths, CLASSES)
    assert m["recall"] == 1.0
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["circle"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["square"]["precision"] == 1.0
    # below the score threshold it does not count against precision
    preds[0]["scores"][2] = 0.3
    m = detection_metrics(preds, truths, CLASSES)
    assert m["precision"] == 1.0 and m["per_class"]["circle"]["predicted"] == 1


def test_metrics_wrong_class_and_poor_overlap_do_not_match():
    truths = _truths()[:1]
    preds = [_pred([[10, 10, 30, 30], [50, 50, 80, 62]], [0.9, 0.9], ["circle", "circle"])]
    m = detection_metrics(preds, truths, CLASSES)  # wrong class; IoU 12/40 < 0.5
    assert m["recall"] == 0.0 and m["precision"] == 0.0
    assert m["map_50"] == pytest.approx(0.0)


def test_metrics_duplicates_match_once():
    truths = _truths()[1:]
    box = truths[0].boxes[0]
    preds = [_pred([box, box + 1], [0.9, 0.8], ["square", "square"])]
    m = detection_metrics(preds, truths, CLASSES)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(0.5)


def test_best_f1_threshold_against_a_brute_force_over_the_grid():
    from headstart.tasks.detect.metrics import THRESHOLDS, best_f1_threshold

    truths = _truths()
    # every true box found with a low, quality-focal-like score; three false boxes lower still
    a = [[10, 10, 30, 30], [50, 50, 80, 90], [0, 0, 5, 5]]
    b = [[5, 60, 25, 80], [70, 0, 99, 20], [40, 40, 45, 45]]
    preds = [
        _pred(a, [0.32, 0.41, 0.12], ["square", "circle", "square"]),
        _pred(b, [0.36, 0.26, 0.21], ["square", "circle", "circle"]),
    ]
    got = best_f1_threshold(preds, truths, CLASSES)
    f1 = {t: detection_metrics(preds, truths, CLASSES, t)["f1"] for t in THRESHOLDS}
    assert got == max(THRESHOLDS, key=lambda t: (f1[t], t)) == 0.3
    assert f1[0.3] == 1.0 and f1[0.5] == 0.0  # the usual 0.5 cut would keep no box


def test_a_fit_keeps_the_score_threshold_of_its_best_validation_f1(detector, saved):
    from headstart.tasks.detect.metrics import THRESHOLDS

    cut = detector.score_threshold_
    assert cut in THRESHOLDS
    assert detector.metrics_["validation"]["score_threshold"] == cut
    config = json.loads((saved / "config.json").read_text())
    assert config["detector"]["score_threshold"] == cut
    assert ObjectDetector.load(saved).score_threshold_ == cut
