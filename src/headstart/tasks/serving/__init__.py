"""The serving half of each task: one task object per modality, named by its estimator's
``serving`` class attribute (``ImageClassifier.serving`` is an :class:`ImageServing`).

``inference``, ``export``, ``serve``, ``predict`` and the CLI ask it how the task reads raw
inputs, what its inference graph takes and gives, what an export feeds the graph, how an
HTTP body becomes an item and how results print, instead of comparing task names.
"""

from .audio import AudioServing, SpeechServing
from .base import BodyError, Feed, TaskServing
from .control import ControlServing
from .detect import DetectionServing
from .image import ImageServing
from .text import TextServing

__all__ = [
    "AudioServing",
    "BodyError",
    "ControlServing",
    "DetectionServing",
    "Feed",
    "ImageServing",
    "SpeechServing",
    "TaskServing",
    "TextServing",
]
