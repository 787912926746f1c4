"""Readers, splits and transforms for target data."""

from .images import (
    DataError,
    ImageSource,
    from_arrays,
    from_csv,
    from_folder,
    load_image,
    open_inputs,
    open_source,
)
from .splits import grouped_split, stratified_folds, stratified_split
from .transforms import ImageDataset, ImageTransform, median_side, resolve_image_size

__all__ = [
    "DataError",
    "ImageDataset",
    "ImageSource",
    "ImageTransform",
    "from_arrays",
    "from_csv",
    "from_folder",
    "grouped_split",
    "load_image",
    "median_side",
    "open_inputs",
    "open_source",
    "resolve_image_size",
    "stratified_folds",
    "stratified_split",
]
