"""A source that is itself a detector (``packaged:nanodet-coco``) fine-tuned as it is: its
backbone, neck and head kept, only the class layer replaced for the new classes (a class
whose name is a source class keeps that class's weights: ``person``, ``car``, ...).

:class:`SourceDetector` speaks torchvision's detector protocol, so the shared loop, tiled
inference and the estimator treat it as they treat Faster R-CNN: ``forward(images,
targets)`` gives a dict of losses in training and per image ``{"boxes", "scores",
"labels" 1..K}`` in evaluation; ``backbone.body`` is the pretrained part (CSP backbone +
PAN neck, whose layer groups the strategies freeze), everything else (the head) the new
layers.

Training loss as NanoDet's (Generalized Focal Loss, Li et al. 2020): ATSS assigns each
object the cells whose centres are nearest to its centre (9 per level) and whose cell box
overlaps it more than the mean + std of those; Quality Focal Loss on the class scores
(target: the IoU of the predicted box with its object), GIoU loss (weight 2) and
Distribution Focal Loss (weight 0.25) on the distance bins, both weighted by the cell's
predicted score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...zoo.base import Backbone, ZooError
from ...zoo.nanodet import REG_MAX, GflHead, decode, distance_to_box, distances, points

OCTAVE_SCALE = 5  # NanoDet-g's grid cell size for ATSS, in strides
ATSS_TOPK = 9
QFL_BETA = 2.0
GIOU_WEIGHT, DFL_WEIGHT = 2.0, 0.25


def class_sources(classes: list[str], source_classes: list[str]) -> list[int | None]:
    """For each new class, the index of the source class of the same name (case and
    ``_``/``-`` ignored), or None."""

    def norm(c: str) -> str:
        return c.lower().replace("_", " ").replace("-", " ").strip()

    index = {norm(c): i for i, c in enumerate(source_classes)}
    return [index.get(norm(c)) for c in classes]


class NeckFeatures(nn.Module):
    """The pretrained part as the detector sees it: ``body`` (the zoo backbone, whose layer
    groups train or stay frozen) and, through it, the neck's maps."""

    def __init__(self, body: Backbone):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body.neck_features(x)


