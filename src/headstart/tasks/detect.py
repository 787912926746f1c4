"""Object detection on any image backbone of the zoo: torchvision's Faster R-CNN (FPN),
RetinaNet and FCOS on the backbone's multi-scale feature maps, or a COCO-pretrained
torchvision detector by name (``torchvision:fasterrcnn_resnet50_fpn_v2``, online only).

Images larger than the tile size are cut into overlapping tiles for training and inference
(see :mod:`headstart.data.boxes`); detections of the tiles are merged back per image.

>>> det = ObjectDetector("packaged:efficientnet_lite0", detector="fasterrcnn", image_size=400)
>>> det.fit("trees/train")                  # COCO .json, VOC .xml folder, or YOLO folder
>>> det.evaluate("trees/test")["map_50"]
>>> det.predict(["a.png"])[0]["boxes"]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import (atomic_save_tensors, atomic_write_bytes, atomic_write_json,
                         load_checkpoint, optimizer_from_flat, optimizer_to_flat,
                         save_checkpoint, state_dict_tensors)
from ..config import TASK_DEFAULTS, FitConfig
from ..data.boxes import (BoxSample, BoxSource, merge_tile_detections, read_boxes,
                          spatial_split, tile_source, tile_windows)
from ..data.images import DataError, _image_files, load_image
from ..zoo import create_backbone, rebuild_backbone
from ..zoo.base import Backbone, OfflineError, ZooError
from ..zoo.local import RUN_CONFIG, RUN_WEIGHTS, read_run_config
from .base import _RESUME_NEUTRAL, FORMAT_VERSION, NotFittedError, resolve_config

log = logging.getLogger(__name__)

DETECT_STRATEGIES = ("feature_extract", "partial", "finetune", "lp_ft")
# COCO-pretrained torchvision detectors, usable by name when their weights can be fetched.
TORCHVISION_DETECTORS = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn",
                         "fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn_v2",
                         "fcos_resnet50_fpn")
DEFAULT_TILE = 512
MAX_DETECTIONS = 1000  # per image, after tiles are merged


# ----------------------------------------------------------------------------- the network
class PyramidBackbone(nn.Module):
    """A zoo backbone's last ``levels`` feature maps through a new feature pyramid (FPN):
    what torchvision's detectors take (``out_channels`` + an ordered dict of maps)."""

    def __init__(self, body: Backbone, levels: int, out_channels: int, extra: str):
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

        super().__init__()
        spec = body.pyramid_spec()
        levels = min(levels, len(spec))
        self.indices = list(range(len(spec) - levels, len(spec)))
        body.drop_after(self.indices[-1])
        self.body = body
        self.strides = [spec[i][1] for i in self.indices]
        blocks = LastLevelMaxPool() if extra == "pool" else \
            LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork([spec[i][0] for i in self.indices], out_channels,
                                         extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body.pyramid(x, self.indices)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def _no_resize_transform(mean, std):
    """torchvision's detector input transform without its resize: tiles go in at their own
    pixel size, so the boxes the model learns are the sizes it will see."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class NoResize(GeneralizedRCNNTransform):
        def resize(self, image, target=None):
            return image, target

    return NoResize(min_size=1, max_size=1_000_000, image_mean=list(mean), image_std=list(std))


def fit_anchor_sizes(boxes: np.ndarray, n_maps: int) -> list[float]:
    """One anchor size per pyramid map, fitted to the training boxes (as YOLO's
    auto-anchor does): a geometric series from the 5th to the 95th percentile of the boxes'
    side (square root of area), finest map first."""
    if len(boxes) == 0:
        return [32.0 * 2 ** i for i in range(n_maps)]
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lo, hi = np.percentile(side, 5), np.percentile(side, 95)
    hi = max(hi, lo * 1.5)
    return [float(round(lo * (hi / lo) ** (i / max(n_maps - 1, 1)), 1)) for i in range(n_maps)]


def _maps(arch: str) -> int:
    return 4 if arch == "fasterrcnn" else 5


def build_zoo_detector(arch: str, body: Backbone, num_classes: int, fpn_channels: int,
                       anchor_sizes: list[float], detections: int = 300) -> nn.Module:
    """``arch`` (fasterrcnn | retinanet | fcos) on ``body``'s feature pyramid; classes are
    ``1..num_classes`` (0 is background); ``anchor_sizes``: one per map (see
    :func:`fit_anchor_sizes`)."""
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import MultiScaleRoIAlign

    pre = body.preprocess
    if arch == "fasterrcnn":
        backbone = PyramidBackbone(body, 3, fpn_channels, "pool")
        n_maps = len(backbone.indices) + 1
        anchors = AnchorGenerator(tuple((float(a),) for a in anchor_sizes[:n_maps]),
                                  ((0.5, 1.0, 2.0),) * n_maps)
        pool = MultiScaleRoIAlign([str(i) for i in range(len(backbone.indices))], 7, 2)
        rep = 256
        # 500 proposals a tile, not torchvision's 1000 an image: the box head runs once per
        # tile, and on the tree crowns 500 keep mAP@0.5 (0.281) at 3/4 of the time
        model = FasterRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_head=TwoMLPHead(fpn_channels * 49, rep),
                           box_predictor=FastRCNNPredictor(rep, num_classes + 1),
                           box_detections_per_img=detections, box_batch_size_per_image=256,
                           rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=500)
    elif arch == "retinanet":
        backbone = PyramidBackbone(body, 3, fpn_channels, "p6p7")
        n_maps = len(backbone.indices) + 2
        anchors = AnchorGenerator(tuple(tuple(float(a) * 2 ** (k / 3) for k in range(3))
                                        for a in anchor_sizes[:n_maps]),
                                  ((0.5, 1.0, 2.0),) * n_maps)
        head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0],
                             num_classes + 1, norm_layer=_group_norm(fpn_channels))
        model = RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, head=head,
                          detections_per_img=detections)
    elif arch == "fcos":
        backbone = PyramidBackbone(body, 3, fpn_channels, "p6p7")
        n_maps = len(backbone.indices) + 2
        strides = backbone.strides + [backbone.strides[-1] * 2, backbone.strides[-1] * 4]
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * n_maps)
        head = _fcos_head(fpn_channels, num_classes + 1)
        model = FCOS(backbone, num_classes + 1, anchor_generator=anchors, head=head,
                     score_thresh=0.05, detections_per_img=detections)
    else:
        raise ValueError(f"detector={arch!r}: choose fasterrcnn, retinanet or fcos")
    model.transform = _no_resize_transform(pre.mean, pre.std)
    return model


def _group_norm(channels: int):
    """GroupNorm for the heads: 32 groups (torchvision's choice) or fewer when the width
    is not a multiple of 32."""
    return partial(nn.GroupNorm, math.gcd(channels, 32))


def _fcos_head(channels: int, num_classes: int) -> nn.Module:
    """torchvision's FCOS head with GroupNorm that fits ``channels`` (its own constructor
    hard-codes 32 groups)."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.fcos import (FCOSClassificationHead, FCOSHead,
                                                   FCOSRegressionHead)

    head = FCOSHead.__new__(FCOSHead)
    nn.Module.__init__(head)
    head.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
    head.classification_head = FCOSClassificationHead(channels, 1, num_classes,
                                                      norm_layer=_group_norm(channels))
    head.regression_head = FCOSRegressionHead(channels, 1, norm_layer=_group_norm(channels))
    return head


