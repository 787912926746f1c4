"""Image classification on any image backbone of the zoo."""

from __future__ import annotations

from dataclasses import replace

from ..config import TASK_DEFAULTS, FitConfig
from ..data.images import ImageSource, open_inputs, open_source
from ..data.transforms import ImageDataset, ImageTransform, median_side, resolve_image_size
from ..zoo.base import Backbone, PreprocessConfig
from .base import TransferEstimator


class ImageClassifier(TransferEstimator):
    """Fine-tune a pre-trained image backbone for new classes.

    >>> clf = ImageClassifier("packaged:efficientnet_lite0", strategy="lp_ft")
    >>> clf.fit("data/train")            # one subfolder per class, or a CSV, or arrays + labels
    >>> clf.predict(["a.jpg", "b.png"])
    >>> clf.save("runs/my-model"); ImageClassifier.load("runs/my-model")
    """

    task = "image"
    modality = "image"
    defaults = TASK_DEFAULTS["image"]  # none: FitConfig's are the image ones

    def _open_labeled(self, X, y, classes, cfg: FitConfig) -> ImageSource:
        return open_source(X, y, classes=classes, skip_bad=cfg.skip_bad)

    def _open_unlabeled(self, X) -> ImageSource:
        return open_inputs(X)

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> PreprocessConfig:
        size = resolve_image_size(cfg.image_size, backbone.preprocess, median_side(train_source))
        return replace(backbone.preprocess, input_size=size)

    def _dataset(self, source, preprocess: PreprocessConfig, train: bool,
                 cfg: FitConfig, backbone: Backbone | None = None) -> ImageDataset:
        augment = cfg.augment if train else "none"
        return ImageDataset(source, ImageTransform(preprocess.input_size, preprocess, augment),
                            seed=cfg.seed, train=train)
