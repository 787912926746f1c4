"""Advice before training: which strategy and settings, and why.

The advice reads the dataset (items per class, number of classes, balance) and one cheap
probe of the source model on it (``rank`` with the linear-probe and kNN accuracies of the
frozen features, from one forward pass over at most 300 items). The rules are stated with
their reasons so a user can disagree with them; ``headstart study`` checks them against
what actually won on the same data.

The rules, from the transfer-learning literature and this project's measurements:

* Very little data (< 10 items per class): fine-tuning millions of weights on a handful of
  items overfits; a linear head on frozen features is the safe choice (``feature_extract``).
* Frozen features already separate the classes (linear probe >= 95%): fine-tuning has
  little left to gain; ``feature_extract`` gets it in seconds.
* Otherwise ``lp_ft`` (linear probe, then fine-tune everything at a small rate; Kumar et
  al., ICLR 2022: fine-tuning from a trained head distorts the features less).
* Much data (>= 500 per class) and features far from the classes (probe < 70%): the whole
  network should move, from the first step: ``finetune``.
* Imbalance (largest / smallest class >= 3): select and early-stop on macro-F1, not accuracy.
* When not to transfer: the task's classic baseline (small pixels or HOG / TF-IDF / log-mel
  statistics with logistic regression, k-NN or an RBF SVM) is cross-validated on the same
  items as the probe; when it scores at least as well as the frozen features' linear probe
  beyond one binomial standard error, the advice says transfer may not pay and suggests
  ``--strategy auto`` (the network and the baseline compete on validation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .imbalance import IMBALANCED  # largest / smallest class: the same rule as fit's

FEW_PER_CLASS = 10
MANY_PER_CLASS = 500
PROBE_GOOD = 0.95
PROBE_POOR = 0.70


@dataclass
class Advice:
    strategy: str
    settings: dict
    reasons: list[str]
    facts: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "settings": self.settings,
            "reasons": self.reasons,
            "facts": self.facts,
        }

    def text(self) -> str:
        lines = [f"strategy: {self.strategy}"]
        lines += [f"  {k}: {v}" for k, v in self.settings.items()]
        lines.append("because:")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def advise_from_facts(
    n_items: int,
    n_classes: int,
    smallest: int,
    largest: int,
    probe_linear: float | None,
    probe_knn: float | None = None,
    baseline: tuple[str, float] | None = None,
) -> Advice:
    """The rules, on numbers alone (tested directly; ``advise`` measures the numbers)."""
    per_class = n_items / max(1, n_classes)
    reasons: list[str] = []
    settings: dict[str, Any] = {}
    facts: dict[str, Any] = {
        "n_items": n_items,
        "n_classes": n_classes,
        "per_class": round(per_class, 1),
        "smallest_class": smallest,
        "largest_class": largest,
        "probe_linear": probe_linear,
        "probe_knn": probe_knn,
    }
    probe = f"{100 * probe_linear:.1f}%" if probe_linear is not None else "not measured"
    if per_class < FEW_PER_CLASS:
        strategy = "feature_extract"
        reasons.append(
            f"only {per_class:.1f} items per class (< {FEW_PER_CLASS}): fine-tuning "
            "the backbone on so few would overfit; a linear head on frozen "
            "features is the safe choice"
        )
    elif probe_linear is not None and probe_linear >= PROBE_GOOD:
        strategy = "feature_extract"
        reasons.append(
            f"a linear probe on the frozen features already reaches {probe} "
            f"(>= {100 * PROBE_GOOD:.0f}%): little left for fine-tuning to gain, "
            "and the head trains in seconds"
        )
    elif per_class >= MANY_PER_CLASS and probe_linear is not None and probe_linear < PROBE_POOR:
        strategy = "finetune"
        reasons.append(
            f"{per_class:.0f} items per class (>= {MANY_PER_CLASS}) and frozen "
            f"features that separate the classes poorly (linear probe {probe}): "
            "the whole network should adapt from the first step"
        )
    else:
        strategy = "lp_ft"
        reasons.append(
            f"{per_class:.0f} items per class and a linear probe of {probe}: "
            "enough data to adapt the features, not enough to move them far; a "
            "linear probe first, then everything at a small rate (LP-FT, Kumar "
            "et al. 2022) adapts them without distorting them"
        )
    if strategy != "feature_extract":
        from .config import FitConfig

        defaults = FitConfig()
        steps = max(1, math.ceil(n_items * (1 - defaults.val_fraction) / defaults.batch_size))
        if steps * defaults.epochs < 100:
            settings["min_steps"] = 100
            reasons.append(
                f"{steps} optimizer steps per epoch: at least 100 fine-tuning steps "
                "(min_steps) so the small set still trains"
            )
    ratio = largest / max(1, smallest)
    if ratio >= IMBALANCED:
        settings["monitor"] = "macro_f1"
        reasons.append(
            f"the largest class has {ratio:.1f}x the items of the smallest: pick "
            "the checkpoint by macro-F1, which weighs every class equally"
        )
    if baseline is not None:
        name, acc = baseline
        facts.update({"baseline": name, "baseline_cv": acc})
        probe_best = max(v for v in (probe_linear, probe_knn, 0.0) if v is not None)
        noise = math.sqrt(max(probe_best * (1 - probe_best), 1e-12) / max(1, n_items))
        facts["transfer_pays"] = bool(acc < probe_best - noise)
        if acc >= probe_best - noise:
            settings["strategy"] = "auto"
            reasons.append(
                f"a classic model, {name}, reaches {100 * acc:.1f}% in "
                f"cross-validation on the same items, against the frozen features' "
                f"{100 * probe_best:.1f}% (within or beyond the noise of "
                f"{n_items} items): transfer may not pay here. Fit with --strategy "
                f"auto: it trains {strategy if strategy != 'feature_extract' else 'lp_ft'}"
                " and keeps the baseline if it wins on validation"
            )
        else:
            reasons.append(
                f"the best classic model, {name}, reaches {100 * acc:.1f}% in "
                f"cross-validation on the same items: the frozen features "
                f"({100 * probe_best:.1f}%) already beat it"
            )
    return Advice(strategy, settings, reasons, facts)


def advise(
    data,
    y=None,
    *,
    model: str | None = None,
    task: str = "image",
    baseline: bool = True,
    **settings,
) -> Advice:
    """Advice for fine-tuning ``model`` (default: the task's default backbone, as for fit)
    on ``data``: the facts, one cheap probe, the classic baseline cross-validated on the
    probe's items (``baseline=False``: not), the rules."""
    from .select import probed_items, rank
    from .tasks import ESTIMATORS
    from .tasks.baselined import baseline_cv

    est = ESTIMATORS[task](backbone=model, **settings)
    model = est.resolved_config().backbone
    source = est.read_labeled(data, y)  # read once
    result = rank(source, [model], task=task, scores=["linear", "knn", "logme"], **settings)
    row = result.rows[0]
    if row.error:
        raise ValueError(f"advise: {model} could not be probed: {row.error}")
    counts = np.bincount(np.asarray(source.labels), minlength=len(source.classes))
    classic = None
    if baseline:
        cfg = est.resolved_config()
        items = probed_items(est, source, cfg)  # the items rank probed, exactly
        classic = baseline_cv(type(est), cfg, items)
    advice = advise_from_facts(
        len(source),
        len(source.classes),
        int(counts.min()),
        int(counts.max()),
        row.scores.get("linear"),
        row.scores.get("knn"),
        classic,
    )
    advice.facts["logme"] = row.scores.get("logme")
    advice.facts["probe_items"] = result.n_items
    return advice
