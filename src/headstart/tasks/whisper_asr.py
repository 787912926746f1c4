"""Long file: the Whisper recogniser's network, loss/evaluation, estimator and artifacts
belong together (data checks live in whisper_data.py, decoding in whisper_decode.py).

Speech recognition with a Whisper encoder-decoder (``packaged:whisper-tiny.en``,
``packaged:whisper-base``, or a run fine-tuned from one): ``SpeechRecognizer`` builds this
estimator when its backbone is a Whisper model, so ``--task asr`` covers both recognisers.

The network is the core's backbone + head pair: the backbone is Whisper's audio encoder
(its layer groups: the convolutional stem, each transformer block, the final norm), the head
is Whisper's text decoder with its tied output projection. The shared loop trains it; this
module gives only the loss (cross-entropy of the transcript's tokens, teacher-forced) and the
evaluation (greedy decoding -> word and character error rates). The strategies map onto
the core's:

* ``feature_extract`` - the decoder alone, on encoder states computed once and cached;
* ``partial`` - the last ``partial_groups`` encoder groups and the decoder;
* ``finetune`` - everything;
* ``lora`` - LoRA adapters on the encoder's attention (q, v) with the decoder trained.

A recording must last at most 30 s (Whisper's window): longer ones raise in training and
are cut to their first 30 s (with a warning naming them) in transcription. Silent
recordings raise in training and transcribe to "" with a warning naming them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..choose import interpolate
from ..config import FitConfig
from ..data.audio import AudioSource, open_audio_inputs, open_transcribed
from ..data.images import DataError
from ..train import Trainer
from ..zoo.base import AudioPreprocess
from .base import (
    FORMAT_VERSION,
    TransferEstimator,
    fit_fingerprint,
    refuse_pool,
    resolve_config,
)
from .serving import SpeechServing
from .whisper_data import (
    RATE,
    WINDOW_SECONDS,
    _collate,
    _Recordings,
    check_recordings,
    encode_transcripts,
)
from .whisper_decode import WhisperText, beam_decode, greedy_decode, normalise_text

log = logging.getLogger(__name__)

WHISPER_SETTINGS = "whisper_asr.json"
WHISPER_DEFAULTS = {
    "backbone": "packaged:whisper-tiny.en",
    "strategy": "feature_extract",
    "epochs": 5,
    "head_epochs": 5,
    "batch_size": 8,
    "eval_batch_size": 8,
    "lr": 1e-5,
    "head_lr": 3e-5,
    "lr_decay": 1.0,
    "weight_decay": 0.01,
    "label_smoothing": 0.0,
    "channels_last": False,
    "early_stopping": 0,
    "min_steps": 0,
    "partial_groups": 2,
    "lora_lr": 1e-3,
    "wise_mix": 0.8,
}
STRATEGIES = ("feature_extract", "partial", "finetune", "lora")


class WhisperEncoderStates(nn.Module):
    """Whisper's encoder as the backbone: a batch of waveforms -> encoder states over the
    whole 30 s window (the decoder was trained to read all of them)."""

    def __init__(self, encoder_backbone: Any):
        super().__init__()
        self.inner: Any = encoder_backbone  # zoo.hf_audio.WhisperEncoderBackbone
        self.meta, self.id = encoder_backbone.meta, encoder_backbone.id
        self.feature_dim = encoder_backbone.feature_dim
        self.lora: dict | None = None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.inner.model(self.inner.log_mel(wave)).last_hidden_state

    def groups(self):
        return self.inner.groups()

    def add_lora(self, settings: dict) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = list(settings["targets"] or ["q_proj", "v_proj"])
        config = LoraConfig(
            r=settings["r"],
            lora_alpha=settings["alpha"],
            lora_dropout=settings["dropout"],
            target_modules=targets,
            bias="none",
        )
        inject_adapter_in_model(config, self.inner.model)
        self.lora = {**settings, "targets": targets}


class _Teacher:
    """What the decoder head returns in training: the encoder states, waiting for the
    transcript tokens the loss holds (teacher forcing needs them as the decoder's input)."""

    def __init__(self, head: WhisperDecoderHead, states: torch.Tensor):
        self.head, self.states = head, states

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.states, tokens)