class SourceDetector(nn.Module):
    """A detector source with its head for ``num_classes`` classes; see the module doc.

    ``resize``: side every image is resized to before the network (the source's own input,
    for zero-shot use on whole photos); None = images go in at their own size (tiles),
    padded to a multiple of 32."""

    def __init__(
        self,
        body: Backbone,
        classes: list[str],
        source_classes: list[str],
        mean,
        std,
        detections: int = 300,
        resize: int | None = None,
        score_threshold: float = 0.05,
        nms_iou: float = 0.6,
    ):
        super().__init__()
        head = body.detection_head()
        if not isinstance(head, GflHead):
            raise ZooError(f"{body.id}: not a detector source with a GFL head (NanoDet)")
        self.backbone = NeckFeatures(body)
        if list(classes) != list(source_classes):
            head.replace_classes(len(classes), class_sources(classes, source_classes))
        self.head = head
        self.strides = tuple(body.meta.notes.get("strides", (8, 16, 32)))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1))
        self.detections, self.resize = detections, resize
        self.score_threshold, self.nms_iou = score_threshold, nms_iou

    def batch(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalised images in one zero-padded batch (sides a multiple of 32) and each
        image's (height, width) in the network's pixels."""
        if self.resize:
            images = [
                F.interpolate(im[None], size=(self.resize,) * 2, mode="bilinear", antialias=True)[0]
                for im in images
            ]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        h = -(-max(s[0] for s in sizes) // 32) * 32
        w = -(-max(s[1] for s in sizes) // 32) * 32
        x = images[0].new_zeros(len(images), 3, h, w)
        for i, im in enumerate(images):
            x[i, :, : im.shape[-2], : im.shape[-1]] = (im - self.mean) / self.std
        return x, sizes

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        originals = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        x, sizes = self.batch(list(images))
        outputs = self.head(self.backbone(x))
        if self.training:
            if targets is None:
                raise ValueError("a detector in training mode needs targets")
            return gfl_loss(outputs, self.strides, list(targets))
        dets = [
            decode(
                [(c[i : i + 1], r[i : i + 1]) for c, r in outputs],
                size,
                self.score_threshold,
                self.nms_iou,
                self.detections,
            )[0]
            for i, size in enumerate(sizes)
        ]
        for d, (h, w), (h0, w0) in zip(dets, sizes, originals):
            d["boxes"] = d["boxes"] * d["boxes"].new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
            d["labels"] = d["labels"] + 1  # torchvision's convention: 0 is the background
        return dets


# ----------------------------------------------------------------------------- the loss
def gfl_loss(outputs, strides, targets: list[dict]) -> dict[str, torch.Tensor]:
    """NanoDet's loss of a batch: ``outputs`` per level (class logits [B,K,H,W], bins
    [B,4(R+1),H,W]); ``targets`` per image ``{"boxes" xyxy in input pixels, "labels"
    1..K}``."""
    cls = torch.cat([c.flatten(2).transpose(1, 2) for c, _ in outputs], 1)  # [B,P,K]
    reg = torch.cat([r.flatten(2).transpose(1, 2) for _, r in outputs], 1)  # [B,P,4(R+1)]
    device = cls.device
    pts, level_sizes, stride_of = [], [], []
    for (c, _), s in zip(outputs, strides):
        p = points(c.shape[-2:], s, device)
        pts.append(p)
        level_sizes.append(len(p))
        stride_of.append(torch.full((len(p),), float(s), device=device))
    centers, stride = torch.cat(pts), torch.cat(stride_of)
    cells = torch.cat([centers - stride[:, None] * OCTAVE_SCALE / 2] * 2, 1)
    cells[:, 2:] += stride[:, None] * OCTAVE_SCALE

    score_t = torch.zeros_like(cls)
    pos_pred, pos_bins, pos_box, pos_center, pos_weight = [], [], [], [], []
    for b, t in enumerate(targets):
        boxes = t["boxes"].to(device).float().reshape(-1, 4)
        if not len(boxes):
            continue
        gt = atss_assign(cells, centers, level_sizes, boxes)
        pos = (gt >= 0).nonzero(as_tuple=True)[0]
        if not len(pos):
            continue
        s = stride[pos, None]
        bins = reg[b, pos]
        pred = distance_to_box(centers[pos] / s, distances(bins))
        target = boxes[gt[pos]] / s
        with torch.no_grad():
            iou = _aligned_iou(pred, target)
            labels = t["labels"].to(device)[gt[pos]] - 1
            score_t[b, pos, labels] = iou
            weight = cls[b, pos].detach().sigmoid().max(1).values
        pos_pred.append(pred)
        pos_bins.append(bins)
        pos_box.append(target)
        pos_center.append(centers[pos] / s)
        pos_weight.append(weight)
    num_pos = max(sum(len(w) for w in pos_weight), 1)
    loss_qfl = quality_focal_loss(cls, score_t).sum() / num_pos
    if not pos_weight:
        zero = reg.sum() * 0
        return {"loss_qfl": loss_qfl, "loss_bbox": zero, "loss_dfl": zero}
    from torchvision.ops import generalized_box_iou_loss

    w = torch.cat(pos_weight)
    w_sum = w.sum().clamp(min=1e-6)
    pred, target = torch.cat(pos_pred), torch.cat(pos_box)
    loss_bbox = (generalized_box_iou_loss(pred, target, reduction="none") * w).sum() / w_sum
    sides = _box_to_distance(torch.cat(pos_center), target).clamp(0, REG_MAX - 0.01)
    dfl = distribution_focal_loss(torch.cat(pos_bins).reshape(-1, REG_MAX + 1), sides.reshape(-1))
    loss_dfl = (dfl.reshape(-1, 4).mean(1) * w).sum() / w_sum
    return {
        "loss_qfl": loss_qfl,
        "loss_bbox": GIOU_WEIGHT * loss_bbox,
        "loss_dfl": DFL_WEIGHT * loss_dfl,
    }


def atss_assign(
    cells: torch.Tensor, centers: torch.Tensor, level_sizes: list[int], boxes: torch.Tensor
) -> torch.Tensor:
    """ATSS (Zhang et al. 2020): per object, the ``ATSS_TOPK`` cells of each level whose
    centres are nearest its centre are candidates; those whose cell box overlaps it by at
    least the candidates' mean + std IoU, with their centre inside it, are positives. Returns
    per cell the index of its object, or -1 (a cell claimed twice goes to the higher IoU)."""
    from torchvision.ops import box_iou

    iou = box_iou(cells, boxes)  # [P, G]
    gt_c = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = torch.cdist(centers, gt_c)  # [P, G]
    candidates = []
    start = 0
    for n in level_sizes:
        k = min(ATSS_TOPK, n)
        candidates.append(dist[start : start + n].topk(k, 0, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates)  # [L*k, G]
    cand_iou = iou.gather(0, cand)
    threshold = cand_iou.mean(0) + cand_iou.std(0)
    inside = _centre_inside(centers[cand], boxes)  # [L*k, G]
    ok = (cand_iou >= threshold[None]) & inside
    chosen = torch.full_like(iou, -1.0)
    g = torch.arange(len(boxes), device=boxes.device).expand_as(cand)
    chosen[cand[ok], g[ok]] = iou[cand[ok], g[ok]]
    best, gt = chosen.max(1)
    gt[best < 0] = -1
    return gt


def _centre_inside(c: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[N, G, 2] candidate centres per object -> inside that object's box (by > 0.01 px)."""
    left = c[..., 0] - boxes[None, :, 0]
    top = c[..., 1] - boxes[None, :, 1]
    right = boxes[None, :, 2] - c[..., 0]
    bottom = boxes[None, :, 3] - c[..., 1]
    return torch.stack([left, top, right, bottom], -1).min(-1).values > 0.01


def _aligned_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1) + (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area - inter).clamp(min=1e-6)


def _box_to_distance(centers: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([centers - boxes[:, :2], boxes[:, 2:] - centers], 1)


def quality_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """QFL: binary cross-entropy towards a soft target (the IoU; 0 for the background),
    scaled by |target - sigmoid| ** beta."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce * (target - prob).abs().pow(QFL_BETA)


def distribution_focal_loss(bins: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL: cross-entropy on the two bins around each (real-valued) target distance,
    weighted by their nearness to it."""
    left = target.long()
    w_left = left.float() + 1 - target
    return F.cross_entropy(bins, left, reduction="none") * w_left + F.cross_entropy(
        bins, left + 1, reduction="none"
    ) * (1 - w_left)
