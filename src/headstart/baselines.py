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
        proba = self.pipeline_.predict_proba(texts)
        if self.multi_label_:
            return proba
        out = np.zeros((len(texts), self.n_classes_))
        out[:, self.pipeline_[-1].classes_] = proba  # classes absent from training stay 0
        return out
