"""Which weights a fit returns: the rule that picks among the stages' best epochs (and
WiSE-FT mixes of them), stated once.

Each stage keeps its own best epoch by the monitored validation metric, then the
validation loss. Across stages (a probe, then fine-tuning) the candidates are compared on
the monitored metric, where differences within the validation set's noise count as ties:
one binomial standard error, sqrt(p (1 - p) / n) at the best score p, and at least one item
(1 / n). Of the tied candidates, the one with the lowest validation loss wins (the loss uses
every item's probability, so it separates models that a small set's accuracy cannot); on
equal loss, the later one. So on 10 validation items a fine-tuned epoch one item behind the
probe but with a lower loss is kept, and one two items behind is not; on 1,000 items a
difference of 1.4 points (at 90%) decides by itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Candidate:
    where: str  # "finetune epoch 7", "wise-ft 0.5 (linear_probe epoch 20 + finetune ...)"
    score: float  # the monitored validation metric, higher is better (loss: its negative)
    loss: float  # validation cross-entropy
    order: float = 0  # how far along training it is: later candidates win exact ties

    def to_dict(self) -> dict:
        return asdict(self)


def noise_margin(score: float, n: int, monitor: str) -> float:
    """How far apart two validation scores may lie and still count as a tie."""
    if monitor == "loss" or n <= 0:
        return 0.0
    p = min(max(score, 0.0), 1.0)
    return max(1.0 / n, math.sqrt(p * (1.0 - p) / n))


def choose(candidates: list[Candidate], n: int, monitor: str) -> tuple[Candidate, str]:
    """The candidate a fit keeps, and one sentence saying why (for the fit summary)."""
    if not candidates:
        raise ValueError("choose() needs at least one candidate")
    top = max(c.score for c in candidates)
    margin = noise_margin(top, n, monitor)
    tied = [c for c in candidates if c.score >= top - margin - 1e-12]
    win = min(tied, key=lambda c: (c.loss, -c.order))
    others = [c for c in candidates if c is not win]
    if not others:
        return win, f"kept {win.where} ({_show(win, monitor)})"
    metric = "loss" if monitor == "loss" else monitor.replace("_", "-")
    rivals = "; ".join(f"{c.where} {_show(c, monitor)}" for c in others)
    if monitor == "loss":
        why = "the lowest validation loss"
    elif len(tied) > 1:
        why = (
            f"within the noise of {n} validation items (+-{margin:.3f} {metric}) the "
            f"lowest validation loss decides"
        )
    else:
        why = f"the best validation {metric}, by more than the noise of {n} items (+-{margin:.3f})"
    return win, f"kept {win.where} ({_show(win, monitor)}) over {rivals}: {why}"


def _show(c: Candidate, monitor: str) -> str:
    if monitor == "loss":
        return f"loss {c.loss:.4f}"
    return f"{monitor.replace('_', '-')} {c.score:.3f}, loss {c.loss:.4f}"


def interpolate(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., CVPR 2022): ``(1 - alpha) * start + alpha * end`` for every
    floating tensor both hold (weights and BatchNorm statistics); other tensors (counters)
    are ``end``'s."""
    out = {}
    for k, v in end.items():
        a = start.get(k)
        if a is not None and v.is_floating_point() and a.shape == v.shape:
            out[k] = torch.lerp(a.to(v.dtype), v, alpha)
        else:
            out[k] = v
    return out
