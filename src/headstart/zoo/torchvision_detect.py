"""COCO-pretrained torchvision detectors (``torchvision:fasterrcnn_resnet50_fpn_v2``, ...),
their class predictor replaced for the new classes. Their weights come from
download.pytorch.org through torch.hub's cache: this module is the only place detection
looks there, and it says clearly when they can be neither found nor fetched."""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path

from torch import nn

from .base import OfflineError, ZooError

# COCO-pretrained torchvision detectors, usable by name when their weights can be fetched.
TORCHVISION_DETECTORS = (
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
)

TORCHVISION_META = {
    "source_data": "COCO 2017 (detection)",
    "source_task": "object detection (91 classes)",
    "licence": "BSD-3-Clause (torchvision)",
}


def hub_checkpoint(weights) -> Path:
    """Where torch.hub keeps the file of ``weights`` (a torchvision ``WeightsEnum``)."""
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)


def torch_hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_torchvision_detector(
    name: str, num_classes: int, pretrained: bool, detections: int = 300
) -> nn.Module:
    """A COCO-pretrained torchvision detector with its class predictor replaced (classes
    ``1..num_classes``; 0 is background)."""
    from torchvision.models import detection as tvd
    from torchvision.models import get_model_weights

    if name not in TORCHVISION_DETECTORS:
        raise ZooError(
            f"torchvision:{name}: not a known detector; choose one of "
            f"{', '.join('torchvision:' + n for n in TORCHVISION_DETECTORS)}"
        )
    weights = get_model_weights(name).DEFAULT
    if pretrained and not hub_checkpoint(weights).is_file() and not torch_hub_reachable():
        raise OfflineError(
            f"torchvision:{name}: its COCO weights must be downloaded from "
            f"download.pytorch.org, which cannot be reached from here (and they are not in "
            f"{hub_checkpoint(weights).parent}). Offline alternative with real ImageNet "
            "weights: --backbone packaged:efficientnet_lite0 --detector fasterrcnn "
            "(or retinanet, fcos)"
        )
    model = getattr(tvd, name)(weights=weights if pretrained else None, weights_backbone=None)
    k = num_classes + 1
    if name.startswith("fasterrcnn"):
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

        old = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, k)
        model.roi_heads.detections_per_img = detections
    elif name.startswith("retinanet"):
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead

        cls = model.head.classification_head
        model.head.classification_head = RetinaNetClassificationHead(
            model.backbone.out_channels, cls.num_anchors, k, norm_layer=partial(nn.GroupNorm, 32)
        )
        model.detections_per_img = detections
    else:
        from torchvision.models.detection.fcos import FCOSClassificationHead

        cls = model.head.classification_head
        model.head.classification_head = FCOSClassificationHead(
            model.backbone.out_channels, cls.num_anchors, k, norm_layer=partial(nn.GroupNorm, 32)
        )
        model.detections_per_img = detections
    return model