class WhisperDecoderHead(nn.Module):
    """Whisper's text decoder and its output projection (tied to the token embedding)."""

    def __init__(self, decoder: nn.Module, proj_out: nn.Linear):
        super().__init__()
        self.decoder, self.proj_out = decoder, proj_out
        self.vocab_size = proj_out.out_features

    def forward(self, states: torch.Tensor) -> _Teacher:
        return _Teacher(self, states.float())

    def logits(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.decoder(input_ids=tokens, encoder_hidden_states=states).last_hidden_state
        return self.proj_out(h)


class WhisperSeq2Seq(nn.Module):
    """backbone (encoder) -> head (decoder): the core's model shape."""

    def __init__(self, whisper: Any, encoder_backbone: Any):
        super().__init__()
        self.backbone = WhisperEncoderStates(encoder_backbone)
        self.head = WhisperDecoderHead(whisper.model.decoder, whisper.proj_out)
        self.config = whisper.config

    def forward(self, wave: torch.Tensor) -> _Teacher:
        return self.head(self.backbone(wave))


class WhisperTrainer(Trainer):
    """The shared loop with Whisper's loss (token cross-entropy after the prompt) and its
    evaluation (greedy transcripts: ``val_wer``, ``val_cer``; ``val_accuracy`` = 1 - WER
    picks the best epoch)."""

    text: WhisperText

    def loss(self, out: Any, y: torch.Tensor) -> torch.Tensor:
        inputs = y[:, :-1].clamp_min(0)  # -100 pads read as token 0; their targets are ignored
        targets = y[:, 1:].clone()
        targets[:, : len(self.text.prompt) - 1] = -100  # the prompt is given, not predicted
        logits = out.logits(inputs)
        return nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            label_smoothing=self.cfg.label_smoothing,
        )

    @torch.inference_mode()
    def evaluate_loader(self, module, loader) -> dict:
        from torchmetrics.functional.text import char_error_rate, word_error_rate

        was = module.training
        module.eval()
        head = module.head if hasattr(module, "head") else module
        losses, hyp, ref = [], [], []
        for x, y in loader:
            out = module(self._to_device(x))
            y = y.to(self.device)
            losses.append(float(self.loss(out, y)) * len(y))
            hyp += [self.text.decode(t) for t in greedy_decode(head, out.states, self.text)]
            ref += [self.text.decode([int(i) for i in row if i >= 0]) for row in y.tolist()]
        module.train(was)
        hyp = [normalise_text(h) for h in hyp]
        ref = [normalise_text(r) for r in ref]
        wer = float(word_error_rate(hyp, ref))
        return {
            "val_loss": sum(losses) / max(len(ref), 1),
            "val_accuracy": max(0.0, 1.0 - wer),
            "val_wer": wer,
            "val_cer": float(char_error_rate(hyp, ref)),
        }


class _EncoderGraph(nn.Module):
    """The encoder's export graph: log-mel in, last hidden state out."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(log_mel).last_hidden_state


def whisper_strategy(cfg: FitConfig, n_groups: int):
    from ..strategies import ALL, Stage, Strategy

    name = cfg.strategy
    if name == "auto":
        name = "feature_extract"
    if name not in STRATEGIES:
        raise ValueError(
            f"strategy {name!r} is not available for a Whisper recogniser; choose one of "
            f"{', '.join(STRATEGIES)} (feature_extract = decoder only on cached encoder states)"
        )
    if name == "partial" and not 1 <= cfg.partial_groups <= n_groups:
        raise ValueError(f"partial_groups must be between 1 and the encoder's {n_groups} groups")
    groups, epochs = (
        {"feature_extract": 0, "partial": cfg.partial_groups, "finetune": ALL}.get(name, 0),
        (cfg.head_epochs if name == "feature_extract" else cfg.epochs),
    )
    if name == "lora":
        stage = Stage("lora", 0, cfg.epochs, cfg.lora_lr, cfg.head_lr, 1.0, "frozen", adapters=True)
    else:
        stage = Stage(
            "decoder" if name == "feature_extract" else name,
            groups,
            epochs,
            cfg.lr,
            cfg.head_lr,
            cfg.lr_decay,
            "frozen",
        )
    return Strategy(name, (stage,))


def mixable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the network's floating-point weights (the source's, before a fit)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def wise_mix(model: nn.Module, source: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT (Wortsman et al. 2022) in place: each weight becomes ``alpha`` x its
    fine-tuned value + (1 - ``alpha``) x the source's. Fine-tuning the decoder on a narrow
    set (digit strings) teaches it to write that set for any speech; a mix keeps the new
    accent's gain and what the source transcribed (docs/audio.md, issue 31's figures).
    Tied weights (the output projection is the token embedding) get the same mix under
    both names, so loading writes it once over."""
    model.load_state_dict(interpolate(source, model.state_dict(), alpha))
    log.info("wise_mix %g: weights %g x fine-tuned + %g x source", alpha, alpha, 1 - alpha)