def _hub_checkpoint(weights) -> Path:
    import os

    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _torch_hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_torchvision_detector(name: str, num_classes: int, pretrained: bool,
                               detections: int = 300) -> nn.Module:
    """A COCO-pretrained torchvision detector with its class predictor replaced."""
    from torchvision.models import detection as tvd
    from torchvision.models import get_model_weights

    if name not in TORCHVISION_DETECTORS:
        raise ZooError(f"torchvision:{name}: not a known detector; choose one of "
                       f"{', '.join('torchvision:' + n for n in TORCHVISION_DETECTORS)}")
    weights = get_model_weights(name).DEFAULT
    if pretrained and not _hub_checkpoint(weights).is_file() and not _torch_hub_reachable():
        raise OfflineError(
            f"torchvision:{name}: its COCO weights must be downloaded from "
            f"download.pytorch.org, which cannot be reached from here (and they are not in "
            f"{_hub_checkpoint(weights).parent}). Offline alternative with real ImageNet "
            "weights: --backbone packaged:efficientnet_lite0 --detector fasterrcnn "
            "(or retinanet, fcos)")
    kwargs = {"weights": weights if pretrained else None, "weights_backbone": None}
    model = getattr(tvd, name)(**kwargs)
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
            model.backbone.out_channels, cls.num_anchors, k,
            norm_layer=partial(nn.GroupNorm, 32))
        model.detections_per_img = detections
    else:
        from torchvision.models.detection.fcos import FCOSClassificationHead

        cls = model.head.classification_head
        model.head.classification_head = FCOSClassificationHead(
            model.backbone.out_channels, cls.num_anchors, k,
            norm_layer=partial(nn.GroupNorm, 32))
        model.detections_per_img = detections
    return model


def _backbone_groups(model: nn.Module, zoo_body: Backbone | None) -> list[tuple[str, list]]:
    """The pretrained body's layer groups, early -> late, as (name, parameters)."""
    if zoo_body is not None:
        return [(g.name, list(g.parameters())) for g in zoo_body.groups()]
    body = model.backbone.body  # torchvision's IntermediateLayerGetter
    out = []
    for name, module in body.named_children():
        params = list(module.parameters())
        if params:
            out.append((name, params))
    return out


