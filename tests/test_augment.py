"""Image augmentation that fits the data (gentler crops for small sources), the
TrivialAugmentWide / RandAugment presets (seeded per item), MixUp / CutMix of training
batches, and test-time augmentation for evaluate / predict_proba / Predictor / the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from headstart import ImageClassifier, TextClassifier
from headstart.data import from_arrays
from headstart.data.transforms import (
    AUGMENT,
    SMALL_ASPECT,
    SMALL_CROP,
    ImageDataset,
    ImageTransform,
    augment_plan,
    tta_preprocesses,
)
from headstart.mixing import BatchMixer, batch_mixer
from headstart.zoo.base import PreprocessConfig

from conftest import FAST, TEXT_FIT, make_arrays, make_texts

PRE = PreprocessConfig(
    input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0
)


def dataset(augment: str, n: int = 12, size: int = 16, seed: int = 0, **kw) -> ImageDataset:
    x, y = make_arrays(n, size, 2)
    source = from_arrays(x, y)
    return ImageDataset(source, ImageTransform(32, PRE, augment, **kw), seed=seed, train=True)


# ------------------------------------------------------------ crops that fit the data
def test_small_sources_get_gentler_crops():
    assert augment_plan("light", 224)["scale"] == AUGMENT["light"]["scale"] == (0.7, 1.0)
    small = augment_plan("light", 16)
    assert small["scale"] == (SMALL_CROP, 1.0) and small["aspect"] == SMALL_ASPECT
    assert augment_plan("strong", 8)["scale"] == (SMALL_CROP, 1.0)
    assert augment_plan("trivial", 8)["scale"] == (SMALL_CROP, 1.0)
    # 28 px (MNIST, Fashion-MNIST) keeps the preset: the floor measured worse there
    assert augment_plan("light", 28)["scale"] == (0.7, 1.0)
    assert augment_plan("light", 28, crop_min=0.6)["scale"] == (0.6, 1.0)  # asked: as asked
    assert augment_plan("light", None)["scale"] == (0.7, 1.0)  # unknown size: the preset
    assert augment_plan("light", 28, flip=False)["flip"] is False
    assert augment_plan("none", 28) is None
    with pytest.raises(ValueError, match="augment='wild'"):
        augment_plan("wild")


def test_small_source_crops_keep_the_floor_of_the_area(monkeypatch):
    """Every crop box drawn for a 16 px source keeps >= SMALL_CROP of the area (up to
    rounding) and stays inside the image."""
    t = ImageTransform(32, PRE, "light", source_side=16)
    boxes = []
    img = Image.fromarray(make_arrays(1, 64, 2)[0][0])
    original = Image.Image.resize

    def resize(self, size, resample=None, box=None, **kw):
        if box is not None:
            boxes.append(box)
        return original(self, size, resample, box, **kw)

    monkeypatch.setattr(Image.Image, "resize", resize)
    for i in range(200):
        t(img, np.random.default_rng([0, 0, i]))
    monkeypatch.undo()
    assert len(boxes) == 200
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / 64**2 for b in boxes]
    assert min(areas) >= SMALL_CROP - 0.03 and max(areas) <= 1.0
    assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 64 for b in boxes)
    assert len(set(boxes)) > 50  # still random


def test_fit_applies_the_small_source_floor(arrays, caplog):
    import logging

    clf = ImageClassifier("tiny:cnn", strategy="feature_extract", **FAST)
    cfg = clf.resolved_config()
    src = from_arrays(*arrays)  # 16 px images
    with caplog.at_level(logging.INFO, logger="headstart"):
        train = clf._dataset(src, PRE, True, cfg)
    assert train.transform.augment["scale"] == (SMALL_CROP, 1.0)
    assert "crops keep 0.85-1.00 of the area (median image side 16 px)" in caplog.text
    asked = clf._dataset(src, PRE, True, cfg.replace(crop_min=0.5, flip=False))
    assert asked.transform.augment["scale"] == (0.5, 1.0)
    assert not asked.transform.augment["flip"]
    assert clf._dataset(src, PRE, False, cfg).transform.augment is None


# ------------------------------------------------------------ policies, seeded per item
@pytest.mark.parametrize("augment", ["trivial", "randaugment"])
def test_policies_are_deterministic_per_item_and_change_by_epoch(augment):
    ds = dataset(augment)
    torch.manual_seed(1)
    first = [ds[i][0] for i in range(len(ds))]
    torch.manual_seed(2)  # the global generator's state does not matter
    state = torch.get_rng_state()
    again = [ds[i][0] for i in range(len(ds))]
    assert torch.equal(torch.get_rng_state(), state)  # ... nor is it touched
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ds.set_epoch(1)
    other = [ds[i][0] for i in range(len(ds))]
    assert sum(not torch.equal(a, b) for a, b in zip(first, other)) >= len(ds) - 1
    light = dataset("light")  # the same crop draws, then the policy changes pixels
    assert sum(not torch.equal(a, light[i][0]) for i, a in enumerate(first)) >= len(ds) // 2


def test_policy_items_are_the_same_with_worker_processes():
    ds = dataset("trivial", n=16)
    ds.set_epoch(3)

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, num_workers=workers)
        return [x for x, _ in loader]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_resume_with_trivial_augment_is_exact(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_resume import Crash, assert_same_weights, crash_on_call

    from headstart.train import Trainer

    data = make_arrays(n=48, n_classes=2, seed=1)
    settings = dict(FAST, epochs=3, augment="trivial", seed=3)
    ref = tmp_path / "ref"
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=ref, **settings).fit(*data)
    run = tmp_path / "run"
    crash_on_call(monkeypatch, Trainer, "_train_epoch", 4)  # second fine-tuning epoch
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run, **settings).fit(*data)
    monkeypatch.undo()
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run, **settings).fit(*data, resume=True)
    assert_same_weights(
        load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    )


def test_image_only_settings_are_refused_elsewhere_with_a_clear_error():
    texts, labels = make_texts(8, 0)
    with pytest.raises(
        ValueError,
        match="augment=trivial is for image classification; "
        "--task text takes none | light | strong",
    ):
        TextClassifier("tiny:bert", augment="trivial", **TEXT_FIT).fit(texts, labels)
    with pytest.raises(ValueError, match="mix=mixup mixes image batches; --task text"):
        TextClassifier("tiny:bert", mix="mixup", **TEXT_FIT).fit(texts, labels)
    from headstart.tasks.audio import AudioClassifier

    with pytest.raises(ValueError, match="--task audio takes none | light | strong"):
        AudioClassifier(augment="randaugment").fit([np.zeros(100)], ["a"])
    from headstart.tasks.detect import ObjectDetector

    with pytest.raises(ValueError, match="detection augments by flips"):
        ObjectDetector(augment="trivial").fit("no/such/boxes.json")
    with pytest.raises(ValueError, match="contrastive"):
        ImageClassifier(mix="cutmix", contrastive=1.0).resolved_config()


# ------------------------------------------------------------ MixUp / CutMix
def test_mixup_loss_is_the_soft_label_loss():
    """Oracle: lam * CE(y) + (1 - lam) * CE(y[perm]) == CE against the mixed soft labels
    (label smoothing included)."""
    x = torch.randn(8, 3, 4, 4)
    y = torch.arange(8) % 3
    mixer = BatchMixer("mixup", 1.0, seed=5)
    mixed, loss = mixer(x, y)
    lam = loss.lam
    perm = torch.as_tensor(_perm_of(mixer_seed=5, n=8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    logits = torch.randn(8, 3)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    soft = lam * torch.eye(3)[y] + (1 - lam) * torch.eye(3)[y[perm]]
    assert torch.allclose(loss(ce, logits), ce(logits, soft), atol=1e-6)


def _perm_of(mixer_seed: int, n: int):
    rng = np.random.default_rng(mixer_seed)
    rng.beta(1.0, 1.0)
    return rng.permutation(n)


def test_cutmix_pastes_a_box_and_weighs_labels_by_area():
    x = torch.zeros(6, 3, 10, 10)
    x += torch.arange(6).view(6, 1, 1, 1).float()  # image i is all i
    y = torch.arange(6)
    mixed, loss = BatchMixer("cutmix", 1.0, seed=0)(x, y)
    perm = _perm_of(0, 6)
    for i in range(6):
        own = (mixed[i] == i).float().mean().item()
        if perm[i] != i:
            assert own == pytest.approx(loss.lam)
    logits = torch.randn(6, 6)
    ce = torch.nn.CrossEntropyLoss()
    expected = loss.lam * ce(logits, y) + (1 - loss.lam) * ce(logits, y[perm])
    assert torch.allclose(loss(ce, logits), expected)
    with pytest.raises(ValueError, match="batches of images"):
        BatchMixer("mixup", 1.0, 0)({"input_ids": y}, y)


def test_mix_is_seeded_by_epoch_and_a_fit_with_it_is_deterministic(arrays):
    cfg = ImageClassifier(mix="mixup").resolved_config()
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8) % 2
    a, b = batch_mixer(cfg, 1, 2)(x, y), batch_mixer(cfg, 1, 2)(x, y)
    assert torch.equal(a[0], b[0]) and a[1].lam == b[1].lam
    assert not torch.equal(a[0], batch_mixer(cfg, 1, 3)(x, y)[0])
    assert batch_mixer(cfg.replace(mix="none"), 1, 2) is None
    fits = [
        ImageClassifier("tiny:cnn", strategy="lp_ft", mix=kind, **FAST).fit(*arrays)
        for kind in ("cutmix", "cutmix", "none")
    ]
    w = [dict(f.model_.state_dict()) for f in fits]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert any(not torch.equal(w[0][k], w[2][k]) for k in w[0])


# ------------------------------------------------------------ test-time augmentation
@pytest.fixture(scope="module")
def fitted():
    x, y = make_arrays(30, 16, 3)
    settings = dict(FAST, head_epochs=40, head_lr=0.1)  # confident: views differ visibly
    return ImageClassifier("tiny:cnn", strategy="feature_extract", **settings).fit(x, y), x, y


def test_tta_averages_exactly_the_views(fitted):
    """By hand: the centre crop and its mirror image through backbone + head (eval mode),
    softmax, mean."""
    clf, x, y = fitted
    t = ImageTransform(clf.preprocess_.input_size, clf.preprocess_, "none")
    centre = torch.stack([t(Image.fromarray(im)) for im in x])
    with torch.inference_mode():
        p = [torch.softmax(clf.model_(v), 1) for v in (centre, centre.flip(-1))]
    expected = ((p[0] + p[1]) / 2).numpy()
    got = clf.predict_proba(x, tta="flip")
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got - clf.predict_proba(x)).max() > 1e-3  # the flip changed something
    assert np.allclose(clf.predict_proba(x, tta="none"), clf.predict_proba(x))
    m = clf.evaluate(x, y, tta="flip")
    assert m["tta"] == {"views": ["centre", "flip"]} and "calibration" not in m
    assert m["accuracy"] == np.mean(np.array(clf.classes_)[got.argmax(1)] == y)
    assert "tta" not in clf.evaluate(x, y)
    with pytest.raises(ValueError, match="tta='crops': choose one of none, flip, flip\\+crops"):
        clf.predict_proba(x, tta="crops")


def test_tta_views_are_cached_apart_and_crops_are_corners(fitted):
    clf, x, _ = fitted
    views = tta_preprocesses(clf.preprocess_, "flip+crops")
    assert views[0] is clf.preprocess_ and len(views) == 6
    keys = {clf._feature_key(clf.model_.backbone, v, from_arrays(x, _)) for v in views}
    assert len(keys) == 6
    img = Image.fromarray(np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3))
    pre = PreprocessConfig(input_size=32, crop_pct=1.0)  # corners of a 36 px resize
    crops = {
        v.view: np.asarray(ImageTransform(32, v, "none").eval_image(img))
        for v in tta_preprocesses(pre, "flip+crops")[1:]
    }
    big = np.asarray(img.resize((36, 36), Image.BICUBIC))
    assert np.array_equal(crops["top_left"], big[:32, :32])
    assert np.array_equal(crops["bottom_right"], big[4:, 4:])
    assert np.array_equal(
        crops["flip"], np.asarray(ImageTransform(32, pre, "none").center_crop(img))[:, ::-1]
    )


def test_predictor_tta_matches_the_estimator(fitted):
    from headstart.inference import Predictor

    clf, x, _ = fitted
    for tta in ("flip", "flip+crops"):
        got = np.stack([r.probabilities for r in Predictor(clf, tta=tta).predict(list(x))])
        assert np.allclose(got, clf.predict_proba(x, tta=tta), atol=1e-5)


def test_tta_on_a_text_model_is_a_clear_error(tmp_path, capsys):
    from headstart.cli import main

    texts, labels = make_texts(16, 0)
    run = tmp_path / "text"
    clf = TextClassifier("tiny:bert", strategy="feature_extract", run_dir=run, **TEXT_FIT).fit(
        texts, labels
    )
    with pytest.raises(
        ValueError, match="test-time augmentation is for image models; this is a text model"
    ):
        clf.predict_proba(texts, tta="flip")
    with pytest.raises(ValueError, match="for image models"):
        clf.evaluate(texts, labels, tta="flip")
    import csv

    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *zip(texts, labels)])
    for argv in (
        ["evaluate", str(run), str(table), "--tta", "flip"],
        ["predict", str(run), "some text", "--tta", "flip"],
    ):
        assert main(["-q", *argv]) == 2
        assert "test-time augmentation is for image models" in capsys.readouterr().err


def test_cli_evaluate_with_tta(fitted, tmp_path, capsys):
    from headstart.cli import main

    from conftest import write_folder

    clf, x, y = fitted
    run = clf.save(tmp_path / "run")
    folder = write_folder(tmp_path / "data", x, y)
    assert main(["-q", "evaluate", str(run), str(folder), "--tta", "flip"]) == 0
    assert "the mean over 2 views (centre, flip)" in capsys.readouterr().out
    assert main(["-q", "predict", str(run), str(folder), "--tta", "flip+crops"]) == 0
