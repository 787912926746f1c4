"""Which pool items to label next, as pure functions of features and probabilities.

Everything here takes numpy arrays (features of the pool, the model's probabilities on it,
features of the items already labelled) and returns pool indices in the order they were
picked, with what each pick scored. ``suggest`` (:mod:`headstart.active.suggest`) feeds
them from a run or a frozen backbone; the benchmark feeds them from a probe.

Geometry: features are L2-normalised, so distances are cosine distances (``1 - cos``,
0 to 2); a backbone's feature scale never decides what counts as far.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .settings import METHODS, WITHOUT_MODEL

UNCERTAINTY = ("margin", "entropy")
# margin-kcenter: the k-center pass runs over this many times the budget of the most
# uncertain items
SHORTLIST = 4
CHUNK = 4096  # rows of a distance matrix computed at once
TYPICAL_NEIGHBOURS = 20  # typiclust: a point's density is read from this many neighbours
MAX_CLUSTERS = 1000  # typiclust: more labelled items than this share clusters
# typiclust clusters 64 whitened principal components of the (normalised) features: on
# Fashion-MNIST with EfficientNet-Lite0 features it came closer to random's accuracy at 200
# labels than on the raw 1280-d features (benchmarks/active_learning.py)
TYPICAL_DIMS = 64
# auto: TypiClust below this many labelled items per class, BADGE from there. Typical
# items teach most while labels are few (Hacohen et al. 2022: the low-budget regime);
# uncertainty pays once the model is good enough to be unsure of the right items.
LOW_BUDGET_PER_CLASS = 20


@dataclass
class Picks:
    """Pool indices in the order picked; per pick: ``score`` (what the method maximised:
    uncertainty, distance, or BADGE's squared gradient distance), ``uncertainty`` (None
    without probabilities) and ``distance`` to the nearest labelled or earlier-picked item
    when it was picked (None where the method does not look)."""

    indices: np.ndarray
    score: np.ndarray
    method: str
    uncertainty: np.ndarray | None = None
    distance: np.ndarray | None = None
    notes: list[str] | None = None  # why each was picked, in words (typiclust)


def resolve_method(
    method: str, has_proba: bool, labeled_count: int = 0, n_classes: int | None = None
) -> str:
    """``auto``: TypiClust while labels are few (no model, or fewer than
    :data:`LOW_BUDGET_PER_CLASS` labelled items per class), BADGE from there; a method
    that needs probabilities without them is a clear error."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    if method == "auto":
        few = labeled_count < LOW_BUDGET_PER_CLASS * (n_classes or 0)
        return "badge" if has_proba and not few else "typiclust"
    if method not in WITHOUT_MODEL and not has_proba:
        raise ValueError(
            f"method={method}: needs a model's probabilities; a cold start (a backbone "
            "id, no trained run) chooses by diversity alone: method=typiclust, kcenter or auto"
        )
    return method


def normalise(features) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2:
        raise ValueError(f"features must be (items, dims), got shape {f.shape}")
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norm > 0, norm, 1.0)


def uncertainty(proba, kind: str = "margin") -> np.ndarray:
    """How unsure the model is of each item, 0 (sure) to 1: ``margin`` = 1 - (top
    probability - runner-up), ``entropy`` = entropy / log(classes)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (items, classes >= 2), got shape {p.shape}")
    if kind == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top[:, 1] - top[:, 0])
    if kind == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return -(q * np.log(q)).sum(1) / np.log(p.shape[1])
    raise ValueError(f"uncertainty kind {kind!r}: choose one of {', '.join(UNCERTAINTY)}")


def _min_distance(f: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Cosine distance of each row of ``f`` to its nearest row of ``centers`` (both unit
    length); +inf where there are no centers."""
    out = np.full(len(f), np.inf, dtype=np.float32)
    for start in range(0, len(centers), CHUNK):
        sim = f @ centers[start : start + CHUNK].T
        np.minimum(out, 1.0 - sim.max(1), out=out)
    return np.maximum(out, 0.0)


def kcenter_greedy(features, k: int, labeled=None) -> Picks:
    """Farthest-first traversal (the greedy 2-approximation of k-center): each pick is the
    item farthest from every labelled and earlier-picked item, so the picks cover the
    pool. With nothing labelled, the first pick is the item nearest the pool's mean (a
    typical item, not an outlier)."""
    f = normalise(features)
    _check_k(k, len(f))
    dist = (
        _min_distance(f, normalise(labeled))
        if labeled is not None and len(labeled)
        else np.full(len(f), np.inf, dtype=np.float32)
    )
    picked, scores = [], []
    for _ in range(k):
        if np.isinf(dist).all():
            mean = f.mean(0)
            i = int(np.argmax(f @ mean))
        else:
            i = int(np.argmax(dist))
        picked.append(i)
        scores.append(float(dist[i]))
        np.minimum(dist, np.maximum(1.0 - f @ f[i], 0.0), out=dist)
        dist[i] = -1.0  # never again
    s = np.asarray(scores)
    return Picks(np.asarray(picked, dtype=np.int64), s, "kcenter", distance=s)


