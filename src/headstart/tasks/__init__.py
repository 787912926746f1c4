"""Task estimators (scikit-learn contract)."""

from .asr import SpeechRecognizer
from .audio import AudioClassifier
from .base import NotFittedError, TransferEstimator
from .detect import ObjectDetector
from .image import ImageClassifier
from .serving import TaskServing
from .text import TextClassifier

ESTIMATORS = {"image": ImageClassifier, "text": TextClassifier, "audio": AudioClassifier,
              "asr": SpeechRecognizer, "detect": ObjectDetector}


def estimator_class(task: str, where="") -> type:
    """The estimator class of a task name (a run's config.json ``task``)."""
    if task not in ESTIMATORS:
        raise ValueError(f"{where}: unknown task {task!r}" if where else
                         f"unknown task {task!r}; one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[task]


def run_task(run_dir) -> type:
    """The estimator class of the run in ``run_dir``."""
    from ..zoo.local import read_run_config

    return estimator_class(read_run_config(run_dir).get("task", "image"), run_dir)


def serving_for(task: str, where="") -> TaskServing:
    """The serving half of a task name (:mod:`headstart.tasks.serving`)."""
    return estimator_class(task, where).serving_class()


def load_estimator(run_dir, device: str = "cpu") -> TransferEstimator:
    """The fitted estimator of a run directory, whatever its task."""
    return run_task(run_dir).load(run_dir, device=device)


__all__ = ["AudioClassifier", "ESTIMATORS", "ImageClassifier", "NotFittedError", "ObjectDetector",
           "SpeechRecognizer", "TaskServing", "TextClassifier", "TransferEstimator",
           "estimator_class", "load_estimator", "run_task", "serving_for"]
