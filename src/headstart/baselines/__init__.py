"""Classic baselines that show what a pretrained source bought, fitted on exactly the split
the transfer model saw: TF-IDF + logistic regression for text (:mod:`.text`); small pixels
or HOG, and log-mel statistics, with logistic regression / k-NN / an RBF SVM chosen by
cross-validation for images and audio (:mod:`.classic`); the paired verdict (:mod:`.verdict`).
"""

from __future__ import annotations

from pathlib import Path

from .classic import AudioFeatures, ClassicBaseline, PixelFeatures, image_featurizers
from .text import TfidfBaseline
from .verdict import items_to_match, paired_difference, verdict

__all__ = [
    "AudioFeatures",
    "ClassicBaseline",
    "PixelFeatures",
    "TfidfBaseline",
    "image_featurizers",
    "items_to_match",
    "load_baseline",
    "paired_difference",
    "verdict",
]


def load_baseline(folder: str | Path):
    """The baseline saved in ``folder`` (a run's ``baseline/``), or None when it has none."""
    folder = Path(folder)
    if (folder / "tfidf.json").is_file():
        return TfidfBaseline.load(folder)
    if (folder / "classic.json").is_file():
        return ClassicBaseline.load(folder)
    return None
