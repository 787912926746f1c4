"""Clinical evaluation of a binary (or one-vs-rest) classifier: an operating point chosen on
validation, sensitivity / specificity / PPV / NPV at it, AUROC and AUPRC, each with a 95%
bootstrap interval.

The bootstrap resamples patients when the items carry a patient / study id (a cluster
bootstrap: every image of a drawn patient comes along), else items; the interval is the
percentile one (2.5th and 97.5th of the resampled statistic), as
``scipy.stats.bootstrap(method="percentile")`` computes it. Pure numpy + scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np

from .config import parse_operating_point

N_BOOT = 2000
LEVEL = 0.95
POINT_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def positive_index(classes: list[str], positive: str | None) -> int | None:
    """The position of the positive class: ``positive`` when given (a clear error if it is
    not a class), else the second of two classes; None for more classes without one."""
    if positive is not None:
        if positive not in classes:
            raise ValueError(
                f"positive_class={positive!r} is not one of the classes ({', '.join(classes)})"
            )
        return classes.index(positive)
    return 1 if len(classes) == 2 else None


def choose_threshold(y: np.ndarray, score: np.ndarray, spec: str) -> dict:
    """The threshold on ``score`` (the positive class's probability; positive when
    ``score >= threshold``) that ``spec`` asks for, chosen on these (validation) items:
    ``sensitivity=s``: the highest threshold whose sensitivity is at least s;
    ``specificity=s``: the lowest whose specificity is at least s; ``youden``: the one of
    the ROC curve with the largest sensitivity + specificity - 1; ``threshold=t``: t."""
    rule, target = parse_operating_point(spec)
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    pos, neg = np.sort(score[y])[::-1], np.sort(score[~y])
    if rule == "threshold":
        t = float(target)  # type: ignore[arg-type]
    elif not len(pos) or not len(neg):
        raise ValueError(
            f"operating_point={spec}: the validation part needs items of both the positive "
            f"and the other class ({len(pos)} positive, {len(neg)} other); add items or "
            "pass a validation set"
        )
    elif rule == "sensitivity":
        k = max(1, math.ceil(float(target) * len(pos) - 1e-9))  # type: ignore[arg-type]
        t = float(pos[k - 1])
    elif rule == "specificity":
        k = max(1, math.ceil(float(target) * len(neg) - 1e-9))  # type: ignore[arg-type]
        t = float(np.nextafter(neg[k - 1], np.inf))
    else:
        from sklearn.metrics import roc_curve

        fpr, tpr, thr = roc_curve(y, score)
        best = int(np.argmax(tpr - fpr))
        t = float(min(thr[best], 1.0))
    at = point_metrics(y, score >= t)
    return {"rule": spec, "threshold": t, "validation": at, "n_validation": int(len(y))}


def point_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy of boolean predictions (NaN where
    a denominator is 0) and the confusion counts."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    n_pos, n_pred = int(np.count_nonzero(y)), int(np.count_nonzero(pred))
    tp = int(np.count_nonzero(y & pred))
    fn, fp = n_pos - tp, n_pred - tp
    tn = len(y) - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "accuracy": _ratio(tp + tn, len(y)),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def _ratio(a: int, b: int) -> float:
    return float(a / b) if b else float("nan")


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN with
    one class only."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = _ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (``scipy.stats.rankdata``'s average
    method, without its per-call overhead: the bootstrap calls this thousands of times)."""
    sorter = np.argsort(x, kind="mergesort")
    xs = x[sorter]
    new = np.r_[True, xs[1:] != xs[:-1]]
    dense = np.cumsum(new)
    bounds = np.r_[np.flatnonzero(new), len(x)]
    ranks = np.empty(len(x))
    ranks[sorter] = 0.5 * (bounds[dense] + bounds[dense - 1] + 1)
    return ranks


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (scikit-learn's definition: sum over thresholds of precision times
    the recall gained); NaN without a positive."""
    y = np.asarray(y).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    s, hit = np.asarray(score, dtype=np.float64)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last item of each tie
    tps = np.cumsum(hit)[last]
    precision = tps / (last + 1.0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _resamples(n: int, groups, n_boot: int, seed: int) -> list[np.ndarray]:
    """Index arrays of ``n_boot`` bootstrap samples: items drawn with replacement, or (with
    ``groups``) groups drawn with replacement, each bringing all its items."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return list(rng.integers(0, n, size=(n_boot, n)))
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    draws = rng.integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[g] for g in row]) for row in draws]


def _weight_chunks(n: int, groups, n_boot: int, seed: int, chunk: int = 64):
    """The bootstrap resamples as count weights over the items, ``[b, n]`` per chunk: how
    often each item is drawn (with ``groups``: how often its group is drawn). A resample
    with repeats is the original items weighted by these counts, so one sort serves all."""
    rng = np.random.default_rng(seed)
    codes = None
    if groups is not None:
        codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    k = n if codes is None else int(codes.max()) + 1
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, k, size=(b, k)) + (np.arange(b) * k)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * k).reshape(b, k).astype(np.float64)
        yield counts if codes is None else counts[:, codes]


