"""Task estimators (scikit-learn contract)."""

from .base import NotFittedError, TransferEstimator
from .image import ImageClassifier

__all__ = ["ImageClassifier", "NotFittedError", "TransferEstimator"]
