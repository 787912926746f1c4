"""Slow tests on the REAL packaged ImageNet weights and REAL offline data.

They prove the weights load with every key matched, behave like an ImageNet classifier,
and transfer to Fashion-MNIST better than the same network from scratch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

ESPRESSO = 967  # ImageNet-1k class index


@pytest.fixture(scope="module")
def fmnist():
    from headstart.datasets import DatasetMissing, fashion_mnist

    try:
        return fashion_mnist("train"), fashion_mnist("test")
    except DatasetMissing as exc:  # setup installs it; say how if it is missing
        pytest.fail(str(exc))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_packaged_weights_classify_coffee_as_espresso(name, caplog):
    from skimage import data

    from headstart.data import ImageTransform
    from headstart.zoo.packaged import load_packaged_imagenet
    from headstart.zoo.timm_vision import preprocess_from_timm

    caplog.set_level("INFO", logger="headstart.zoo.packaged")
    model = load_packaged_imagenet(name).eval()
    assert "every key matched" in caplog.text
    pre = preprocess_from_timm(model)
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    from PIL import Image

    x = ImageTransform(pre.input_size, pre)(Image.fromarray(data.coffee()))
    with torch.inference_mode():
        p = model(x[None]).softmax(1)[0]
    assert int(p.argmax()) == ESPRESSO
    assert float(p[ESPRESSO]) > 0.8


def test_packaged_key_mapping_is_complete():
    import timm

    from headstart.zoo.packaged import rename_efficientnet_keys, weights_path

    state = torch.load(weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = rename_efficientnet_keys(state, model)
    assert set(renamed) == set(model.state_dict())
    for k, v in renamed.items():
        assert v.shape == model.state_dict()[k].shape, k


def test_transfer_beats_scratch_on_fashion_mnist(fmnist):
    """Frozen ImageNet features + linear head vs the same frozen net with random weights."""
    from headstart import ImageClassifier
    from headstart.datasets import per_class_subset

    (x, y, classes), (xt, yt, _) = fmnist
    idx = per_class_subset(y, 30, seed=0)
    tidx = per_class_subset(yt, 50, seed=0)
    scores = {}
    for backbone in ("packaged:efficientnet_lite0", "scratch:packaged:efficientnet_lite0"):
        clf = ImageClassifier(backbone, strategy="feature_extract", image_size=64, val_fraction=0.2)
        clf.fit(
            x[idx],
            y[idx],
        )
        scores[backbone] = clf.score(xt[tidx], yt[tidx])
    pretrained, scratch = scores.values()
    assert pretrained >= 0.68, scores
    assert pretrained >= scratch + 0.1, scores


def test_cli_fit_real_weights_end_to_end(tmp_path, fmnist):
    """The main job's path, small: export image folders, `headstart fit`, `evaluate`,
    `predict`, then use the run as the source of a second transfer."""
    from headstart.cli import main
    from headstart.datasets import export_image_folder, per_class_subset

    (x, y, classes), (xt, yt, _) = fmnist
    idx = per_class_subset(y, 12, seed=1)
    tidx = per_class_subset(yt, 10, seed=1)
    export_image_folder(x[idx], y[idx], classes, tmp_path / "train")
    export_image_folder(xt[tidx], yt[tidx], classes, tmp_path / "test")
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                str(tmp_path / "train"),
                "--test",
                str(tmp_path / "test"),
                "--strategy",
                "lp_ft",
                "--epochs",
                "1",
                "--head-epochs",
                "10",
                "--image-size",
                "64",
                "--val-fraction",
                "0.2",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["id"] == "packaged:efficientnet_lite0"
    assert config["preprocess"]["input_size"] == 64
    assert [s["stage"] for s in config["stages"]] == ["linear_probe", "finetune"]
    assert config["stages"][1]["trainable_params"] == config["stages"][1]["total_params"]
    assert config["metrics"]["test"]["n"] == 100
    assert config["metrics"]["test"]["accuracy"] > 0.4  # 10 classes, 12 images each
    assert (
        main(["predict", str(run), str(tmp_path / "test"), "--out", str(tmp_path / "p.csv")]) == 0
    )
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 101
    # chained transfer: the fine-tuned run is the next source
    from headstart import ImageClassifier

    clf = ImageClassifier(str(run), strategy="feature_extract", val_fraction=0.2)
    clf.fit(tmp_path / "train")
    assert clf.model_.backbone.meta.notes["lineage"] == ["packaged:efficientnet_lite0"]
    assert clf.score(tmp_path / "test") > 0.4
    assert np.isfinite(clf.metrics_["validation"]["accuracy"])
