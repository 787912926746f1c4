"""Classic baselines for images and audio: the strongest simple model on the same split.

A featurizer turns one item into a fixed vector (images: small standardised pixels, or HOG
on them; audio: statistics of the log-mel spectrogram and its MFCCs); a grid of scikit-learn
models (logistic regression, k-nearest neighbours, an RBF SVM) is scored by stratified
cross-validation on the training part only, and the best one is fitted on all of it.

Saved without pickle: the fitted model *is* its training vectors, labels and the chosen
settings (safetensors + JSON), refitted on load; every model here is deterministic, so the
loaded one predicts exactly what the saved one did (a test holds that).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PIXEL_SIDE_MAX = 32  # images are shrunk to at most 32 x 32 px: 3,072 values in colour
HOG_SIDE_MIN = 16  # HOG needs a few 4-px cells per side
CV_ITEMS_MAX = 3_000  # cross-validation reads at most this many training items (stratified)
FIT_ITEMS_MAX = 10_000  # an SVM fit grows with n^2, and a run saves these vectors: at most this
FOLDS = 5


# ---------------------------------------------------------------------- featurizers
@dataclass(frozen=True)
class PixelFeatures:
    """An image -> its pixels at ``side`` x ``side`` (grey, or RGB when ``colour``), 0-1,
    then with ``hog``, the HOG descriptor of the grey image instead (9 orientations, 4-px
    cells, 2x2 blocks)."""

    side: int
    colour: bool
    hog: bool = False

    kind = "pixels"

    def __call__(self, image) -> np.ndarray:
        from PIL import Image

        img = image.resize(
            (self.side, self.side),
            Image.Resampling.BOX if min(image.size) >= self.side else Image.Resampling.BILINEAR,
        )
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if self.hog:
            from skimage.feature import hog

            grey = arr.mean(axis=2)
            return hog(
                grey,
                orientations=9,
                pixels_per_cell=(4, 4),
                cells_per_block=(2, 2),
                feature_vector=True,
            ).astype(np.float32)
        return (arr if self.colour else arr.mean(axis=2)).reshape(-1)

    def describe(self) -> str:
        what = "HOG of the" if self.hog else "raw"
        colour = "RGB" if self.colour and not self.hog else "grey"
        return f"{what} {self.side}x{self.side} {colour} pixels"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class AudioFeatures:
    """A waveform at ``rate`` Hz -> mean and standard deviation over time of its log-mel
    spectrogram (40 bands, 25 ms windows every 10 ms), of their deltas and of its first 13
    MFCCs: 186 numbers."""

    rate: int
    n_mels: int = 40
    n_mfcc: int = 13

    kind = "audio"

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        import torch
        from scipy.fft import dct

        front = _log_mel(self.rate, self.n_mels)
        n_fft = int(0.025 * self.rate)
        wave = np.asarray(wave, dtype=np.float32)
        if len(wave) < n_fft:  # a clip shorter than one window: pad it to one
            wave = np.pad(wave, (0, n_fft - len(wave)))
        with torch.no_grad():
            mel = front(torch.from_numpy(wave)[None])[0].numpy().astype(np.float64)
        delta = np.diff(mel, axis=1) if mel.shape[1] > 1 else np.zeros_like(mel)
        mfcc = dct(mel, type=2, axis=0, norm="ortho")[: self.n_mfcc]
        parts = [m for x in (mel, delta, mfcc) for m in (x.mean(1), x.std(1))]
        return np.concatenate(parts).astype(np.float32)

    def describe(self) -> str:
        return f"log-mel ({self.n_mels} bands) + delta + {self.n_mfcc} MFCC statistics"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


_FRONTS: dict = {}


def _log_mel(rate: int, n_mels: int):
    """One log-mel front end per (rate, bands), built once (its filter bank costs ~10 ms)."""
    if (rate, n_mels) not in _FRONTS:
        from ..zoo.audio import LogMel

        _FRONTS[(rate, n_mels)] = LogMel(
            rate=rate, n_fft=int(0.025 * rate), hop=int(0.010 * rate), n_mels=n_mels
        ).eval()
    return _FRONTS[(rate, n_mels)]


def featurizer_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("kind")
    return {"pixels": PixelFeatures, "audio": AudioFeatures}[kind](**d)


def image_featurizers(side: float, colour: bool) -> list[PixelFeatures]:
    """The feature sets a baseline of images of median shorter ``side`` tries: raw pixels,
    and HOG where the images are big enough for it."""
    s = int(max(4, min(PIXEL_SIDE_MAX, round(side) or PIXEL_SIDE_MAX)))
    out = [PixelFeatures(s, colour)]
    if s >= HOG_SIDE_MIN:
        out.append(PixelFeatures(s, colour, hog=True))
    return out


# ---------------------------------------------------------------------- models
MODELS: dict[str, list[dict]] = {
    "logreg": [{"C": c} for c in (0.01, 0.1, 1.0)],
    "knn": [{"k": k} for k in (1, 3, 5)],
    "svm": [{"C": c} for c in (1.0, 10.0)],
}
NAMES = {"logreg": "logistic regression", "knn": "k-nearest neighbours", "svm": "RBF SVM"}


def make_model(model: str, params: dict, balanced: bool, seed: int):
    """A scikit-learn pipeline: standardise, then the model (k-NN reads the raw vectors:
    standardising pixels inflates the noise of near-constant border pixels)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    weight = "balanced" if balanced else None
    if model == "logreg":
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=params["C"], max_iter=1000, class_weight=weight, random_state=seed
            ),
        )
    if model == "knn":
        return KNeighborsClassifier(n_neighbors=params["k"], weights="distance")
    if model == "svm":
        return make_pipeline(
            StandardScaler(),
            SVC(C=params["C"], gamma="scale", class_weight=weight, decision_function_shape="ovr"),
        )
    raise ValueError(f"unknown baseline model {model!r}; choose from {', '.join(MODELS)}")


