"""The shared training loop with the detection loss and the detection evaluation; nothing
else of the loop (stages, optimizer, schedule, checkpoints, resume, DDP) is the
detector's own."""

from __future__ import annotations

import functools
import operator

import torch

from ...train import Trainer
from .data import load_rgb
from .metrics import detection_metrics
from .network import detect_region


class DetectionTrainer(Trainer):
    """:class:`~headstart.train.Trainer` for a :class:`~.network.DetectionModel`.

    The loss is torchvision's dict of losses (RPN and box head, or classification, box
    regression and centerness): the loop trains on their sum and logs each term.
    Validation is tiled inference on the validation images and COCO mAP; torchvision's
    detectors give no loss in evaluation mode, so ``val_loss`` is 1 - mAP@0.5 and the fit
    (monitor ``loss``) keeps the epoch with the best validation mAP@0.5. Gradients are
    clipped to norm 10 (a detection loss spikes on a tile with many small boxes).
    """

    max_grad_norm = 10.0
    # set by the estimator before ``run`` (as the CTC trainer's vocabulary is)
    classes: list[str] | tuple[str, ...] = ()
    tile_size, tile_overlap, nms_iou = 512, 0.25, 0.5

    def loss(self, losses: dict[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
        total = functools.reduce(operator.add, losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"the detection loss became {float(total)} ("
                + ", ".join(f"{k} {float(v):.4g}" for k, v in losses.items())
                + "); lower --lr / --head-lr"
            )
        return losses

    def evaluate_loader(self, module, loader) -> dict:
        detector = self.accelerator.unwrap_model(module).detector
        was = detector.training
        preds, truths = [], []
        for samples, _ in loader:
            for s in samples:
                out = detect_region(
                    detector,
                    load_rgb(s.path),
                    s.region(),
                    self.tile_size,
                    self.tile_overlap,
                    self.nms_iou,
                    self.cfg.eval_batch_size,
                )
                preds.append(
                    {
                        "boxes": out["boxes"],
                        "scores": out["scores"],
                        "labels": [self.classes[int(k) - 1] for k in out["labels"]],
                    }
                )
                truths.append(s)
        detector.train(was)
        m = detection_metrics(preds, truths, list(self.classes))
        return {"val_loss": 1.0 - m["map_50"], "val_map_50": m["map_50"], "val_map": m["map"]}
