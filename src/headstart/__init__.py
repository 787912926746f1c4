"""headstart: transfer learning as a product.

Pick a pre-trained source model, put a new head on it, choose what trains, fine-tune on
a small target dataset, and measure that transfer paid off.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("headstart")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The public names and the modules that hold them. They load on first use (PEP 562), so
# `headstart --help` and `import headstart.config` do not pay for torch, timm and transformers.
_PUBLIC = {
    "FitConfig": ".config",
    "AudioClassifier": ".tasks",
    "ImageClassifier": ".tasks",
    "NotFittedError": ".tasks",
    "ObjectDetector": ".tasks",
    "SpeechRecognizer": ".tasks",
    "TextClassifier": ".tasks",
    "rank": ".select",
    "create_backbone": ".zoo",
    "list_models": ".zoo",
}
__all__ = [
    "AudioClassifier",
    "FitConfig",
    "ImageClassifier",
    "NotFittedError",
    "ObjectDetector",
    "SpeechRecognizer",
    "TextClassifier",
    "create_backbone",
    "list_models",
    "rank",
]

if TYPE_CHECKING:
    from .config import FitConfig
    from .select import rank
    from .tasks import (
        AudioClassifier,
        ImageClassifier,
        NotFittedError,
        ObjectDetector,
        SpeechRecognizer,
        TextClassifier,
    )
    from .zoo import create_backbone, list_models


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'headstart' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
