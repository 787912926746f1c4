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
from collections.abc import Sized
from contextlib import contextmanager
from pathlib import Path
from typing import cast

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
        h.update(
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if t.numel()
            else b""
        )
    return h.hexdigest()[:24]


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _remember(key: str, feats: torch.Tensor) -> None:
    _MEMORY[key] = feats
    _MEMORY.move_to_end(key)
    while sum(t.numel() * t.element_size() for t in _MEMORY.values()) > _MEMORY_LIMIT_BYTES:
        _MEMORY.popitem(last=False)


def default_cache_dir() -> Path:
    """Where the CLI keeps features on disk: ``$HEADSTART_CACHE/features`` (default
    ~/.cache/headstart/features)."""
    import os

    root = os.environ.get("HEADSTART_CACHE") or Path.home() / ".cache" / "headstart"
    return Path(root) / "features"


def clear_memory_cache() -> None:
    _MEMORY.clear()


def to_device(x, device, channels_last: bool = False):
    """A batch on ``device``: a tensor, a dict of tensors (text), or lists / tuples of
    these (detection: images and their targets); anything else stays as it is."""
    if isinstance(x, dict):
        return {k: to_device(v, device, channels_last) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, channels_last) for v in x)
    if not isinstance(x, torch.Tensor):
        return x
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _foldable_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, BN name) of every Conv2d whose next sibling is a BatchNorm2d
    over its outputs, the way CNN blocks are written (conv_pw, bn1, conv_dw, bn2, ...).
    Only convolutions that use their weight as it is (not weight-standardised ones) and
    plain BatchNorm2d / timm's BatchNormAct2d qualify. A module whose BatchNorms do not
    follow their convolution directly (CREPE: conv, ReLU, BN) says so with
    ``fold_bn = False``; its children are not paired."""
    from timm.layers import BatchNormAct2d, Conv2dSame

    pairs = []
    for parent in module.modules():
        if getattr(parent, "fold_bn", True) is False:
            continue
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if (
                conv is not None
                and bn is not None
                and type(conv) in (nn.Conv2d, Conv2dSame)
                and type(bn) in (nn.BatchNorm2d, BatchNormAct2d)
                and bn.num_features == conv.out_channels
                and bn.affine
                and bn.running_mean is not None
            ):
                pairs.append((parent, a, b))
    return pairs


def fold_batchnorm(module: nn.Module) -> nn.Module | None:
    """An eval-mode copy of ``module`` with every BatchNorm that directly follows a
    convolution folded into that convolution's weight and bias (what inference engines
    do): 1.3-1.5x faster frozen passes of an EfficientNet on CPU, the same outputs to
    float32 rounding. ``None`` when ``module`` has no such pair (transformers, ...).
    ``module`` itself is left untouched; callers check the copy against it once
    (:func:`checked_fold`), since module order is taken to be data flow."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not _foldable_pairs(module):
        return None
    folded = copy.deepcopy(module).eval()
    for parent, a, b in _foldable_pairs(folded):
        conv, bn = parent._modules[a], parent._modules[b]
        # _foldable_pairs: a Conv2d (or timm's Conv2dSame) and a BatchNorm2d (or BatchNormAct2d)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        parent._modules[a] = fuse_conv_bn_eval(conv, bn)
        after = [
            m
            for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
            if m is not None and not isinstance(m, nn.Identity)
        ]  # BatchNormAct2d
        parent._modules[b] = nn.Sequential(*after) if after else nn.Identity()
    return folded


def checked_fold(folded: nn.Module, original: nn.Module, *inputs) -> nn.Module:
    """``folded`` if it gives ``original``'s outputs on (a few items of) ``inputs``
    (tensors, or one dict of tensors), else ``original`` with a warning: a network whose
    module order is not its data flow keeps its BatchNorms."""

    def few(v):
        return {k: t[:4] for k, t in v.items()} if isinstance(v, dict) else v[:4]

    probe = [few(v) for v in inputs]
    with torch.inference_mode():
        want, got = original(*probe).float(), folded(*probe).float()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    if want.shape == got.shape and (want - got).abs().max().item() <= 1e-3 * scale:
        return folded
    log.warning(
        "%s: folding BatchNorm into the convolutions changed its outputs; it runs as it is",
        type(original).__name__,
    )
    return original


class _Concat(torch.utils.data.ConcatDataset):
    """Datasets read as one; their ``lengths`` (texts) too."""

    def __init__(self, datasets: list):
        super().__init__(datasets)
        if all(getattr(d, "lengths", None) is not None for d in datasets):
            self.lengths = [n for d in datasets for n in d.lengths]


def concat_datasets(datasets: list) -> Dataset:
    """One dataset of ``datasets`` in order (the dataset itself when there is one), so
    one frozen pass serves several parts: the BatchNorm fold and the loader are set up
    once, and the last batch of one part is not a small batch of its own."""
    return datasets[0] if len(datasets) == 1 else _Concat(datasets)


# Images per forward call on the CPU: about this many pixels (H x W) per call, and at
# least CPU_CHUNK_MIN images. A frozen pass reads batches of eval_batch_size, but on the CPU
# a depthwise-convolution network (EfficientNet, MobileNet) runs each item faster in small
# groups whose activations stay in cache (benchmarks/cpu_chunks.py; figures in
# docs/results.md).
CPU_CHUNK_PIXELS = 2**18
CPU_CHUNK_MIN = 4