def typiclust(features, k: int, labeled=None, neighbours: int = TYPICAL_NEIGHBOURS, seed: int = 0):
    """TypiClust (Hacohen et al., 2022), the low-budget pick: the pool (and the labelled
    items) in ``labelled + k`` k-means clusters; each pick comes from the largest cluster
    with the fewest labelled or picked items, and is its most typical item (the highest
    density: 1 / mean distance to its nearest neighbours in the cluster). Typical items
    teach a classifier more than outliers while labels are few."""
    from sklearn.cluster import KMeans

    f = normalise(features)
    _check_k(k, len(f))
    lab = normalise(labeled) if labeled is not None and len(labeled) else f[:0]
    n_clusters = min(len(f), len(lab) + k, MAX_CLUSTERS)
    both = _whitened(np.concatenate([lab, f]) if len(lab) else f, seed)
    lab, f = both[: len(lab)], both[len(lab) :]
    km = KMeans(n_clusters, n_init=1, random_state=seed).fit(both)
    assign = km.labels_[len(lab) :]
    size = np.bincount(assign, minlength=n_clusters)
    covered = np.bincount(km.labels_[: len(lab)], minlength=n_clusters).astype(np.int64)
    dens = _typicality(f, assign, n_clusters, neighbours)
    taken = np.zeros(len(f), dtype=bool)
    picked, scores, notes = [], [], []
    for _ in range(k):
        free = np.bincount(assign[~taken], minlength=n_clusters)
        # the fewest labelled / picked items first, then the largest
        order = np.lexsort((-size, covered))
        c = next(int(c) for c in order if free[c] > 0)
        members = np.flatnonzero((assign == c) & ~taken)
        i = int(members[np.argmax(dens[members])])
        picked.append(i)
        scores.append(float(dens[i]))
        notes.append(
            f"typical of a group of {size[c]} pool items, {covered[c]} of them "
            "labelled or chosen before"
        )
        taken[i] = True
        covered[c] += 1
    idx = np.asarray(picked, dtype=np.int64)
    dist = _pick_distances(normalise(features), idx, labeled)  # in the features' own space
    return Picks(idx, np.asarray(scores), "typiclust", distance=dist, notes=notes)


def _whitened(f: np.ndarray, seed: int, dims: int = TYPICAL_DIMS) -> np.ndarray:
    """The leading ``dims`` principal components of ``f``, each scaled to unit variance,
    rows normalised: directions that vary little but separate groups count as much as the
    dominant ones."""
    from sklearn.decomposition import PCA

    n = min(dims, len(f) - 1, f.shape[1])
    if n < 2:
        return f
    return normalise(PCA(n, whiten=True, random_state=seed).fit_transform(f))


def _typicality(f: np.ndarray, assign: np.ndarray, n_clusters: int, neighbours: int):
    """1 / (mean cosine distance to the ``neighbours`` nearest items of the same cluster)."""
    out = np.zeros(len(f), dtype=np.float64)
    for c in range(n_clusters):
        members = np.flatnonzero(assign == c)
        if len(members) < 2:
            out[members] = 0.0
            continue
        kk = min(neighbours, len(members) - 1)
        for start in range(0, len(members), CHUNK):
            rows = members[start : start + CHUNK]
            d = np.maximum(1.0 - f[rows] @ f[members].T, 0.0)
            near = np.partition(d, kk, axis=1)[:, 1 : kk + 1]  # column 0: the item itself
            out[rows] = 1.0 / (near.mean(1) + 1e-8)
    return out


def top_uncertain(proba, k: int, kind: str = "margin", features=None, labeled=None) -> Picks:
    """The ``k`` items the model is least sure of (ties: pool order)."""
    u = uncertainty(proba, kind)
    _check_k(k, len(u))
    order = np.argsort(-u, kind="stable")[:k]
    dist = None
    if features is not None:  # the distance column of the CSV: each pick against the rest
        dist = _pick_distances(normalise(features), order, labeled)
    return Picks(order.astype(np.int64), u[order], kind, uncertainty=u[order], distance=dist)


def margin_kcenter(
    features, proba, k: int, labeled=None, shortlist: int = SHORTLIST, kind: str = "margin"
) -> Picks:
    """Uncertainty, then diversity: the ``shortlist * k`` least sure items, and among them
    ``k`` picked farthest-first (from the labelled items and each other), so a batch is
    not ``k`` near-copies of one confusing item."""
    u = uncertainty(proba, kind)
    _check_k(k, len(u))
    short = np.argsort(-u, kind="stable")[: min(len(u), max(k, shortlist * k))]
    inner = kcenter_greedy(np.asarray(features)[short], k, labeled)
    idx = short[inner.indices]
    return Picks(idx, inner.score, "margin-kcenter", uncertainty=u[idx], distance=inner.score)


