"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and how well
probabilities match how often they are right (expected calibration error, reliability bins).

Pure functions on numpy arrays. One temperature ``T > 0`` divides a classifier's logits;
it is fitted on held-out logits by minimising the negative log-likelihood, which leaves
every argmax (so accuracy) as it was.
"""

from __future__ import annotations

import math

import numpy as np

ECE_BINS = 15
# The temperatures the search may return: beyond them a held-out set is telling more about
# its own size than about the model.
T_BOUNDS = (0.05, 20.0)
# Fewer held-out items than this fit no temperature (T stays 1): the estimate would be noise.
MIN_ITEMS = 10


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(labels, dtype=np.int64)
    return float(-_log_softmax(z)[np.arange(len(y)), y].mean())


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / float(temperature)))


def fit_temperature(logits, labels, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The ``T`` in ``bounds`` minimising :func:`nll` (a bounded scalar search over log T;
    the NLL is convex in 1/T, so one minimum). Never worse on these logits than ``T = 1``."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(
        lambda log_t: nll(z, y, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-7},
    )
    t = float(math.exp(res.x))
    return t if nll(z, y, t) <= nll(z, y, 1.0) else 1.0


def temperature_or_reason(logits, labels) -> tuple[float, str | None]:
    """``(T, None)`` fitted on held-out ``logits``, or ``(1.0, why not)`` when the held-out
    set cannot say: too few items, or every item right (then the NLL falls all the way to
    T -> 0, a one-hot model the next wrong item costs dearly)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(y) < MIN_ITEMS:
        return 1.0, (
            f"{len(y)} validation item(s), fewer than the {MIN_ITEMS} a temperature is fitted on"
        )
    if np.all(z.argmax(1) == y):
        return 1.0, (
            "every validation item is predicted right: no finite temperature minimises their NLL"
        )
    return fit_temperature(z, y), None


def _bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: bin i holds (i/n, (i+1)/n], bin 0 also 0."""
    return np.digitize(confidence, np.arange(1, n_bins) / n_bins, right=True)


def reliability(y_true, proba, n_bins: int = ECE_BINS) -> list[dict]:
    """Top-label reliability bins of equal width on the confidence (the max probability):
    each bin's ``lower``, ``upper``, ``count``, mean ``confidence`` and ``accuracy`` (None
    for an empty bin): what a reliability diagram draws."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    conf = proba.max(1) if len(proba) else np.zeros(0)
    right = (proba.argmax(1) == y) if len(proba) else np.zeros(0, dtype=bool)
    which = _bins(conf, n_bins)
    out = []
    for i in range(n_bins):
        inside = which == i
        n = int(inside.sum())
        out.append(
            {
                "lower": i / n_bins,
                "upper": (i + 1) / n_bins,
                "count": n,
                "confidence": float(conf[inside].mean()) if n else None,
                "accuracy": float(right[inside].mean()) if n else None,
            }
        )
    return out


def expected_calibration_error(y_true, proba, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) x |accuracy -
    mean confidence|."""
    return ece_from_bins(reliability(y_true, proba, n_bins))


def ece_from_bins(bins: list[dict]) -> float:
    """The ECE of :func:`reliability`'s bins."""
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    )


def before_after(logits, labels, temperature: float) -> dict:
    """NLL, ECE and reliability bins of uncalibrated ``logits`` (T = 1) and of
    ``logits / temperature``."""
    before = reliability(labels, softmax(logits))
    after = reliability(labels, softmax(logits, temperature))
    return {
        "temperature": float(temperature),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "ece_before": ece_from_bins(before),
        "ece_after": ece_from_bins(after),
        "n": int(len(np.asarray(labels))),
        "reliability_before": before,
        "reliability_after": after,
    }