def forward_in_chunks(network: nn.Module, x):
    """``network(x)``; a CPU batch of images (N, C, H, W) goes through in chunks of about
    :data:`CPU_CHUNK_PIXELS` pixels. Only for networks that treat items independently
    (eval mode: frozen passes)."""
    if not torch.is_tensor(x) or x.ndim != 4 or x.device.type != "cpu":
        return network(x)
    per = max(CPU_CHUNK_MIN, CPU_CHUNK_PIXELS // (x.shape[2] * x.shape[3]))
    if per >= len(x):
        return network(x)
    return torch.cat([network(chunk) for chunk in x.split(per)])


def length_sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Batches of similar length (longest first): padding is paid once per batch."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    return [order[j : j + batch_size] for j in range(0, len(order), batch_size)]


def _size(dataset: Dataset) -> int:
    """The items of a map-style dataset (torch's Dataset declares no ``__len__``; every
    dataset headstart passes has one)."""
    return len(cast(Sized, dataset))


class _Shard(Dataset):
    """Items ``rank, rank + world, ...`` of a dataset (its ``lengths`` too)."""

    def __init__(self, dataset: Dataset, rank: int, world: int):
        self.dataset, self.indices = dataset, list(range(rank, _size(dataset), world))
        lengths = getattr(dataset, "lengths", None)
        self.lengths = [lengths[i] for i in self.indices] if lengths is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


_SHARDED = [False]


@contextmanager
def sharded_passes():
    """Within this block, in a data-parallel job, feature passes are shared between the
    processes. Every process must run the same passes in the same order (the training loop
    does); a pass only one process runs (a test evaluation on rank 0) stays whole."""
    before = _SHARDED[0]
    _SHARDED[0] = True
    try:
        yield
    finally:
        _SHARDED[0] = before


def _process_group() -> tuple[int, int]:
    """(rank, world size) of a running data-parallel job inside :func:`sharded_passes`,
    else (0, 1)."""
    import torch.distributed as dist

    if _SHARDED[0] and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.inference_mode()
def compute_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device,
    channels_last: bool,
    num_workers: int,
    desc: str = "features",
    collate_fn=None,
    bucketing: bool = True,
) -> torch.Tensor:
    """One pass of the frozen backbone (eval mode) over ``dataset`` -> (N, D) float32.

    A dataset with ``lengths`` (texts) is read in batches of similar length and the
    features are put back in dataset order. Inside :func:`sharded_passes` in a data-parallel
    job (torchrun, accelerate launch), each of the W processes computes every W-th item and
    the shares are gathered, so every process ends with all N features in dataset order."""
    rank, world = _process_group()
    if world > 1 and _size(dataset) >= world:
        import torch.distributed as dist

        shard = _Shard(dataset, rank, world)
        local = _compute(
            backbone,
            shard,
            batch_size,
            device,
            channels_last,
            num_workers,
            desc,
            collate_fn,
            bucketing,
        )
        n, per = _size(dataset), -(-_size(dataset) // world)
        on_device = dist.get_backend() == "nccl"
        padded = local.new_zeros((per, *local.shape[1:]))
        padded[: len(local)] = local
        padded = padded.to(device) if on_device else padded
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out = local.new_empty((n, *local.shape[1:]))
        for r, part in enumerate(parts):
            count = len(range(r, n, world))
            out[r::world] = part[:count].cpu()
        log.info(
            "%s: this process computed %d of %d items (%d processes)", desc, len(local), n, world
        )
        return out
    return _compute(
        backbone,
        dataset,
        batch_size,
        device,
        channels_last,
        num_workers,
        desc,
        collate_fn,
        bucketing,
    )


def _compute(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device,
    channels_last: bool,
    num_workers: int,
    desc: str,
    collate_fn,
    bucketing: bool,
) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    folded = fold_batchnorm(backbone)
    if folded is not None and channels_last:
        folded.to(memory_format=torch.channels_last)
    network = None  # the folded copy once the first batch confirmed it, else backbone
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None and bucketing:
        batches = length_sorted_batches(lengths, batch_size)
        loader = DataLoader(
            dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_fn
        )
    else:
        batches = None
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_fn,
        )
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        x = to_device(x, device, channels_last)
        if network is None:
            network = backbone if folded is None else checked_fold(folded, backbone, x)
        out.append(forward_in_chunks(network, x).float().cpu())
    backbone.train(was_training)
    if not out:
        return torch.empty(0, getattr(backbone, "feature_dim", 0))
    feats = torch.cat(out)
    if batches is not None:
        order = torch.as_tensor([i for b in batches for i in b])
        feats = torch.empty_like(feats).index_copy_(0, order, feats)
    return feats


def cached_features(key: str, compute, cache_dir: str | Path | None = None) -> torch.Tensor:
    """Features for ``key`` from memory, then disk, else ``compute()`` and store.

    In a sharded data-parallel pass the processes decide together: all of them compute
    (the pass is a collective) unless every one of them has the features already."""
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    have = key in _MEMORY or (path is not None and path.is_file())
    _, world = _process_group()
    if world > 1:
        import torch.distributed as dist

        everyone: list = [None] * world
        dist.all_gather_object(everyone, have)
        have = all(everyone)
    if have and key in _MEMORY:
        log.info("features %s: from memory", key[:12])
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    if have:
        from safetensors.torch import load_file

        feats = load_file(str(path))["features"]
        log.info("features %s: from %s", key[:12], path)
    else:
        feats = compute()
        if path is not None:
            atomic_save_tensors(path, {"features": feats})
    _remember(key, feats)
    return feats
