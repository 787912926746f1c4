"""Hugging Face speech encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, UniSpeech, and
Whisper's encoder) as audio backbones: ``hf:<hub id>`` when the hub (or its cache) is
reachable, ``tiny:wav2vec2`` / ``tiny:whisper`` (random, for plumbing tests).

Whisper's encoder takes Whisper's own log-mel input (computed inside the backbone exactly as
``WhisperFeatureExtractor`` does, checked by a test) over its fixed window (30 s for the
released models): a clip is zero-padded to the window and only the encoder states of the
clip's own frames are kept.

The encoder takes the raw 16 kHz waveform (normalised per recording when its feature
extractor says so) and gives one hidden state every 20 ms: ``sequence`` returns them and
``forward`` their mean. The pretraining head (quantizer, projection, CTC head) is not
loaded. Layer groups, early -> late: the convolutional feature encoder, the feature
projection with the positional convolution, then each transformer layer; ``cut=k`` removes
the last ``k`` layers. The architecture config and feature-extractor settings are saved
beside a run's weights, so a fine-tuned model reloads with no hub.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audio import AudioBackbone, LogMel
from .base import AudioPreprocess, LayerGroup, SourceMeta, ZooError

AUDIO_MODEL_TYPES = (
    "wav2vec2",
    "hubert",
    "wavlm",
    "data2vec-audio",
    "unispeech",
    "unispeech-sat",
    "wav2vec2-conformer",
    "sew",
    "sew-d",
)
# every transformers speech encoder headstart adapts: the wav2vec2 family, and Whisper's
SPEECH_MODEL_TYPES = (*AUDIO_MODEL_TYPES, "whisper")
ASSET_SETTINGS = "headstart_audio.json"
NO_MASKING: dict[str, Any] = {
    "mask_time_prob": 0.0,
    "mask_feature_prob": 0.0,
    "apply_spec_augment": False,
}

TINY_WAV2VEC2_META = SourceMeta(
    id="tiny:wav2vec2",
    modality="audio",
    source_data="none (random init)",
    source_task="none: plumbing tests only",
    domain="-",
    licence="Apache-2.0",
    params=26_160,
    input="mono 16 kHz waveform",
    offline=True,
    description="2-layer 32-d wav2vec2 with a 7-layer 16-channel feature encoder, random",
)


class _HubSpeechEncoder(AudioBackbone):
    """What the hub speech encoders share: the cut of trailing transformer layers, the
    pooled feature (mean of the frame states), the config saved as the run's asset."""

    # A transformers model: its submodules (encoder, layers, conv1, ...) and config fields
    # differ per family, and nn.Module types every attribute it does not declare as
    # ``Tensor | Module``.
    model: Any

    def _adopt(
        self,
        model: Any,
        owner: Any,
        layers_key: str,
        backbone_id: str,
        meta: SourceMeta,
        cut: int,
        arch_id: str | None,
    ) -> None:
        """Keep ``model``; ``owner.layers`` are its transformer layers (``cut`` of them
        removed from the end, and ``config.<layers_key>`` told so)."""
        layers = owner.layers
        self.cut = int(cut)
        if self.cut:
            if not 0 < self.cut < len(layers):
                raise ZooError(
                    f"{backbone_id}: cut must be between 0 and {len(layers) - 1} "
                    f"(it has {len(layers)} transformer layers)"
                )
            owner.layers = nn.ModuleList(list(layers)[: len(layers) - self.cut])
            setattr(model.config, layers_key, len(owner.layers))
        self.model = model
        self.id, self.arch_id, self.meta = backbone_id, arch_id or backbone_id, meta

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.sequence(wave).mean(dim=1)

    def architecture(self) -> dict:
        return {"id": self.arch_id, "cut": self.cut, "assets": "backbone"}

    def lora_targets(self) -> list[str]:
        return ["q_proj", "v_proj"]

    def save_assets(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(folder))


class HFAudioBackbone(_HubSpeechEncoder):
    """A transformers speech encoder (``AutoModel``) on raw waveforms."""

    def __init__(
        self,
        model: Any,
        backbone_id: str,
        meta: SourceMeta,
        *,
        normalize: bool = True,
        rate: int = 16000,
        cut: int = 0,
        arch_id: str | None = None,
    ):
        super().__init__()
        self._adopt(model, model.encoder, "num_hidden_layers", backbone_id, meta, cut, arch_id)
        self.normalize = bool(normalize)
        self.feature_dim = self.sequence_dim = int(model.config.hidden_size)
        self.preprocess = AudioPreprocess(sample_rate=int(rate), clip_seconds=1.0)

    def set_augment(self, augment: str) -> None:
        """No SpecAugment of ours: these encoders mask their own features when asked."""

    def sequence(self, wave: torch.Tensor) -> torch.Tensor:
        x = wave.float()
        if self.normalize:  # zero mean, unit variance per recording, as the extractor does
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(
                x.var(dim=1, keepdim=True, unbiased=False) + 1e-7
            )
        return self.model(x).last_hidden_state

    def groups(self) -> list[LayerGroup]:
        m = self.model
        early = [
            getattr(m, name)
            for name in ("feature_extractor", "feature_projection")
            if hasattr(m, name)
        ]
        outside = [
            mod
            for name, mod in m.encoder.named_children()
            if name != "layers" and any(True for _ in mod.parameters())
        ]
        return [
            LayerGroup("feature_encoder", early[:1]),
            LayerGroup("projection", early[1:] + outside),
        ] + [LayerGroup(f"layer.{i}", [block]) for i, block in enumerate(m.encoder.layers)]

    def save_assets(self, folder: str | Path) -> None:
        super().save_assets(folder)
        (Path(folder) / ASSET_SETTINGS).write_text(
            json.dumps({"normalize": self.normalize, "sample_rate": self.preprocess.sample_rate})
        )


