"""Oracle, invariance, sanity and error tests for the transferability scores in
``headstart.select`` (logme, leep, nce, nleep, h_score, knn_accuracy,
linear_probe_accuracy).

Every score is compared with a deliberately plain reference implementation written here
from the papers' formulas (loops over classes / items, explicit d x d inverses and
determinants, no SVD shortcuts), on random features and on real features (the pixel
features of sklearn's digits data set). Nothing here is a value copied from the library.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from headstart import select
from headstart.select import (
    SCORES,
    ScoreError,
    h_score,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
    nleep,
)

RTOL = 1e-6


# ================================================================================ data
def clustered(n: int, d: int, n_classes: int, seed: int, sep: float = 1.0):
    """Balanced, shuffled labels 0..C-1 and features = sep * class mean + N(0, I) noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    means = rng.normal(size=(n_classes, d))
    return sep * means[y] + rng.normal(size=(n, d)), y


def pure_noise(n: int, d: int, n_classes: int, seed: int):
    """Features with no information about the (balanced, shuffled) labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    return rng.normal(size=(n, d)), y


def softmax_probs(n: int, z: int, seed: int, temperature: float = 1.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, z)) / temperature
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def dirichlet_probs(n: int, z: int, seed: int, concentration: float = 0.5):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(z, concentration), size=n)


@pytest.fixture(scope="module")
def digits():
    """Real features: the 64 pixel values of the first 300 handwritten digits (10 classes)."""
    x, y = load_digits(return_X_y=True)
    return x[:300].astype(np.float64), y[:300]


@pytest.fixture(scope="module")
def digits_source_probs():
    """A real 'source head': a logistic regression trained on the *other* digits for a
    different task (digit // 2, 5 source classes); its probabilities on the first 300."""
    x, y = load_digits(return_X_y=True)
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    head.fit(x[300:], y[300:] // 2)
    return head.predict_proba(x[:300])


# ========================================================================== references
def ref_logme(features, labels, tol: float = 1e-10, max_iter: int = 1000) -> float:
    """LogME (You et al. 2021) straight from the paper: per class, fixed-point iteration
    on (alpha, beta) with explicit d x d matrices, then the log evidence per item."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.linalg.eigvalsh(ftf)
    per_class = []
    for c in np.unique(labels):
        y = (np.asarray(labels) == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            a_mat = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.inv(a_mat) @ f.T @ y
            gamma = sum(beta * s / (alpha + beta * s) for s in sigma)
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            done = abs(new_alpha - alpha) < tol * abs(alpha) and abs(new_beta - beta) < tol * abs(
                beta
            )
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a_mat = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.inv(a_mat) @ f.T @ y
        sign, logdet = np.linalg.slogdet(a_mat)
        assert sign > 0
        evidence = (
            n / 2 * math.log(beta)
            + d / 2 * math.log(alpha)
            - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2)
            - alpha / 2 * (m @ m)
            - logdet / 2
        )
        per_class.append(evidence / n)
    return float(np.mean(per_class))


def ref_leep(theta, labels) -> float:
    """LEEP (Nguyen et al. 2020) with loops: joint P(y, z), P(y | z), mean log EEP."""
    theta = np.asarray(theta, dtype=np.float64)
    labels = np.asarray(labels)
    n, n_source = theta.shape
    classes = list(np.unique(labels))
    joint = np.zeros((len(classes), n_source))
    for i in range(n):
        joint[classes.index(labels[i])] += theta[i] / n
    p_z = joint.sum(0)
    total = 0.0
    for i in range(n):
        row = classes.index(labels[i])
        total += math.log(sum(joint[row, z] / p_z[z] * theta[i, z] for z in range(n_source)))
    return total / n


def ref_nce(theta, labels) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z) of the empirical joint of (label, top source class)."""
    labels = np.asarray(labels)
    n = len(labels)
    z = [int(np.argmax(row)) for row in np.asarray(theta)]
    joint = Counter(zip(labels.tolist(), z))
    p_z = Counter(z)
    return sum(
        count / n * math.log((count / n) / (p_z[zz] / n)) for (_, zz), count in joint.items()
    )


def ref_nleep(
    features, labels, variance=0.8, per_class=5, covariance="diag", fits=3, seed=0
) -> float:
    """N-LEEP (Li et al. 2021) the plain way: PCA from the eigendecomposition of the d x d
    covariance (components sorted by eigenvalue, counted until their share of the trace
    reaches ``variance``), scaled by the root of the trace, rounded to 9 decimals; sklearn's
    Gaussian mixture on that; LEEP of its posteriors by the loop reference, averaged over
    ``fits`` seeds."""
    from sklearn.mixture import GaussianMixture

    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0)
    cov = f.T @ f / len(f)
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    total, k, acc = float(np.trace(cov)), 0, 0.0
    while k < len(lam) and acc < variance * total:
        acc += lam[k]
        k += 1
    z = np.round(f @ vec[:, : max(k, 1)] / math.sqrt(total), 9)  # as the score defines
    n_comp = min(per_class * len(np.unique(labels)), len(f))
    values = []
    for i in range(fits):
        gmm = GaussianMixture(
            n_components=n_comp, covariance_type=covariance, reg_covar=1e-4, random_state=seed + i
        ).fit(z)
        values.append(ref_leep(gmm.predict_proba(z), labels))
    return sum(values) / len(values)


def _between(f_centred, labels):
    n, d = f_centred.shape
    between = np.zeros((d, d))
    for c in np.unique(labels):
        rows = f_centred[np.asarray(labels) == c]
        m_c = rows.mean(0)
        between += len(rows) / n * np.outer(m_c, m_c)
    return between


def ref_h_score(features, labels, shrinkage="ledoit_wolf") -> float:
    """Shrinkage H-score (Bao et al. 2019; Ibrahim et al. 2023)."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    f = f - f.mean(0)
    cov = f.T @ f / n
    if shrinkage == "ledoit_wolf":
        a = ledoit_wolf_shrinkage(f, assume_centered=True)
    else:
        a = shrinkage
    mu = np.trace(cov) / d
    shrunk = (1 - a) * cov + a * mu * np.eye(d)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - a) * _between(f, labels))))


def ref_h_score_original(features, labels) -> float:
    """The original H-score: tr(pinv(cov(f)) cov(E[f | y]))."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0)
    cov = f.T @ f / len(f)
    return float(np.trace(np.linalg.pinv(cov) @ _between(f, labels)))


def ref_knn(features, labels, k=5, folds=5, seed=0, tie_rule=None):
    """Cosine k-NN majority vote by stratified CV. Returns (mean fold accuracy, number of
    vote ties met). ``tie_rule="nearest"``: a tie goes to the tied class that owns the
    nearest neighbour; otherwise ties are only counted (the caller requires none)."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    n_splits = min(folds, min(Counter(labels.tolist()).values()))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    accs, ties = [], 0
    for train, test in cv.split(f, labels):
        correct = 0
        for i in test:
            sims = [(float(f[i] @ f[j]), j) for j in train]
            sims.sort(key=lambda t: -t[0])
            neighbours = [labels[j] for _, j in sims[:k]]
            votes = Counter(neighbours)
            top = max(votes.values())
            tied = [c for c, v in votes.items() if v == top]
            if len(tied) > 1:
                ties += 1
                winner = next(c for c in neighbours if c in tied)  # the nearest of them
            else:
                winner = tied[0]
            correct += winner == labels[i]
        accs.append(correct / len(test))
    return float(np.mean(accs)), ties


def ref_linear(features, labels, seed=0):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=cv).mean())


# ============================================================================= LogME
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logme_matches_reference_random_n_gt_d(seed):
    f, y = clustered(60, 10, 5, seed)
    assert logme(f, y) == pytest.approx(ref_logme(f, y), rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_logme_matches_reference_random_d_gt_n_uninformative(seed):
    f, y = pure_noise(40, 100, 5, seed)
    assert logme(f, y) == pytest.approx(ref_logme(f, y), rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_logme_matches_reference_random_d_gt_n_informative(seed):
    # d > n: every label column lies in the span of the features, and for most classes
    # the evidence is maximised as beta -> infinity (noise-free fit).
    f, y = clustered(40, 100, 5, seed)
    assert logme(f, y) == pytest.approx(ref_logme(f, y), rel=RTOL)


def test_logme_finite_when_there_are_more_dims_than_items():
    # The documented use case: fewer items than feature dimensions.
    f, y = clustered(40, 100, 5, seed=0)
    assert np.isfinite(logme(f, y))


@pytest.mark.parametrize("n", [300, 40])  # 40 items: fewer items than the 64 dims
def test_logme_matches_reference_digits(digits, n):
    f, y = digits[0][:n], digits[1][:n]
    assert logme(f, y) == pytest.approx(ref_logme(f, y), rel=RTOL)


def test_logme_all_zero_features_is_the_noise_only_model():
    n = 30
    y = np.arange(n) % 3
    got = logme(np.zeros((n, 8)), y)
    assert isinstance(got, float) and math.isfinite(got)
    # With F = 0 the evidence is that of y ~ N(0, 1/beta I), maximised over beta
    # (beta = n / |y|^2); the alpha terms cancel for any alpha.
    expected = []
    for c in range(3):
        t = (y == c).astype(float)
        beta = n / (t @ t)
        expected.append(
            (n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi) - beta / 2 * (t @ t)) / n
        )
    assert got == pytest.approx(np.mean(expected), rel=RTOL)


def test_logme_speed_one_decomposition_for_all_classes():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 1280))
    y = np.arange(2000) % 10
    start = time.perf_counter()
    np.linalg.svd(f, full_matrices=False)  # the reference: ONE decomposition of f
    reference = time.perf_counter() - start
    start = time.perf_counter()
    got = logme(f, y)
    elapsed = time.perf_counter() - start
    assert math.isfinite(got)
    # a ratio, not seconds: the machine may be busy; ten decompositions would be ~10x
    assert elapsed < 4 * reference + 0.5, (
        f"logme took {elapsed:.2f} s on 2000 x 1280, 10 classes; one SVD takes {reference:.2f} s"
    )


# ======================================================================== LEEP / NCE
SOURCE_CASES = [
    ("softmax", 0, 8),
    ("softmax", 1, 3),
    ("dirichlet", 2, 8),
    ("dirichlet", 3, 12),
]


def _source(kind, seed, z, n=60):
    return softmax_probs(n, z, seed) if kind == "softmax" else dirichlet_probs(n, z, seed)


@pytest.mark.parametrize("kind,seed,z", SOURCE_CASES)
def test_leep_matches_reference_random(kind, seed, z):
    f, y = clustered(60, 10, 5, seed)
    theta = _source(kind, seed, z)
    assert leep(f, y, theta) == pytest.approx(ref_leep(theta, y), rel=RTOL)


@pytest.mark.parametrize("fn,ref", [(leep, ref_leep), (nce, ref_nce)])
def test_source_scores_accept_no_features(fn, ref):
    f, y = clustered(60, 10, 5, seed=0)
    theta = dirichlet_probs(60, 8, seed=0)
    assert fn(None, y, theta) == pytest.approx(ref(theta, y), rel=RTOL)
    assert fn(None, y, theta) == fn(f, y, theta)


def test_leep_matches_reference_digits(digits, digits_source_probs):
    f, y = digits
    assert leep(f, y, digits_source_probs) == pytest.approx(
        ref_leep(digits_source_probs, y), rel=RTOL
    )


@pytest.mark.parametrize("kind,seed,z", SOURCE_CASES)
def test_nce_matches_reference_random(kind, seed, z):
    f, y = clustered(60, 10, 5, seed)
    theta = _source(kind, seed, z)
    assert nce(f, y, theta) == pytest.approx(ref_nce(theta, y), rel=RTOL)


def test_nce_matches_reference_digits(digits, digits_source_probs):
    f, y = digits
    assert nce(f, y, digits_source_probs) == pytest.approx(
        ref_nce(digits_source_probs, y), rel=RTOL
    )


# ============================================================================ N-LEEP
@pytest.mark.parametrize(
    "n,d,seed,covariance",
    [(60, 10, 0, "diag"), (90, 30, 1, "diag"), (40, 100, 2, "diag"), (60, 10, 3, "full")],
)
def test_nleep_matches_reference_random(n, d, seed, covariance):
    f, y = clustered(n, d, 3, seed, sep=0.8)
    assert nleep(f, y, covariance=covariance) == pytest.approx(
        ref_nleep(f, y, covariance=covariance), rel=RTOL
    )


@pytest.mark.parametrize("variance", [0.5, 0.8, 0.95])
def test_nleep_matches_reference_digits(digits, variance):
    f, y = digits
    assert nleep(f, y, variance=variance) == pytest.approx(
        ref_nleep(f, y, variance=variance), rel=RTOL
    )


def test_nleep_is_a_log_likelihood_near_zero_for_separated_classes():
    f, y = clustered(100, 10, 5, seed=0, sep=8.0)
    good = nleep(f, y)
    assert -0.05 < good <= 0.0
    noise, yn = pure_noise(100, 10, 5, seed=0)
    assert nleep(noise, yn) < math.log(0.5)  # near log(1/5): mixture components say nothing


def test_nleep_needs_no_source_head_and_constant_features_score_the_label_prior():
    y = np.array([0, 0, 0, 1])
    got = nleep(np.ones((4, 3)), y)
    assert got == pytest.approx(0.75 * math.log(0.75) + 0.25 * math.log(0.25), rel=1e-9)
    with pytest.raises(ScoreError, match="variance"):
        nleep(np.ones((4, 3)), y, variance=0.0)


# =========================================================================== H-score
@pytest.mark.parametrize("n,d,seed", [(60, 10, 0), (60, 10, 1), (40, 100, 2), (40, 100, 3)])
def test_h_score_ledoit_wolf_matches_reference_random(n, d, seed):
    f, y = clustered(n, d, 5, seed)
    assert h_score(f, y) == pytest.approx(ref_h_score(f, y), rel=RTOL)


def test_h_score_ledoit_wolf_matches_reference_digits(digits):
    f, y = digits
    assert h_score(f, y) == pytest.approx(ref_h_score(f, y), rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_h_score_without_shrinkage_is_the_original_h_score(seed):
    f, y = clustered(200, 10, 5, seed)
    assert h_score(f, y, shrinkage=0.0) == pytest.approx(ref_h_score_original(f, y), rel=RTOL)


def test_h_score_without_shrinkage_is_the_original_h_score_digits(digits):
    f, y = digits
    f = f[:, f.std(0) > 0]  # drop the always-blank pixels: a non-singular covariance
    assert h_score(f, y, shrinkage=0.0) == pytest.approx(ref_h_score_original(f, y), rel=RTOL)


@pytest.mark.parametrize("n,d,seed", [(60, 10, 0), (40, 100, 1)])
def test_h_score_fixed_shrinkage_matches_reference(n, d, seed):
    f, y = clustered(n, d, 5, seed)
    assert h_score(f, y, shrinkage=0.3) == pytest.approx(ref_h_score(f, y, 0.3), rel=RTOL)


def test_h_score_fixed_shrinkage_matches_reference_digits(digits):
    f, y = digits
    assert h_score(f, y, shrinkage=0.3) == pytest.approx(ref_h_score(f, y, 0.3), rel=RTOL)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_h_score_rejects_shrinkage_outside_unit_interval(bad):
    f, y = clustered(60, 10, 5, 0)
    with pytest.raises(ScoreError):
        h_score(f, y, shrinkage=bad)


# =============================================================================== kNN
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_reference_two_classes(k, seed):
    # two classes and an odd k: a vote can never tie
    f, y = clustered(60, 10, 2, seed, sep=0.5)
    expected, ties = ref_knn(f, y, k=k)
    assert ties == 0
    assert knn_accuracy(f, y, k=k) == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_reference_one_neighbour_five_classes(seed):
    f, y = clustered(60, 10, 5, seed, sep=0.7)
    expected, ties = ref_knn(f, y, k=1)
    assert ties == 0
    assert knn_accuracy(f, y, k=1) == expected


def test_knn_matches_reference_digits(digits):
    f, y = digits
    expected, ties = ref_knn(f, y, k=1)
    assert ties == 0
    assert knn_accuracy(f, y, k=1) == expected
    pair = np.isin(y, (3, 8))  # a two-class task: the default k=5 cannot tie
    expected, ties = ref_knn(f[pair], y[pair], k=5)
    assert ties == 0
    assert knn_accuracy(f[pair], y[pair]) == expected


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_sklearn_cosine_classifier(k, seed):
    f, y = clustered(60, 10, 2, seed, sep=0.5)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    expected = cross_val_score(
        KNeighborsClassifier(n_neighbors=k, metric="cosine"), f, y, cv=cv
    ).mean()
    assert knn_accuracy(f, y, k=k) == expected


def test_knn_vote_ties_go_to_the_nearer_neighbour():
    # The docstring: "ties go to the nearer neighbour". Five classes and k=5 give ties.
    f, y = clustered(60, 10, 5, seed=1, sep=0.7)
    expected, ties = ref_knn(f, y, k=5, tie_rule="nearest")
    assert ties > 0  # the case under test does occur
    assert knn_accuracy(f, y, k=5) == expected


# ====================================================================== linear probe
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_probe_matches_reference_random(seed):
    f, y = clustered(60, 10, 5, seed, sep=0.7)
    assert linear_probe_accuracy(f, y) == ref_linear(f, y)


def test_linear_probe_matches_reference_digits(digits):
    f, y = digits
    assert linear_probe_accuracy(f, y) == ref_linear(f, y)


# ======================================================================== invariances
FEATURE_SCORES = ["logme", "nleep", "h_score", "knn", "linear"]
SOURCE_SCORES = ["leep", "nce"]
EXACT = {"knn", "linear"}  # accuracies: identical predictions give identical numbers


def _call(name, f, y, theta):
    spec = SCORES[name]
    return spec.fn(f, y, theta) if spec.needs_source else spec.fn(f, y)


def _relabelled(y, how, seed):
    classes = np.unique(y)
    perm = np.random.default_rng(seed).permutation(len(classes))
    if how == "permuted":
        return perm[np.searchsorted(classes, y)]
    names = np.array(
        ["zebra", "apple", "mango", "kiwi", "banana", "fig", "lime", "pear", "plum", "date"]
    )
    return names[perm[np.searchsorted(classes, y)]]


@pytest.mark.parametrize("how", ["permuted", "strings"])
@pytest.mark.parametrize("name", FEATURE_SCORES + SOURCE_SCORES)
def test_scores_invariant_to_relabelling_classes(name, how):
    f, y = clustered(60, 10, 5, seed=1, sep=0.7)
    theta = dirichlet_probs(60, 8, seed=4)
    y2 = _relabelled(y, how, seed=7)
    assert not np.array_equal(np.unique(y2, return_inverse=True)[1], y)  # really relabelled
    got, want = _call(name, f, y2, theta), _call(name, f, y, theta)
    if name in EXACT:
        assert got == want
    else:
        assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("name", FEATURE_SCORES + SOURCE_SCORES)
def test_scores_invariant_to_relabelling_classes_digits(name, digits, digits_source_probs):
    f, y = digits
    y2 = _relabelled(y, "strings", seed=3)
    got = _call(name, f, y2, digits_source_probs)
    want = _call(name, f, y, digits_source_probs)
    if name in EXACT:
        assert got == want
    else:
        assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("scale", [7.5, 0.01])
@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_scores_invariant_to_feature_scale(name, scale, digits):
    rtol = {"logme": RTOL, "nleep": RTOL, "h_score": 1e-9}.get(name)
    for f, y in (clustered(60, 10, 5, seed=0, sep=0.7), digits):
        got, want = _call(name, f * scale, y, None), _call(name, f, y, None)
        if rtol is None:
            assert got == want
        else:
            assert got == pytest.approx(want, rel=rtol)


@pytest.mark.parametrize("name", SOURCE_SCORES)
def test_source_scores_invariant_to_permuting_source_classes(name, digits, digits_source_probs):
    cases = [
        (clustered(60, 10, 5, seed=s)[0], clustered(60, 10, 5, seed=s)[1], _source(kind, s, z))
        for kind, s, z in SOURCE_CASES
    ]
    cases.append((*digits, digits_source_probs))
    for f, y, theta in cases:
        cols = np.random.default_rng(11).permutation(theta.shape[1])
        assert _call(name, f, y, theta[:, cols]) == pytest.approx(
            _call(name, f, y, theta), rel=1e-9
        )


# ================================================================ sanity / usefulness
@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_separated_clusters_beat_shuffled_labels(name):
    f, y = clustered(100, 10, 5, seed=0, sep=3.0)
    shuffled = np.random.default_rng(1).permutation(y)
    good, bad = _call(name, f, y, None), _call(name, f, shuffled, None)
    assert math.isfinite(good) and math.isfinite(bad)
    assert good > bad


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_real_labels_beat_shuffled_labels_digits(name, digits):
    f, y = digits
    shuffled = np.random.default_rng(2).permutation(y)
    assert _call(name, f, y, None) > _call(name, f, shuffled, None)


def _perfect_source(y, n_source=8, seed=0):
    """One-hot source predictions that are an injective function of the label."""
    mapping = np.random.default_rng(seed).permutation(n_source)
    return np.eye(n_source)[mapping[y]]


@pytest.mark.parametrize("name", SOURCE_SCORES)
def test_label_determined_source_beats_random_source(name):
    f, y = clustered(60, 10, 5, seed=0)
    good = _call(name, f, y, _perfect_source(y))
    for kind, seed, z in SOURCE_CASES:
        assert good > _call(name, f, y, _source(kind, seed, z))


def test_perfect_source_mapping_has_maximal_nce_and_leep():
    f, y = clustered(60, 10, 5, seed=0)
    theta = _perfect_source(y)
    assert nce(f, y, theta) == pytest.approx(0.0, abs=1e-12)
    assert leep(f, y, theta) == pytest.approx(0.0, abs=1e-12)
    # and both are log-probabilities, never positive, for any source head
    for kind, seed, z in SOURCE_CASES:
        assert nce(f, y, _source(kind, seed, z)) <= 0.0
        assert leep(f, y, _source(kind, seed, z)) <= 0.0


def test_registry_lists_the_seven_scores():
    assert set(SCORES) == {"logme", "leep", "nce", "nleep", "h_score", "knn", "linear"}
    assert {n for n, s in SCORES.items() if s.needs_source} == {"leep", "nce"}
    assert SCORES["logme"].fn is select.logme and SCORES["knn"].fn is select.knn_accuracy


# ============================================================================ errors
ALL_SCORES = FEATURE_SCORES + SOURCE_SCORES


def test_score_error_is_a_value_error():
    assert issubclass(ScoreError, ValueError)


def _bad_inputs():
    f, y = clustered(30, 4, 3, seed=0)
    theta = dirichlet_probs(30, 6, seed=0)
    nan_f = f.copy()
    nan_f[3, 2] = np.nan
    inf_f = f.copy()
    inf_f[0, 0] = np.inf
    return {
        "1-D features": (f[:, 0], y, theta),
        "3-D features": (f[:, :, None], y, theta),
        "label length mismatch": (f, y[:-1], theta),
        "NaN features": (nan_f, y, theta),
        "infinite features": (inf_f, y, theta),
        "multi-hot labels": (f, np.eye(3)[y], theta),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("name", ALL_SCORES)
def test_bad_inputs_raise_score_error(name, case):
    f, y, theta = _bad_inputs()[case]
    with pytest.raises(ScoreError):
        _call(name, f, y, theta)


@pytest.mark.parametrize("fn", [leep, nce])
def test_source_scores_need_source_probs_with_one_row_per_item(fn):
    f, y = clustered(30, 4, 3, seed=0)
    theta = dirichlet_probs(30, 6, seed=0)
    with pytest.raises(ScoreError, match="source_probs"):
        fn(f, y, source_probs=None)
    with pytest.raises(ScoreError, match="source_probs"):
        fn(f, y, theta[:-1])
    with pytest.raises(ScoreError, match="source_probs"):
        fn(f, y, theta[:, 0])


@pytest.mark.parametrize("fn", [knn_accuracy, linear_probe_accuracy])
def test_cross_validated_scores_need_two_items_per_class(fn):
    f, y = clustered(30, 4, 3, seed=0)
    y = y.copy()
    y[0] = 99  # a class of one item
    with pytest.raises(ScoreError):
        fn(f, y)
