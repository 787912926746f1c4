"""An exponential moving average of the weights a stage trains (``--ema DECAY``).

After every optimizer step each trained parameter's shadow moves ``1 - d`` of the way to
it, with the decay warmed up as ``d = min(DECAY, (1 + n) / (10 + n))`` after ``n``
updates (timm's ``ModelEmaV3`` warm-up): a few-shot stage of 30 steps would otherwise
average over weights it never left. At the stage's end the averaged weights are one more
candidate for :func:`headstart.choose.choose`, beside the stage's best epoch and the
WiSE-FT mixes; a checkpoint holds the shadow, so a resumed fit averages exactly as an
uninterrupted one.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEma:
    def __init__(
        self,
        model: nn.Module,
        decay: float,
        shadow: dict[str, torch.Tensor] | None = None,
        updates: int = 0,
    ):
        self.decay, self.updates = float(decay), int(updates)
        self.params = {
            n: p for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad
        }
        if shadow is not None and set(shadow) != set(self.params):
            raise ValueError(
                "the checkpoint's weight average covers other parameters than this stage "
                "trains; resume with the same config, or start a new run directory"
            )
        self.shadow = {
            n: (shadow[n] if shadow is not None else p.detach()).to(p.device, p.dtype).clone()
            for n, p in self.params.items()
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1.0 - self.current_decay()
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), weight)

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged parameters (copies on the CPU), by parameter name."""
        return {n: t.detach().cpu().clone() for n, t in self.shadow.items()}
