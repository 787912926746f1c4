"""Classification metrics (scikit-learn), as plain JSON-able dicts."""

from __future__ import annotations

import numpy as np

from .calibration import ece_from_bins, reliability


def classification_metrics(y_true, proba, classes: list[str]) -> dict:
    """accuracy, macro-F1, log loss (NLL), ECE (15 confidence bins) and the reliability
    bins behind it, AUROC (one-vs-rest macro), per-class P/R/F1, confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)
    labels = np.arange(len(classes))
    pred = proba.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, pred, labels=labels, zero_division=0
    )
    bins = reliability(y_true, proba)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(log_loss(y_true, np.clip(proba, 1e-12, 1), labels=labels)),
        "ece": ece_from_bins(bins),
        "reliability": bins,
        "auroc": None,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    present = np.unique(y_true)
    if len(present) == len(classes) and len(classes) > 1:
        if len(classes) == 2:
            out["auroc"] = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            out["auroc"] = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro"))
    return out


def multilabel_metrics(y_true, proba, classes: list[str], threshold: float = 0.5) -> dict:
    """Multi-label: exact-match accuracy, macro/micro-F1, mean AUROC, per-class P/R/F1."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    pred = (proba >= threshold).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, pred, zero_division=0)
    aurocs = [
        roc_auc_score(y_true[:, j], proba[:, j])
        for j in range(len(classes))
        if 0 < y_true[:, j].sum() < len(y_true)
    ]
    return {
        "n": int(len(y_true)),
        "multi_label": True,
        "accuracy": float(accuracy_score(y_true, pred)),  # every label of a row right
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "auroc": float(np.mean(aurocs)) if aurocs else None,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
    }


def format_metrics(m: dict) -> str:
    auroc = f"{m['auroc']:.4f}" if m.get("auroc") is not None else "n/a"
    probs = (
        f"NLL {m['log_loss']:.4f}  ECE {m['ece']:.4f}  "
        if m.get("log_loss") is not None and m.get("ece") is not None
        else ""
    )
    return (
        f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  AUROC {auroc}  "
        f"{probs}(n={m['n']})"
    )


def format_calibration(c: dict) -> str:
    """One line of a ``calibration`` entry (``fit``'s on the validation part, or
    ``evaluate``'s): the temperature, and NLL / ECE before -> after it."""
    if c.get("reason"):
        return f"calibration: none, temperature 1 ({c['reason']})"
    return (
        f"calibration: temperature {c['temperature']:.3f}; NLL {c['nll_before']:.4f} -> "
        f"{c['nll_after']:.4f}, ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} "
        f"(n={c['n']})"
    )


def recall_line(per_class: dict, most: int = 10) -> str:
    """``recall per class: ham 0.99, spam 0.82``; past ``most`` classes, the lowest ones."""
    items = [(c, v["recall"]) for c, v in per_class.items()]
    head = "recall per class"
    if len(items) > most:
        items = sorted(items, key=lambda kv: kv[1])[:most]
        head = f"lowest recall ({most} of {len(per_class)} classes)"
    return f"{head}: " + ", ".join(f"{c} {r:.2f}" for c, r in items)


def baseline_lines(m: dict, baseline_name: str = "", blend_mode: str = "mean") -> list[str]:
    """The metrics beside a model's own: the classic baseline (or, where the run kept the
    baseline, the network's); text: the blend of the encoder and TF-IDF (or, for a --blend
    model, the encoder alone)."""
    lines = []
    if "encoder" in m:
        how = (
            "is one logistic regression on TF-IDF + encoder features"
            if blend_mode == "joint"
            else "blends in TF-IDF"
        )
        lines.append(f"(the above {how}) encoder alone: {format_metrics(m['encoder'])}")
    if "transfer" in m:
        lines.append(
            f"(the above is the kept classic baseline) the network: {format_metrics(m['transfer'])}"
        )
    if "baseline" in m:
        name = m["baseline"].get("name") or baseline_name
        label = f"baseline {name}" if name else "baseline"
        lines.append(f"{label}: {format_metrics(m['baseline'])}")
    if "blend" in m:
        lines.append(
            f"blend (mean of encoder and baseline probabilities, --blend "
            f"--blend-mode mean): "
            f"{format_metrics(m['blend'])}"
        )
    return lines


def format_detection_metrics(m: dict) -> str:
    return (
        f"mAP@0.5 {m['map_50']:.3f}  mAP@0.5:0.95 {m['map']:.3f}  precision "
        f"{m['precision']:.3f}  recall {m['recall']:.3f} (score >= "
        f"{m['score_threshold']:g})  on {m['images']} image(s), {m['boxes']} boxes"
    )
