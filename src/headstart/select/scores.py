"""Transferability scores: how well will a source model transfer to *your* labels?

Each score is a pure function ``score(features, labels[, source_probs]) -> float`` over
the frozen features of the target data (``features``: (N, D); ``labels``: (N,) class
indices) and, for the scores that use the source task, the source head's class
probabilities (``source_probs``: (N, Z)). Higher is better for every score. All
arithmetic is float64.

* ``logme``  - You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021. Log marginal likelihood (evidence) per item of a Bayesian linear
  regression from features to each one-hot label column, alpha/beta maximised by the
  paper's fixed-point iteration; one SVD of the features serves every class.
* ``leep``   - Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020. Log-likelihood of the "expected empirical predictor"
  built from the source head's soft predictions.
* ``nce``    - Tran et al., "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019. Negative conditional entropy -H(Y | Z) of the target labels given
  the source head's hard predictions Z.
* ``nleep`` - Li et al., "Ranking Neural Checkpoints", CVPR 2021. LEEP with the source
  head replaced by a Gaussian mixture fitted to the PCA-reduced target features, so it
  applies to cut points, random-init networks and any backbone without a source head.
* ``h_score`` - Bao et al., "An Information-Theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019, with the shrinkage covariance of Ibrahim et al.,
  "Newer is not always better: Rethinking transferability metrics", WACV 2023
  (Ledoit-Wolf): tr(cov_a(f)^-1 (1-a) cov(E[f|y])). Without shrinkage the covariance of
  a few hundred items in 1280 dimensions is singular and the plain score is noise.
* ``knn``    - k-nearest-neighbour accuracy (cosine) by stratified cross-validation.
* ``linear`` - logistic-regression (linear probe) accuracy by stratified cross-validation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


class ScoreError(ValueError):
    """Inputs a score cannot be computed from; the message says why."""


def _check(features, labels, source_probs=None, *, needs_source: bool = False):
    """float64 features, labels as 0..C-1, float64 source probabilities. The scores of the
    source head (LEEP, NCE) accept ``features=None``: they do not use them."""
    y = np.asarray(labels)
    if features is None and needs_source:
        f = np.zeros((len(y), 0))
    else:
        f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ScoreError(f"features must be a 2-D array (items, dims), got shape {f.shape}")
    if y.ndim != 1 or len(y) != len(f):
        raise ScoreError(
            f"labels must be one class index per item: {len(f)} items, labels of "
            f"shape {y.shape} (multi-label data cannot be ranked)"
        )
    if len(f) < 2:
        raise ScoreError("at least two items are needed to score")
    if not np.isfinite(f).all():
        raise ScoreError("features contain NaN or infinite values")
    _, y = np.unique(y, return_inverse=True)  # any labels -> 0..C-1
    if needs_source:
        if source_probs is None:
            raise ScoreError("this score needs the source head's probabilities (source_probs)")
        p = np.asarray(source_probs, dtype=np.float64)
        if p.ndim != 2 or len(p) != len(f):
            raise ScoreError(
                f"source_probs must be (items, source classes) with {len(f)} "
                f"rows, got shape {p.shape}"
            )
        return f, y, p
    return f, y, None


# ---------------------------------------------------------------------------------- LogME
def logme(
    features, labels, source_probs=None, *, tol: float = 1e-10, max_iter: int = 1000
) -> float:
    """LogME (You et al. 2021): mean over classes of the maximised log evidence per item.

    One thin SVD ``F = U S V^T`` gives every quantity of the fixed-point iteration
    (gamma = sum b s_i^2/(a + b s_i^2), a = gamma/|m|^2, b = (n - gamma)/|Fm - y|^2) in
    O(rank) per class and iteration; all classes iterate together. Invariant to a common
    scaling of the features and to relabelling the classes."""
    f, y, _ = _check(features, labels, source_probs)
    n, d = f.shape
    n_classes = int(y.max()) + 1
    targets = np.eye(n_classes)[y]  # (n, C) one-hot columns, each regressed on f
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    u, s = u[:, keep], s[keep]
    r = len(s)
    sigma = s**2
    z = (u.T @ targets).T  # (C, r): labels in the feature basis
    outside = np.maximum((targets**2).sum(0) - (z**2).sum(1), 0.0)  # |y|^2 off span(F)
    if r == 0:  # constant-zero features: only the noise model is left
        beta = n / (targets**2).sum(0)
        ev = n / 2 * np.log(beta) - n / 2 * math.log(2 * math.pi) - n / 2
        return float(np.mean(ev / n))
    alpha = np.ones(n_classes)
    beta = np.ones(n_classes)
    tiny = np.finfo(np.float64).tiny
    # Where a linear map fits a class exactly (n <= d and well separated, e.g. a source model
    # scored on its own classes) the evidence peaks at the edge (beta -> inf or alpha -> inf)
    # and the iteration would run off to 0 * inf: alpha is held within 1e+-8 of the largest
    # squared singular value, beta within 1e+-8, which keeps the score scale-invariant and
    # gives the finite limit instead of NaN.
    a_lo, a_hi = 1e-8 * sigma.max(), 1e8 * sigma.max()
    for _ in range(max_iter):
        denom = alpha[:, None] + beta[:, None] * sigma
        gamma = (beta[:, None] * sigma / denom).sum(1)
        m2 = ((beta[:, None] * s * z / denom) ** 2).sum(1)
        res2 = ((alpha[:, None] * z / denom) ** 2).sum(1) + outside
        new_alpha = np.clip(gamma / np.maximum(m2, tiny), a_lo, a_hi)
        new_beta = np.clip((n - gamma) / np.maximum(res2, tiny), 1e-8, 1e8)
        done = np.all(np.abs(new_alpha - alpha) <= tol * np.abs(alpha)) and np.all(
            np.abs(new_beta - beta) <= tol * np.abs(beta)
        )
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom = alpha[:, None] + beta[:, None] * sigma
    m2 = ((beta[:, None] * s * z / denom) ** 2).sum(1)
    res2 = ((alpha[:, None] * z / denom) ** 2).sum(1) + outside
    logdet = np.log(denom).sum(1) + (d - r) * np.log(alpha)
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * math.log(2 * math.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
    )
    return float(np.mean(evidence / n))


# ---------------------------------------------------------------------- LEEP and NCE
def leep(features, labels, source_probs) -> float:
    """LEEP (Nguyen et al. 2020): mean log of sum_z P(y_i | z) theta_z(x_i), where
    P(y | z) comes from the joint P(y, z) = mean over items of theta_z(x) [y(x) = y]."""
    _, y, p = _check(features, labels, source_probs, needs_source=True)
    n_classes = int(y.max()) + 1
    joint = np.zeros((n_classes, p.shape[1]))
    np.add.at(joint, y, p)
    joint /= len(y)
    p_z = joint.sum(0)
    cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
    eep = (p * cond[y]).sum(1)
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))


def nce(features, labels, source_probs) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z) with Z the source head's top class per item."""
    _, y, p = _check(features, labels, source_probs, needs_source=True)
    z = p.argmax(1)
    n = len(y)
    joint = np.zeros((int(y.max()) + 1, p.shape[1]))
    np.add.at(joint, (y, z), 1.0 / n)
    p_z = joint.sum(0)
    mask = joint > 0
    cond = np.divide(joint, p_z, out=np.ones_like(joint), where=p_z > 0)
    return float(np.sum(joint[mask] * np.log(cond[mask])))


