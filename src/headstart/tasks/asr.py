"""Speech recognition of short utterances: an audio backbone's frame features, a new CTC
head over the characters of the training transcripts, greedy decoding.

Everything else is the core's: strategies (a head-only stage trains on cached frame
features), the training loop with checkpoints and resume, the run directory, chained
transfer (a recogniser pretrained on one accent is the backbone of the next fit).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import torch
from torch import nn

from ..config import TASK_DEFAULTS, FitConfig
from ..data.audio import AudioSource, open_audio_inputs, open_transcribed
from ..data.images import DataError
from ..heads import HeadSpec, TransferModel
from ..train import Trainer
from ..zoo.audio import AudioBackbone
from ..zoo.base import AudioPreprocess, Backbone
from .audio import MAX_AUTO_CLIP, AudioClassifier, durations
from .serving import SpeechServing
from .whisper_asr import WhisperRecognizer

log = logging.getLogger(__name__)

BLANK = 0  # CTC's blank is output 0; character k of the vocabulary is output k + 1

ASR_DEFAULTS = TASK_DEFAULTS["asr"]  # all other settings: FitConfig's


def normalise(text: str) -> str:
    """Lower case, one space between words."""
    return re.sub(r"\s+", " ", str(text).lower()).strip()


def encode(texts: list[str], vocab: list[str], origin: str = "") -> np.ndarray:
    """Transcripts -> (N, longest) character ids (1-based; 0 pads). A character outside
    ``vocab`` raises, naming the row."""
    index = {c: i + 1 for i, c in enumerate(vocab)}
    rows = []
    for r, text in enumerate(texts):
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise DataError(
                f"{origin} row {r + 1}: character(s) {unknown} are not in the "
                f"model's alphabet {''.join(vocab)!r}; remove them from the "
                "transcript"
            )
        if not text:
            raise DataError(
                f"{origin} row {r + 1}: empty transcript; every recording needs the words spoken"
            )
        rows.append([index[c] for c in text])
    out = np.zeros((len(rows), max((len(r) for r in rows), default=1)), dtype=np.int64)
    for r, ids in enumerate(rows):
        out[r, : len(ids)] = ids
    return out


def ctc_frames_needed(ids) -> int:
    """Frames CTC needs to emit ``ids``: one per character, and a blank between each pair
    of equal neighbours ("ll" is l, blank, l)."""
    ids = [int(i) for i in ids if i > 0]
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def transcripts(source: AudioSource) -> list[str]:
    """The transcripts of ``source``; a clear error for recordings that came without them
    (an AudioSource of labelled recordings passed to a recogniser)."""
    if source.transcripts is None:
        raise DataError(
            f"{source.origin}: these recordings have no transcripts; speech "
            "recognition reads a CSV of path,transcript rows (or waveforms with "
            "their texts)"
        )
    return source.transcripts


def _item_name(source: AudioSource, k: int) -> str:
    item = source.items[k]
    return f"recording {k + 1}" if isinstance(item, np.ndarray) else str(item)


def cropped(source: AudioSource, clip_seconds: float) -> list[str]:
    """Names of the recordings longer than the clip (cropped to it, losing words)."""
    return [
        _item_name(source, int(k)) for k in np.flatnonzero(durations(source) > clip_seconds + 1e-6)
    ]


def check_transcripts_fit(
    backbone: Backbone, preprocess: AudioPreprocess, sources: list[AudioSource], clip_given: bool
) -> int:
    """Every transcript must fit the frames the backbone gives for one clip, or CTC cannot
    align it (its loss is infinite, and ``zero_infinity`` would skip the recording without
    a word). Recordings longer than the clip are cropped (a random window in training, the
    middle in evaluation), losing words: said.
    Returns the frames per clip."""
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            frames = int(backbone.sequence(torch.zeros(1, preprocess.samples)).shape[1])
    finally:
        backbone.train(was)
    for source in sources:
        needs = [ctc_frames_needed(row) for row in source.labels]
        too_long = [k for k, need in enumerate(needs) if need > frames]
        if too_long:
            k = too_long[0]
            name, need, text = _item_name(source, k), needs[k], transcripts(source)[k]
            more = f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else ""
            raise DataError(
                f"{source.origin}: {name}{more}: its transcript {text[:60]!r}"
                f"{'...' if len(text) > 60 else ''} needs {need} frames, and {backbone.id} "
                f"gives {frames} for a {preprocess.clip_seconds:g} s clip, so CTC cannot align "
                "it; check that the transcript belongs to the recording, split the recording, "
                "or raise --clip-seconds"
            )
        cut = cropped(source, preprocess.clip_seconds)
        if cut:
            log.warning(
                "%s: %d recording(s) last longer than the %g s clip and are cropped "
                "to it, losing the words at their start or end (%s%s)%s",
                source.origin,
                len(cut),
                preprocess.clip_seconds,
                ", ".join(cut[:3]),
                ", ..." if len(cut) > 3 else "",
                "; raise --clip-seconds if words are lost"
                if clip_given
                else f"; the auto clip covers 95% of the training recordings (at most "
                f"{MAX_AUTO_CLIP:g} s): if words are lost, set --clip-seconds",
            )
    return frames


def greedy_decode(log_probs: torch.Tensor, vocab: list[str]) -> list[str]:
    """Best path: the likeliest output per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).cpu().numpy()
    out = []
    for row in best:
        chars, prev = [], BLANK
        for k in row:
            if k != prev and k != BLANK:
                chars.append(vocab[k - 1])
            prev = k
        out.append(re.sub(r" +", " ", "".join(chars)).strip())
    return out