def _bn_layers(module: nn.Module):
    from torchvision.ops.misc import FrozenBatchNorm2d

    return [m for m in module.modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]


# ----------------------------------------------------------------------------- data
class TileDataset(torch.utils.data.Dataset):
    """Training tiles: (image tensor 0-1 CHW, target with boxes in tile pixels, labels
    1..K), with flips (and colour jitter with ``strong``) as augmentation."""

    def __init__(self, tiles: BoxSource, classes: list[str], augment: str, seed: int):
        self.tiles, self.index = tiles, {c: i + 1 for i, c in enumerate(classes)}
        self.augment, self.seed, self.epoch = augment, seed, 0
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def image(self, path: str) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = load_rgb(path)
        return self._cache[path]

    def __getitem__(self, i: int):
        s = self.tiles.samples[i]
        x0, y0, x1, y1 = s.region()
        pixels = torch.from_numpy(np.array(self.image(s.path)[y0:y1, x0:x1]))
        image = pixels.permute(2, 0, 1).float().div_(255)
        boxes = torch.as_tensor(s.boxes, dtype=torch.float32).reshape(-1, 4).clone()
        boxes[:, [0, 2]] -= x0
        boxes[:, [1, 3]] -= y0
        labels = torch.tensor([self.index[c] for c in s.labels], dtype=torch.int64)
        if self.augment != "none":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + i)
            w, h = x1 - x0, y1 - y0
            if torch.rand(1, generator=g) < 0.5:
                image = image.flip(-1)
                boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
            if self.augment == "strong":
                if torch.rand(1, generator=g) < 0.5:
                    image = image.flip(-2)
                    boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
                scale = 1 + 0.4 * (torch.rand(2, generator=g) - 0.5)  # brightness, contrast
                mean = image.mean()
                image = ((image - mean) * scale[1] + mean * scale[0]).clamp_(0, 1)
        return image, {"boxes": boxes, "labels": labels}


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def load_rgb(path: str) -> np.ndarray:
    """An image file as HxWx3 uint8 (the classifiers' decoding: grey, 16-bit, RGBA on
    white); a missing or corrupt file is a DataError naming it."""
    from PIL import UnidentifiedImageError

    try:
        return np.asarray(load_image(path))
    except FileNotFoundError:
        raise DataError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc})") from None


def _list_images(X) -> list[str]:
    if isinstance(X, (str, Path)):
        X = [X]
    out = []
    for item in X:
        p = Path(item)
        if p.is_dir():
            found = _image_files(p)
            if not found:
                raise DataError(f"{p}: no images found in this folder")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise DataError(f"{p}: no such image or folder")
    return out


# ----------------------------------------------------------------------------- metrics
def detection_metrics(preds: list[dict], truths: list[BoxSample], classes: list[str],
                      score_threshold: float = 0.5) -> dict:
    """COCO mAP@0.5:0.95, mAP@0.5, mAP@0.75 and per-class AP (``ap``: 0.5:0.95,
    ``ap_50``: at IoU 0.5; torchmetrics on pycocotools), and precision / recall / F1 of the
    boxes scoring >= ``score_threshold``
    (matched greedily at IoU 0.5)."""
    from torchmetrics.detection import MeanAveragePrecision
    from torchvision.ops import box_iou

    index = {c: i + 1 for i, c in enumerate(classes)}
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                  max_detection_thresholds=[1, 100, MAX_DETECTIONS])
    metric_50 = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                     iou_thresholds=[0.5],
                                     max_detection_thresholds=[1, 100, MAX_DETECTIONS])
    tp = {c: 0 for c in classes}
    n_pred = {c: 0 for c in classes}
    n_true = {c: 0 for c in classes}
    for p, t in zip(preds, truths):
        pb = torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4)
        ps = torch.as_tensor(p["scores"], dtype=torch.float32)
        pl = torch.tensor([index[c] for c in p["labels"]], dtype=torch.int64)
        tb = torch.as_tensor(t.boxes, dtype=torch.float32).reshape(-1, 4)
        tl = torch.tensor([index[c] for c in t.labels], dtype=torch.int64)
        for m in (metric, metric_50):
            m.update([{"boxes": pb, "scores": ps, "labels": pl}],
                     [{"boxes": tb, "labels": tl}])
        for k, c in enumerate(classes, start=1):
            keep = (pl == k) & (ps >= score_threshold)
            b, s = pb[keep], ps[keep]
            truth = tb[tl == k]
            n_pred[c] += len(b)
            n_true[c] += len(truth)
            if len(b) and len(truth):
                iou = box_iou(b[s.argsort(descending=True)], truth)
                used = torch.zeros(len(truth), dtype=torch.bool)
                for row in iou:
                    row = row.masked_fill(used, -1)
                    j = int(row.argmax())
                    if row[j] >= 0.5:
                        used[j] = True
                        tp[c] += 1
    r = metric.compute()
    per_class_ap = r["map_per_class"].reshape(-1).tolist()
    per_class_ap50 = metric_50.compute()["map_per_class"].reshape(-1).tolist()
    ids = r["classes"].reshape(-1).tolist()
    per_class = {}
    for c in classes:
        prec = tp[c] / n_pred[c] if n_pred[c] else 0.0
        rec = tp[c] / n_true[c] if n_true[c] else 0.0
        k = ids.index(index[c]) if index[c] in ids else None
        per_class[c] = {"ap": per_class_ap[k] if k is not None else float("nan"),
                        "ap_50": per_class_ap50[k] if k is not None else float("nan"),
                        "precision": prec, "recall": rec,
                        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                        "support": n_true[c], "predicted": n_pred[c]}
    total_tp, total_pred, total_true = sum(tp.values()), sum(n_pred.values()), \
        sum(n_true.values())
    prec = total_tp / total_pred if total_pred else 0.0
    rec = total_tp / total_true if total_true else 0.0
    return {"map": float(r["map"]), "map_50": float(r["map_50"]), "map_75": float(r["map_75"]),
            f"mar_{MAX_DETECTIONS}": float(r[f"mar_{MAX_DETECTIONS}"]),
            "precision": prec, "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "score_threshold": score_threshold, "images": len(truths), "boxes": total_true,
            "per_class": per_class}


