"""Generative feature replay for ``--add-classes`` (SLDA-style class statistics).

At the end of a classifier's fit, the training items' backbone features are summarised per
class: each class's mean and per-dimension variance, and one covariance pooled over the
classes (within-class scatter, Ledoit-Wolf shrunk: a few hundred items cannot estimate a
D x D covariance alone). They are saved as ``feature_stats.safetensors`` in the run
directory with the backbone's fingerprint (its weights' hash and the preprocessing), so a
later ``--add-classes`` fit that keeps that same backbone frozen can train its head on
synthetic features of the old classes, drawn from those Gaussians, beside the new data and
the stored exemplars: the replay sees the spread of every old training item, not only the
few stored ones. The statistics describe one backbone's features: an extension whose
strategy trains the backbone, or whose backbone or preprocessing differs, does not use them
and logs why.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_save_tensors
from .features import weights_hash

log = logging.getLogger(__name__)

STATS_FILE = "feature_stats.safetensors"
MAX_COVARIANCE_DIM = 2048  # a pooled covariance past this (16 MB): per-class diagonals only


def backbone_fingerprint(backbone, preprocess) -> str:
    """What the features depend on: the backbone's architecture and weights, and how its
    inputs are prepared. The same string at fit and at extension: the same features."""
    return json.dumps(
        {
            "arch": backbone.architecture(),
            "weights": weights_hash(backbone),
            "preprocess": preprocess.to_dict(),
        },
        sort_keys=True,
        default=str,
    )


# ---------------------------------------------------------------- at fit time: the statistics
def class_statistics(feats: torch.Tensor, labels, classes: list[str], fingerprint: str):
    """The statistics of ``feats`` (one row per item) by integer ``labels`` over ``classes``;
    None for labels that are not one class per item (multi-label, sequences) or fewer than
    two items. Classes without items get no mean (count 0) and are never replayed."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) < 2:
        return None
    x = feats.detach().double().cpu()
    y = torch.as_tensor(labels, dtype=torch.long)
    n_classes, dim = len(classes), x.shape[1]
    counts = torch.bincount(y, minlength=n_classes)
    means = torch.zeros(n_classes, dim, dtype=torch.float64)
    means.index_add_(0, y, x)
    means /= counts.clamp(min=1).unsqueeze(1)
    centred = x - means[y]
    variances = torch.zeros_like(means)
    variances.index_add_(0, y, centred**2)
    variances /= (counts - 1).clamp(min=1).unsqueeze(1)
    stats = {
        "means": means.float(),
        "variances": variances.float(),
        "counts": counts,
        "classes": list(classes),
        "fingerprint": fingerprint,
        "shrinkage": None,
    }
    if dim <= MAX_COVARIANCE_DIM:
        from sklearn.covariance import ledoit_wolf

        # the within-class scatter, centred per class: one shape shared by every class
        cov, shrinkage = ledoit_wolf(centred.numpy(), assume_centered=True)
        stats["covariance"] = torch.as_tensor(cov, dtype=torch.float32)
        stats["shrinkage"] = float(shrinkage)
    return stats


def carry_parent_classes(stats: dict, parent: dict | None, old_classes: list[str]) -> dict:
    """An extension's statistics: the old classes' from its parent (computed on all the
    items the parent trained on, where the extension saw only their exemplars), the new
    classes' its own; the pooled covariance the two weighted by their items."""
    if parent is None:
        return stats
    for c in old_classes:
        i, j = stats["classes"].index(c), parent["classes"].index(c)
        for key in ("means", "variances", "counts"):
            stats[key][i] = parent[key][j]
    if "covariance" in stats and "covariance" in parent:
        n_old = float(parent["counts"].sum())
        n_new = float(
            sum(
                int(stats["counts"][stats["classes"].index(c)])
                for c in stats["classes"]
                if c not in old_classes
            )
        )
        w = n_old / max(n_old + n_new, 1.0)
        stats["covariance"] = w * parent["covariance"] + (1 - w) * stats["covariance"]
    return stats


def write_feature_stats(stats: dict | None, run_dir: Path) -> dict | None:
    """``run_dir/feature_stats.safetensors`` (atomic); what config.json says of it. None
    (and an earlier run's file removed) where there are no statistics."""
    path = Path(run_dir) / STATS_FILE
    if stats is None:
        path.unlink(missing_ok=True)
        return None
    tensors = {k: stats[k] for k in ("means", "variances", "counts", "covariance") if k in stats}
    meta = {
        "classes": json.dumps(stats["classes"]),
        "fingerprint": stats["fingerprint"],
        "shrinkage": json.dumps(stats["shrinkage"]),
    }
    atomic_save_tensors(path, tensors, metadata=meta)
    size = path.stat().st_size
    log.info(
        "feature statistics of %d classes stored in %s (%.1f kB)",
        len(stats["classes"]),
        path,
        size / 1e3,
    )
    return {
        "file": STATS_FILE,
        "bytes": size,
        "feature_dim": int(stats["means"].shape[1]),
        "covariance": "pooled" if "covariance" in stats else "diagonal",
        "shrinkage": stats["shrinkage"],
    }