class CTCHead(nn.Module):
    """Frame features (batch, frames, dim) -> log-probabilities (batch, frames, 1 + chars).
    ``hidden=(h,)`` puts a bidirectional GRU of ``h`` units a direction before the linear
    layer (context across frames); ``hidden=()`` is a linear layer per frame."""

    def __init__(self, in_features: int, num_outputs: int, spec: HeadSpec = HeadSpec()):
        super().__init__()
        if len(spec.hidden) > 1:
            raise ValueError("a CTC head takes at most one hidden size (its GRU's width)")
        self.spec, self.in_features, self.num_classes = spec, in_features, num_outputs
        self.dropout = nn.Dropout(spec.dropout)
        width = in_features
        self.rnn = None
        if spec.hidden:
            self.rnn = nn.GRU(in_features, spec.hidden[0], batch_first=True, bidirectional=True)
            width = 2 * spec.hidden[0]
        self.out = nn.Linear(width, num_outputs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.dropout(frames.float())
        if self.rnn is not None:
            x, _ = self.rnn(x)
        return torch.log_softmax(self.out(self.dropout(x)), dim=-1)


class CTCModel(TransferModel):
    """Backbone frame features -> CTC head."""

    def forward(self, x, return_features: bool = False):
        frames = self.backbone.sequence(x)
        out = self.head(frames)
        return (out, frames) if return_features else out


class _Frames(nn.Module):
    """A backbone read through ``sequence`` (what the head-only stages' cache holds)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.sequence(x)


class CTCTrainer(Trainer):
    """The core loop with the CTC loss; validation reports character and word error rates
    and ``val_accuracy`` = 1 - CER (character accuracy: what picks the best epoch)."""

    vocab: list[str] = []

    def loss(self, log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lengths = (y > 0).sum(1)
        frames = torch.full((len(y),), log_probs.shape[1], dtype=torch.long)
        return nn.functional.ctc_loss(
            log_probs.float().transpose(0, 1), y, frames, lengths, blank=BLANK, zero_infinity=True
        )

    def evaluate_loader(self, module, loader) -> dict:
        from torchmetrics.functional.text import char_error_rate, word_error_rate

        log_probs, y = self.predict_logits(module, loader)
        vocab = self.vocab
        hyp = greedy_decode(log_probs, vocab)
        ref = ["".join(vocab[k - 1] for k in row if k > 0) for row in y.tolist()]
        cer = float(char_error_rate(hyp, ref))
        return {
            "val_loss": float(self.loss(log_probs, y)),
            "val_accuracy": max(0.0, 1 - cer),
            "val_cer": cer,
            "val_wer": float(word_error_rate(hyp, ref)),
        }


def _parent_alphabet(parent: str) -> list[str]:
    """``keep_head``: the alphabet of the recogniser run the fit starts from."""
    from ..zoo.local import is_run_dir, read_run_config

    if not is_run_dir(parent) or read_run_config(parent).get("task") != "asr":
        raise ValueError(
            f"keep_head needs a speech-recogniser run directory as backbone, not {parent!r}"
        )
    return list(read_run_config(parent)["classes"])


class SpeechRecognizer(AudioClassifier):
    """Fine-tune an audio backbone to transcribe short utterances (commands, digit strings)
    with a CTC head over characters.

    >>> asr = SpeechRecognizer("runs/source-asr", strategy="finetune")
    >>> asr.fit("train.csv")            # columns path,transcript
    >>> asr.transcribe(["a.wav"])       # -> ["three one four"]
    >>> asr.evaluate("test.csv")        # CER, WER, sentence accuracy
    """

    task = "asr"
    defaults = ASR_DEFAULTS
    serving_class = SpeechServing

    def __new__(cls, backbone=None, strategy=None, config=None, run_dir=None, **params):
        """A Whisper backbone (``packaged:whisper-*``) gives a :class:`WhisperRecognizer`
        (encoder-decoder, its own tokenizer) instead of a CTC head on frame features."""
        from ..zoo.whisper import is_whisper_id

        chosen = backbone if backbone is not None else getattr(config, "backbone", None)
        if cls is SpeechRecognizer and is_whisper_id(chosen):
            return WhisperRecognizer(backbone, strategy, config, run_dir, **params)
        return super().__new__(cls)

    @classmethod
    def load(cls, run_dir, device: str = "cpu"):
        """A fitted recogniser from its run directory (CTC or Whisper)."""
        from ..zoo.local import read_run_config

        if read_run_config(run_dir).get("decoder") == "whisper":
            return WhisperRecognizer.load(run_dir, device=device)
        return super().load(run_dir, device=device)

    @staticmethod
    def _new_head(backbone: Backbone, n_out: int, spec: HeadSpec) -> CTCHead:
        if not isinstance(backbone, AudioBackbone):  # the ones with sequence_dim
            from ..zoo.base import ZooError

            raise ZooError(
                f"{backbone.id}: speech recognition needs an audio backbone with "
                "frame features (audio:cnn and its runs, packaged:crepe-*, "
                "packaged:ge2e)"
            )
        return CTCHead(backbone.sequence_dim, n_out + 1, spec)

    @staticmethod
    def _new_model(backbone: Backbone, head) -> CTCModel:
        return CTCModel(backbone, head)

    def trainer(self, *args, **kwargs) -> CTCTrainer:
        check_transcripts_fit(
            self.model_.backbone,
            self.preprocess_,
            [d.source for d in (kwargs["train_set"], kwargs["val_set"]) if d],
            bool(self.config_.clip_seconds),
        )
        t = CTCTrainer(*args, **kwargs)
        t.vocab = list(self.classes_)
        return t

    def _open_labeled(self, X, y, classes, cfg: FitConfig) -> AudioSource:
        source = open_transcribed(X, y, cfg)
        texts = [normalise(t) for t in transcripts(source)]
        if classes is None and cfg.keep_head:  # the parent's alphabet, so its head fits
            classes = _parent_alphabet(cfg.backbone)
        vocab = classes if classes is not None else sorted({c for t in texts for c in t})
        source.transcripts = texts
        source.labels = encode(texts, vocab, source.origin)
        source.classes = list(vocab)
        return source

    def _split_at(self, X, y, validation, cfg: FitConfig):
        """Random (not stratified) validation share: a transcript is no class."""
        source = self._open_labeled(X, y, None, cfg)
        if validation is not None:
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            val = self._open_labeled(vx, vy, source.classes, cfg)
            return source, source, val, np.arange(len(source))
        n_val = int(round(cfg.val_fraction * len(source)))
        if n_val == 0:
            return source, source, None, np.arange(len(source))
        order = np.random.default_rng(cfg.seed).permutation(len(source))
        tr = np.sort(order[n_val:])
        return source, source.subset(tr), source.subset(np.sort(order[:n_val])), tr

    def _compute_features(
        self, network, backbone: Backbone, preprocess, source, cfg: FitConfig
    ) -> torch.Tensor:
        return super()._compute_features(_Frames(backbone), backbone, preprocess, source, cfg)

    def fit(self, X, y=None, **kwargs):
        """Fit on recordings with transcripts: a CSV of path,transcript (or
        ``label_column``), or waveforms + texts with ``array_rate``."""
        cfg = self.resolved_config()
        if cfg.strategy == "lora":
            raise ValueError(
                "strategy lora is not supported for speech recognition yet; use "
                "finetune, partial, gradual, lp_ft or feature_extract"
            )
        return super().fit(X, y, **kwargs)

    def run_config(self) -> dict:
        self.multi_label_ = False  # the base fit reads 2-D labels (character ids) as such
        return {**super().run_config(), "alphabet": "".join(self.classes_), "blank": BLANK}

    # ------------------------------------------------------------ inference
    @torch.inference_mode()
    def _log_probs(self, source: AudioSource) -> torch.Tensor:
        head = self.model_.head.eval()
        if len(source):
            clip = self.preprocess_.clip_seconds
            long = cropped(source, clip)
            if long:
                log.warning(
                    "%d recording(s) last longer than the model's %g s clip: only "
                    "their middle %g s are transcribed (%s%s); split them into shorter "
                    "ones",
                    len(long),
                    clip,
                    clip,
                    ", ".join(long[:3]),
                    ", ..." if len(long) > 3 else "",
                )
        frames = self._features(source).to(next(head.parameters()).device)
        if not len(frames):
            return torch.empty(0, 0, head.num_classes)
        return torch.cat([head(chunk) for chunk in frames.split(256)])

    def transcribe(self, X) -> list[str]:
        """The words in each recording (paths, a folder, a CSV with a path column, or
        waveforms with ``array_rate``)."""
        self._check_fitted()
        return greedy_decode(
            self._log_probs(open_audio_inputs(X, rate=self.config_.array_rate)), self.classes_
        )

    def predict(self, X) -> list[str]:
        return self.transcribe(X)

    def predict_proba(self, X):
        raise TypeError("a speech recogniser gives transcripts: use transcribe() / predict()")

    def evaluate(self, X, y=None, tta: str | None = None) -> dict:
        """Character and word error rates (torchmetrics), sentence accuracy, and a few
        transcripts beside their references. ``tta``: none (a recogniser has no test-time
        views; any other value raises)."""
        from torchmetrics.functional.text import char_error_rate, word_error_rate

        from .base import tta_views

        tta_views(self, tta)  # a clear error for a test-time view
        self._check_fitted()
        source = open_transcribed(X, y, self.config_)
        refs = [normalise(t) for t in transcripts(source)]
        hyp = greedy_decode(self._log_probs(source), self.classes_)
        return {
            "cer": float(char_error_rate(hyp, refs)),
            "wer": float(word_error_rate(hyp, refs)),
            "sentence_accuracy": float(np.mean([h == r for h, r in zip(hyp, refs)])),
            "n": len(refs),
            "examples": [{"reference": r, "transcript": h} for r, h in list(zip(refs, hyp))[:10]],
        }

    def score(self, X, y=None) -> float:
        return 1.0 - self.evaluate(X, y)["cer"]