def _weighted_stats(y: np.ndarray, score: np.ndarray, threshold: float, w: np.ndarray):
    """``[b, 7]``: sensitivity, specificity, PPV, NPV, accuracy at ``threshold``, AUROC and
    AUPRC of the items under each row of weights ``w`` (NaN where undefined): the same
    figures as :func:`point_metrics`, :func:`auroc` and :func:`auprc` on the resample.
    The items must come sorted by ``score`` (ascending)."""
    pred = score >= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        tp = w @ (y & pred).astype(np.float64)
        fn = w @ (y & ~pred).astype(np.float64)
        fp = w @ (~y & pred).astype(np.float64)
        tn = w @ (~y & ~pred).astype(np.float64)
        out = [tp / (tp + fn), tn / (tn + fp), tp / (tp + fp), tn / (tn + fn)]
        out.append((tp + tn) / (tp + tn + fp + fn))
        # each distinct score's positive and negative weight, ascending
        starts = np.r_[0, np.flatnonzero(np.diff(score)) + 1]
        wp = np.add.reduceat(w * y, starts, axis=1)
        wn = np.add.reduceat(w * ~y, starts, axis=1)
        n_pos, n_neg = wp.sum(1), wn.sum(1)
        below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each score
        out.append((wp * (below + 0.5 * wn)).sum(1) / (n_pos * n_neg))
        # average precision: thresholds from the highest score down
        tps = np.cumsum(wp[:, ::-1], axis=1)
        seen = np.cumsum((wp + wn)[:, ::-1], axis=1)
        precision = np.where(seen > 0, tps / seen, 0.0)
        out.append((wp[:, ::-1] * precision).sum(1) / n_pos)
    return np.stack(out, axis=1)


def bootstrap_interval(
    stat, y, score, groups=None, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """The percentile ``level`` interval of ``stat(y, score)`` over bootstrap resamples
    (patients when ``groups`` is given); resamples where it is undefined are left out."""
    y, score = np.asarray(y), np.asarray(score)
    values = np.array([stat(y[i], score[i]) for i in _resamples(len(y), groups, n_boot, seed)])
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def clinical_metrics(
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    groups=None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """Sensitivity, specificity, PPV, NPV and accuracy at ``threshold``, AUROC, AUPRC, each
    ``{"value", "low", "high"}`` (95% bootstrap, patient-level with ``groups``), and the
    confusion matrix at the threshold (rows: true other / positive, columns: predicted)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    at = point_metrics(y, score >= threshold)
    names = (*POINT_METRICS, "auroc", "auprc")
    order = np.argsort(score, kind="mergesort")  # one sort serves every resample
    sorted_groups = None if groups is None else np.asarray(groups, dtype=object)[order]
    boot = np.concatenate(
        [
            _weighted_stats(y[order], score[order], threshold, w)
            for w in _weight_chunks(len(y), sorted_groups, n_boot, seed)
        ]
    )
    values = {
        **{n: at[n] for n in POINT_METRICS},
        "auroc": auroc(y, score),
        "auprc": auprc(y, score),
    }
    out: dict = {}
    for k, name in enumerate(names):
        col = boot[:, k][np.isfinite(boot[:, k])]
        lo, hi = (
            np.percentile(col, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
            if len(col)
            else (np.nan, np.nan)
        )
        out[name] = {"value": float(values[name]), "low": float(lo), "high": float(hi)}
    n_groups = None if groups is None else len(set(str(g) for g in groups))
    out["confusion_matrix"] = [[at["tn"], at["fp"]], [at["fn"], at["tp"]]]
    out["threshold"] = float(threshold)
    out["n"] = int(len(y))
    out["n_positive"] = int(y.sum())
    out["bootstrap"] = {
        "resamples": int(n_boot),
        "level": LEVEL,
        "unit": "patient" if groups is not None else "item",
        "groups": n_groups,
        "seed": int(seed),
    }
    return out


def format_clinical(c: dict, positive: str) -> list[str]:
    """The clinical block as lines for ``evaluate``."""
    cm = c["confusion_matrix"]
    op = c.get("operating_point") or {}
    rule = op.get("rule", "most probable class")
    lines = [
        f"clinical ({positive} = positive; threshold {c['threshold']:.4f}, {rule}; "
        f"95% bootstrap over {c['bootstrap']['resamples']} resamples of "
        f"{c['bootstrap']['unit']}s):"
    ]
    for name in ("sensitivity", "specificity", "ppv", "npv", "auroc", "auprc"):
        v = c[name]
        lines.append(
            f"  {name.upper() if len(name) <= 5 else name:<12} {v['value']:.3f}  "
            f"[{v['low']:.3f}, {v['high']:.3f}]"
        )
    lines.append(f"  at the threshold: TP {cm[1][1]}  FN {cm[1][0]}  TN {cm[0][0]}  FP {cm[0][1]}")
    return lines
