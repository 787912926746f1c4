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
import torch

from .config import CLASSIFY_TASKS

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
        raise ScoreError(f"labels must be one class index per item: {len(f)} items, labels of "
                         f"shape {y.shape} (multi-label data cannot be ranked)")
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
            raise ScoreError(f"source_probs must be (items, source classes) with {len(f)} "
                             f"rows, got shape {p.shape}")
        return f, y, p
    return f, y, None


# ---------------------------------------------------------------------------------- LogME
def logme(features, labels, source_probs=None, *, tol: float = 1e-10,
          max_iter: int = 1000) -> float:
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
        done = np.all(np.abs(new_alpha - alpha) <= tol * np.abs(alpha)) and \
            np.all(np.abs(new_beta - beta) <= tol * np.abs(beta))
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom = alpha[:, None] + beta[:, None] * sigma
    m2 = ((beta[:, None] * s * z / denom) ** 2).sum(1)
    res2 = ((alpha[:, None] * z / denom) ** 2).sum(1) + outside
    logdet = np.log(denom).sum(1) + (d - r) * np.log(alpha)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
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


def nleep(features, labels, source_probs=None, *, variance: float = 0.8,
          components_per_class: int = 5, covariance: str = "diag", fits: int = 3,
          seed: int = 0) -> float:
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
        gmm = GaussianMixture(n_components=k, covariance_type=covariance, reg_covar=1e-4,
                              random_state=seed + i)
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


def h_score(features, labels, source_probs=None, *, shrinkage: str | float = "ledoit_wolf"
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


def knn_accuracy(features, labels, source_probs=None, *, k: int = 5, folds: int = 5,
                 seed: int = 0) -> float:
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


def linear_probe_accuracy(features, labels, source_probs=None, *, c: float = 1.0,
                          folds: int = 5, seed: int = 0) -> float:
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


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("logme", logme, False, "LogME evidence per item (You et al. 2021)"),
    Score("leep", leep, True, "LEEP log-likelihood (Nguyen et al. 2020); needs the source head"),
    Score("nce", nce, True, "negative conditional entropy (Tran et al. 2019); needs the "
                            "source head"),
    Score("nleep", nleep, False, "N-LEEP: LEEP on a Gaussian mixture of the PCA-reduced "
                                 "features (Li et al. 2021); no source head needed"),
    Score("h_score", h_score, False, "shrinkage H-score (Bao et al. 2019; Ibrahim et al. 2023)"),
    Score("knn", knn_accuracy, False, "5-NN cosine accuracy, stratified 5-fold CV"),
    Score("linear", linear_probe_accuracy, False, "logistic-regression accuracy, stratified "
                                                  "5-fold CV"),
)}


# ================================================================================ rank()
# N-LEEP ranked as well as or better than LogME at every sample size of our benchmark
# (benchmarks/rank_transfer.py: Kendall tau 0.56 against 0.46 at 300 items, 7 candidates, 3
# targets) and, like LogME, applies to every candidate; LogME stays one flag away.
DEFAULT_SCORE = "nleep"


@dataclass(frozen=True)
class Candidate:
    """A backbone id and how many trailing stages to cut (``id@N`` in the CLI)."""

    backbone: str
    cut: int = 0

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        name, sep, cut = text.strip().rpartition("@")
        if sep and cut.isdigit():
            return cls(name, int(cut))
        return cls(text.strip(), 0)

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.cut}" if self.cut else self.backbone


@dataclass
class RankRow:
    candidate: Candidate
    scores: dict
    feature_dim: int | None = None
    params: int | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict:
        return {"backbone": self.candidate.backbone, "cut": self.candidate.cut,
                "label": self.candidate.label, "scores": self.scores,
                "feature_dim": self.feature_dim, "params": self.params,
                "seconds": round(self.seconds, 3), "error": self.error}