def _pca_scores(f: np.ndarray, variance: float) -> np.ndarray:
    """The first principal components of ``f`` that explain ``variance`` of its variance
    (at least one), scaled so that the items' mean squared norm is 1 before truncation:
    invariant to a common scaling of the features. Zero columns when ``f`` is constant."""
    f = f - f.mean(0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    var = s**2
    total = float(var.sum())
    if not total > 0:
        return np.zeros((len(f), 1))
    k = min(int(np.searchsorted(np.cumsum(var), variance * total)) + 1, len(s))
    return u[:, :k] * (s[:k] / math.sqrt(total / len(f)))


def nleep(
    features,
    labels,
    source_probs=None,
    *,
    variance: float = 0.8,
    components_per_class: int = 5,
    covariance: str = "diag",
    fits: int = 3,
    seed: int = 0,
) -> float:
    """N-LEEP (Li et al. 2021): LEEP with the source head replaced by a Gaussian mixture.

    The features are reduced by PCA to the components that explain ``variance`` of their
    variance; a Gaussian mixture of ``components_per_class`` x C components is fitted to
    them (no labels); its posterior over components plays the source head's class
    probabilities in LEEP. So it needs no source head and scores cut points and
    random-init networks like any backbone. The mixture depends on its k-means start: the
    score is the mean over ``fits`` mixtures (seeds ``seed``, ``seed + 1``, ...); with 3,
    its spread over seeds on real features fell from 0.028 to 0.017 (median std). The paper
    uses full covariances; ``covariance="diag"`` (the default here) fits 2-5x faster and
    ranked our benchmark candidates about as well (Kendall tau 0.56 against 0.59). The PCA
    scores are rounded to 9 decimals (they have unit mean square), so the score is the same
    on every machine and for every scaling of the features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    f, y, _ = _check(features, labels, source_probs)
    if not 0.0 < variance <= 1.0:
        raise ScoreError(f"variance must be in (0, 1], got {variance}")
    # Rounded far below any real difference between items: float noise (a rescaled input,
    # another BLAS kernel on another machine) must not move the k-means start of the
    # mixture, which can land in another optimum from a 1e-16 change (seen in tests).
    z = np.round(_pca_scores(f, variance), 9)
    n_classes = int(y.max()) + 1
    k = max(1, min(components_per_class * n_classes, len(y)))
    values = []
    for i in range(max(1, fits)):
        gmm = GaussianMixture(
            n_components=k, covariance_type=covariance, reg_covar=1e-4, random_state=seed + i
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probs = gmm.fit(z).predict_proba(z)
        values.append(leep(None, y, probs))
    return float(np.mean(values))


# ---------------------------------------------------------------------------- H-score
def _ledoit_wolf(x: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage of centred ``x`` (sklearn's ``ledoit_wolf_shrinkage`` formula),
    from row sums and the smaller Gram matrix: O(min(n, d)^2 max(n, d)), not O(n d^2)."""
    n, d = x.shape
    x2 = x**2
    trace = x2.sum() / n
    mu = trace / d
    beta_ = float((x2.sum(1) ** 2).sum())  # sum of the entries of x2^T x2
    gram = x @ x.T if n < d else x.T @ x
    delta_ = float((gram**2).sum()) / n**2  # |x^T x|_F^2 / n^2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def h_score(
    features, labels, source_probs=None, *, shrinkage: str | float = "ledoit_wolf"
) -> float:
    """H-score (Bao et al. 2019) with a shrunk feature covariance (Ibrahim et al. 2023):
    tr(((1-a) S + a mu I)^-1 (1-a) S_b), S the feature covariance, mu = tr(S)/D, S_b the
    covariance of the class-conditional means (weighted by class frequency). ``shrinkage``
    is a = "ledoit_wolf" (estimated) or a number in [0, 1] (0 = the original score, with a
    pseudo-inverse). S_b has rank < C, so the trace needs S's eigenvectors only against the
    C class means: one eigendecomposition of the smaller Gram matrix, no D x D solve."""
    f, y, _ = _check(features, labels, source_probs)
    n, d = f.shape
    f = f - f.mean(0)
    if shrinkage == "ledoit_wolf":
        a = _ledoit_wolf(f)
    else:
        a = float(shrinkage)
        if not 0.0 <= a <= 1.0:
            raise ScoreError(f"shrinkage must be in [0, 1] or 'ledoit_wolf', got {shrinkage}")
    n_classes = int(y.max()) + 1
    sums = np.zeros((n_classes, d))
    np.add.at(sums, y, f)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weighted = sums / counts[:, None] * np.sqrt(counts / n)[:, None]  # S_b = W^T W
    if n < d:  # eigenvectors of S from those of the n x n Gram matrix
        lam, u = np.linalg.eigh(f @ f.T)
        keep = lam > lam.max(initial=0.0) * n * np.finfo(np.float64).eps
        lam, u = lam[keep], u[:, keep]
        proj = (weighted @ f.T) @ u / np.sqrt(lam)  # W v_i
    else:
        lam, v = np.linalg.eigh(f.T @ f)
        keep = lam > lam.max(initial=0.0) * d * np.finfo(np.float64).eps
        lam, v = lam[keep], v[:, keep]
        proj = weighted @ v
    eig = lam / n  # eigenvalues of S on its support
    mu = (f**2).sum() / n / d
    inside = ((proj**2) / ((1 - a) * eig + a * mu)).sum()
    if a == 0.0:
        return float(inside)  # pseudo-inverse: S_b off S's support is ignored
    outside = max(float((weighted**2).sum() - (proj**2).sum()), 0.0) / (a * mu)
    return float((1 - a) * (inside + outside))


