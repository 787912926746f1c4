"""Audio classification (keywords, commands, speakers, sounds) on any audio backbone."""

from __future__ import annotations

import math

import numpy as np

from ..config import TASK_DEFAULTS, FitConfig
from ..data.audio import AudioDataset, AudioSource, open_audio_inputs, open_audio_source, read_audio
from ..zoo.audio import AudioBackbone
from ..zoo.base import AudioPreprocess, Backbone, ZooError
from .base import TransferEstimator
from .serving import AudioServing

# Defaults for audio (all other settings: FitConfig's): config.TASK_DEFAULTS.
AUDIO_DEFAULTS = TASK_DEFAULTS["audio"]
MAX_AUTO_CLIP = 10.0


def durations(source: AudioSource) -> np.ndarray:
    """Seconds of each recording (file headers, or array lengths)."""
    import soundfile as sf

    out = []
    for item in source.items:
        if isinstance(item, np.ndarray):
            assert source.rate is not None  # the openers refuse arrays without their rate
            out.append(len(item) / float(source.rate))
        else:
            info = sf.info(str(item))
            out.append(info.frames / info.samplerate)
    return np.asarray(out, dtype=np.float64)


def resolve_clip(cfg: FitConfig, backbone: AudioBackbone, source: AudioSource | None) -> float:
    """``clip_seconds`` if given; else the backbone's own clip, raised to cover 95% of the
    training recordings (rounded up to 0.1 s, at most 10 s)."""
    if cfg.clip_seconds:
        return float(cfg.clip_seconds)
    own = backbone.preprocess.clip_seconds
    if source is None or not len(source):
        return own
    p95 = float(np.percentile(durations(source), 95))
    return max(own, min(MAX_AUTO_CLIP, math.ceil(p95 * 10 - 1e-6) / 10))


class AudioClassifier(TransferEstimator):
    """Fine-tune a pre-trained audio encoder for new classes.

    >>> clf = AudioClassifier("packaged:ge2e", strategy="lp_ft")
    >>> clf.fit("commands/train")      # one subfolder per class, or a CSV of path,label
    >>> clf.predict(["yes.wav", "no.flac"])
    >>> AudioClassifier(backbone="runs/source")  # a model pretrained on other speech
    """

    task = "audio"
    preprocess_: AudioPreprocess
    modality = "audio"
    serving_class = AudioServing
    defaults = AUDIO_DEFAULTS

    def _open_labeled(self, X, y, classes, cfg: FitConfig) -> AudioSource:
        return open_audio_source(
            X,
            y,
            classes=classes,
            rate=cfg.array_rate,
            skip_bad=cfg.skip_bad,
            label_column=cfg.label_column,
            group_column=cfg.group_column,
        )

    def _open_unlabeled(self, X) -> AudioSource:
        cfg = getattr(self, "config_", None) or self.resolved_config()  # unfitted: suggest
        return open_audio_inputs(X, rate=cfg.array_rate)

    def _input_spec(self, backbone: Backbone, train_source, cfg: FitConfig) -> AudioPreprocess:
        if not isinstance(backbone, AudioBackbone):  # the ones with set_augment
            raise ZooError(
                f"{backbone.id} cannot be fine-tuned for --task {self.task}: it has "
                "no spectrogram augmentation hook; choose another audio backbone "
                "(`headstart models --modality audio`)"
            )
        backbone.set_augment(cfg.augment)  # SpecAugment while backbone layers train
        return AudioPreprocess(
            sample_rate=backbone.preprocess.sample_rate,
            clip_seconds=resolve_clip(cfg, backbone, train_source),
        )

    def _dataset(
        self,
        source,
        preprocess: AudioPreprocess,
        train: bool,
        cfg: FitConfig,
        backbone: Backbone | None = None,
    ) -> AudioDataset:
        cache = self.__dict__.setdefault("_decoded", {})  # recordings decoded once per fit
        return AudioDataset(
            source,
            preprocess,
            cfg.augment if train else "none",
            seed=cfg.seed,
            train=train,
            cache=cache,
        )

    def _new_baseline(self, cfg: FitConfig, train_src, balanced: bool, metric: str):
        from ..baselines import AudioFeatures, ClassicBaseline
        from ..zoo import create_backbone

        pre = getattr(self, "preprocess_", None)  # none yet in a study's baseline-only run
        if pre is None:
            pre = create_backbone(cfg.backbone, pretrained=False).preprocess
            if not isinstance(pre, AudioPreprocess):
                raise ZooError(
                    f"{cfg.backbone} is not an audio model; --task {self.task} needs "
                    "an audio backbone (`headstart models --modality audio`)"
                )
        rate = pre.sample_rate
        return ClassicBaseline(
            [AudioFeatures(rate=rate)], seed=cfg.seed, balanced=balanced, metric=metric
        )

    def _baseline_item(self, source: AudioSource, i: int, featurizer) -> np.ndarray:
        # the whole recording at the features' rate (the network's clip crops it)
        return read_audio(source.items[i], featurizer.rate, source.rate, source.name(i))
