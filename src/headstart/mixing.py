"""MixUp and CutMix of training batches (``--mix``), for stages that train backbone layers.

MixUp (Zhang et al. 2018) blends each image with a partner from the same batch, CutMix
(Yun et al. 2019) pastes a box of the partner into it; the loss is the same mix of the
losses against the two labels (``lam`` of the item's own), which equals the loss against
the mixed soft label for cross-entropy (label smoothing included) and per-class BCE.
Draws come from a generator seeded by (seed, stage, epoch): an epoch mixes the same way
whatever ran before it, and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import FitConfig


@dataclass
class MixedLoss:
    """``loss(loss_fn, logits)`` of a mixed batch: ``lam`` of the loss against the items'
    own labels ``y``, the rest against their partners' ``other``."""

    lam: float  # for tests and logs
    y: torch.Tensor
    other: torch.Tensor

    def __call__(self, loss_fn: Callable, logits: torch.Tensor) -> torch.Tensor:
        return self.lam * loss_fn(logits, self.y) + (1.0 - self.lam) * loss_fn(logits, self.other)


class BatchMixer:
    """``mixer(x, y)`` -> (mixed images, ``loss(loss_fn, logits)`` for them)."""

    def __init__(self, kind: str, alpha: float, seed: int):
        if kind not in ("mixup", "cutmix"):
            raise ValueError(f"mix={kind!r}: choose none, mixup or cutmix")
        self.kind, self.alpha = kind, float(alpha)
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(
                f"mix={self.kind} mixes batches of images (N, C, H, W), not "
                f"{type(x).__name__} batches: use mix=none"
            )
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(self.rng.permutation(len(x)), device=x.device)
        if self.kind == "mixup":
            x = x * lam + x[perm] * (1.0 - lam)
        else:
            x, lam = self._cut(x, perm, lam)
        return x, MixedLoss(lam, y, y[perm])

    def _cut(self, x: torch.Tensor, perm: torch.Tensor, lam: float):
        """A box of ``1 - lam`` of the area (clipped at the borders) from the partners;
        ``lam``: the share of the item's own pixels that is left."""
        h, w = x.shape[-2:]
        side = math.sqrt(1.0 - lam)
        ch, cw = int(h * side), int(w * side)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        return x, 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)


def batch_mixer(cfg: FitConfig, stage: int, epoch: int) -> BatchMixer | None:
    """The mixer of one epoch of a stage that trains backbone layers (None: mix=none)."""
    if cfg.mix == "none":
        return None
    seed = int(np.random.SeedSequence([cfg.seed, stage, epoch, 29]).generate_state(1)[0])
    return BatchMixer(cfg.mix, cfg.mix_alpha, seed)
