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
from pathlib import Path
from typing import TypeAlias

from torch import nn


@dataclass(frozen=True)
class PreprocessConfig:
    """How inputs must look for the weights: taken from the weights' own config."""

    input_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # one value per input channel
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d["interpolation"]),
            crop_pct=float(d["crop_pct"]),
        )


TRUNCATION = ("head", "head_tail", "chunks")


@dataclass(frozen=True)
class TextPreprocess:
    """How texts become token ids for a text encoder.

    ``truncation`` decides what of a document longer than ``max_length`` tokens reaches
    the encoder: ``head`` (its start), ``head_tail`` (its first quarter and last three
    quarters of the budget, Sun et al. 2019), or ``chunks`` (consecutive windows, at most
    ``max_chunks``, whose features are averaged).
    """

    max_length: int = 256
    truncation: str = "head"
    max_chunks: int = 1

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(
                f"truncation={self.truncation!r}: choose one of {', '.join(TRUNCATION)}"
            )
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {self.max_length}")

    @property
    def input_size(self) -> int:  # what logs and reports show as the input
        return self.max_length

    def to_dict(self) -> dict:
        return {"kind": "text", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> TextPreprocess:
        return cls(
            max_length=int(d["max_length"]),
            truncation=str(d["truncation"]),
            max_chunks=int(d.get("max_chunks", 1)),
        )


@dataclass(frozen=True)
class AudioPreprocess:
    """How recordings become the waveform batch an audio backbone takes: mono, resampled to
    ``sample_rate`` Hz, cropped or zero-padded to ``clip_seconds``. Spectral features (log-mel
    and the like) are computed inside the backbone, so a saved model takes raw audio."""

    sample_rate: int = 16000
    clip_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.sample_rate < 4000:
            raise ValueError(f"sample_rate must be >= 4000 Hz, got {self.sample_rate}")
        if not 0.1 <= self.clip_seconds <= 60:
            raise ValueError(f"clip_seconds must be in [0.1, 60], got {self.clip_seconds}")

    @property
    def samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def input_size(self) -> int:  # what logs and reports show as the input
        return self.samples

    def to_dict(self) -> dict:
        return {"kind": "audio", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> AudioPreprocess:
        return cls(sample_rate=int(d["sample_rate"]), clip_seconds=float(d["clip_seconds"]))


InputSpec: TypeAlias = PreprocessConfig | TextPreprocess | AudioPreprocess
"""A backbone's input spec, whatever its modality (see :attr:`Backbone.preprocess`)."""


def preprocess_from_dict(d: dict) -> InputSpec:
    """The preprocessing config a run saved, whatever its modality."""
    kind = d.get("kind")
    if kind == "text":
        return TextPreprocess.from_dict(d)
    if kind == "audio":
        return AudioPreprocess.from_dict(d)
    return PreprocessConfig.from_dict(d)


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
    preprocess: InputSpec  # each family's adapter declares the one it has
    feature_dim: int
    cut: int = 0  # how many trailing layer groups were removed
    lora: dict | None = None  # LoRA settings once adapters were injected (``add_lora``)

    def groups(self) -> list[LayerGroup]:  # pragma: no cover - abstract
        raise NotImplementedError

    def source_head(self) -> nn.Module | None:
        """The source task's classifier, mapping ``forward``'s features to source-class
        logits (ImageNet's 1000 for the packaged weights, the parent run's classes for a
        headstart run), or None (a sentence encoder, a cut network). ``rank``'s LEEP and
        NCE use it; it is not part of the weights a run saves."""
        held = self.__dict__.get("_source_head")
        return held[0] if held else None

    def set_source_head(self, head: nn.Module | None) -> None:
        self.__dict__["_source_head"] = (head.eval(),) if head is not None else None

    def pyramid_spec(self) -> list[tuple[int, int]]:
        """(channels, stride) of each feature map a detector can take, early -> late."""
        raise ZooError(
            f"{self.id}: this backbone gives no multi-scale feature maps, so it "
            "cannot carry a detector; use an image backbone (e.g. "
            "packaged:efficientnet_lite0)"
        )

    def pyramid(self, x, indices: list[int]) -> list:
        """The feature maps ``indices`` (into :meth:`pyramid_spec`) of a batch ``x``."""
        raise ZooError(f"{self.id}: this backbone gives no multi-scale feature maps")

    def detection_head(self) -> nn.Module | None:
        """The source's own detection head when the source is a detector (its neck is part
        of the backbone; see :meth:`neck_features`), else None."""
        return None

    def neck_features(self, x) -> list:
        """The maps the source's own detection head reads (a detector source only)."""
        raise ZooError(f"{self.id}: this backbone is not a detector")

    def sequence(self, x):
        """Frame-level features (batch, frames, sequence_dim) of an audio batch, for a
        recogniser that reads them in order (CTC); audio backbones implement it."""
        raise ZooError(
            f"{self.id}: this backbone gives no frame-level features; use an "
            "audio backbone (e.g. audio:cnn, packaged:crepe-tiny)"
        )

    def drop_after(self, index: int) -> None:
        """Remove the layers after feature map ``index`` (a detector never runs them)."""

    def lora_targets(self) -> list[str] | None:
        """Module names LoRA adapts; None = PEFT's default for the model type."""
        return ["conv_pw", "conv_pwl", "conv_dw"]

    def add_lora(self, settings: dict) -> None:
        """Inject LoRA adapters (PEFT) into the network; ``settings``: r, alpha, dropout,
        targets (None = the family's default). The adapters start as a no-op (B = 0)."""
        from peft import LoraConfig, inject_adapter_in_model

        targets = settings.get("targets") or self.lora_targets()
        alpha = float(settings["alpha"])
        config = LoraConfig(
            r=int(settings["r"]),
            lora_alpha=alpha,  # type: ignore[arg-type]  # peft: int, used as alpha / r
            lora_dropout=float(settings["dropout"]),
            target_modules=list(targets) if targets else None,
            bias="none",
        )
        inner = getattr(self, "model", self)
        inject_adapter_in_model(config, inner)
        n = sum(p.numel() for name, p in self.named_parameters() if "lora_" in name)
        if n == 0:
            raise ZooError(f"{self.id}: LoRA found no module named {targets} to adapt")
        # PEFT filled in its default for the model type (or raised) when targets was None
        assert config.target_modules is not None
        self.lora = {
            "r": config.r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "targets": sorted(config.target_modules),
        }

    def merge_lora(self) -> None:
        """Fold the adapters into the weights they adapt and remove them (PEFT ``merge``)."""
        from peft.tuners.lora import LoraLayer

        inner = getattr(self, "model", self)
        for name, module in list(inner.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, attr = name.rpartition(".")
                parent = inner.get_submodule(parent_name) if parent_name else inner
                setattr(parent, attr, module.get_base_layer())
        self.lora = None

    def architecture(self) -> dict:
        """What rebuilds this network without downloading anything: the id of the family
        adapter that creates it (``pretrained=False``) and the cut; weights come after."""
        return {"id": getattr(self, "arch_id", self.id), "cut": self.cut}

    def save_assets(self, folder: str | Path) -> None:
        """Write what rebuilding needs beside the weights (a text model's tokenizer and
        config), for families whose ``architecture()`` names an ``assets`` folder."""
        raise NotImplementedError(f"{type(self).__name__} names no assets to save")


class ZooError(RuntimeError):
    """A backbone id that cannot be resolved or loaded; the message says what to do."""


class OfflineError(ZooError):
    """Weights need a download and there is no network (or the hub is set offline)."""
