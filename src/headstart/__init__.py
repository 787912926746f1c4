"""headstart: transfer learning as a product.

Pick a pre-trained source model, put a new head on it, choose what trains, fine-tune on
a small target dataset, and measure that transfer paid off.
"""

from .config import FitConfig
from .tasks import (AudioClassifier, ImageClassifier, NotFittedError, ObjectDetector,
                    SpeechRecognizer, TextClassifier)
from .select import rank
from .zoo import create_backbone, list_models

__version__ = "0.1.0"
__all__ = ["AudioClassifier", "FitConfig", "ImageClassifier", "NotFittedError", "ObjectDetector",
           "SpeechRecognizer", "TextClassifier", "create_backbone", "list_models", "rank"]
