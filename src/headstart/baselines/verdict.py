"""Does transfer pay? The paired comparison of two models on the same test items, and
the one-line answer a report opens with.

On the same items the two models' errors are correlated, so the difference of their
accuracies is judged by its own standard error: the mean and spread of the per-item
difference d_i = [transfer right] - [baseline right], a 95% interval of +-1.96 standard
errors (paired, as McNemar's test is). A difference whose interval holds 0 is a tie, and a
tie is reported as "a simple model is as good".
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964


def paired_difference(right_a: np.ndarray, right_b: np.ndarray) -> dict:
    """Accuracy of a minus that of b on the same items, with its 95% interval (points)."""
    a = np.asarray(right_a, dtype=np.float64)
    b = np.asarray(right_b, dtype=np.float64)
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError(f"paired_difference needs two equal, non-empty sets ({n}, {len(b)})")
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    mean = float(d.mean())
    return {
        "n": n,
        "a": float(a.mean()),
        "b": float(b.mean()),
        "diff_points": 100 * mean,
        "low_points": 100 * (mean - Z95 * se),
        "high_points": 100 * (mean + Z95 * se),
    }


def verdict(
    labels: np.ndarray,
    transfer_proba: np.ndarray,
    baseline_proba: np.ndarray,
    source: str,
    baseline_name: str,
) -> dict:
    """Transfer against the classic baseline on one labelled set: the paired difference,
    the winner (``transfer``, ``baseline`` or ``tie``) and the sentence saying it."""
    y = np.asarray(labels)
    cmp = paired_difference(np.argmax(transfer_proba, 1) == y, np.argmax(baseline_proba, 1) == y)
    lo, hi, n = cmp["low_points"], cmp["high_points"], cmp["n"]
    span = f"{n} test items, 95% interval {lo:+.1f} to {hi:+.1f}"
    if lo > 0:
        winner = "transfer"
        line = (
            f"transfer from {source} beats the best simple model by "
            f"{cmp['diff_points']:.1f} points ({span}; {baseline_name})"
        )
    elif hi < 0:
        winner = "baseline"
        line = (
            f"a simple model is better: {baseline_name}, by {-cmp['diff_points']:.1f} "
            f"points over transfer from {source} ({span}); transfer does not pay here"
        )
    else:
        winner = "tie"
        line = (
            f"a simple model is as good: {baseline_name} (transfer from {source} "
            f"{cmp['diff_points']:+.1f} points, {span})"
        )
    return {**cmp, "winner": winner, "line": line, "baseline": baseline_name}


def items_to_match(curve: list[tuple[float, float]], target: float) -> float | None:
    """Training items a learning curve of (items, accuracy) needs to reach ``target``:
    linear in log(items) between measured points; None when it never does within the
    data."""
    pts = sorted(curve)
    for (n0, a0), (n1, a1) in zip(pts, pts[1:]):
        if a0 >= target:
            return float(n0)
        if a1 >= target:
            t = (target - a0) / max(a1 - a0, 1e-12)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    if pts and pts[-1][1] >= target:
        return float(pts[-1][0])
    return None
