"""Splits of labelled items: stratified by class and, given a patient / study id per item,
grouped so that no patient's images fall on both sides (validation, study fractions, tune,
the classic baseline's cross-validation); and the keys that match items across readings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .images import DataError


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int, groups=None):
    """Train and validation indices, same class balance in both. ``groups`` (a patient /
    study id per item): no group on both sides (:func:`grouped_split`)."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        return grouped_split(labels, val_fraction, seed, groups)
    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    n_val = int(round(val_fraction * len(labels)))
    if val_fraction == 0 or n_val == 0:
        return idx, idx[:0]
    if counts[counts > 0].min() < 2 or n_val < np.count_nonzero(counts):
        raise DataError(
            f"cannot hold out a stratified {val_fraction:.0%} for validation: the smallest "
            f"class has {counts[counts > 0].min()} image(s) and there are "
            f"{np.count_nonzero(counts)} classes; add images, raise val_fraction, or pass a "
            "validation set"
        )
    train, val = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def _group_codes(groups) -> np.ndarray:
    return np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]


def grouped_split(labels: np.ndarray, val_fraction: float, seed: int, groups):
    """Train and validation indices with every group (patient) whole on one side: one fold
    of scikit-learn's StratifiedGroupKFold with ``round(1 / val_fraction)`` folds (class
    balance kept as far as whole groups allow; the share is about ``val_fraction``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    idx = np.arange(len(labels))
    if val_fraction == 0:
        return idx, idx[:0]
    codes = _group_codes(groups)
    n_groups = len(np.unique(codes))
    k = max(2, int(round(1.0 / val_fraction)))
    if n_groups < k:
        raise DataError(
            f"cannot hold out {val_fraction:.0%} of whole groups for validation: "
            f"{n_groups} group(s) (patients / studies) for {k} folds; add patients, raise "
            "val_fraction, or pass a validation set"
        )
    folds = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    train, val = next(folds.split(idx, labels, codes))
    return np.sort(train), np.sort(val)


def stratified_folds(labels: np.ndarray, k: int, seed: int, groups=None):
    """``(train, test)`` index pairs of ``k`` stratified folds; with ``groups`` no group
    is split across a fold's two sides (StratifiedGroupKFold, ``k`` capped at the number
    of groups)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    idx = np.arange(len(labels))
    if groups is None:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(idx, labels))
    codes = _group_codes(groups)
    k = min(k, len(np.unique(codes)))
    if k < 2:
        raise DataError("grouped cross-validation needs at least 2 groups (patients)")
    return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(idx, labels, codes))


def item_keys(source) -> list:
    """What identifies each item across two readings of the data: the text, or the file's
    resolved path; None for an in-memory item (never matched)."""
    texts = getattr(source, "texts", None)
    if texts is not None:
        return ["text:" + t for t in texts]
    return [
        "path:" + str(Path(i).resolve()) if isinstance(i, (str, Path)) else None
        for i in source.items
    ]