@dataclass
class RankResult:
    """Candidates best-first by ``score``; rows that failed to load come last."""

    rows: list[RankRow]
    score: str
    task: str
    n_items: int
    n_classes: int
    sampled: bool
    seconds: float

    @property
    def best(self) -> RankRow:
        ok = [r for r in self.rows if r.error is None]
        if not ok:
            raise ScoreError("no candidate could be scored: " +
                             "; ".join(f"{r.candidate.label}: {r.error}" for r in self.rows))
        return ok[0]

    def fit_params(self) -> dict:
        """``backbone`` and ``cut`` of the winner: ``ImageClassifier(**result.fit_params())``."""
        return {"backbone": self.best.candidate.backbone, "cut": self.best.candidate.cut}

    def to_dict(self) -> dict:
        return {"score": self.score, "task": self.task, "n_items": self.n_items,
                "n_classes": self.n_classes, "sampled": self.sampled,
                "seconds": round(self.seconds, 3), "best": self.fit_params() if any(
                    r.error is None for r in self.rows) else None,
                "rows": [r.to_dict() for r in self.rows]}

    def table(self) -> str:
        names = list(dict.fromkeys(k for r in self.rows for k in r.scores))
        head = ["#", "candidate", *names, "dim", "params", "seconds"]
        lines: list[list[str]] = []
        said: dict[str, int] = {}
        for i, r in enumerate(self.rows, 1):
            if r.error:  # each cut point of an unloadable model has its error: printed once
                first = said.setdefault(r.error, i)
                lines.append([str(i), r.candidate.label, f"error: {r.error}" if first == i
                              else f"error: as row {first}"])
                continue
            cells = [_fmt(r.scores.get(k)) for k in names]
            lines.append([str(i), r.candidate.label, *cells, str(r.feature_dim),
                          f"{r.params / 1e6:.2f}M" if r.params else "-", f"{r.seconds:.1f}"])
        widths = [max([len(head[j])] + [len(l[j]) for l in lines
                                         if len(l) == len(head) or j < 2])
                  for j in range(len(head))]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        for line in lines:
            if len(line) != len(head):
                out.append("  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                                      line[2]]))
            else:
                out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        return "\n".join(out)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}"


MIN_PER_CLASS = 5


