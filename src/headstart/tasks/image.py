"""Image classification on any image backbone of the zoo."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import TASK_DEFAULTS, FitConfig
from ..data.images import (
    ImageSource,
    class_folders,
    load_image,
    open_inputs,
    open_source,
    read_csv_rows,
)
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

    def _write_exemplar_items(self, source: ImageSource, folder: Path) -> list:
        """Image files are copied as they are; in-memory images and slices become PNGs."""
        entries = []
        for i, item in enumerate(source.items):
            path = Path(item) if isinstance(item, (str, Path)) else None
            if path is not None and path.is_file():
                name = f"{i:05d}{path.suffix.lower()}"
                shutil.copyfile(path, folder / name)
            else:
                name = f"{i:05d}.png"
                load_image(item, source.window).save(folder / name)
            entries.append({"file": name, "class": source.classes[int(source.labels[i])]})
        return entries

    def _read_exemplar_items(self, entries: list, folder: Path, classes: list[str]):
        index = {c: i for i, c in enumerate(classes)}
        return ImageSource(
            [str(folder / e["file"]) for e in entries],
            np.array([index[e["class"]] for e in entries], dtype=np.int64),
            list(classes),
            f"{folder} (exemplars)",
        )

    def _data_classes(self, X, y, cfg: FitConfig) -> list[str]:
        """Class names without reading the images: the subfolders, the CSV's label
        column, or the labels given (one class is enough here: the others are the run's)."""
        if isinstance(X, ImageSource):
            return list(X.classes)
        if isinstance(X, (str, Path)) and Path(X).is_dir():
            _, labels = class_folders(X, lambda d: [d], "images", ())
            return sorted(set(labels))
        if isinstance(X, (str, Path)) and Path(X).suffix.lower() == ".csv" and Path(X).is_file():
            rows = read_csv_rows(Path(X), (cfg.label_column,))
            return sorted({(r.get(cfg.label_column) or "").strip() for _, r in rows} - {""})
        if y is None:
            return super()._data_classes(X, y, cfg)
        return [str(c) for c in sorted(set(np.asarray(y).tolist()))]

    def _join_sources(self, a: ImageSource, b: ImageSource) -> ImageSource:
        groups = None
        if a.groups is not None:  # each exemplar its own group
            groups = np.concatenate(
                [a.groups, np.array([f"exemplar {i}" for i in range(len(b))], dtype=object)]
            )
        return ImageSource(
            list(a.items) + list(b.items),
            np.concatenate([a.labels, b.labels]).astype(np.int64),
            a.classes,
            f"{a.origin} + {b.origin}",
            groups=groups,
            window=a.window,
        )

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
    step = max(1, len(source) // sample)
    for item in source.items[::step][:sample]:
        arr = np.asarray(load_image(item, getattr(source, "window", None)), dtype=np.int16)
        if (
            np.abs(arr[..., 0] - arr[..., 1]).max() > 2
            or np.abs(arr[..., 1] - arr[..., 2]).max() > 2
        ):
            return True
    return False
