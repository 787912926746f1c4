"""TF-IDF + logistic regression for text, fitted on exactly the split the transfer model
saw."""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


class TfidfBaseline:
    """Word 1-2-gram TF-IDF (sublinear tf) + L2 logistic regression (one-vs-rest for
    multi-label). ``fit(texts, labels)`` / ``predict_proba(texts)``; labels as in
    :class:`~headstart.data.text.TextSource` (indices, or 0/1 rows).

    With ``features`` (one dense row per text, e.g. an encoder's), the logistic regression
    sees ``[tfidf(text), feature_weight * features / |features|]`` side by side: one model
    that weighs words and encoder features jointly (early fusion); ``predict_proba`` then
    needs the same kind of features for its texts."""

    def __init__(
        self,
        C: float = 10.0,
        max_features: int = 200_000,
        seed: int = 0,
        feature_weight: float = 0.5,
        class_weight: str | None = None,
    ):
        self.C, self.max_features, self.seed = C, max_features, seed
        self.feature_weight = feature_weight
        self.class_weight = class_weight  # "balanced": n / (classes * count), as sklearn's
        self.n_features_ = 0  # dense features beside the TF-IDF vector

    def fit(
        self, texts: list[str], labels: np.ndarray, features: np.ndarray | None = None
    ) -> TfidfBaseline:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        t0 = time.perf_counter()
        logreg = LogisticRegression(
            C=self.C, max_iter=2000, random_state=self.seed, class_weight=self.class_weight
        )
        labels = np.asarray(labels)
        self.multi_label_ = labels.ndim == 2
        self.vectorizer_ = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, 2),
            min_df=1,
            max_features=self.max_features,
            strip_accents="unicode",
            dtype=np.float32,
        )
        self.clf_ = OneVsRestClassifier(logreg) if self.multi_label_ else logreg
        self.n_features_ = 0 if features is None else int(np.asarray(features).shape[1])
        words = self.vectorizer_.fit_transform(texts)
        self.clf_.fit(self._design(words, features, len(texts)), labels)
        self.n_classes_ = labels.shape[1] if self.multi_label_ else int(labels.max()) + 1
        self.coef_, self.intercept_, self.classes_ = self._weights()
        self.fit_seconds_ = time.perf_counter() - t0
        log.info(
            "TF-IDF %s: %d texts, %d words%s, fitted in %.1fs",
            "+ features" if self.n_features_ else "baseline",
            len(texts),
            len(self.vectorizer_.vocabulary_),
            f" + {self.n_features_} features" if self.n_features_ else "",
            self.fit_seconds_,
        )
        return self

    @property
    def name(self) -> str:
        return "TF-IDF (word 1-2-grams) + logistic regression" + (
            " (class-balanced)" if self.class_weight == "balanced" else ""
        )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "choice": {"model": "logreg", "params": {"C": self.C}},
            "fit_seconds": getattr(self, "fit_seconds_", None),
        }

    def _design(self, words, features, n: int):
        """The logistic regression's input: TF-IDF rows, then the scaled unit features."""
        if not self.n_features_:
            if features is not None:
                raise ValueError("this model was fitted on TF-IDF alone: pass no features")
            return words
        import scipy.sparse as sp

        if features is None:
            raise ValueError(
                f"this model also weighs {self.n_features_} encoder features "
                "per text: pass them (features=...)"
            )
        feats = np.asarray(features, dtype=np.float64)
        if feats.shape != (n, self.n_features_):
            raise ValueError(
                f"features of shape {feats.shape}: expected ({n}, "
                f"{self.n_features_}), one row per text"
            )
        norm = np.linalg.norm(feats, axis=1, keepdims=True)
        feats = self.feature_weight * feats / np.maximum(norm, 1e-12)
        return sp.hstack([words, sp.csr_matrix(feats)], format="csr")

    def predict_proba(self, texts: list[str], features: np.ndarray | None = None) -> np.ndarray:
        design = self._design(self.vectorizer_.transform(texts), features, len(texts))
        scores = np.asarray(design @ self.coef_.T) + self.intercept_
        if self.multi_label_:
            return 1.0 / (1.0 + np.exp(-scores))
        if scores.shape[1] == 1:  # binary logistic regression: one score for the 2nd class
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            proba = np.stack([1 - p, p], axis=1)
        else:
            e = np.exp(scores - scores.max(1, keepdims=True))
            proba = e / e.sum(1, keepdims=True)
        out = np.zeros((len(texts), self.n_classes_))
        out[:, self.classes_] = proba  # classes absent from training stay 0
        return out

    # ------------------------------------------------------------------ persistence
    def _weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coef C' x V, intercept C', the class index of each row) of the fitted model."""
        clf = self.clf_
        if self.multi_label_:
            coef = np.vstack([e.coef_ for e in clf.estimators_])
            return (
                coef,
                np.concatenate([e.intercept_ for e in clf.estimators_]),
                np.arange(len(clf.estimators_)),
            )
        return clf.coef_, clf.intercept_, clf.classes_

    def save(self, folder) -> None:
        """Vocabulary (JSON) + idf and the logistic weights (safetensors): no pickle."""
        import json
        from pathlib import Path

        import torch

        from ..artifacts import atomic_save_tensors, atomic_write_json

        folder = Path(folder)
        vec = self.vectorizer_
        coef, intercept, classes = self.coef_, self.intercept_, self.classes_
        atomic_save_tensors(
            folder / "tfidf.safetensors",
            {
                "idf": torch.as_tensor(vec.idf_, dtype=torch.float64),
                "coef": torch.as_tensor(coef, dtype=torch.float64),
                "intercept": torch.as_tensor(intercept, dtype=torch.float64),
                "classes": torch.as_tensor(classes, dtype=torch.int64),
            },
        )
        atomic_write_json(
            folder / "tfidf.json",
            {
                "vocabulary": {t: int(i) for t, i in vec.vocabulary_.items()},
                "multi_label": bool(self.multi_label_),
                "n_classes": int(self.n_classes_),
                "C": self.C,
                "class_weight": self.class_weight,
                "n_features": int(self.n_features_),
                "feature_weight": float(self.feature_weight),
                "params": json.loads(json.dumps(vec.get_params(), default=str)),
            },
        )

    @classmethod
    def load(cls, folder) -> TfidfBaseline:
        import json
        from pathlib import Path

        from safetensors.torch import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        meta = json.loads((folder / "tfidf.json").read_text())
        tensors = {k: v.numpy() for k, v in load_file(str(folder / "tfidf.safetensors")).items()}
        self = cls(
            C=meta["C"],
            feature_weight=meta.get("feature_weight", 0.5),
            class_weight=meta.get("class_weight"),
        )
        self.n_features_ = int(meta.get("n_features", 0))
        vec = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, 2),
            strip_accents="unicode",
            dtype=np.float32,
            vocabulary=meta["vocabulary"],
        )
        vec.idf_ = tensors["idf"]
        self.vectorizer_, self.multi_label_ = vec, meta["multi_label"]
        self.n_classes_ = meta["n_classes"]
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]
        self.classes_ = tensors["classes"]
        return self


def blend_proba(encoder: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """The mean of two models' probabilities (softmax rows stay rows summing to 1;
    multi-label: per class)."""
    return (np.asarray(encoder, dtype=np.float64) + np.asarray(baseline, dtype=np.float64)) / 2
