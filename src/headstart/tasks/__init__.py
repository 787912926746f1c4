"""Task estimators (scikit-learn contract), registered by task name."""

from .asr import SpeechRecognizer
from .audio import AudioClassifier
from .base import NotFittedError, TransferEstimator
from .control import ControlEstimator
from .detect import ObjectDetector
from .image import ImageClassifier
from .registry import ESTIMATORS, estimator_class, load_estimator, register, run_task, serving_for
from .serving import TaskServing
from .text import TextClassifier

for _cls in (
    ImageClassifier,
    TextClassifier,
    AudioClassifier,
    SpeechRecognizer,
    ObjectDetector,
    ControlEstimator,
):
    register(_cls)

__all__ = [
    "AudioClassifier",
    "ControlEstimator",
    "ESTIMATORS",
    "ImageClassifier",
    "NotFittedError",
    "ObjectDetector",
    "SpeechRecognizer",
    "TaskServing",
    "TextClassifier",
    "TransferEstimator",
    "estimator_class",
    "load_estimator",
    "register",
    "run_task",
    "serving_for",
]
