"""Classic baselines that show what a pretrained source bought: TF-IDF + logistic
regression for text, fitted on exactly the split the transfer model saw."""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


class TfidfBaseline:
    """Word 1-2-gram TF-IDF (sublinear tf) + L2 logistic regression (one-vs-rest for
    multi-label). ``fit(texts, labels)`` / ``predict_proba(texts)``; labels as in
    :class:`~headstart.data.text.TextSource` (indices, or 0/1 rows)."""

    def __init__(self, C: float = 10.0, max_features: int = 200_000, seed: int = 0):
        self.C, self.max_features, self.seed = C, max_features, seed

    def fit(self, texts: list[str], labels: np.ndarray) -> "TfidfBaseline":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import make_pipeline

        t0 = time.perf_counter()
        logreg = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed)
        self.multi_label_ = np.asarray(labels).ndim == 2
        self.pipeline_ = make_pipeline(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1,
                            max_features=self.max_features, strip_accents="unicode",
                            dtype=np.float32),
            OneVsRestClassifier(logreg) if self.multi_label_ else logreg)
        labels = np.asarray(labels)
        n_classes = labels.shape[1] if self.multi_label_ else int(labels.max()) + 1
        self.pipeline_.fit(texts, labels)
        self.n_classes_ = n_classes
        self.fit_seconds_ = time.perf_counter() - t0
        log.info("TF-IDF baseline: %d texts, %d features, fitted in %.1fs", len(texts),
                 len(self.pipeline_[0].vocabulary_), self.fit_seconds_)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not hasattr(self, "pipeline_"):  # loaded from disk: the same linear model
            return self._proba_from_weights(texts)
        proba = self.pipeline_.predict_proba(texts)
        if self.multi_label_:
            return proba
        out = np.zeros((len(texts), self.n_classes_))
        out[:, self.pipeline_[-1].classes_] = proba  # classes absent from training stay 0
        return out

    # ------------------------------------------------------------------ persistence
    def _weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(coef C' x V, intercept C', the class index of each row) of the fitted model."""
        clf = self.pipeline_[-1]
        if self.multi_label_:
            coef = np.vstack([e.coef_ for e in clf.estimators_])
            return coef, np.concatenate([e.intercept_ for e in clf.estimators_]), \
                np.arange(len(clf.estimators_))
        return clf.coef_, clf.intercept_, clf.classes_

    def save(self, folder) -> None:
        """Vocabulary (JSON) + idf and the logistic weights (safetensors): no pickle."""
        import json
        from pathlib import Path

        import torch

        from .artifacts import atomic_save_tensors, atomic_write_json

        folder = Path(folder)
        vec = self.pipeline_[0]
        coef, intercept, classes = self._weights()
        atomic_save_tensors(folder / "tfidf.safetensors", {
            "idf": torch.as_tensor(vec.idf_, dtype=torch.float64),
            "coef": torch.as_tensor(coef, dtype=torch.float64),
            "intercept": torch.as_tensor(intercept, dtype=torch.float64),
            "classes": torch.as_tensor(classes, dtype=torch.int64)})
        atomic_write_json(folder / "tfidf.json", {
            "vocabulary": {t: int(i) for t, i in vec.vocabulary_.items()},
            "multi_label": bool(self.multi_label_), "n_classes": int(self.n_classes_),
            "C": self.C, "params": json.loads(json.dumps(vec.get_params(), default=str))})

    @classmethod
    def load(cls, folder) -> "TfidfBaseline":
        import json
        from pathlib import Path

        from safetensors.torch import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer

        folder = Path(folder)
        meta = json.loads((folder / "tfidf.json").read_text())
        tensors = {k: v.numpy() for k, v in load_file(str(folder / "tfidf.safetensors")).items()}
        self = cls(C=meta["C"])
        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), strip_accents="unicode",
                              dtype=np.float32, vocabulary=meta["vocabulary"])
        vec.idf_ = tensors["idf"]
        self.vectorizer_, self.multi_label_ = vec, meta["multi_label"]
        self.n_classes_ = meta["n_classes"]
        self.coef_, self.intercept_ = tensors["coef"], tensors["intercept"]
        self.classes_ = tensors["classes"]
        return self

    def _proba_from_weights(self, texts: list[str]) -> np.ndarray:
        scores = np.asarray(self.vectorizer_.transform(texts) @ self.coef_.T) + self.intercept_
        if self.multi_label_:
            return 1.0 / (1.0 + np.exp(-scores))
        if scores.shape[1] == 1:  # binary logistic regression: one score for the 2nd class
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            proba = np.stack([1 - p, p], axis=1)
        else:
            e = np.exp(scores - scores.max(1, keepdims=True))
            proba = e / e.sum(1, keepdims=True)
        out = np.zeros((len(texts), self.n_classes_))
        out[:, self.classes_] = proba
        return out