def _proba(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities of a fitted pipeline, columns in class-index order. The SVM's
    are a softmax of its one-vs-rest decision values (ranked as its votes are; not
    calibrated)."""
    clf = model[-1] if hasattr(model, "steps") else model
    classes = np.asarray(clf.classes_, dtype=np.int64)
    if hasattr(clf, "predict_proba") and not hasattr(clf, "dual_coef_"):
        p = model.predict_proba(X)
    else:
        d = np.asarray(model.decision_function(X), dtype=np.float64)
        if d.ndim == 1:  # binary: one value, positive for the second class
            d = np.stack([-d, d], axis=1) / 2
        e = np.exp(d - d.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    out = np.zeros((len(X), n_classes))
    out[:, classes] = p
    return out


def _cap(labels: np.ndarray, most: int, seed: int) -> np.ndarray:
    """Indices of a stratified sample of at most ``most`` items (all of them if fewer)."""
    if len(labels) <= most:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=most, random_state=seed, stratify=labels
    )
    return np.sort(keep)


def score_predictions(y: np.ndarray, pred: np.ndarray, metric: str) -> float:
    """Accuracy, or macro-F1 with ``metric="macro_f1"``, of predicted class indices."""
    from sklearn.metrics import accuracy_score, f1_score

    if metric == "macro_f1":
        return float(f1_score(y, pred, average="macro", zero_division=0))
    return float(accuracy_score(y, pred))


class ClassicBaseline:
    """The best of :data:`MODELS` on the best of ``featurizers``, by cross-validation.

    ``fit(vectors_by_featurizer, labels)`` takes one matrix per featurizer (rows: items);
    ``predict_proba(vectors)`` the chosen featurizer's rows. ``metric``: what the
    cross-validation ranks by (accuracy, or macro_f1 on imbalanced classes)."""

    def __init__(
        self, featurizers: list, seed: int = 0, balanced: bool = False, metric: str = "accuracy"
    ):
        self.featurizers = list(featurizers)
        self.seed, self.balanced, self.metric = seed, balanced, metric

    # -------------------------------------------------------------- fitting
    def fit(
        self,
        vectors: list[np.ndarray],
        labels: np.ndarray,
        n_classes: int | None = None,
        groups=None,
    ) -> ClassicBaseline:
        """``groups``: a patient / study id per item; the cross-validation folds then keep
        each group on one side."""
        from ..data.splits import stratified_folds

        t0 = time.perf_counter()
        y = np.asarray(labels, dtype=np.int64)
        if y.ndim != 1:
            raise ValueError("a classic baseline is for one label per item (not multi-label)")
        self.n_classes_ = int(n_classes or y.max() + 1)
        counts = np.bincount(y)
        folds = int(min(FOLDS, counts[counts > 0].min()))
        rows = []
        if folds >= 2 and len(np.unique(y)) >= 2:
            cv_idx = _cap(y, CV_ITEMS_MAX, self.seed)
            yc = y[cv_idx]
            split = stratified_folds(
                yc, folds, self.seed, None if groups is None else np.asarray(groups)[cv_idx]
            )
            smallest = min(len(tr) for tr, _ in split)  # k-NN needs k training items
            for f, X in zip(self.featurizers, vectors):
                Xc = np.asarray(X, dtype=np.float32)[cv_idx]
                for model, grid in MODELS.items():
                    for params in grid:
                        if model == "knn" and params["k"] > smallest:
                            continue
                        scores = []
                        for tr, te in split:
                            m = make_model(model, params, self.balanced, self.seed)
                            m.fit(Xc[tr], yc[tr])
                            scores.append(score_predictions(yc[te], m.predict(Xc[te]), self.metric))
                        rows.append(
                            {
                                "features": f.describe(),
                                "feature_index": self.featurizers.index(f),
                                "model": model,
                                "params": params,
                                "cv": float(np.mean(scores)),
                                "cv_std": float(np.std(scores)),
                            }
                        )
            # ties go to the simpler model: the grid's order (logreg, k-NN, SVM; pixels first)
            best = max(rows, key=lambda r: r["cv"])
            self.cv_folds_ = folds
        else:  # one item in some class: no cross-validation; the nearest neighbour
            best = {
                "features": self.featurizers[0].describe(),
                "feature_index": 0,
                "model": "knn",
                "params": {"k": 1},
                "cv": None,
                "cv_std": None,
            }
            self.cv_folds_ = 0
        self.cv_ = rows
        self.choice_ = best
        self.featurizer_ = self.featurizers[best["feature_index"]]
        X = np.asarray(vectors[best["feature_index"]], dtype=np.float32)
        keep = _cap(y, FIT_ITEMS_MAX, self.seed)
        self.X_, self.y_ = X[keep], y[keep]
        self._refit()
        self.fit_seconds_ = time.perf_counter() - t0
        log.info(
            "classic baseline: %s (CV %s over %d candidates, %d folds) in %.1fs",
            self.name,
            "n/a" if best["cv"] is None else f"{best['cv']:.4f}",
            len(rows),
            folds,
            self.fit_seconds_,
        )
        return self

    def _refit(self) -> None:
        c = self.choice_
        self.model_ = make_model(c["model"], c["params"], self.balanced, self.seed)
        self.model_.fit(self.X_, self.y_)

    @property
    def name(self) -> str:
        c = self.choice_
        params = ", ".join(f"{k}={v:g}" for k, v in c["params"].items())
        bal = ", class-balanced" if self.balanced and c["model"] != "knn" else ""
        return f"{NAMES[c['model']]} ({params}{bal}) on {c['features']}"

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        X = np.asarray(vectors, dtype=np.float32)
        if len(X) == 0:
            return np.zeros((0, self.n_classes_))
        return _proba(self.model_, X, self.n_classes_)

    def summary(self) -> dict:
        """What was chosen and the cross-validation table behind it (for the run's
        metrics)."""
        return {
            "name": self.name,
            "choice": self.choice_,
            "folds": self.cv_folds_,
            "candidates": self.cv_,
            "n_train": int(len(self.y_)),
            "fit_seconds": getattr(self, "fit_seconds_", None),
        }

    # -------------------------------------------------------------- persistence
    def save(self, folder) -> None:
        """The training vectors and labels (safetensors) + the choice (JSON)."""
        import torch

        from ..artifacts import atomic_save_tensors, atomic_write_json

        folder = Path(folder)
        atomic_save_tensors(
            folder / "classic.safetensors",
            {
                "vectors": torch.from_numpy(np.ascontiguousarray(self.X_)),
                "labels": torch.from_numpy(np.ascontiguousarray(self.y_)),
            },
        )
        atomic_write_json(
            folder / "classic.json",
            {
                "format": "headstart-classic-baseline",
                "n_classes": self.n_classes_,
                "featurizer": self.featurizer_.to_dict(),
                "choice": self.choice_,
                "seed": self.seed,
                "balanced": self.balanced,
                "metric": self.metric,
                "folds": self.cv_folds_,
                "candidates": self.cv_,
            },
        )

    @classmethod
    def load(cls, folder) -> ClassicBaseline:
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta = json.loads((folder / "classic.json").read_text())
        tensors = load_file(str(folder / "classic.safetensors"))
        featurizer = featurizer_from_dict(meta["featurizer"])
        self = cls(
            [featurizer],
            seed=meta["seed"],
            balanced=meta["balanced"],
            metric=meta.get("metric", "accuracy"),
        )
        self.n_classes_, self.choice_ = meta["n_classes"], {**meta["choice"], "feature_index": 0}
        self.featurizer_, self.cv_, self.cv_folds_ = featurizer, meta["candidates"], meta["folds"]
        self.X_, self.y_ = tensors["vectors"], tensors["labels"]
        self._refit()
        return self
