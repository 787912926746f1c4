"""Grad-CAM heat maps of an image classifier's decisions, drawn by the ``grad-cam`` package
(pytorch-grad-cam): which regions of the evaluation crop raised the predicted class's
score. ``headstart predict RUN INPUTS --explain DIR`` writes one overlay per item.

The map is taken at the backbone's last convolution (the finest grid that still sees the
whole image); a backbone without one (a vision transformer) is refused with a clear error.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def last_conv(backbone):
    """The backbone's last ``Conv2d`` module (Grad-CAM's target layer)."""
    from torch import nn

    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            "Grad-CAM needs a convolutional backbone (its maps are read at the last "
            "convolution); this model has none"
        )
    return convs[-1]


def _safe_stem(name: str) -> str:
    stem = Path(name.split("#")[0]).name
    for suffix in (".gz", ".nii", ".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        stem = stem.removesuffix(suffix)
    frame = name.split("#frame=")[1] if "#frame=" in name else None
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:60] or "item"
    return f"{keep}_f{frame}" if frame is not None else keep


def _trackable(model):
    """A copy of ``model`` (eval mode) whose weights autograd can track: a loaded or
    folded model may hold inference-mode tensors, which a backward pass refuses."""
    import copy

    import torch

    with torch.no_grad():
        clone = copy.deepcopy(model)
        for module in clone.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None:
                    module._buffers[name] = b.detach().clone()
    return clone.eval()


def grad_cam_maps(estimator, tensors, targets: list[int]) -> np.ndarray:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1] of ``tensors`` (the network's inputs) for the
    class indices ``targets``."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _trackable(estimator.model_)
    layer = last_conv(model.backbone)
    device = next(model.parameters()).device
    x = torch.as_tensor(tensors).to(device).float().requires_grad_(True)
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return np.asarray(maps, dtype=np.float32)


def overlay(crop_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The crop (uint8 H x W x 3) and its heat map blended (jet colours), uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(
        crop_rgb.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1.0 - alpha
    )


def explained_panels(estimator, items, targets: list[int] | None = None) -> list:
    """For each item (paths or arrays, or a source ``open_inputs`` returned, not read again),
    its evaluation crop beside the crop with the Grad-CAM map of class ``targets[i]``
    (default: the predicted class) over it, as uint8 H x 2W x 3 arrays; read with the window
    the run read its training data with."""
    import torch

    from .data.images import load_pixels, open_inputs, uint8_rgb
    from .data.transforms import ImageTransform

    source = open_inputs(items, window=estimator.config_.pixel_window())
    if targets is None:
        targets = [int(c) for c in estimator._thresholded(estimator.predict_proba(source))]
    pre = estimator.preprocess_
    transform = ImageTransform(pre.input_size, pre, "none")
    panels = []
    for start in range(0, len(source), 16):
        part = range(start, min(start + 16, len(source)))
        imgs = [load_pixels(source.items[i], source.window) for i in part]
        crops = [uint8_rgb(transform.eval_image(img)) for img in imgs]
        x = torch.stack([transform(img) for img in imgs])
        maps = grad_cam_maps(estimator, x, [int(targets[i]) for i in part])
        panels += [np.concatenate([c, overlay(c, m)], axis=1) for c, m in zip(crops, maps)]
    return panels


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def explain_items(estimator, items: list, out_dir, names: list[str] | None = None) -> Path:
    """Write ``out_dir/<k>_<name>_<class>.png`` for each item (its evaluation crop beside
    the crop with the predicted class's Grad-CAM map over it) and ``out_dir/index.csv``
    (item, prediction, probability, file). Returns ``out_dir``."""
    from .artifacts import atomic_write_bytes
    from .data.images import open_inputs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = open_inputs(items, window=estimator.config_.pixel_window())
    names = names or [source.name(i) for i in range(len(source))]
    proba = estimator.predict_proba(source)
    chosen = [int(c) for c in estimator._thresholded(proba)]
    rows = []
    for i, panel in enumerate(explained_panels(estimator, source, chosen)):
        cls = estimator.classes_[chosen[i]]
        name = f"{i:04d}_{_safe_stem(names[i])}_{_safe_stem(cls)}.png"
        atomic_write_bytes(out / name, png_bytes(panel))
        rows.append([names[i], cls, f"{float(proba[i, chosen[i]]):.4f}", name])
    tmp = out / f".index.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item", "prediction", "probability", "file"])
        w.writerows(rows)
    os.replace(tmp, out / "index.csv")
    log.info("wrote %d Grad-CAM overlays to %s", len(rows), out)
    return out


def confident_right_and_wrong(
    labels: np.ndarray, proba: np.ndarray, predicted: np.ndarray, k: int = 6
) -> dict[str, list[int]]:
    """fastai's ``top_losses`` idea: the ``k`` right items the model was surest of and the
    ``k`` wrong ones it was surest of (the largest losses), as indices, surest first."""
    n = np.arange(len(labels))
    sure = proba[n, predicted]
    right = n[predicted == labels]
    wrong = n[predicted != labels]
    return {
        "right": [int(i) for i in right[np.argsort(-sure[right], kind="stable")][:k]],
        "wrong": [int(i) for i in wrong[np.argsort(-sure[wrong], kind="stable")][:k]],
    }
