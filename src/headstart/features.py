"""Frozen-backbone features, computed once per item and cached.

The cache key covers the backbone (id, architecture, a hash of its weights), the
preprocessing (size, mean/std, crop) and the data (paths + sizes + mtimes, or pixel
bytes), so a changed file, weight or setting never returns stale features. Features live
in memory for the process and, with ``cache_dir``, on disk as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .artifacts import atomic_save_tensors

log = logging.getLogger(__name__)

_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_LIMIT_BYTES = 2 * 1024**3


def weights_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:24]


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _remember(key: str, feats: torch.Tensor) -> None:
    _MEMORY[key] = feats
    _MEMORY.move_to_end(key)
    while sum(t.numel() * t.element_size() for t in _MEMORY.values()) > _MEMORY_LIMIT_BYTES:
        _MEMORY.popitem(last=False)


def clear_memory_cache() -> None:
    _MEMORY.clear()


@torch.inference_mode()
def compute_features(backbone: nn.Module, dataset: Dataset, batch_size: int, device,
                     channels_last: bool, num_workers: int, desc: str = "features",
                     collate_fn=None) -> torch.Tensor:
    """One pass of the frozen backbone (eval mode) over ``dataset`` -> (N, D) float32."""
    was_training = backbone.training
    backbone.eval()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_fn)
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(backbone(x).float().cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0, getattr(backbone, "feature_dim", 0))


def cached_features(key: str, compute, cache_dir: str | Path | None = None) -> torch.Tensor:
    """Features for ``key`` from memory, then disk, else ``compute()`` and store."""
    if key in _MEMORY:
        log.info("features %s: from memory", key[:12])
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file

        feats = load_file(str(path))["features"]
        log.info("features %s: from %s", key[:12], path)
    else:
        feats = compute()
        if path is not None:
            atomic_save_tensors(path, {"features": feats})
    _remember(key, feats)
    return feats
