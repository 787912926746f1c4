"""Task estimators (scikit-learn contract)."""

from .asr import SpeechRecognizer
from .audio import AudioClassifier
from .base import NotFittedError, TransferEstimator
from .detect import ObjectDetector
from .image import ImageClassifier
from .text import TextClassifier

ESTIMATORS = {"image": ImageClassifier, "text": TextClassifier, "audio": AudioClassifier,
              "asr": SpeechRecognizer, "detect": ObjectDetector}


def load_estimator(run_dir, device: str = "cpu") -> TransferEstimator:
    """The fitted estimator of a run directory, whatever its task."""
    from ..zoo.local import read_run_config

    task = read_run_config(run_dir).get("task", "image")
    if task not in ESTIMATORS:
        raise ValueError(f"{run_dir}: unknown task {task!r}")
    return ESTIMATORS[task].load(run_dir, device=device)


__all__ = ["AudioClassifier", "ESTIMATORS", "ImageClassifier", "NotFittedError", "ObjectDetector",
           "SpeechRecognizer", "TextClassifier", "TransferEstimator", "load_estimator"]
