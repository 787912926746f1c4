"""Class imbalance: measured on a fit's training labels, countered by a class-weighted loss
or a balanced sampler, and watched by macro-F1 (FitConfig ``imbalance`` and ``monitor``).

``plan`` resolves the two ``auto`` settings once, in one place, from the training labels;
the training loop then gets plain tensors (per-class loss weights or per-item sampling
weights) and a resolved monitor, with no task branches. Multi-label targets (0/1 rows) and
sequences (speech transcripts) are left as they are: nothing is weighted or resampled, and
``auto`` monitors accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The largest class has at least this many times the items of the smallest: imbalanced.
IMBALANCED = 3.0
# What imbalance="auto" does with imbalanced classes: the measured better of the two
# (benchmarks/imbalance.py; figures in docs/results.md).
AUTO_METHOD = "sample"
METHODS = {
    "weight": "class-weighted loss",
    "sample": "class-balanced sampler",
    "none": "plain loss and sampling",
}


def class_counts(labels, n_classes: int) -> np.ndarray | None:
    """Items per class of single-label ``labels`` (class indices); None for multi-label
    rows or sequences."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return None
    return np.bincount(labels, minlength=n_classes)


def imbalance_ratio(counts) -> float:
    """Items of the largest class over those of the smallest (classes without items in
    ``counts`` left out)."""
    present = np.asarray(counts)[np.asarray(counts) > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def class_weights(counts) -> np.ndarray:
    """Inverse-frequency weights, scikit-learn's "balanced": ``n / (k * count)`` for each
    of the ``k`` classes with items (0 for a class without any). Their mean over the items
    is 1, so a weighted loss keeps the scale of the plain one."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    out = np.zeros_like(counts)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return out


@dataclass
class ClassBalance:
    """How a fit treats its class counts: what it monitors and how it counters imbalance."""

    monitor: str  # the resolved monitor: accuracy | macro_f1 | loss
    method: str  # weight | sample | none
    ratio: float | None  # largest / smallest class; None: multi-label or sequences
    counts: dict | None  # class -> training items
    weights: dict | None  # class -> weight of the loss or of the sampler (None: method none)
    monitor_set: str  # the monitor setting: auto or the user's own choice
    method_set: str  # the imbalance setting

    @property
    def imbalanced(self) -> bool:
        return self.ratio is not None and self.ratio >= IMBALANCED

    def to_dict(self) -> dict:
        return {**asdict(self), "imbalanced": self.imbalanced, "message": self.message()}

    def message(self) -> str:
        """One line: the counts, and what the fit does about them."""
        if self.ratio is None:
            return (
                f"multi-label or sequence targets: {METHODS[self.method]}, monitoring "
                f"{_name(self.monitor)}"
            )
        assert self.counts is not None  # plan: counts wherever there is a ratio
        counts = _short(self.counts, "d")
        kind = "imbalanced classes" if self.imbalanced else "classes"
        what = f"{kind} ({counts}: {self.ratio:.1f}x)"
        how = METHODS[self.method]
        if self.weights is not None:
            how += f" (weights {_short(self.weights, '.2f')})"
        chosen = "" if self.monitor_set == "auto" else " (set)"
        return f"{what}: monitoring {_name(self.monitor)}{chosen}, {how}"


def plan(cfg, labels, classes) -> ClassBalance:
    """The ``ClassBalance`` of a fit with settings ``cfg`` on training ``labels``:
    ``monitor="auto"`` is macro-F1 where the classes are imbalanced (largest / smallest >=
    ``IMBALANCED``), else accuracy; ``imbalance="auto"`` is ``AUTO_METHOD`` where they are,
    else none. A setting the user chose is kept."""
    counts = class_counts(labels, len(classes))
    if counts is None:
        if cfg.imbalance in ("weight", "sample"):
            raise ValueError(
                f"imbalance={cfg.imbalance!r} weighs single-label classes; these "
                "targets are multi-label rows (or sequences): use imbalance auto "
                "or none"
            )
        monitor = "accuracy" if cfg.monitor == "auto" else cfg.monitor
        return ClassBalance(monitor, "none", None, None, None, cfg.monitor, cfg.imbalance)
    ratio = imbalance_ratio(counts)
    imbalanced = ratio >= IMBALANCED
    monitor = cfg.monitor if cfg.monitor != "auto" else "macro_f1" if imbalanced else "accuracy"
    method = cfg.imbalance if cfg.imbalance != "auto" else AUTO_METHOD if imbalanced else "none"
    weights = None
    if method != "none":
        weights = {c: round(float(w), 6) for c, w in zip(classes, class_weights(counts))}
    return ClassBalance(
        monitor,
        method,
        ratio,
        {c: int(n) for c, n in zip(classes, counts)},
        weights,
        cfg.monitor,
        cfg.imbalance,
    )


def effective_monitor(cfg, labels, classes) -> str:
    """The validation metric a fit with ``cfg`` on training ``labels`` monitors."""
    return plan(cfg, labels, classes).monitor


def loop_weights(balance: ClassBalance, labels) -> dict:
    """The training loop's keywords for ``balance``: ``class_weights`` (a per-class tensor
    for the loss) or ``sample_weights`` (a per-item tensor for the sampler), or neither."""
    import torch

    if balance.method == "none":
        return {}
    assert balance.weights is not None  # plan: weights for every method but none
    w = torch.tensor(list(balance.weights.values()), dtype=torch.float32)
    if balance.method == "weight":
        return {"class_weights": w}
    return {"sample_weights": w[torch.as_tensor(np.asarray(labels), dtype=torch.long)]}


def _name(monitor: str) -> str:
    return {"macro_f1": "macro-F1"}.get(monitor, monitor)


def _short(values: dict, fmt: str, most: int = 6) -> str:
    """``a 500, b 50``; with more than ``most`` classes the largest and smallest three."""
    items = list(values.items())
    if len(items) > most:
        items = sorted(items, key=lambda kv: -kv[1])
        items = items[:3] + [("...", None)] + items[-3:]
    return ", ".join(k if v is None else f"{k} {v:{fmt}}" for k, v in items)