def badge(features, proba, k: int, labeled=None, labeled_proba=None, seed: int = 0) -> Picks:
    """BADGE (Ash et al., 2020): k-means++ seeding on each item's gradient embedding
    ``(p - onehot(argmax p)) (x) x``: long embeddings are uncertain items, far-apart ones
    differ, so one draw trades both off. The embeddings (classes x dims each) are never
    built: ``<g_i, g_j> = <r_i, r_j> <x_i, x_j>``. Labelled items (with ``labeled_proba``)
    start as centres; the first pick is then drawn like the rest, else it is the longest
    embedding."""
    x = normalise(features)
    p = np.asarray(proba, dtype=np.float32)
    _check_k(k, len(x))
    r = _residual(p)
    sq = (r * r).sum(1)  # |g_i|^2 (|x_i| = 1)
    d2 = np.full(len(x), np.inf, dtype=np.float64)
    if labeled is not None and len(labeled) and labeled_proba is not None:
        lx, lr = normalise(labeled), _residual(np.asarray(labeled_proba, dtype=np.float32))
        lsq = (lr * lr).sum(1)
        for start in range(0, len(lx), CHUNK):
            sl = slice(start, start + CHUNK)
            g = sq[:, None] + lsq[None, sl] - 2.0 * (r @ lr[sl].T) * (x @ lx[sl].T)
            np.minimum(d2, np.maximum(g, 0.0).min(1), out=d2)
    rng = np.random.default_rng(seed)
    picked, scores = [], []
    taken = np.zeros(len(x), dtype=bool)
    for _ in range(k):
        if np.isinf(d2).all():
            i = int(np.argmax(sq))
        else:
            w = np.where(taken, 0.0, d2)
            total = w.sum()
            if total <= 0:  # every item left coincides with a centre: take the most unsure
                i = int(np.argmax(np.where(taken, -1.0, sq)))
            else:
                i = int(rng.choice(len(w), p=w / total))
        picked.append(i)
        scores.append(float(d2[i]) if np.isfinite(d2[i]) else float(sq[i]))
        taken[i] = True
        g = sq + sq[i] - 2.0 * (r @ r[i]) * (x @ x[i])
        np.minimum(d2, np.maximum(g, 0.0), out=d2)
        d2[taken] = 0.0
    idx = np.asarray(picked, dtype=np.int64)
    return Picks(
        idx,
        np.asarray(scores),
        "badge",
        uncertainty=uncertainty(p[idx]),
        distance=_pick_distances(x, idx, labeled),
    )


def choose(
    features,
    k: int,
    proba=None,
    labeled=None,
    labeled_proba=None,
    method: str = "auto",
    seed: int = 0,
    labeled_count: int | None = None,
) -> Picks:
    """The ``k`` pool items to label next by ``method`` (:data:`METHODS`): ``features``
    (pool, dims), ``proba`` (pool, classes) from the current model or None on a cold start,
    ``labeled`` the features of the items labelled already (diversity is measured
    against them too), ``labeled_proba`` the model's probabilities on them (BADGE);
    ``labeled_count``: how many items are labelled, for ``auto`` (default: ``labeled``'s)."""
    count = len(labeled) if labeled is not None else 0
    count = labeled_count if labeled_count is not None else count
    n_classes = None if proba is None else np.asarray(proba).shape[1]
    method = resolve_method(method, proba is not None, count, n_classes)
    if proba is not None and len(proba) != len(features):
        raise ValueError(f"{len(features)} pool features but {len(proba)} probability rows")
    if method == "kcenter":
        return kcenter_greedy(features, k, labeled)
    if method == "typiclust":
        return typiclust(features, k, labeled, seed=seed)
    if method in UNCERTAINTY:
        return top_uncertain(proba, k, method, features, labeled)
    if method == "margin-kcenter":
        return margin_kcenter(features, proba, k, labeled)
    return badge(features, proba, k, labeled, labeled_proba, seed)


def _residual(p: np.ndarray) -> np.ndarray:
    """``p - onehot(argmax p)``: the last layer's gradient direction for the guessed label."""
    r = p.astype(np.float32, copy=True)
    r[np.arange(len(p)), p.argmax(1)] -= 1.0
    return r


def _pick_distances(f: np.ndarray, order: np.ndarray, labeled) -> np.ndarray:
    """Cosine distance of each pick to the nearest labelled or earlier pick."""
    base = (
        _min_distance(f[order], normalise(labeled))
        if labeled is not None and len(labeled)
        else np.full(len(order), np.inf, dtype=np.float32)
    )
    out = base.copy()
    for j in range(1, len(order)):
        out[j] = min(out[j], float(np.maximum(1.0 - f[order[:j]] @ f[order[j]], 0.0).min()))
    return out


def _check_k(k: int, n: int) -> None:
    if n == 0:
        raise ValueError("the pool is empty: there is nothing to choose from")
    if not 1 <= k <= n:
        raise ValueError(f"budget {k}: choose between 1 and the {n} items of the pool")
