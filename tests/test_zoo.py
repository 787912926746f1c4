"""The zoo: one listable registry with complete metadata, clear errors, offline detection
naming the offline alternative, and the backbone contract (groups, feature_dim, cut)."""

from __future__ import annotations

import pytest
import torch

from headstart.zoo import (
    _REGISTRY,  # noqa: PLC2701 - checked unchanged after a bad register
    ModelCard,
    OfflineError,
    ZooError,
    create_backbone,
    get_card,
    list_models,
    register,
)

PACKAGED = (
    "packaged:efficientnet_lite0",
    "packaged:efficientnet_lite1",
    "packaged:efficientnet_lite2",
    "packaged:mobilenet_v2",
)


def test_offline_image_models():
    ids = [m.id for m in list_models(modality="image", offline=True)]
    for model_id in (*PACKAGED, "tiny:cnn"):
        assert model_id in ids
    assert all(m.offline for m in list_models(offline=True))
    assert not any(m.id.startswith("timm:") for m in list_models(offline=True))
    online = list_models(offline=False)
    assert online and all(not m.offline for m in online)
    assert set(ids).isdisjoint(m.id for m in online)
    # the image models a package ships: the classifiers, then the COCO detector (issue 32)
    assert [m.id for m in list_models(source="packaged", modality="image")] == [
        *PACKAGED,
        "packaged:nanodet-coco",
    ]
    assert [m.id for m in list_models(source="packaged", modality="text")] == [
        "packaged:minilm-l6",
        "packaged:mpnet-base",
    ]
    assert list_models(modality="no-such-modality") == []


def test_every_entry_has_complete_metadata():
    metas = list_models()
    assert len(metas) >= 7
    assert len({m.id for m in metas}) == len(metas)
    for m in metas:
        for field in ("source_data", "source_task", "domain", "licence", "modality"):
            assert isinstance(getattr(m, field), str) and getattr(m, field).strip(), (m.id, field)
        assert isinstance(m.params, int) and m.params > 0, m.id
        assert ":" in m.id
    assert get_card("tiny:cnn").meta.params == 6088
    assert sum(p.numel() for p in create_backbone("tiny:cnn").parameters()) == 6088


def test_duplicate_registration_raises():
    before = dict(_REGISTRY)
    card = get_card("tiny:cnn")
    with pytest.raises(ValueError, match="tiny:cnn"):
        register(card)
    with pytest.raises(ValueError, match="already registered"):
        register(ModelCard(card.meta, lambda pretrained, cut: None))
    assert _REGISTRY == before


def test_unknown_id_names_the_alternatives():
    with pytest.raises(ZooError) as info:
        create_backbone("nowhere:model")
    message = str(info.value)
    for model_id in (*PACKAGED, "tiny:cnn"):
        assert model_id in message
    assert "timm:" in message
    with pytest.raises(ZooError, match="headstart models"):
        get_card("nowhere:model")


def test_unknown_timm_architecture():
    with pytest.raises(ZooError, match="not_a_model"):
        create_backbone("timm:not_a_model", pretrained=False)
    with pytest.raises(ZooError, match=r"Did you mean .*timm:resnet18\b"):
        create_backbone("timm:resnet_18", pretrained=False)


def test_offline_hub_model_raises_offline_error(no_network, empty_hf_cache):
    with pytest.raises(OfflineError) as info:
        create_backbone("timm:resnet18.a1_in1k")  # pretrained: needs the hub
    message = str(info.value)
    assert "packaged:efficientnet_lite0" in message
    assert "timm:resnet18.a1_in1k" in message
    assert isinstance(info.value, ZooError)