def _sample(labels: np.ndarray, max_items: int, seed: int) -> np.ndarray:
    """A stratified sample of about ``max_items`` indices: each class in proportion, and
    at least ``MIN_PER_CLASS`` of each (all of a smaller class) so every score has data."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.maximum(np.minimum(counts, MIN_PER_CLASS),
                       np.floor(counts * max_items / len(labels))).astype(int)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
    return np.sort(np.concatenate(picked))


DEFAULT_MAX_ITEMS = 300
RANK_TASKS = CLASSIFY_TASKS  # single-label classes to score by


def _probe_parts(est, source, cfg, max_items: int):
    """(fit's training part, the parts a rank probes, whether they are a sample): a
    stratified sample of the training part when there are more than ``max_items`` items,
    else fit's own train/validation split (its feature cache keys match)."""
    from .data.images import DataError

    try:
        _, train_src, val_src = est.split(source, cfg=cfg)
    except DataError:  # too few items for fit's validation split: rank them all as one part
        train_src, val_src = source, None
    if len(source) > max_items:
        return train_src, [train_src.subset(_sample(np.asarray(train_src.labels), max_items,
                                                    cfg.seed))], True
    return train_src, [p for p in (train_src, val_src) if p is not None], False


def probed_items(est, source, cfg, max_items: int = DEFAULT_MAX_ITEMS):
    """The items ``rank`` probes on ``source``, as one source (what ``advise`` fits the
    classic baseline on)."""
    _, parts, sampled = _probe_parts(est, source, cfg, max_items)
    return parts[0] if sampled or len(parts) == 1 else source


def rank(data, models, y=None, *, task: str = "image", scores=None, score=None,
         max_items: int = DEFAULT_MAX_ITEMS, config=None, **settings) -> RankResult:
    """Score candidate backbones on labeled target data before any training.

    ``models``: ids (``packaged:efficientnet_lite0``, ``hf:...``, a run directory), with an
    optional ``@N`` to cut the last N stages, or :class:`Candidate` objects. For each one:
    one frozen forward pass over the data (a stratified sample of about ``max_items``: on
    three real targets the scores ranked as well from 200 items as from 1000, see
    benchmarks/rank_transfer.py),
    then every score of ``scores`` (default: all; LEEP and NCE only where the backbone has
    its source head): built-in names, and your own as named functions
    ``fn(features, labels, source_probs) -> float`` (higher is better; float64 features of
    the sample, labels 0..C-1) or :class:`Score` objects; ``score`` (a name, or the
    function or Score itself) is the one that orders the rows. ``settings`` are FitConfig
    fields that shape the features (image size, text truncation, ``feature_cache``,
    ``seed``, ``val_fraction``): with the same values and no sampling, a later
    ``feature_extract`` fit reuses the cached features.
    A candidate that cannot be loaded becomes a row with its error, not an exception.
    In a data-parallel job (``torchrun ... -m headstart rank``, or a process group the
    caller initialised) the processes share each forward pass; all get the same result."""
    import time

    from .features import sharded_passes
    from .tasks import ESTIMATORS
    from .zoo import create_backbone

    t_start = time.perf_counter()
    if task not in RANK_TASKS:
        raise ValueError(f"task={task!r}: rank scores classifier backbones, choose one of "
                         f"{', '.join(RANK_TASKS)}" + (" (detection and speech-recognition "
                                                       "backbones are not ranked yet)"
                                                       if task in ESTIMATORS else ""))
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1 (items ranked), got {max_items}")
    specs = _score_specs(scores)
    names = list(specs)
    if score is not None and not isinstance(score, str):  # the Score or function itself
        score = score.name if isinstance(score, Score) else getattr(score, "__name__", score)
    score = score or (DEFAULT_SCORE if DEFAULT_SCORE in names else names[0])
    if score not in names:
        raise ValueError(f"score={score!r} is not among the computed scores {names}")
    candidates = [m if isinstance(m, Candidate) else Candidate.parse(m) for m in models]
    if not candidates:
        raise ValueError("no candidate models given")
    est = ESTIMATORS[task](config=config, **settings)
    cfg = est.resolved_config()
    source = est.read_labeled(data, y, cfg=cfg)  # read once; split takes the source
    if source.labels.ndim != 1:
        raise ValueError("rank needs single-label data (one class per item); multi-label "
                         "rows cannot be ranked yet")
    train_src, parts, sampled = _probe_parts(est, source, cfg, max_items)
    labels = np.concatenate([np.asarray(p.labels) for p in parts])
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and
                          torch.cuda.is_available() else "cpu")
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:  # the cut points of one backbone share its forward pass
        groups.setdefault(cand.backbone, []).append(cand)
    rows = []
    for model_id, group in groups.items():
        t0 = time.perf_counter()
        try:
            torch.manual_seed(cfg.seed)  # a random-init candidate gets the weights fit starts from
            base = create_backbone(model_id, pretrained=True,
                                   cut=group[0].cut if len(group) == 1 else 0).to(device)
            preprocess = est.input_spec(base, train_src, cfg)
        except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the ranking
            log.warning("rank: %s could not be loaded: %s", model_id, exc)
            rows += [RankRow(c, {}, seconds=time.perf_counter() - t0,
                             error=f"{type(exc).__name__}: {exc}") for c in group]
            continue
        variants, errors = _variants(base, group, device, cfg.seed)
        rows += [RankRow(c, {}, error=e) for c, e in errors.items()]
        try:
            with sharded_passes():  # under torchrun: each process computes a share
                feats = {c: torch.cat(f) for c, f in
                         est.frozen_features(base, variants, preprocess, parts, cfg).items()}
        except Exception as exc:  # noqa: BLE001
            log.warning("rank: %s: the forward pass failed: %s", model_id, exc)
            rows += [RankRow(c, {}, error=f"{type(exc).__name__}: {exc}") for c in variants]
            continue
        seconds = (time.perf_counter() - t0) / max(1, len(variants))
        for cand, backbone in variants.items():
            t1 = time.perf_counter()
            values = _scores(specs, feats[cand], labels, backbone.source_head(), device)
            rows.append(RankRow(cand, values, feature_dim=int(feats[cand].shape[1]),
                                params=sum(p.numel() for p in backbone.parameters()),
                                seconds=seconds + time.perf_counter() - t1))
        del base, variants

    def order(row: RankRow):
        v = row.scores.get(score, float("nan"))
        return (row.error is not None, math.isnan(v), -v if not math.isnan(v) else 0.0)

    rows.sort(key=order)
    return RankResult(rows, score, task, n_items=len(labels),
                      n_classes=len(np.unique(labels)), sampled=sampled,
                      seconds=time.perf_counter() - t_start)


