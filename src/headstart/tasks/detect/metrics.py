"""Detection metrics: COCO mAP (torchmetrics on pycocotools), per-class AP, and the
precision / recall of the confident boxes."""

from __future__ import annotations

import torch

from ...data.boxes import BoxSample
from .network import MAX_DETECTIONS


def detection_metrics(
    preds: list[dict], truths: list[BoxSample], classes: list[str], score_threshold: float = 0.5
) -> dict:
    """COCO mAP@0.5:0.95, mAP@0.5, mAP@0.75 and per-class AP (``ap``: 0.5:0.95,
    ``ap_50``: at IoU 0.5; torchmetrics on pycocotools), and precision / recall / F1 of the
    boxes scoring >= ``score_threshold``
    (matched greedily at IoU 0.5)."""
    from torchmetrics.detection import MeanAveragePrecision

    index = {c: i + 1 for i, c in enumerate(classes)}
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=True,
        max_detection_thresholds=[1, 100, MAX_DETECTIONS],
    )
    metric_50 = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        class_metrics=True,
        iou_thresholds=[0.5],
        max_detection_thresholds=[1, 100, MAX_DETECTIONS],
    )
    for pb, ps, pl, tb, tl in _tensors(preds, truths, index):
        for m in (metric, metric_50):
            m.update([{"boxes": pb, "scores": ps, "labels": pl}], [{"boxes": tb, "labels": tl}])
    tp, n_pred, n_true = _matches(preds, truths, classes, score_threshold)
    r = metric.compute()
    per_class_ap = r["map_per_class"].reshape(-1).tolist()
    per_class_ap50 = metric_50.compute()["map_per_class"].reshape(-1).tolist()
    ids = r["classes"].reshape(-1).tolist()
    per_class = {}
    for c in classes:
        prec = tp[c] / n_pred[c] if n_pred[c] else 0.0
        rec = tp[c] / n_true[c] if n_true[c] else 0.0
        at = ids.index(index[c]) if index[c] in ids else None
        per_class[c] = {
            "ap": per_class_ap[at] if at is not None else float("nan"),
            "ap_50": per_class_ap50[at] if at is not None else float("nan"),
            "precision": prec,
            "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "support": n_true[c],
            "predicted": n_pred[c],
        }
    total_tp, total_pred, total_true = sum(tp.values()), sum(n_pred.values()), sum(n_true.values())
    prec = total_tp / total_pred if total_pred else 0.0
    rec = total_tp / total_true if total_true else 0.0
    return {
        "map": float(r["map"]),
        "map_50": float(r["map_50"]),
        "map_75": float(r["map_75"]),
        f"mar_{MAX_DETECTIONS}": float(r[f"mar_{MAX_DETECTIONS}"]),
        "precision": prec,
        "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
        "score_threshold": score_threshold,
        "images": len(truths),
        "boxes": total_true,
        "per_class": per_class,
    }


def _tensors(preds: list[dict], truths: list[BoxSample], index: dict):
    """Per image: predicted boxes, scores, label ids; true boxes, label ids (tensors)."""
    for p, t in zip(preds, truths):
        yield (
            torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
            torch.as_tensor(p["scores"], dtype=torch.float32),
            torch.tensor([index[c] for c in p["labels"]], dtype=torch.int64),
            torch.as_tensor(t.boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor([index[c] for c in t.labels], dtype=torch.int64),
        )


def _matches(preds, truths, classes: list[str], score_threshold: float):
    """Per class: true positives (greedy, best score first, IoU >= 0.5), predicted boxes
    scoring >= ``score_threshold``, true boxes."""
    from torchvision.ops import box_iou

    index = {c: i + 1 for i, c in enumerate(classes)}
    tp = {c: 0 for c in classes}
    n_pred = {c: 0 for c in classes}
    n_true = {c: 0 for c in classes}
    for pb, ps, pl, tb, tl in _tensors(preds, truths, index):
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
    return tp, n_pred, n_true


# the score thresholds a fit weighs on validation (a detector's scores are not probabilities
# alike: quality-focal scores such as NanoDet's sit near the box's IoU, lower than 0.5)
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def best_f1_threshold(preds: list[dict], truths: list[BoxSample], classes: list[str]) -> float:
    """The score threshold of the highest F1 (all classes pooled, IoU 0.5) on ``truths``;
    of equal F1, the higher threshold. ``preds``: every box (score threshold 0)."""
    best = (-1.0, 0.5)
    for t in THRESHOLDS:
        tp, n_pred, n_true = (sum(d.values()) for d in _matches(preds, truths, classes, t))
        f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0
        best = max(best, (f1, t))
    return best[1]
