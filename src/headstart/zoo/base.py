"""The contract every backbone adapter fulfils, whatever its family.

A backbone is an ``nn.Module`` whose ``forward`` maps a preprocessed batch to one
pooled feature vector per item, and which tells the rest of headstart:

* ``feature_dim``      - size of that vector (what a new head takes in);
* ``groups()``         - its parameters as ordered layer groups, early -> late, the unit
                          that strategies freeze, unfreeze and give learning rates to;
* ``preprocess``       - the input spec of its own weights (size, mean/std, resampling);
* ``meta``             - where the weights came from (source data, task, licence, ...).

Tasks (image, text, audio, ...) are written once against this contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn


@dataclass(frozen=True)
class PreprocessConfig:
    """How inputs must look for the weights: taken from the weights' own config."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )


@dataclass(frozen=True)
class SourceMeta:
    """What a user needs to judge a source model before using it."""

    id: str
    modality: str  # "image", "text", "audio"
    source_data: str
    source_task: str
    domain: str
    licence: str
    params: int | None = None  # backbone parameters (without the old head)
    input: str = ""
    offline: bool = False  # loadable with no network
    description: str = ""
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerGroup:
    """A named slice of a backbone that trains (or stays frozen) as one unit."""

    name: str
    modules: list[nn.Module]

    def parameters(self):
        for m in self.modules:
            yield from m.parameters()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Backbone(nn.Module):
    """Base class of adapters. Subclasses set the attributes and implement ``forward``."""

    id: str
    meta: SourceMeta
    preprocess: PreprocessConfig
    feature_dim: int
    cut: int = 0  # how many trailing layer groups were removed

    def groups(self) -> list[LayerGroup]:  # pragma: no cover - abstract
        raise NotImplementedError

    def architecture(self) -> dict:
        """What rebuilds this network without downloading anything: the id of the family
        adapter that creates it (``pretrained=False``) and the cut; weights come after."""
        return {"id": getattr(self, "arch_id", self.id), "cut": self.cut}


class ZooError(RuntimeError):
    """A backbone id that cannot be resolved or loaded; the message says what to do."""


class OfflineError(ZooError):
    """Weights need a download and there is no network (or the hub is set offline)."""
