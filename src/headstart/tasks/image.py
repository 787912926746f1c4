"""Image classification on any image backbone of the zoo."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import TASK_DEFAULTS, FitConfig
from ..data.images import ImageSource, load_image, open_inputs, open_source
from ..data.transforms import (
    AUGMENT,
    ImageDataset,
    ImageTransform,
    augment_plan,
    median_side,
    resolve_image_size,
    tta_preprocesses,
)
from ..zoo.base import Backbone, PreprocessConfig
from .base import TransferEstimator
from .serving import ImageServing

log = logging.getLogger(__name__)


class ImageClassifier(TransferEstimator):
    """Fine-tune a pre-trained image backbone for new classes.

    >>> clf = ImageClassifier("packaged:efficientnet_lite0", strategy="lp_ft")
    >>> clf.fit("data/train")            # one subfolder per class, or a CSV, or arrays + labels
    >>> clf.predict(["a.jpg", "b.png"])
    >>> clf.save("runs/my-model"); ImageClassifier.load("runs/my-model")
    """

    task = "image"
    preprocess_: PreprocessConfig
    modality = "image"
    serving_class = ImageServing
    defaults = TASK_DEFAULTS["image"]  # none: FitConfig's are the image ones
    augments = tuple(AUGMENT)
    mixes = True

    def _open_labeled(self, X, y, classes, cfg: FitConfig) -> ImageSource:
        return open_source(
            X,
            y,
            classes=classes,
            skip_bad=cfg.skip_bad,
            label_column=cfg.label_column,
            group_column=cfg.group_column,
            window=cfg.pixel_window(),
        )

    def _open_unlabeled(self, X) -> ImageSource:
        # fitted: as the model was trained; before fit (suggest's cold start): as set
        cfg = self.config_ if hasattr(self, "config_") else self.resolved_config()
        window = cfg.pixel_window()
        source = open_inputs(X, window=window)
        if source.window is None:  # a source given as is: read as the model was trained
            source.window = window
        return source

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> PreprocessConfig:
        own = backbone.preprocess
        assert isinstance(own, PreprocessConfig)  # _check_backbone: an image backbone
        size = resolve_image_size(cfg.image_size, own, median_side(train_source))
        return replace(own, input_size=size)

    def _dataset(
        self,
        source,
        preprocess: PreprocessConfig,
        train: bool,
        cfg: FitConfig,
        backbone: Backbone | None = None,
    ) -> ImageDataset:
        augment, side = cfg.augment if train else "none", None
        if augment != "none" and cfg.crop_min is None:
            side = median_side(source)  # small sources get gentler crops
            plan = augment_plan(augment, side, None, cfg.flip)
            assert plan is not None  # only augment "none" has no plan
            log.info(
                "augmentation %s: crops keep %.2f-%.2f of the area (median image side "
                "%g px), aspect %.2f-%.2f, %s",
                augment,
                *plan["scale"],
                side,
                *plan["aspect"],
                "flips" if plan["flip"] else "no flips",
            )
        transform = ImageTransform(
            preprocess.input_size,
            preprocess,
            augment,
            source_side=side,
            crop_min=cfg.crop_min,
            flip=cfg.flip,
        )
        return ImageDataset(source, transform, seed=cfg.seed, train=train)

    def _tta_views(self, tta: str) -> list[PreprocessConfig]:
        return tta_preprocesses(self.preprocess_, tta)

    def _new_baseline(self, cfg: FitConfig, train_src, balanced: bool, metric: str):
        from ..baselines import ClassicBaseline, image_featurizers

        featurizers = image_featurizers(median_side(train_src), _in_colour(train_src))
        return ClassicBaseline(featurizers, seed=cfg.seed, balanced=balanced, metric=metric)

    def _baseline_item(self, source: ImageSource, i: int, featurizer):
        return load_image(source.items[i], getattr(source, "window", None))


def _in_colour(source: ImageSource, sample: int = 32) -> bool:
    """Whether (a sample of) the images has colour: any pixel whose channels differ."""
    import numpy as np

    step = max(1, len(source) // sample)
    for item in source.items[::step][:sample]:
        arr = np.asarray(load_image(item, getattr(source, "window", None)), dtype=np.int16)
        if (
            np.abs(arr[..., 0] - arr[..., 1]).max() > 2
            or np.abs(arr[..., 1] - arr[..., 2]).max() > 2
        ):
            return True
    return False