class WhisperEncoderBackbone(_HubSpeechEncoder):
    """Whisper's audio encoder (its decoder, the old head, is not kept)."""

    def __init__(
        self,
        encoder: Any,
        backbone_id: str,
        meta: SourceMeta,
        *,
        cut: int = 0,
        arch_id: str | None = None,
    ):
        super().__init__()
        self._adopt(encoder, encoder, "encoder_layers", backbone_id, meta, cut, arch_id)
        config = encoder.config
        self.frames = 2 * int(config.max_source_positions)  # mel frames of the window
        self.frontend = LogMel(
            16000, 400, 160, int(config.num_mel_bins), fmin=0.0, fmax=8000.0, log=False
        )
        self.feature_dim = self.sequence_dim = int(config.d_model)
        self.preprocess = AudioPreprocess(sample_rate=16000, clip_seconds=1.0)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Whisper's input: log10 mel power of the window (clip zero-padded), floored 8
        below its maximum, scaled as (x + 4) / 4."""
        target = self.frames * 160
        x = wave.float()
        x = nn.functional.pad(x, (0, target - x.shape[1])) if x.shape[1] < target else x[:, :target]
        mel = torch.log10(self.frontend(x)[:, :, :-1].clamp_min(1e-10))
        mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (mel + 4.0) / 4.0

    def sequence(self, wave: torch.Tensor) -> torch.Tensor:
        keep = max(1, min(self.frames // 2, math.ceil(wave.shape[1] / 320)))
        return self.model(self.log_mel(wave)).last_hidden_state[:, :keep]

    def groups(self) -> list[LayerGroup]:
        m = self.model
        return (
            [LayerGroup("stem", [m.conv1, m.conv2, m.embed_positions])]
            + [LayerGroup(f"layer.{i}", [block]) for i, block in enumerate(m.layers)]
            + [LayerGroup("norm", [m.layer_norm])]
        )


def is_audio_folder(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") in SPEECH_MODEL_TYPES


def _settings(folder: Path) -> dict:
    """Normalisation and rate from our saved settings, else the feature extractor's."""
    own = folder / ASSET_SETTINGS
    if own.is_file():
        return json.loads(own.read_text())
    pre = folder / "preprocessor_config.json"
    data = json.loads(pre.read_text()) if pre.is_file() else {}
    return {
        "normalize": bool(data.get("do_normalize", True)),
        "sample_rate": int(data.get("sampling_rate", 16000)),
    }


def from_audio_folder(
    folder: str | Path,
    backbone_id: str,
    meta: SourceMeta,
    *,
    pretrained: bool,
    cut: int = 0,
    arch_id: str | None = None,
) -> _HubSpeechEncoder:
    """A speech encoder from a local transformers folder (weights only when
    ``pretrained``); its own masking is switched off (headstart augments the audio)."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder), **NO_MASKING)
    if config.model_type == "whisper":
        model = (
            AutoModel.from_pretrained(str(folder), config=config)
            if pretrained
            else AutoModel.from_config(config)
        )
        return WhisperEncoderBackbone(
            model.get_encoder(), backbone_id, meta, cut=cut, arch_id=arch_id
        )
    if config.model_type not in AUDIO_MODEL_TYPES:
        raise ZooError(
            f"{backbone_id}: a {config.model_type!r} model is not a supported speech "
            f"encoder ({', '.join(SPEECH_MODEL_TYPES)})"
        )
    model = (
        AutoModel.from_pretrained(str(folder), config=config)
        if pretrained
        else AutoModel.from_config(config)
    )
    settings = _settings(folder)
    backbone = HFAudioBackbone(
        model,
        backbone_id,
        meta,
        normalize=settings["normalize"],
        rate=settings["sample_rate"],
        cut=cut,
        arch_id=arch_id,
    )
    return backbone


def create_tiny_wav2vec2(pretrained: bool, cut: int) -> HFAudioBackbone:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(0)
        config = Wav2Vec2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
            **NO_MASKING,
        )
        model = Wav2Vec2Model(config)
    return HFAudioBackbone(model, TINY_WAV2VEC2_META.id, TINY_WAV2VEC2_META, cut=cut)


TINY_WHISPER_META = SourceMeta(
    id="tiny:whisper",
    modality="audio",
    source_data="none (random init)",
    source_task="none: plumbing tests only",
    domain="-",
    licence="Apache-2.0",
    params=31_104,
    input="mono 16 kHz waveform, 2 s window, 80-band Whisper log-mel inside",
    offline=True,
    description="2-layer 32-d Whisper encoder with a 2 s window, random",
)


def create_tiny_whisper(pretrained: bool, cut: int) -> WhisperEncoderBackbone:
    from transformers import WhisperConfig, WhisperModel

    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(0)
        config = WhisperConfig(
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            max_source_positions=100,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
        encoder = WhisperModel(config).get_encoder()
    return WhisperEncoderBackbone(encoder, TINY_WHISPER_META.id, TINY_WHISPER_META, cut=cut)