# ------------------------------------------------------------ cross-validated probes
def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y).min())
    k = min(folds, smallest)
    if k < 2:
        raise ScoreError("cross-validated scores need at least 2 items of every class")
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def knn_accuracy(
    features, labels, source_probs=None, *, k: int = 5, folds: int = 5, seed: int = 0
) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine similarity; ties go to the nearer
    neighbour), averaged over stratified folds."""
    f, y, _ = _check(features, labels, source_probs)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norm > 0, norm, 1.0)
    n_classes = int(y.max()) + 1
    accs = []
    for train, test in _folds(y, folds, seed):
        kk = min(k, len(train))
        sim = f[test] @ f[train].T
        nearest = y[train][np.argsort(-sim, axis=1, kind="stable")[:, :kk]]  # their classes
        rows = np.arange(len(test))
        # integer votes: kk + 1 per neighbour, plus kk - j for the class of the j-th nearest
        # when it first appears: more votes win, and a tie goes to the nearer neighbour
        votes = np.zeros((len(test), n_classes), dtype=np.int64)
        for j in range(kk):
            first = votes[rows, nearest[:, j]] == 0
            votes[rows, nearest[:, j]] += (kk + 1) + np.where(first, kk - j, 0)
        accs.append(float((votes.argmax(1) == y[test]).mean()))
    return float(np.mean(accs))


def linear_probe_accuracy(
    features, labels, source_probs=None, *, c: float = 1.0, folds: int = 5, seed: int = 0
) -> float:
    """Accuracy of an L2-regularised logistic regression on standardised features,
    averaged over stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    f, y, _ = _check(features, labels, source_probs)
    accs = []
    # L-BFGS on a few hundred items makes many tiny BLAS calls, which threads only slow
    # down (about 10x on 2 cores, the same result).
    with threadpool_limits(limits=1, user_api="blas"):
        for train, test in _folds(y, folds, seed):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            model.fit(f[train], y[train])
            accs.append(float(model.score(f[test], y[test])))
    return float(np.mean(accs))


