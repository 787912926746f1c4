"""Target data: readers (folder, CSV, arrays), clear errors naming the bad item, image
modes, stratified splits, transforms from the backbone's own preprocessing, and fits
from every kind of input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headstart import ImageClassifier
from headstart.data import (
    DataError,
    ImageDataset,
    ImageTransform,
    from_arrays,
    from_csv,
    from_folder,
    load_image,
    median_side,
    open_inputs,
    open_source,
    resolve_image_size,
    stratified_split,
)
from headstart.zoo import PreprocessConfig, create_backbone

from conftest import FAST, make_arrays, write_csv, write_folder


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    img.save(path)
    return path


# ---------------------------------------------------------------- errors naming the item
def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_corrupt_image_named_and_skip_bad(image_folder):
    bad = image_folder / "a" / "x.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        from_folder(image_folder)
    message = str(info.value)
    assert str(bad) in message and "skip_bad" in message
    source = from_folder(image_folder, skip_bad=True)
    assert source.skipped == [str(bad)]
    assert str(bad) not in source.items and len(source) == 48


def test_truncated_png_named(image_folder):
    good = image_folder / "b" / "001.png"
    data = good.read_bytes()
    truncated = image_folder / "b" / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="skip_bad") as info:
        from_folder(image_folder)
    assert str(truncated) in str(info.value)
    assert str(good) not in str(info.value)
    assert from_folder(image_folder, skip_bad=True).skipped == [str(truncated)]


def test_fit_reports_a_corrupt_file_before_training(image_folder):
    bad = image_folder / "a" / "zz.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="zz.png"):
        ImageClassifier("tiny:cnn", strategy="finetune", **FAST).fit(image_folder)


def test_empty_class_folder_named(image_folder):
    (image_folder / "empty").mkdir()
    (image_folder / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        from_folder(image_folder)
    assert str(image_folder / "empty") in str(info.value)
    assert "no images" in str(info.value)


def test_hidden_folders_are_ignored(image_folder):
    (image_folder / ".ipynb_checkpoints").mkdir()
    assert from_folder(image_folder).classes == ["a", "b"]


def test_single_class_folder(tmp_path, arrays):
    images, _ = arrays
    write_folder(tmp_path / "one", images[:5], ["only"] * 5)
    with pytest.raises(DataError, match="at least two classes"):
        from_folder(tmp_path / "one")


def test_single_class_arrays(arrays):
    images, _ = arrays
    with pytest.raises(DataError, match="at least two classes"):
        from_arrays(images[:5], ["a"] * 5)


def test_missing_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match="does_not_exist"):
        from_folder(missing)
    with pytest.raises(DataError, match="does_not_exist"):
        open_source(str(missing))
    with pytest.raises(DataError, match="does_not_exist"):
        ImageClassifier("tiny:cnn", **FAST).fit(missing)


def test_folder_without_class_subfolders(tmp_path, arrays):
    write_png(tmp_path / "flat" / "a.png", arrays[0][0])
    with pytest.raises(DataError, match="subfolder"):
        from_folder(tmp_path / "flat")


def test_csv_row_with_missing_file(image_csv):
    lines = image_csv.read_text().splitlines()
    lines.insert(2, "img/ghost.png,a")  # becomes line 3 of the file
    image_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        from_csv(image_csv)
    message = str(info.value)
    assert "line 3" in message and "ghost.png" in message and str(image_csv) in message
    assert "skip_bad" in message
    source = from_csv(image_csv, skip_bad=True)
    assert len(source) == 48 and any("ghost.png" in s for s in source.skipped)


def test_csv_missing_label_column(tmp_path, arrays):
    csv_path = write_csv(tmp_path / "c", *arrays)
    text = csv_path.read_text().replace("path,label", "path,klass", 1)
    csv_path.write_text(text)
    with pytest.raises(DataError) as info:
        from_csv(csv_path)
    assert "'label'" in str(info.value) and "klass" in str(info.value)
    assert "label_column" in str(info.value)
    source = from_csv(csv_path, label_column="klass")  # the fix the message names works
    assert source.classes == ["a", "b"]


def test_csv_of_texts_read_as_images_points_to_the_text_task(tmp_path):
    csv_path = tmp_path / "texts.csv"
    csv_path.write_text("text,label\ngood film,pos\nbad film,neg\n")
    with pytest.raises(DataError, match="no column 'path'.*for a CSV of texts, use --task text"):
        from_csv(csv_path)
    (tmp_path / "paths.csv").write_text("file,label\na.png,x\n")  # no hint without texts
    with pytest.raises(DataError) as info:
        from_csv(tmp_path / "paths.csv")
    assert "--task text" not in str(info.value)


def test_csv_empty_label_names_the_line(image_csv):
    lines = image_csv.read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + ","
    image_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 5"):
        from_csv(image_csv)


def test_csv_paths_are_relative_to_the_csv(image_csv, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    source = from_csv(image_csv)
    assert len(source) == 48 and source.classes == ["a", "b"]
    assert all(str(image_csv.parent) in str(p) for p in source.items)


def test_missing_csv(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        open_source(tmp_path / "nope.csv")


def test_arrays_label_count_and_unknown_label(arrays):
    images, labels = arrays
    with pytest.raises(DataError, match="labels"):
        from_arrays(images, labels[:-1])
    with pytest.raises(DataError, match="'zebra'"):
        from_arrays(images, list(labels[:-1]) + ["zebra"], classes=["a", "b"])
    with pytest.raises(DataError, match="need labels"):
        open_source(images)


def test_unsupported_array_dtype(arrays):
    images, labels = arrays
    with pytest.raises(DataError, match="int64"):
        from_arrays(images.astype(np.int64), labels)


def test_open_inputs_names_a_corrupt_file(image_folder):
    bad = image_folder / "b" / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="bad.png"):
        open_inputs(image_folder)
    with pytest.raises(DataError, match="bad.png"):
        open_inputs([str(bad)])
    with pytest.raises(DataError, match="missing.png"):
        open_inputs(str(image_folder / "missing.png"))


# ---------------------------------------------------------------- image modes
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1", "I;16", "RGB", "CMYK"])
def test_image_modes_load_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(12, 20, 3)).astype(np.uint8)
    if mode == "I;16":
        img = Image.fromarray((rng.integers(0, 65536, size=(12, 20))).astype(np.uint16))
    else:
        img = Image.fromarray(rgb).convert(mode)
    suffix = ".tif" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    img.save(path)
    with Image.open(path) as check:
        assert check.mode.startswith(mode[0])  # really stored in that mode
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (20, 12)


def test_grey_and_alpha_values(tmp_path):
    grey = np.full((4, 4), 77, np.uint8)
    out = np.asarray(load_image(write_png(tmp_path / "g.png", grey)))
    assert (out == 77).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    out = np.asarray(load_image(write_png(tmp_path / "a.png", rgba)))
    assert (out[:2] == [200, 0, 0]).all()
    assert (out[2:] == 255).all()  # transparent pixels on white
    la = np.stack([np.full((4, 4), 10, np.uint8), np.zeros((4, 4), np.uint8)], -1)
    out = np.asarray(load_image(write_png(tmp_path / "la.png", la)))  # LA, all transparent
    assert (out == 255).all()


def test_palette_image_keeps_its_colours(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2] = [255, 0, 0]
    rgb[:, 2:] = [0, 0, 255]
    img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert img.mode == "P"
    img.save(tmp_path / "p.png")
    out = np.asarray(load_image(tmp_path / "p.png"))
    assert (out[:, :2] == [255, 0, 0]).all() and (out[:, 2:] == [0, 0, 255]).all()


def test_float_and_uint16_arrays():
    f = np.zeros((6, 8, 3), np.float32)
    f[..., 1] = 1.0
    f[0, 0] = [0.5, 0.5, 2.0]  # out of range: clipped
    out = np.asarray(load_image(f))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert (out[1:, :, 1] == 255).all() and (out[1:, :, 0] == 0).all()
    assert list(out[0, 0]) == [128, 128, 255]
    u = np.full((6, 8), 65535, np.uint16)
    u[0, 0] = 0
    out = np.asarray(load_image(u))
    assert out.shape == (6, 8, 3) and out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    chw = np.zeros((3, 6, 8), np.uint8)
    assert load_image(chw).size == (8, 6)  # CHW arrays are understood too
    images = [f, np.full((6, 8), 30000, np.uint16)]
    source = from_arrays(images, ["x", "y"])
    assert [load_image(item).mode for item in source.items] == ["RGB", "RGB"]
    assert source.classes == ["x", "y"]


def test_sixteen_bit_png_and_array_agree(tmp_path):
    data = (np.arange(16 * 16).reshape(16, 16) * 4).astype(np.uint16)  # 0..1020 of 65535
    path = tmp_path / "x16.png"
    Image.fromarray(data).save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(load_image(data)))


# ---------------------------------------------------------------- splits
def test_stratified_split_preserves_proportions_and_is_deterministic():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    train, val = stratified_split(labels, 0.2, seed=4)
    assert len(val) == 20 and len(train) == 80
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(100))
    assert np.bincount(labels[val]).tolist() == [12, 6, 2]
    assert np.bincount(labels[train]).tolist() == [48, 24, 8]
    again = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = stratified_split(labels, 0.2, seed=5)
    assert not np.array_equal(other[1], val)
    empty_train, empty_val = stratified_split(labels, 0.0, seed=0)
    assert len(empty_train) == 100 and len(empty_val) == 0


def test_stratified_split_refuses_a_single_image_class():
    labels = np.array([0] * 20 + [1])
    with pytest.raises(DataError, match="smallest class has 1"):
        stratified_split(labels, 0.2, seed=0)


def test_fit_with_a_single_image_class_says_how_to_fix(arrays):
    images, labels = arrays
    keep = np.r_[np.flatnonzero(labels == "a"), np.flatnonzero(labels == "b")[:1]]
    with pytest.raises(DataError, match="validation"):
        ImageClassifier("tiny:cnn", **FAST).fit(images[keep], labels[keep])


# ---------------------------------------------------------------- transforms
def test_eval_transform_uses_the_backbone_statistics():
    pre = create_backbone("tiny:cnn").preprocess
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    t = ImageTransform(32, pre)(white)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert torch.allclose(t, torch.ones_like(t))  # (1 - 0.5) / 0.5
    imagenet = PreprocessConfig(
        input_size=24, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875
    )
    t = ImageTransform(24, imagenet)(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert t.shape == (3, 24, 24)
    for c in range(3):
        expected = (1 - imagenet.mean[c]) / imagenet.std[c]
        assert torch.allclose(t[c], torch.full((24, 24), expected), atol=1e-5)
    black = ImageTransform(24, imagenet)(Image.new("RGB", (24, 24)))
    assert torch.allclose(black[0], torch.full((24, 24), -0.485 / 0.229), atol=1e-5)


def test_training_augmentation_is_seeded_by_epoch_and_item():
    images, labels = make_arrays(n=6, size=20)
    source = from_arrays(images, labels)
    pre = create_backbone("tiny:cnn").preprocess

    def dataset(seed=0, train=True):
        return ImageDataset(source, ImageTransform(32, pre, "strong"), seed=seed, train=train)

    a, b = dataset(), dataset()
    for i in range(len(source)):
        assert torch.equal(a[i][0], b[i][0])
        assert a[i][1] == b[i][1]
    epoch0 = [a[i][0] for i in range(len(source))]
    a.set_epoch(1)
    epoch1 = [a[i][0] for i in range(len(source))]
    assert all(x.shape == (3, 32, 32) for x in epoch1)
    assert sum(not torch.equal(x, y) for x, y in zip(epoch0, epoch1)) >= len(source) - 1
    b.set_epoch(1)
    assert all(torch.equal(x, b[i][0]) for i, x in enumerate(epoch1))
    other_seed = dataset(seed=1)
    assert not all(torch.equal(x, other_seed[i][0]) for i, x in enumerate(epoch0))
    # evaluation datasets never augment
    ev = dataset(train=False)
    first = [ev[i][0] for i in range(len(source))]
    ev.set_epoch(7)
    assert all(torch.equal(x, ev[i][0]) for i, x in enumerate(first))


def test_image_size_defaults():
    pre = PreprocessConfig(input_size=224)
    # small images are enlarged at most UPSCALE_CAP (5x), rounded up to 32, not to 224
    assert resolve_image_size(None, pre, 16) == 96
    assert resolve_image_size(None, pre, 28) == 160  # Fashion-MNIST
    assert resolve_image_size(None, pre, 40) == 224
    assert resolve_image_size(None, pre, 500) == 224
    assert resolve_image_size(48, pre, 16) == 48
    images, labels = make_arrays(n=4, size=20)
    assert median_side(from_arrays(images, labels)) == 20


# ---------------------------------------------------------------- fits from each input
def _fit_and_check(X, y=None, **kwargs):
    clf = ImageClassifier("tiny:cnn", strategy="finetune", **{**FAST, "epochs": 8, **kwargs})
    clf.fit(X, y)
    assert clf.score(X, y) >= 0.9
    return clf


def test_fit_from_folder_with_a_bad_file_skipped(tmp_path):
    root = write_folder(tmp_path / "f", *make_arrays(n=60, n_classes=3))
    (root / "c" / "broken.png").write_bytes(b"broken")
    clf = _fit_and_check(root, skip_bad=True)
    assert clf.classes_ == ["a", "b", "c"]
    assert clf.predict_proba(root / "a").shape == (20, 3)
    assert set(clf.predict(root / "a")) == {"a"}


def test_fit_from_csv(image_csv):
    clf = _fit_and_check(image_csv)
    assert clf.classes_ == ["a", "b"]
    assert len(clf.predict(image_csv)) == 48


def test_fit_from_arrays(arrays3):
    images, labels = arrays3
    clf = _fit_and_check(images, labels)
    assert clf.predict(images[:3]) == list(labels[:3])
    assert clf.history_ and "val_accuracy" in clf.history_[-1]


def test_score_with_the_integer_labels_used_in_fit(arrays):
    images, labels = arrays
    y = np.where(labels == "a", 1, 2)
    clf = ImageClassifier("tiny:cnn", strategy="finetune", **{**FAST, "epochs": 8})
    clf.fit(images, y)
    assert clf.classes_ == ["1", "2"]
    assert clf.score(images, y) >= 0.9


def test_evaluate_on_data_of_one_class(arrays, tmp_path):
    images, labels = arrays
    clf = ImageClassifier("tiny:cnn", strategy="finetune", **{**FAST, "epochs": 8})
    clf.fit(images, labels)
    only_a = labels == "a"
    assert clf.score(images[only_a], labels[only_a]) >= 0.9
    folder = write_folder(tmp_path / "only_a", images[only_a], labels[only_a])
    assert clf.evaluate(folder)["n"] == int(only_a.sum())
