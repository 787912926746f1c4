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
    from torchvision.ops import box_iou

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
            m.update([{"boxes": pb, "scores": ps, "labels": pl}], [{"boxes": tb, "labels": tl}])
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