def _variants(base, group: list[Candidate], device, seed: int):
    """The backbone of each candidate of one model id: ``base`` itself, or copies of it
    cut as asked (no second load). Families without ``with_cut`` are built again."""
    from .zoo import create_backbone

    if len(group) == 1:
        return {group[0]: base}, {}
    variants, errors = {}, {}
    for cand in group:
        try:
            if cand.cut == 0:
                variants[cand] = base
            elif hasattr(base, "with_cut"):
                variants[cand] = base.with_cut(cand.cut).to(device)
            else:
                torch.manual_seed(seed)
                variants[cand] = create_backbone(cand.backbone, pretrained=True,
                                                 cut=cand.cut).to(device)
        except Exception as exc:  # noqa: BLE001 - e.g. a cut out of range
            log.warning("rank: %s could not be built: %s", cand.label, exc)
            errors[cand] = f"{type(exc).__name__}: {exc}"
    return variants, errors


def _score_specs(scores) -> dict[str, Score]:
    """name -> Score for ``rank(scores=...)``: built-in names, :class:`Score` objects and
    named functions ``fn(features, labels, source_probs) -> float``; default: every
    built-in score."""
    if not scores:
        return dict(SCORES)
    if isinstance(scores, str):
        scores = [scores]
    specs: dict[str, Score] = {}
    unknown = []
    for item in scores:
        if isinstance(item, Score):
            spec = item
        elif callable(item):
            name = getattr(item, "__name__", "")
            if not name.isidentifier():  # a lambda or a partial
                raise ValueError(f"the score function {item!r} needs a name for its column: "
                                 "define it with def, or pass Score('name', fn)")
            spec = Score(name, item, False, (item.__doc__ or "").strip().split("\n")[0])
        elif item in SCORES:
            spec = SCORES[item]
        else:
            unknown.append(str(item))
            continue
        if spec.name in specs:
            raise ValueError(f"two scores are named {spec.name!r}: give one another name")
        specs[spec.name] = spec
    if unknown:
        raise ValueError(f"unknown score(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SCORES)}, or pass a function or a Score")
    return specs


def _scores(specs: dict[str, Score], feats, labels: np.ndarray, head, device) -> dict:
    probs = None
    if head is not None and any(spec.needs_source for spec in specs.values()):
        with torch.inference_mode():
            probs = torch.softmax(head.to(device)(feats.to(device)).double(), 1).cpu().numpy()
    f = feats.double().numpy()
    values = {}
    for name, spec in specs.items():
        if spec.needs_source and probs is None:
            values[name] = float("nan")  # no source head: the score does not apply
        else:
            try:
                values[name] = float(spec.fn(f, labels, probs))
            except ScoreError as exc:  # e.g. a class too small for cross-validation
                log.warning("rank: %s not computed: %s", name, exc)
                values[name] = float("nan")
    return values