def test_hf_hub_offline_env_raises_offline_error(no_network, empty_hf_cache, monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported, so setting the variable
    # now only works together with its constant (a new process would read the env var)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="packaged:efficientnet_lite0"):
        create_backbone("timm:resnet18.a1_in1k")


def test_registered_hub_entry_offline_error(no_network, empty_hf_cache):
    with pytest.raises(OfflineError, match="packaged:efficientnet_lite2"):
        create_backbone("timm:mobilenetv3_large_100.ra_in1k")


def test_timm_architecture_without_weights_works_offline(no_network):
    backbone = create_backbone("timm:resnet18", pretrained=False).eval()
    assert backbone.feature_dim == 512
    groups = backbone.groups()
    assert len(groups) >= 4 and groups[0].name == "stem"
    # every parameter belongs to exactly one group, groups ordered early -> late
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}
    assert backbone.preprocess.input_size == 224
    with torch.inference_mode():
        assert backbone(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_tiny_cut():
    full = create_backbone("tiny:cnn")
    assert full.feature_dim == 32 and len(full.groups()) == 3
    one = create_backbone("tiny:cnn", cut=1).eval()
    assert one.feature_dim == 16
    assert [g.name for g in one.groups()] == ["stem", "block1"]
    assert one(torch.zeros(2, 3, 32, 32)).shape == (2, 16)
    two = create_backbone("tiny:cnn", cut=2).eval()
    assert two.feature_dim == 8 and two(torch.zeros(1, 3, 32, 32)).shape == (1, 8)
    # a cut keeps the remaining weights as they were
    assert torch.equal(one.stem[0].weight, full.stem[0].weight)
    with pytest.raises(ZooError, match="cut"):
        create_backbone("tiny:cnn", cut=3)


def test_cut_fit_uses_the_smaller_features(arrays):
    from headstart import ImageClassifier

    from conftest import FAST

    clf = ImageClassifier(
        "tiny:cnn", strategy="finetune", cut=1, **{**FAST, "epochs": 1, "val_fraction": 0.0}
    ).fit(*arrays)
    assert clf.model_.backbone.feature_dim == 16
    assert clf.stages_[0]["trainable_params"] == 232 + 1184 + 16 * 2 + 2


def test_timm_cut_drops_the_final_projection_first():
    """EfficientNet: cut=1 removes conv_head (1280-d -> the last stage's 320-d)."""
    b = create_backbone("timm:tf_efficientnet_lite0", pretrained=False, cut=1).eval()
    assert b.feature_dim == 320
    with torch.inference_mode():
        assert b(torch.zeros(2, 3, 64, 64)).shape == (2, 320)
    with pytest.raises(ZooError, match="cut"):
        create_backbone("timm:tf_efficientnet_lite0", pretrained=False, cut=9)


def test_timm_cut_one_on_resnet_removes_the_last_stage():
    b = create_backbone("timm:resnet18", pretrained=False, cut=1)
    assert b.feature_dim == 256
    assert sum(p.numel() for p in b.parameters()) < sum(
        p.numel() for p in create_backbone("timm:resnet18", pretrained=False).parameters()
    )


def test_scratch_baseline_metadata():
    b = create_backbone("scratch:tiny:cnn")
    assert b.meta.id == "scratch:tiny:cnn" and b.meta.offline
    assert "random init" in b.meta.source_data
    assert b.feature_dim == 32


@pytest.mark.parametrize(
    "task, backbone, message",
    [
        ("image", "tiny:bert", "tiny:bert is a text model; --task image needs an image backbone"),
        ("text", "tiny:cnn", "tiny:cnn is an image model; --task text needs a text backbone"),
        ("image", "tiny:wav2vec2", "tiny:wav2vec2 is an audio model; --task image needs an image"),
    ],
)
def test_a_backbone_of_another_modality_is_refused_by_name(task, backbone, message):
    """Not a TypeError from deep in preprocessing: the error names the backbone, what it
    reads, and the command that lists the ones that fit."""
    from headstart.tasks import ESTIMATORS

    from conftest import FAST, make_arrays, make_texts

    data = make_arrays(n=24) if task == "image" else make_texts(24, seed=0)
    with pytest.raises(ZooError, match=message) as err:
        ESTIMATORS[task](backbone, **FAST).fit(*data)
    assert f"headstart models --modality {task}" in str(err.value)