class WhisperRecognizer(TransferEstimator):
    """Fine-tune Whisper on (recording, transcript) pairs.

    >>> asr = SpeechRecognizer("packaged:whisper-tiny.en", strategy="feature_extract")
    >>> asr.fit("train.csv")              # columns path,transcript
    >>> asr.transcribe(["a.wav"])         # greedy; beams=4 for beam search
    >>> asr.evaluate("test.csv")          # WER, CER, sentence accuracy
    """

    task = "asr"
    modality = "audio"
    defaults = WHISPER_DEFAULTS
    serving_class = SpeechServing
    augments = ("none",)

    def resolved_config(self) -> FitConfig:
        """The settings; a ``config`` built from the CTC recogniser's defaults (the CLI's
        ``--task asr``) takes Whisper's defaults for the settings still at those values
        (the CTC head's rates of 1e-3 would wreck a pretrained decoder)."""
        from ..config import TASK_DEFAULTS

        cfg = resolve_config(self)
        if self.config is None:
            return cfg
        ctc = {**FitConfig().to_dict(), **TASK_DEFAULTS["asr"]}
        keep = {"backbone", "strategy", *self.params}
        rebased = {
            k: v
            for k, v in WHISPER_DEFAULTS.items()
            if k not in keep and getattr(cfg, k) == ctc.get(k)
        }
        return cfg.replace(**rebased)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _build(backbone_id: str, folder: Path | None = None, pretrained: bool = True):
        """(network, text) for a packaged Whisper id, or from a saved run's folder."""
        from ..zoo.hf_audio import WhisperEncoderBackbone
        from ..zoo.whisper import PACKAGES, WHISPER_META, converted_folder, load_whisper

        name = backbone_id.removeprefix("packaged:")
        if folder is None:
            if name not in PACKAGES:
                from ..zoo.base import ZooError

                raise ZooError(
                    f"{backbone_id}: not a Whisper model; use packaged:whisper-tiny.en, "
                    "packaged:whisper-base or a run fine-tuned from one"
                )
            folder = converted_folder(name)
        whisper = load_whisper(folder, pretrained=pretrained)
        english = bool(json.loads((folder / "config.json").read_text())["vocab_size"] == 51864)
        meta = WHISPER_META.get(name) or next(iter(WHISPER_META.values()))
        enc = WhisperEncoderBackbone(whisper.get_encoder(), backbone_id, meta)
        return WhisperSeq2Seq(whisper, enc), WhisperText(folder, english), folder

    def _open(self, X, y, cfg: FitConfig) -> AudioSource:
        return open_transcribed(X, y, cfg)

    def fit(
        self,
        X,
        y=None,
        *,
        validation=None,
        resume: bool = False,
        callbacks=(),
        unlabeled=None,
        sample_weight=None,
    ):
        """Fit on recordings with transcripts (CSV of path,transcript, or waveforms + texts
        with ``array_rate``); ``validation`` as for every task, else ``val_fraction``."""
        refuse_pool(self.task, unlabeled, sample_weight)
        cfg = self.resolved_config()
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, text, folder = self._build(cfg.backbone)
        if cfg.strategy == "lora":
            model.backbone.add_lora(
                {
                    "r": cfg.lora_r,
                    "alpha": cfg.lora_alpha,
                    "dropout": cfg.lora_dropout,
                    "targets": [t.strip() for t in cfg.lora_targets.split(",") if t.strip()],
                }
            )
        source_weights = mixable_weights(model) if cfg.wise_mix < 1 else None
        source = self._open(X, y, cfg)
        val_src: AudioSource | None
        if validation is not None:
            vx, vy = validation if isinstance(validation, tuple) else (validation, None)
            train_src, val_src = source, self._open(vx, vy, cfg)
        else:
            n_val = int(round(cfg.val_fraction * len(source)))
            order = np.random.default_rng(cfg.seed).permutation(len(source))
            train_src = source.subset(np.sort(order[n_val:]))
            val_src = source.subset(np.sort(order[:n_val])) if n_val else None
        parts = [p for p in (train_src, val_src) if p is not None]
        for p in parts:
            check_recordings(p, training=True)
        targets = [encode_transcripts(text, p) for p in parts]
        groups = model.backbone.groups()
        strategy = whisper_strategy(cfg, len(groups))
        log.info(
            "%s on %s: %d train / %d validation recordings\n%s",
            cfg.backbone,
            source.origin,
            len(train_src),
            len(val_src) if val_src else 0,
            strategy.describe(),
        )
        self.model_, self.text_, self.classes_ = model, text, []
        self.preprocess_ = AudioPreprocess(sample_rate=RATE, clip_seconds=WINDOW_SECONDS)
        self.config_, self.data_origin_ = cfg, str(source.origin)
        self.source_folder_ = folder
        sets = [_Recordings(p, t) for p, t in zip(parts, targets)]

        def features(split: str):
            i = 0 if split == "train" else 1
            states = self._cached_states(parts[i], cfg.eval_batch_size)
            return states, _collate([(torch.zeros(1), torch.tensor(t)) for t in targets[i]])[1]

        fingerprint = fit_fingerprint(cfg, train_src, val_src)
        self.fingerprint_ = fingerprint
        trainer = WhisperTrainer(
            model,
            groups,
            strategy,
            cfg.replace(monitor="accuracy"),
            train_set=sets[0],
            val_set=sets[1] if len(sets) > 1 else None,
            features=features,
            run_dir=Path(self.run_dir) if self.run_dir else None,
            fingerprint=fingerprint,
            collate_fn=_collate,
            callbacks=callbacks,
        )
        trainer.text = text
        state = trainer.run(resume=resume)
        model.eval()
        if source_weights is not None:
            wise_mix(model, source_weights, cfg.wise_mix)
        self.strategy_, self.history_ = strategy, state.history
        self.stages_, self.best_ = state.stage_summaries, state.best_where
        self.fit_seconds_ = time.perf_counter() - t0
        self.metrics_ = {
            "fit_seconds": self.fit_seconds_,
            "best": state.best_where,
            "wise_mix": cfg.wise_mix,
        }
        self.is_main_process_ = trainer.accelerator.is_main_process
        if val_src is not None:
            self.metrics_["validation"] = self.evaluate(val_src)
        if self.run_dir is not None:
            self.save(self.run_dir)
        return self

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def encoder_states(self, source: AudioSource, batch_size: int = 8) -> torch.Tensor:
        """Encoder states of every recording (fp16, batch x 1500 x d): what the
        decoder-only strategy caches."""
        self._check_fitted()
        enc = self.model_.backbone.eval()
        loader = torch.utils.data.DataLoader(
            _Recordings(source, None), batch_size=batch_size, collate_fn=_collate
        )
        out = [enc(x).half() for x, _ in loader]
        d = self.model_.backbone.feature_dim
        return torch.cat(out) if out else torch.empty(0, 1500, d, dtype=torch.float16)

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            from .base import NotFittedError

            raise NotFittedError("call fit() first (or SpeechRecognizer.load(run_dir))")

    def transcribe(self, X, beams: int = 1, batch_size: int = 8) -> list[str]:
        """The words in each recording (paths, a folder, a CSV with a path column, or
        waveforms with ``array_rate``): greedy decoding, or beam search with ``beams`` > 1."""
        self._check_fitted()
        source = (
            X if isinstance(X, AudioSource) else open_audio_inputs(X, rate=self.config_.array_rate)
        )
        return self._transcribe(source, beams, batch_size)

    @torch.inference_mode()
    def _transcribe(self, source: AudioSource, beams: int = 1, batch_size: int = 8) -> list[str]:
        silent = set(check_recordings(source, training=False))
        model = self.model_.eval()
        loader = torch.utils.data.DataLoader(
            _Recordings(source, None), batch_size=batch_size, collate_fn=_collate
        )
        device = next(model.parameters()).device
        decode = greedy_decode if beams <= 1 else beam_decode
        kwargs = {} if beams <= 1 else {"beams": beams}
        out: list[str] = []
        if self._encoder_frozen():  # the source encoder: its states may be cached already
            states = self._cached_states(source, batch_size)
            for chunk in states.split(batch_size):
                out += [
                    self.text_.decode(t)
                    for t in decode(model.head, chunk.to(device), self.text_, **kwargs)
                ]
        else:
            for x, _ in loader:
                states = model.backbone(x.to(device))
                out += [
                    self.text_.decode(t) for t in decode(model.head, states, self.text_, **kwargs)
                ]
        return ["" if i in silent else t for i, t in enumerate(out)]

    def _encoder_frozen(self) -> bool:
        """Whether the encoder holds the source's weights (zero-shot, or decoder-only)."""
        strategy = getattr(self, "strategy_", None)
        name = strategy.name if strategy is not None else self.config_.strategy
        return not hasattr(self, "strategy_") or name in ("feature_extract", "auto")

    def _cached_states(self, source: AudioSource, batch_size: int) -> torch.Tensor:
        """The source encoder's states of ``source``, through the feature cache (memory,
        and disk with ``feature_cache``): a decoder-only fit and its evaluations read
        them once."""
        from ..features import cache_key, cached_features

        key = cache_key(
            kind="whisper-encoder", model=self.config_.backbone, data=source.fingerprint()
        )
        return cached_features(
            key, lambda: self.encoder_states(source, batch_size), self.config_.feature_cache
        )

    def predict(self, X) -> list[str]:
        return self.transcribe(X)

    def predict_proba(self, X):
        raise TypeError("a speech recogniser gives transcripts: use transcribe() / predict()")

    def evaluate(self, X, y=None, tta: str | None = None, beams: int = 1) -> dict:
        """Word and character error rates (torchmetrics) on normalised text (lower case,
        no punctuation), sentence accuracy, and a few transcripts beside their references."""
        from torchmetrics.functional.text import char_error_rate, word_error_rate

        from .base import tta_views

        tta_views(self, tta)
        self._check_fitted()
        source = X if isinstance(X, AudioSource) else open_transcribed(X, y, self.config_)
        if source.transcripts is None:
            raise DataError(f"{source.origin}: evaluation needs the transcripts")
        refs = [normalise_text(t) for t in source.transcripts]
        raw = self._transcribe(source, beams)
        hyp = [normalise_text(t) for t in raw]
        return {
            "cer": float(char_error_rate(hyp, refs)),
            "wer": float(word_error_rate(hyp, refs)),
            "sentence_accuracy": float(np.mean([h == r for h, r in zip(hyp, refs)])),
            "n": len(refs),
            "examples": [{"reference": r, "transcript": h} for r, h in list(zip(refs, raw))[:10]],
        }

    def score(self, X, y=None) -> float:
        return 1.0 - self.evaluate(X, y)["wer"]

    # ------------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import version

        meta = self.model_.backbone.meta
        return {
            "format": "headstart-run",
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "decoder": "whisper",
            "classes": [],
            "adapter": self.model_.backbone.lora,
            "backbone": {
                "id": self.config_.backbone,
                "architecture": {"id": self.config_.backbone, "assets": "whisper"},
                "meta": meta.to_dict(),
                "feature_dim": self.model_.backbone.feature_dim,
            },
            "preprocess": self.preprocess_.to_dict(),
            "strategy": self.strategy_.to_dict() if hasattr(self, "strategy_") else None,
            "stages": getattr(self, "stages_", []),
            "metrics": getattr(self, "metrics_", {}),
            "data": {"origin": getattr(self, "data_origin_", None)},
            "fingerprint": getattr(self, "fingerprint_", None),
            "fit_config": self.config_.to_dict(),
            "versions": {p: version(p) for p in ("torch", "transformers", "safetensors")},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, run_dir: str | Path) -> Path:
        """The whole network (safetensors, fp32), the Whisper config, tokenizer and
        feature-extractor settings in ``whisper/``, then config.json; atomic writes."""
        from ..artifacts import (
            atomic_save_tensors,
            atomic_write_bytes,
            atomic_write_json,
            state_dict_tensors,
        )
        from ..zoo.local import RUN_CONFIG, RUN_WEIGHTS

        run_dir = Path(run_dir)
        assets = run_dir / "whisper"
        for f in ("config.json", "preprocessor_config.json", "tokenizer.json", "whisper.json"):
            src = Path(self.source_folder_) / f
            if src.is_file():
                atomic_write_bytes(assets / f, src.read_bytes())
        atomic_save_tensors(
            run_dir / RUN_WEIGHTS, state_dict_tensors(self.model_), metadata={"format": "pt"}
        )
        atomic_write_json(run_dir / RUN_CONFIG, self.run_config())
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> WhisperRecognizer:
        """A fitted Whisper recogniser from its run directory: nothing is downloaded and no
        package is needed (the run holds the tokenizer and config)."""
        from safetensors.torch import load_file

        from ..zoo.local import RUN_WEIGHTS, read_run_config

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        fit_cfg = FitConfig.from_dict(config["fit_config"])
        folder = run_dir / "whisper"
        model, text, _ = cls._build(fit_cfg.backbone, folder=folder, pretrained=False)
        if config.get("adapter"):
            model.backbone.add_lora(config["adapter"])
        state = load_file(str(run_dir / RUN_WEIGHTS))
        model.load_state_dict(state)
        model.to(device).eval()
        est = cls(config=fit_cfg, run_dir=run_dir)
        est.model_, est.text_, est.classes_ = model, text, []
        est.preprocess_ = AudioPreprocess(sample_rate=RATE, clip_seconds=WINDOW_SECONDS)
        est.config_, est.metrics_ = fit_cfg, config.get("metrics", {})
        est.stages_, est.fingerprint_ = config.get("stages", []), config.get("fingerprint")
        est.data_origin_ = (config.get("data") or {}).get("origin")
        est.source_folder_ = folder
        return est

    def export_encoder_onnx(self, path: str | Path, opset: int = 18, atol: float = 1e-3) -> dict:
        """The encoder (log-mel window 1 x 80 x 3000 -> states 1 x 1500 x d) as ONNX, checked
        against PyTorch with onnxruntime on a real-shaped input; returns the parity figures.
        The decoder's autoregressive loop is not exported (``headstart export`` on a
        Whisper run says so): transcribe with ``predict`` / ``transcribe``."""
        import onnx
        import onnxruntime as ort

        from ..artifacts import atomic_write_bytes

        self._check_fitted()
        backbone: Any = self.model_.backbone
        encoder = backbone.inner.model.eval()
        if backbone.lora:
            raise ValueError(
                "merge the LoRA adapters before exporting (export supports plain weights)"
            )
        torch.manual_seed(0)
        wave = 0.1 * torch.randn(1, RATE * 3)
        mel = backbone.inner.log_mel(wave)
        with torch.inference_mode():
            want = encoder(mel).last_hidden_state.numpy()
        program = torch.onnx.export(
            _EncoderGraph(encoder).eval(),
            (mel,),
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=["log_mel"],
            output_names=["states"],
            opset_version=opset,
        )
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        data = program.model_proto.SerializeToString()
        onnx.checker.check_model(onnx.load_from_string(data))
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(None, {"log_mel": mel.numpy()})[0]
        diff = float(np.abs(got - want).max())
        if diff > atol:
            raise RuntimeError(f"ONNX encoder differs from PyTorch by {diff:.2e} (> {atol:g})")
        atomic_write_bytes(path, data)
        return {"path": str(path), "max_abs_diff": diff, "bytes": len(data)}

    @classmethod
    def pretrained(cls, backbone: str = "packaged:whisper-tiny.en") -> WhisperRecognizer:
        """The packaged model as it is (zero-shot): transcribe / evaluate with no fit."""
        est = cls(backbone=backbone)
        cfg = est.resolved_config()
        model, text, folder = cls._build(backbone)
        est.model_, est.text_, est.classes_ = model, text, []
        est.preprocess_ = AudioPreprocess(sample_rate=RATE, clip_seconds=WINDOW_SECONDS)
        est.config_, est.source_folder_, est.metrics_ = cfg, folder, {}
        return est