# ----------------------------------------------------------------------------- estimator
class ObjectDetector:
    """Fine-tune a detector on a pre-trained backbone for new object classes.

    Takes the :class:`~headstart.config.FitConfig` settings (``backbone``, ``strategy``,
    ``detector``, ``image_size`` = the tile side, ``epochs``, ``lr``, ``head_lr``, ...).
    Strategies: ``feature_extract`` (backbone frozen; the pyramid and heads train),
    ``partial`` (the last ``partial_groups`` backbone groups train too), ``finetune``
    (everything), ``lp_ft`` (``head_epochs`` epochs with the backbone frozen, then
    ``epochs`` of everything). BatchNorm is frozen by default on pre-trained weights
    (detection batches are small) and trains on a from-scratch backbone.
    """

    task = "detect"
    defaults = TASK_DEFAULTS["detect"]  # over FitConfig's
    from headstart.tasks.serving import DetectionServing as serving_class  # its serving half

    def __init__(self, backbone: str | None = None, strategy: str | None = None,
                 config: FitConfig | None = None, run_dir: str | Path | None = None, **params):
        self.backbone, self.strategy, self.config = backbone, strategy, config
        self.run_dir, self.params = run_dir, params

    # ------------------------------------------------------------ settings
    def resolved_config(self) -> FitConfig:
        cfg = resolve_config(self)
        if cfg.strategy not in DETECT_STRATEGIES:
            raise ValueError(f"strategy={cfg.strategy!r} is not available for detection; "
                             f"choose one of {', '.join(DETECT_STRATEGIES)}")
        return cfg

    @property
    def tile_size(self) -> int:
        return int(self.config_.image_size or DEFAULT_TILE)

    # ------------------------------------------------------------ model
    def _build(self, cfg: FitConfig, classes: list[str], pretrained: bool,
               run_dir: Path | None = None) -> nn.Module:
        if cfg.backbone.startswith("torchvision:"):
            self.zoo_body_ = None
            self.backbone_arch_ = {"id": cfg.backbone}
            self.backbone_meta_ = {"id": cfg.backbone, "source_data": "COCO 2017 (detection)",
                                   "source_task": "object detection (91 classes)",
                                   "licence": "BSD-3-Clause (torchvision)"}
            self.pretrained_source_ = pretrained
            model = build_torchvision_detector(cfg.backbone.removeprefix("torchvision:"),
                                               len(classes), pretrained)
            self.mean_std_ = (list(model.transform.image_mean), list(model.transform.image_std))
            model.transform = _no_resize_transform(*self.mean_std_)
            return model
        if run_dir is not None:
            body = rebuild_backbone(self.backbone_arch_, run_dir)
        else:
            body = create_backbone(cfg.backbone, pretrained=pretrained, cut=cfg.cut)
            self.backbone_arch_ = body.architecture()
            self.backbone_meta_ = body.meta.to_dict()
        if body.meta.modality != "image":
            raise ZooError(f"{cfg.backbone}: a {body.meta.modality} model cannot carry an "
                           "image detector; use an image backbone (packaged:efficientnet_lite0)")
        self.zoo_body_ = body
        self.mean_std_ = (list(body.preprocess.mean), list(body.preprocess.std))
        return build_zoo_detector(cfg.detector, body, len(classes), cfg.fpn_channels,
                                  self.anchor_sizes_)

    def _bn_mode(self, cfg: FitConfig) -> str:
        if cfg.bn != "auto":
            return cfg.bn
        return "train" if cfg.backbone.startswith("scratch:") else "frozen"

    def _stages(self, cfg: FitConfig) -> list[tuple[str, int, int | None]]:
        """(name, epochs, how many of the last backbone groups train; None = all)."""
        if cfg.strategy == "feature_extract":
            return [("heads", cfg.epochs, 0)]
        if cfg.strategy == "partial":
            return [("partial", cfg.epochs, cfg.partial_groups)]
        if cfg.strategy == "finetune":
            return [("finetune", cfg.epochs, None)]
        return [("heads", cfg.head_epochs, 0), ("finetune", cfg.epochs, None)]

    def _set_trainable(self, model: nn.Module, n_last: int | None, cfg: FitConfig):
        """Freeze the backbone but its last ``n_last`` groups; returns optimizer groups."""
        groups = _backbone_groups(model, self.zoo_body_)
        body_params = {id(p) for _, params in groups for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) not in body_params)
        n = len(groups) if n_last is None else min(n_last, len(groups))
        trainable = groups[len(groups) - n:] if n else []
        bn_frozen = self._bn_mode(cfg) == "frozen"
        bn_params = {id(p) for m in _bn_layers(model.backbone) for p in m.parameters()}
        param_groups = []
        for depth, (name, params) in enumerate(reversed(trainable)):
            own = [p for p in params if not (bn_frozen and id(p) in bn_params)]
            for p in own:
                p.requires_grad_(True)
            if own:
                param_groups.append({"params": own, "lr": cfg.lr * cfg.lr_decay ** depth,
                                     "name": name})
        new = [p for p in model.parameters() if id(p) not in body_params]
        param_groups.append({"params": new, "lr": cfg.head_lr, "name": "new layers"})
        decay_groups = []
        for g in param_groups:  # no weight decay on biases and norm weights
            for wd, ps in ((cfg.weight_decay, [p for p in g["params"] if p.ndim > 1]),
                           (0.0, [p for p in g["params"] if p.ndim <= 1])):
                if ps:
                    decay_groups.append({**g, "params": ps, "weight_decay": wd})
        return decay_groups, [name for name, _ in trainable]

    @staticmethod
    def _train_mode(model: nn.Module) -> None:
        """Training mode, but a backbone BatchNorm whose weights do not train (``bn``
        frozen, or a frozen group) keeps its running statistics too."""
        model.train()
        for m in _bn_layers(model.backbone):
            if m.weight is None or not m.weight.requires_grad:
                m.eval()

    # ------------------------------------------------------------ fit
    def fit(self, X, y=None, *, validation=None, resume: bool = False, callbacks=(),
            fix: str = "error"):
        """Fit on annotated images (COCO JSON / VOC folder / YOLO folder / BoxSource).
        Without ``validation``, ``val_fraction`` is held out spatially (see
        :func:`~headstart.data.boxes.spatial_split`): no pixel is in both."""
        from ..train import launched_processes

        if launched_processes() > 1:  # each process would train alone
            raise RuntimeError("detection fits run in one process: data-parallel detection "
                               "(torchrun / accelerate launch) is not supported yet; run "
                               "`headstart fit --task detect` without a launcher")
        cfg = self.resolved_config()
        if cfg.augment not in ("none", "light", "strong") or cfg.mix != "none":
            raise ValueError(f"augment={cfg.augment}, mix={cfg.mix}: detection augments by "
                             "flips (and colour jitter with strong): augment none | light | "
                             "strong, mix none")
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        source = read_boxes(X, fix=fix)
        if validation is not None:
            train_src = source
            val_src = read_boxes(validation, classes=source.classes, fix=fix)
        else:
            train_src, val_src = spatial_split(source, cfg.val_fraction, cfg.seed)
        classes = list(source.classes)
        self.config_, self.classes_ = cfg, classes
        device = _device(cfg.device)
        self.anchor_sizes_ = fit_anchor_sizes(
            np.concatenate([s.boxes for s in train_src.samples]), _maps(cfg.detector))
        model = self._build(cfg, classes, pretrained=not cfg.backbone.startswith("scratch:"))
        model.to(device)
        self.model_ = model
        self.data_origin_ = str(source.origin)
        tiles = tile_source(train_src, self.tile_size, cfg.tile_overlap)
        if tiles.num_boxes == 0:
            raise DataError(f"{source.origin}: no box is left in the training tiles")
        data = TileDataset(tiles, classes, cfg.augment, cfg.seed)
        log.info("%s %s on %s: %d training tiles of %d px (%d boxes), validation %s; "
                 "classes %s", cfg.detector if not cfg.backbone.startswith("torchvision:")
                 else "", cfg.backbone, source.origin, len(tiles), self.tile_size,
                 tiles.num_boxes, f"{val_src.num_boxes} boxes" if val_src else "none", classes)

        run_dir = Path(self.run_dir) if self.run_dir else None
        fingerprint = hashlib.sha256(json.dumps(
            [{k: v for k, v in cfg.to_dict().items()
              if k not in _RESUME_NEUTRAL},
             train_src.fingerprint(), val_src.fingerprint() if val_src else None],
            sort_keys=True).encode()).hexdigest()[:24]
        ckpt = load_checkpoint(run_dir / "checkpoint") if (run_dir and resume) else None
        if resume and not ckpt:  # said, not a silent start from scratch
            log.warning("no checkpoint in %s; starting a new fit",
                        run_dir / "checkpoint" if run_dir else "memory: resume needs a run_dir")
        if ckpt and ckpt[1].get("fingerprint") != fingerprint:
            raise ValueError(f"{run_dir}: its checkpoint was written with other settings or "
                             "data; resume with the same ones, or start a new run without "
                             "--resume")
        history, best, best_state, start = [], None, None, (0, 0)
        if ckpt:
            tensors, meta = ckpt
            model.load_state_dict({k[6:]: v for k, v in tensors.items()
                                   if k.startswith("model.")})
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
            history, best = meta["history"], meta["best"]
            start = (meta["stage"], meta["epoch"] + 1)
            log.info("resumed from %s: stage %d, epoch %d done", run_dir / "checkpoint",
                     meta["stage"], meta["epoch"])
        stages = self._stages(cfg)
        self.stage_summaries_ = []
        done = False
        for si, (stage, epochs, n_last) in enumerate(stages):
            if si < start[0] or epochs == 0 or done:
                continue
            param_groups, trainable = self._set_trainable(model, n_last, cfg)
            optim = torch.optim.AdamW(param_groups)
            steps = epochs * math.ceil(len(data) / cfg.batch_size)
            warm = max(1, int(cfg.warmup * steps))
            sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warm) *
                                                      (0.5 * (1 + math.cos(math.pi * min(
                                                          1.0, s / steps)))))
            first = start[1] if si == start[0] else 0
            if ckpt and si == start[0] and "optim" in ckpt[1]:
                optim.load_state_dict(optimizer_from_flat(ckpt[0], ckpt[1]["optim"]))
                sched.load_state_dict(ckpt[1]["sched"])
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in model.parameters())
            self.stage_summaries_.append({"stage": stage, "epochs": epochs,
                                          "trainable_groups": trainable,
                                          "trainable_params": n_train, "total_params": n_all,
                                          "bn": self._bn_mode(cfg)})
            stale = 0
            for epoch in range(first, epochs):
                data.epoch = len(history)
                loader = torch.utils.data.DataLoader(
                    data, batch_size=cfg.batch_size, shuffle=True, collate_fn=_collate,
                    generator=torch.Generator().manual_seed(cfg.seed + 31 * len(history)))
                self._train_mode(model)
                te, total, parts, n = time.perf_counter(), 0.0, {}, 0
                for images, targets in loader:
                    images = [im.to(device) for im in images]
                    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                    losses = model(images, targets)
                    loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"the detection loss became {loss.item()} in epoch {epoch + 1} of "
                            f"stage {stage}; lower --lr / --head-lr")
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in param_groups for p in g["params"]], 10.0)
                    optim.step()
                    sched.step()
                    total += loss.item() * len(images)
                    n += len(images)
                    for k, v in losses.items():
                        parts[k] = parts.get(k, 0.0) + v.item() * len(images)
                row = {"stage": stage, "epoch": epoch + 1, "global_epoch": len(history) + 1,
                       "train_loss": total / max(n, 1),
                       **{k: v / max(n, 1) for k, v in parts.items()},
                       "seconds": time.perf_counter() - te}
                if val_src is not None:
                    vm = self._evaluate_source(val_src, cfg)
                    row.update({"val_map_50": vm["map_50"], "val_map": vm["map"]})
                    score = vm["map_50"]
                    if best is None or score > best["val_map_50"]:
                        best = {"val_map_50": score, "stage": stage, "epoch": epoch + 1}
                        best_state = {k: v.detach().clone() for k, v in
                                      model.state_dict().items()}
                        stale = 0
                    else:
                        stale += 1
                history.append(row)
                log.info("%s epoch %d/%d: loss %.4f%s (%.0fs)", stage, epoch + 1, epochs,
                         row["train_loss"], f", val mAP@0.5 {row['val_map_50']:.3f}"
                         if "val_map_50" in row else "", row["seconds"])
                for callback in callbacks:
                    callback(row)
                if run_dir is not None:
                    tensors = {f"model.{k}": v for k, v in state_dict_tensors(model).items()}
                    if best_state is not None:
                        tensors.update({f"best.{k}": v.detach().clone()
                                        for k, v in best_state.items()})
                    opt_t, opt_meta = optimizer_to_flat(optim.state_dict())
                    tensors.update(opt_t)
                    save_checkpoint(run_dir / "checkpoint", tensors, {
                        "fingerprint": fingerprint, "stage": si, "epoch": epoch,
                        "history": history, "best": best, "optim": opt_meta,
                        "sched": sched.state_dict()})
                if cfg.early_stopping and stale >= cfg.early_stopping:
                    log.info("%s: no better validation mAP@0.5 in %d epochs: stopping", stage,
                             stale)
                    done = si == len(stages) - 1
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.history_, self.best_ = history, best
        self.fit_seconds_ = time.perf_counter() - t0
        self.metrics_ = {"fit_seconds": self.fit_seconds_, "best": best,
                         "train_tiles": len(tiles), "train_boxes": tiles.num_boxes,
                         "tile_size": self.tile_size}
        if val_src is not None:
            self.metrics_["validation"] = self._evaluate_source(val_src, cfg)
        if run_dir is not None:
            self.save(run_dir)
        return self

    # ------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this ObjectDetector is not fitted: call fit() or "
                                 "ObjectDetector.load(run_dir) first")

    @torch.inference_mode()
    def _detect(self, image: np.ndarray, region: tuple[int, int, int, int],
                batch_size: int) -> dict:
        """Tiled inference on ``region`` of an HxWx3 uint8 image; boxes in image pixels."""
        model = self.model_
        model.eval()
        device = next(model.parameters()).device
        x0, y0, x1, y1 = region
        windows = tile_windows(x1 - x0, y1 - y0, self.tile_size, self.config_.tile_overlap,
                               origin=(x0, y0))
        parts = []
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            tensors = [torch.from_numpy(np.array(image[b:d, a:c])).permute(2, 0, 1)
                       .float().div_(255).to(device) for a, b, c, d in chunk]
            for w, out in zip(chunk, model(tensors)):
                parts.append((w, {k: v.cpu() for k, v in out.items()}))
        merged = merge_tile_detections(parts, region, iou=self.config_.nms_iou)
        b = merged["boxes"]
        real = ((b[:, 2] - b[:, 0]) >= 1) & ((b[:, 3] - b[:, 1]) >= 1)  # no zero-area boxes
        merged = {k: v[real] for k, v in merged.items()}
        order = merged["scores"].argsort(descending=True)[:MAX_DETECTIONS]
        return {"boxes": merged["boxes"][order].numpy(), "scores": merged["scores"][order]
                .numpy(), "labels": [self.classes_[int(k) - 1] for k in merged["labels"][order]]}

    def predict(self, X, score_threshold: float = 0.05, batch_size: int | None = None
                ) -> list[dict]:
        """Per image: ``{"path", "boxes" [N,4] xyxy pixels, "scores", "labels"}``, best
        first; ``X``: image files, folders, or an annotated source (its images)."""
        self._check_fitted()
        bs = batch_size or self.config_.eval_batch_size
        if isinstance(X, BoxSource):
            items = [(s.path, s.region()) for s in X.samples]
        else:
            items = [(p, None) for p in _list_images(X)]
        out = []
        for path, region in items:
            image = load_rgb(path)
            region = region or (0, 0, image.shape[1], image.shape[0])
            det = self._detect(image, region, bs)
            keep = det["scores"] >= score_threshold
            out.append({"path": str(path), "region": list(region), "boxes": det["boxes"][keep],
                        "scores": det["scores"][keep],
                        "labels": [lab for lab, k in zip(det["labels"], keep) if k]})
        return out

    def _evaluate_source(self, source: BoxSource, cfg: FitConfig | None = None) -> dict:
        preds = self.predict(source, score_threshold=0.0)
        return detection_metrics(preds, source.samples, self.classes_)

    def evaluate(self, X, fix: str = "error") -> dict:
        """mAP@0.5, mAP@0.5:0.95, per-class AP (at 0.5 and 0.5:0.95), precision/recall on
        annotated images."""
        self._check_fitted()
        source = read_boxes(X, classes=self.classes_, fix=fix)
        m = self._evaluate_source(source)
        m["data"] = str(source.origin)
        return m

    def score(self, X) -> float:
        return self.evaluate(X)["map_50"]

    # ------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        self._check_fitted()
        versions = {}
        for pkg in ("headstart", "torch", "torchvision", "timm", "torchmetrics", "pycocotools"):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        cfg = self.config_
        return {
            "format": "headstart-run", "format_version": FORMAT_VERSION, "task": self.task,
            "classes": self.classes_,
            "detector": {"arch": cfg.backbone if cfg.backbone.startswith("torchvision:")
                         else cfg.detector, "fpn_channels": cfg.fpn_channels,
                         "tile_size": self.tile_size, "tile_overlap": cfg.tile_overlap,
                         "anchor_sizes": getattr(self, "anchor_sizes_", None),
                         "mean": self.mean_std_[0], "std": self.mean_std_[1]},
            "backbone": {"id": cfg.backbone, "architecture": self.backbone_arch_,
                         "meta": self.backbone_meta_},
            "stages": getattr(self, "stage_summaries_", []),
            "history": getattr(self, "history_", []),
            "metrics": getattr(self, "metrics_", {}),
            "data": {"origin": getattr(self, "data_origin_", None)},
            "fit_config": cfg.to_dict(), "versions": versions,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, run_dir: str | Path) -> Path:
        """Weights (safetensors), config.json and history.csv, each written atomically."""
        run_dir = Path(run_dir)
        atomic_save_tensors(run_dir / RUN_WEIGHTS, state_dict_tensors(self.model_),
                            metadata={"format": "pt"})
        atomic_write_json(run_dir / RUN_CONFIG, json.loads(json.dumps(
            self.run_config(), default=_jsonable)))
        history = getattr(self, "history_", [])
        if history:
            keys = list(dict.fromkeys(k for row in history for k in row))
            lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys)
                                        for row in history]
            atomic_write_bytes(run_dir / "history.csv", ("\n".join(lines) + "\n").encode())
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "ObjectDetector":
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.get("task") != cls.task:
            raise ValueError(f"{run_dir}: a {config.get('task')!r} model, not a detector")
        cfg = FitConfig.from_dict(config["fit_config"])
        est = cls(config=cfg, run_dir=run_dir)
        est.config_, est.classes_ = cfg, list(config["classes"])
        est.backbone_arch_ = config["backbone"]["architecture"]
        est.backbone_meta_ = config["backbone"]["meta"]
        est.anchor_sizes_ = config["detector"].get("anchor_sizes")
        model = est._build(cfg, est.classes_, pretrained=False, run_dir=run_dir)
        model.load_state_dict(load_file(str(run_dir / RUN_WEIGHTS)))
        est.model_ = model.to(device).eval()
        est.metrics_ = config.get("metrics", {})
        est.history_ = config.get("history", [])
        est.stage_summaries_ = config.get("stages", [])
        est.data_origin_ = (config.get("data") or {}).get("origin")
        return est

    # ------------------------------------------------------------ pictures
    def render(self, X, score_threshold: float = 0.5, max_side: int = 1400) -> list:
        """(title, PIL image) per image: predicted boxes in blue and, for an annotated
        source, the true boxes in red; images larger than ``max_side`` are scaled down."""
        from PIL import Image, ImageDraw

        self._check_fitted()
        truths = X.samples if isinstance(X, BoxSource) else None
        preds = self.predict(X, score_threshold=score_threshold)
        out = []
        for k, p in enumerate(preds):
            x0, y0, x1, y1 = p["region"]
            image = Image.fromarray(load_rgb(p["path"])[y0:y1, x0:x1])
            draw = ImageDraw.Draw(image)
            n_true = ""
            if truths is not None:
                n_true = f", {len(truths[k].boxes)} true"
                for b in truths[k].boxes:
                    draw.rectangle([b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0],
                                   outline=(255, 64, 64), width=2)
            for b, s, lab in zip(p["boxes"], p["scores"], p["labels"]):
                draw.rectangle([b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0],
                               outline=(40, 170, 255), width=2)
                if len(self.classes_) > 1:
                    draw.text((b[0] - x0 + 2, b[1] - y0 + 1), f"{lab} {s:.2f}",
                              fill=(40, 170, 255))
            scale = min(1.0, max_side / max(image.size))
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     Image.Resampling.LANCZOS)
            out.append((f"{Path(p['path']).name}: {len(p['boxes'])} predicted{n_true}", image))
        return out

    def draw(self, X, out_dir: str | Path, score_threshold: float = 0.5,
             max_side: int = 1400) -> list[Path]:
        """:meth:`render` as PNG files in ``out_dir``."""
        import io

        out_dir = Path(out_dir)
        written = []
        for k, (title, image) in enumerate(self.render(X, score_threshold, max_side)):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            path = out_dir / f"{k:02d}_{Path(title.split(':')[0]).stem}.png"
            atomic_write_bytes(path, buf.getvalue())
            written.append(path)
        return written

    def write_report(self, run_dir: str | Path, X=None, compare: dict | None = None,
                     max_images: int = 4) -> Path:
        """``run_dir/report.html``: one self-contained page (see
        :func:`headstart.report.build_detection_report`); ``X``: images to draw."""
        import io

        from ..report import build_detection_report

        pictures = []
        if X is not None:
            if isinstance(X, BoxSource):
                X = X.subset(range(min(max_images, len(X))))
            else:
                X = _list_images(X)[:max_images]
            for title, image in self.render(X, max_side=1000):
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="JPEG", quality=85)
                pictures.append((title, buf.getvalue()))
        path = Path(run_dir) / "report.html"
        html = build_detection_report(json.loads(json.dumps(self.run_config(),
                                                            default=_jsonable)),
                                      pictures, compare)
        atomic_write_bytes(path, html.encode())
        return path


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (tuple, set)):
        return list(v)
    return str(v)