def read_feature_stats(run_dir: Path) -> dict | None:
    """The statistics ``run_dir`` stored, or None where it stored none."""
    path = Path(run_dir) / STATS_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stats: dict = {k: f.get_tensor(k) for k in f.keys()}
        stats["classes"] = json.loads(meta["classes"])
        stats["fingerprint"] = meta["fingerprint"]
        stats["shrinkage"] = json.loads(meta.get("shrinkage", "null"))
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path}: unreadable feature statistics ({exc}); delete the file to extend "
            "without feature replay"
        ) from exc
    return stats


# ---------------------------------------------------------------- at extension time: the replay
def replay_reason(stats: dict | None, strategy, fingerprint: str, parent: str) -> str | None:
    """Why the parent's statistics cannot serve this extension, or None where they can."""
    if stats is None:
        return f"{parent} stored no feature statistics (fit it with --feature-stats)"
    training = [s.name for s in strategy.stages if not s.head_only]
    if training:
        return (
            f"strategy {strategy.name} trains the backbone (stage {training[0]}): the stored "
            "statistics describe the parent's backbone features, not the ones it trains"
        )
    if stats["fingerprint"] != fingerprint:
        return (
            f"the backbone or its preprocessing differs from the one {parent}'s statistics "
            "were computed with (another image size or backbone?)"
        )
    return None


def sample_features(
    stats: dict, classes: list[str], per_class: int, seed: int
) -> tuple[torch.Tensor, np.ndarray]:
    """``per_class`` synthetic feature vectors of each of ``classes`` (those with items in
    ``stats``) and their labels (positions in ``classes``), drawn with ``seed``: the class
    mean plus Gaussian noise of the pooled covariance, or, where none was stored (features
    wider than ``MAX_COVARIANCE_DIM``), of the class's own per-dimension variances (on
    Fashion-MNIST, 200 vectors per class: old classes 76.6% with those, 78.9% pooled)."""
    g = torch.Generator().manual_seed(int(seed) * 7919 + 11)
    dim = stats["means"].shape[1]
    pooled = "covariance" in stats
    if pooled:
        cov = stats["covariance"].double()
        jitter = 1e-6 * float(cov.diagonal().mean())
        chol, info = torch.linalg.cholesky_ex(cov + jitter * torch.eye(dim, dtype=cov.dtype))
        if int(info):  # rounding made it indefinite: its symmetric square root instead
            vals, vecs = torch.linalg.eigh(cov)
            chol = vecs * vals.clamp(min=0).sqrt()
    feats, labels = [], []
    for i, c in enumerate(classes):
        j = stats["classes"].index(c) if c in stats["classes"] else -1
        if j < 0 or int(stats["counts"][j]) == 0:
            continue
        z = torch.randn(per_class, dim, generator=g, dtype=torch.float64)
        noise = z @ chol.T if pooled else z * stats["variances"][j].double().sqrt()
        feats.append((stats["means"][j].double() + noise).float())
        labels.append(np.full(per_class, i, dtype=np.int64))
    if not feats:
        return torch.zeros(0, dim), np.zeros(0, dtype=np.int64)
    return torch.cat(feats), np.concatenate(labels)


def replay_for(ext, cfg, strategy, backbone, preprocess):
    """The synthetic features (and labels) an ``--add-classes`` fit trains on beside its
    data, or None, with the reason logged and noted in ``ext``."""
    if not cfg.feature_replay:
        return None
    stats = read_feature_stats(Path(ext.parent))
    reason = replay_reason(stats, strategy, backbone_fingerprint(backbone, preprocess), ext.parent)
    if reason is not None:
        ext.feature_replay_skipped = reason
        log.info("add_classes: no feature replay: %s", reason)
        return None
    assert stats is not None  # replay_reason: a reason where there are none
    feats, labels = sample_features(stats, ext.old_classes, cfg.feature_replay, cfg.seed)
    ext.feature_replayed = len(labels)
    log.info(
        "add_classes: %d synthetic feature vectors of the old classes (%d each, from %s's "
        "statistics) join the training features",
        len(labels),
        cfg.feature_replay,
        ext.parent,
    )
    return feats, labels, stats