@dataclass(frozen=True)
class Score:
    """A transferability score: ``fn(features, labels, source_probs) -> float``, higher is
    better. ``needs_source``: it reads the source head's probabilities (a candidate without
    a source head gets NaN). Pass one, or a named function, in ``rank(scores=...)`` to rank
    by a score of your own beside the built-in ones."""

    name: str
    fn: Callable[..., float]  # (features, labels, source_probs) -> score
    needs_source: bool = False
    summary: str = ""


SCORES: dict[str, Score] = {
    s.name: s
    for s in (
        Score("logme", logme, False, "LogME evidence per item (You et al. 2021)"),
        Score(
            "leep", leep, True, "LEEP log-likelihood (Nguyen et al. 2020); needs the source head"
        ),
        Score(
            "nce",
            nce,
            True,
            "negative conditional entropy (Tran et al. 2019); needs the source head",
        ),
        Score(
            "nleep",
            nleep,
            False,
            "N-LEEP: LEEP on a Gaussian mixture of the PCA-reduced "
            "features (Li et al. 2021); no source head needed",
        ),
        Score(
            "h_score", h_score, False, "shrinkage H-score (Bao et al. 2019; Ibrahim et al. 2023)"
        ),
        Score("knn", knn_accuracy, False, "5-NN cosine accuracy, stratified 5-fold CV"),
        Score(
            "linear",
            linear_probe_accuracy,
            False,
            "logistic-regression accuracy, stratified 5-fold CV",
        ),
    )
}
