"""New heads put on a backbone whose old head was removed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .zoo.base import Backbone


@dataclass(frozen=True)
class HeadSpec:
    """``hidden=()`` gives a linear head; hidden sizes give an MLP (GELU, dropout)."""

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Head(nn.Module):
    """Optional dropout -> [Linear -> GELU -> dropout]* -> Linear to the classes.

    The last layer starts at zero weight and zero bias (uniform predictions, no random
    push on the backbone in the first fine-tuning steps); hidden layers use timm's
    trunc-normal init.

    ``temperature`` (a buffer, not a parameter: nothing trains it) divides the logits: 1
    while training, then fitted on the validation part (temperature scaling), so the saved
    weights, ``predict_proba``, serving and every exported graph give calibrated
    probabilities. :meth:`logits` gives the uncalibrated ones.
    """

    temperature: torch.Tensor  # a buffer

    def __init__(self, in_features: int, num_classes: int, spec: HeadSpec = HeadSpec()):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in spec.hidden:
            layers += [nn.Dropout(spec.dropout), nn.Linear(width, h), nn.GELU()]
            width = h
        layers += [nn.Dropout(spec.dropout), nn.Linear(width, num_classes)]
        self.layers = nn.Sequential(
            *[m for m in layers if not (isinstance(m, nn.Dropout) and m.p == 0)]
        )
        self.spec = spec
        self.in_features = in_features
        self.num_classes = num_classes
        self.register_buffer("temperature", torch.ones(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        linears = [m for m in self.layers if isinstance(m, nn.Linear)]
        for m in linears[:-1]:
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(linears[-1].weight)
        nn.init.zeros_(linears[-1].bias)
        self.temperature.fill_(1.0)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The logits before temperature scaling."""
        return self.layers(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # a 0-dim buffer: the logits keep their dtype (bf16 under autocast)
        return self.layers(features) / self.temperature

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # weights saved before the head had a temperature: uncalibrated, T = 1
        # (``load_state_dict`` hands each module its own copy of the dict)
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class TransferModel(nn.Module):
    """A backbone (old head removed) followed by a new head."""

    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x, return_features: bool = False):
        features = self.backbone(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits


def supervised_contrastive_loss(
    features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on L2-normalised features: each item is pulled towards
    the other items of its class in the batch and pushed from the rest. Items without a
    positive in the batch are left out; a batch without any positive gives 0."""
    z = nn.functional.normalize(features.float(), dim=-1)
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    has = positives.any(1)
    if not has.any():
        return features.sum() * 0.0
    mean_pos = log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1)
    return -mean_pos[has].mean()
