"""Every default of a fit, in one place. CLI flags and YAML keys map onto these fields 1:1
(``--head-lr`` <-> ``head_lr``).

Long file: FitConfig's fields, each with its help text, are the one place a default lives
(house rule 6); split, they would be looked for in several.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CHOICES = {
    "strategy": (
        "feature_extract",
        "finetune",
        "partial",
        "gradual",
        "lp_ft",
        "lora",
        "auto",
        "zero_shot",
    ),
    "truncation": ("head", "head_tail", "chunks"),
    "slices": ("single", "stack"),
    "augment": ("none", "light", "strong", "trivial", "randaugment"),
    "mix": ("none", "mixup", "cutmix"),
    "schedule": ("cosine", "onecycle", "constant"),
    "bn": ("auto", "frozen", "train"),
    "monitor": ("auto", "accuracy", "macro_f1", "loss"),
    "imbalance": ("auto", "weight", "sample", "none"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("no", "bf16", "fp16"),
    "parallel": ("ddp", "fsdp"),
    "detector": ("fasterrcnn", "retinanet", "fcos"),
    "blend_mode": ("mean", "joint"),
    "keep": ("best", "last_stage"),
    "algo": ("sac", "td3", "ppo"),
}

# What `--strategy auto` trains before it weighs the network against the classic baseline.
AUTO_TRANSFER = "lp_ft"

# The tasks that classify single-label items: `rank`, `advise`, `study` and `tune` take these
# (detection and speech recognition are `fit` tasks only).
CLASSIFY_TASKS = ("image", "text", "audio")

# The fit settings that decide what a frozen backbone computes for an item (not how a model
# trains): `rank`, `advise` and the study's probes take these, so their cached features are
# the ones a later fit with the same settings looks up.
FEATURE_SETTINGS = (
    "image_size",
    "seed",
    "val_fraction",
    "eval_batch_size",
    "num_workers",
    "device",
    "channels_last",
    "feature_cache",
    "max_length",
    "truncation",
    "max_chunks",
    "length_bucketing",
    "text_column",
    "label_column",
    "label_sep",
    "group_column",
    "window",
    "slices",
    "skip_bad",
    "clip_seconds",
    "array_rate",
)


def parse_duration(text: str | float) -> float:
    """Seconds of a duration written ``90``, ``90s``, ``10m``, ``1.5h``."""
    value = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        number = float(value[:-1]) * units[value[-1]] if value[-1:] in units else float(value)
    except ValueError:
        raise ValueError(f"time budget {text!r}: write it like 600, 90s, 10m or 1.5h") from None
    if not number > 0:
        raise ValueError(f"time budget {text!r} must be more than 0")
    return number


def parse_operating_point(text: str) -> tuple[str, float | None]:
    """``sensitivity=0.95`` -> ("sensitivity", 0.95); ``specificity=0.9``; ``youden`` ->
    ("youden", None); ``threshold=0.3`` (a fixed probability)."""
    value = str(text).strip().lower().replace(" ", "")
    if value == "youden":
        return "youden", None
    name, _, number = value.partition("=")
    try:
        target = float(number)
    except ValueError:
        target = -1.0
    if name not in ("sensitivity", "specificity", "threshold") or not 0 < target < 1:
        raise ValueError(
            f"operating_point={text!r}: write sensitivity=0.95, specificity=0.9, "
            "threshold=0.3 (a value strictly between 0 and 1) or youden"
        )
    return name, target


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: default, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class FitConfig:
    backbone: str = _f(
        "packaged:efficientnet_lite0",
        "source model id (`headstart models`) or the directory of a run headstart wrote",
    )
    strategy: str = _f(
        "auto",
        "what trains: feature_extract | finetune | partial | gradual "
        "| lp_ft (linear probe, then fine-tune everything) | lora (linear "
        "probe, then low-rank adapters via PEFT) | auto (lp_ft, then keep "
        "whichever of it and the classic baseline scores higher on "
        "validation beyond its noise) | zero_shot (control: the source policy as it is)",
    )
    cut: int = _f(0, "remove this many trailing feature stages of the backbone")
    keep_head: bool = _f(
        False,
        "chained transfer from a run directory: start from that run's "
        "head (same classes) instead of a new one",
    )
    head_hidden: tuple[int, ...] = _f((), "hidden sizes of an MLP head; empty = linear head")
    add_classes: bool = _f(
        False,
        "class-incremental transfer: extend the classifier of --backbone RUN_DIR with the "
        "new classes of the data, without forgetting the old ones: the old head rows kept, "
        "the old model's outputs distilled on the new data (LwF, --distill), RUN_DIR's "
        "stored exemplars replayed (--replay) through a class-balanced sampler",
    )
    exemplars: int = _f(
        20,
        "classification: store up to this many training items per class in the run "
        "directory (exemplars/), for a later --add-classes to replay; 0: none",
    )
    distill: float = _f(
        1.0,
        "--add-classes: weight of the distillation loss (KL divergence of the old classes' "
        "softened outputs from the old model's on the same items); 0: off",
    )
    distill_temperature: float = _f(2.0, "--add-classes: temperature of the distillation")
    replay: bool = _f(
        True,
        "--add-classes: train on the exemplars the --backbone run stored too "
        "(--no-replay: the new data and distillation alone)",
    )
    balance_new: bool = _f(
        True,
        "--add-classes: after training, lower the new classes' logits by the offset (0-5 "
        "in steps of 0.05) that minimises the validation part's class-balanced "
        "cross-entropy: new-class logits come out biased up (BiC-like, one number)",
    )
    align_new: bool = _f(
        False,
        "--add-classes: after training, scale the new classes' head weights to the old "
        "ones' mean norm (weight aligning, against new-class logits biased up by training "
        "mostly on new data; off by default: on Fashion-MNIST 5+5 it cost 4 points of "
        "old-class accuracy, the class-balanced sampler already balances the replay)",
    )
    feature_stats: bool = _f(
        True,
        "classification: store each class's mean feature and a pooled (Ledoit-Wolf) "
        "covariance of the training items' backbone features in the run directory "
        "(feature_stats.safetensors, 4 x D^2 bytes: 6.6 MB at D = 1280), for a later "
        "--add-classes' feature replay",
    )
    feature_replay: int = _f(
        1000,
        "--add-classes with a frozen backbone (every stage head-only, the --backbone run's "
        "own backbone and preprocessing): train the head on this many synthetic feature "
        "vectors per old class too, drawn from the run's stored feature statistics (skipped, "
        "with the reason logged, where the strategy trains the backbone); 0: off",
    )

    dropout: float = _f(0.0, "dropout before each head layer")
    image_size: int | None = _f(
        None,
        "input side in pixels; default: the backbone's own, "
        "capped at 5x the median side of the training images "
        "(rounded up to 32) so small images are not blown up",
    )
    augment: str = _f(
        "light",
        "training augmentation (audio: time shift, gain, noise at "
        "35-15 dB / 25-5 dB SNR and SpecAugment masks): none | light (random "
        "resized crop 0.7-1 of the area, 0.85-1 for tiny images (median side "
        "< 20 px), flip) | strong (crop 0.35-1, flip, colour jitter) | trivial "
        "(light, then torchvision's TrivialAugmentWide) | randaugment (light, "
        "then RandAugment); trivial and randaugment: images only",
    )
    crop_min: float | None = _f(
        None,
        "images: the smallest share of the area a training crop "
        "keeps; default: the --augment preset's (light 0.7, strong "
        "0.35), raised to 0.85 for tiny images (< 20 px)",
    )
    flip: bool = _f(
        True,
        "images: training augmentation mirrors images left-right at "
        "random (--no-flip where a mirror image is another class or none: "
        "digits, text)",
    )
    mix: str = _f(
        "none",
        "images: mix training batches while backbone layers train: none | "
        "mixup (blend two images and their labels) | cutmix (paste a box of one "
        "image into another; labels by area)",
    )
    mix_alpha: float = _f(
        1.0,
        "--mix: the mixing weight is drawn from Beta(alpha, alpha) "
        "(1: uniform; smaller: most batches nearly unmixed)",
    )
    epochs: int = _f(12, "epochs of each stage that trains backbone layers")
    time_budget: str | None = _f(
        None,
        "wall time the training stages may take (600, 90s, "
        "10m, 1.5h): after the first epoch of a stage that trains "
        "backbone layers, its epochs are cut to fit what is left "
        "(at least 1; the LR schedule is compressed) and the fit says "
        "what it chose; the probe and calibration are not cut",
    )
    min_steps: int = _f(
        0,
        "stages that train backbone layers run at least this many "
        "optimizer steps (more epochs on tiny datasets); 0 = off",
    )
    head_epochs: int = _f(60, "epochs of head-only stages (on cached features: fast)")
    batch_size: int = _f(32, "training batch size")
    eval_batch_size: int = _f(128, "batch size for feature extraction and evaluation")
    lr: float = _f(5e-4, "peak learning rate of the last backbone group")
    head_lr: float = _f(3e-3, "peak learning rate of the head")
    lr_decay: float = _f(
        0.7,
        "discriminative LR: each earlier layer group gets this factor "
        "times the next one's rate (1 = same LR everywhere)",
    )
    weight_decay: float = _f(0.05, "AdamW weight decay (not applied to biases and norms)")
    schedule: str = _f(
        "cosine", "LR schedule per stage: cosine (with warmup) | onecycle | constant"
    )
    warmup: float = _f(0.1, "fraction of each stage's steps spent warming the LR up")
    warmup_steps: int = _f(
        20,
        "at least this many warm-up steps per stage (at most half of "
        "the stage): AdamW's first steps move every weight by the full "
        "rate, which wrecks pretrained features when a few-shot stage has "
        "only a handful of steps",
    )
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy loss")
    contrastive: float = _f(
        0.0,
        "weight of a supervised contrastive loss (SupCon) on the "
        "backbone features while backbone layers train, added to the "
        "classification loss: pulls each class together (few-shot text)",
    )
    bn: str = _f(
        "auto",
        "BatchNorm statistics in trained layers: frozen | train | auto (the strategy's default)",
    )
    partial_groups: int = _f(3, "`partial`: how many of the last layer groups train")
    freeze_groups: int = _f(
        0,
        "`lp_ft` (auto's recipe): its fine-tuning stage leaves the first N layer groups "
        "frozen (the last group always trains); their outputs are computed once where the "
        "backbone can replay them (text encoders): a faster step; 0 = all groups train",
    )
    gradual_epochs: int = _f(1, "`gradual`: epochs per unfreezing stage")
    val_fraction: float = _f(
        0.1,
        "stratified share of the training data held out for "
        "validation (when no validation set is given)",
    )
    keep: str = _f(
        "best",
        "which weights the fit returns: best (the best validation epoch "
        "over all stages, differences within the validation set's noise decided by "
        "the validation loss; see headstart.choose) | last_stage (the last stage's "
        "best epoch, even when an earlier stage was better)",
    )
    wise_ft: bool = _f(
        True,
        "after a stage that trains backbone layers from an earlier "
        "stage's result (lp_ft, gradual, lora), also try mixes of the two "
        "weight sets (WiSE-FT: 0.25, 0.5, 0.75 of the way) on validation and "
        "keep the best by the same rule",
    )
    wise_mix: float = _f(
        1.0,
        "Whisper recogniser: after the fit, the weights become this share of the "
        "fine-tuned ones plus the rest of the source model's (WiSE-FT), keeping more of "
        "what the source transcribed (general speech) beside the new accent or words; 1 = "
        "the fine-tuned weights alone (Whisper's default 0.8: docs/audio.md)",
    )
    ema: float = _f(
        0.0,
        "keep an exponential moving average of the weights while a stage trains "
        "backbone layers (decay, e.g. 0.999; warmed up over the first steps) and "
        "weigh the averaged weights against the stage's best epoch and the WiSE-FT "
        "mixes by the same rule; 0 = off",
    )
    early_stopping: int = _f(
        5,
        "stop a stage after this many epochs without improvement, counted once its "
        "warm-up has ended (0 = off)",
    )
    monitor: str = _f(
        "auto",
        "validation metric for early stopping and the best "
        "checkpoint: auto (macro_f1 where the largest class has >= 3x the "
        "training items of the smallest, else accuracy) | accuracy | macro_f1 "
        "| loss",
    )
    imbalance: str = _f(
        "auto",
        "classes of unequal size: auto (sample where the largest "
        "class has >= 3x the training items of the smallest, else none) | "
        "weight (class-weighted loss, n / (classes * count)) | sample "
        "(class-balanced sampler: items drawn with replacement, each class "
        "equally often) | none; the TF-IDF baseline is fitted class-balanced "
        "whenever the network is",
    )
    seed: int = _f(0, "seed of the split, sampling, augmentation and init")
    num_workers: int | None = _f(
        None, "data loader workers; default: 0 on <= 2 cores, else min(4, cores - 1)"
    )
    device: str = _f("auto", "auto | cpu | cuda | mps")
    precision: str = _f("no", "mixed precision: no | bf16 | fp16")
    parallel: str = _f(
        "ddp",
        "several processes (torchrun / accelerate launch): ddp (each "
        "process holds the whole model, gradients averaged) | fsdp (FSDP2: "
        "the weights, gradients and optimizer state of each layer group and "
        "the head are sharded across the processes; for backbones too large "
        "for one device)",
    )
    channels_last: bool = _f(True, "channels_last memory format for conv nets (faster on CPU)")
    feature_cache: str | None = _f(
        None, "directory for cached backbone features (default: memory only)"
    )
    max_length: int | None = _f(
        None, "text: tokens per text (or per chunk); default: the weights' own limit (MiniLM: 256)"
    )
    truncation: str = _f(
        "head",
        "text: what of a longer text reaches the encoder: head | "
        "head_tail (first quarter + last three quarters of the budget) | "
        "chunks (up to --max-chunks windows, features averaged)",
    )
    max_chunks: int = _f(4, "text: most windows per text with --truncation chunks")
    train_chunks: int = _f(
        0,
        "text: while backbone layers train, a text of more windows "
        "gives this many of them per epoch, drawn anew each epoch (less "
        "compute per step; evaluation and the probe read all); 0 = all",
    )
    length_bucketing: bool = _f(
        True, "text: batch texts of similar length together (less padding, faster)"
    )
    text_column: str = _f("text", "text: the column holding the text (CSV/JSONL/Parquet)")
    label_column: str = _f("label", "the column holding the label(s)")
    group_column: str | None = _f(
        None,
        "the column holding a group id (image/audio CSV, text table: patient, study, "
        "speaker, sender); every split (validation, "
        "study fractions, tune, the baseline's cross-validation) keeps one id's items "
        "together, and bootstrap intervals resample ids",
    )
    window: str | None = _f(
        None,
        "DICOM / NIfTI: how values become grey levels: the file's own window (default), "
        "minmax, a preset (lung, mediastinum, soft_tissue, abdomen, liver, bone, brain, "
        "subdural, stroke) or 'centre,width' (e.g. -600,1500 in HU)",
    )
    slices: str = _f(
        "single",
        "DICOM multi-frame / NIfTI volumes: single (each slice alone, grey) or stack "
        "(2.5-D: each slice with the slices above and below it as its three channels, "
        "each windowed; the first and last repeat their own)",
    )
    operating_point: str | None = _f(
        None,
        "two classes (or one-vs-rest with --positive-class): the decision threshold, chosen "
        "on the validation part: sensitivity=0.95, specificity=0.9 or youden; saved in the "
        "run, predict and serve apply it, evaluate reports sensitivity, specificity, PPV, "
        "NPV at it (default: no threshold, the most probable class)",
    )
    positive_class: str | None = _f(
        None,
        "the class the clinical metrics call positive (default: with two classes, the "
        "second in sorted order, e.g. 'malignant' of benign/malignant; with more, needed "
        "for one-vs-rest)",
    )
    label_sep: str | None = _f(
        None,
        "text: separator of several labels in one CSV cell "
        "(multi-label); JSONL/Parquet lists need none",
    )
    baseline: bool = _f(
        True,
        "image, text, audio: also fit the best classic model on the same "
        "training part (text: TF-IDF + logistic regression; images: small "
        "pixels or HOG, audio: log-mel statistics, with logistic regression "
        "/ k-NN / RBF SVM chosen by cross-validation) and report it and the "
        "verdict beside the transfer result",
    )
    blend: bool = _f(
        False,
        "text: predict with the encoder and the TF-IDF baseline "
        "together (needs --baseline; how: --blend-mode). The two make "
        "different mistakes, so the blend can beat both; `fit --test` and "
        "`evaluate` report the mean blend's metrics either way",
    )
    blend_mode: str = _f(
        "joint",
        "text: how --blend combines the two: joint (one logistic "
        "regression on the TF-IDF vector and the trained encoder's features "
        "side by side, fitted on the training texts after the encoder "
        "trains; costs one pass over them) | mean (of the encoder's and "
        "TF-IDF's probabilities)",
    )
    pseudo_threshold: float = _f(
        0.9,
        "fit with an unlabelled pool (--unlabeled): the calibrated confidence a pool "
        "item's predicted class needs to become a pseudo-label; a class the model is "
        "confident about less often gets a lower bar (FlexMatch: times b / (2 - b), b its "
        "share of confident items against the most confident class's), never below "
        "halfway between chance and certainty",
    )
    pseudo_rounds: int = _f(
        2,
        "--unlabeled: rounds of self-training (the kept model labels the pool, a new fit "
        "learns from the labelled items and the pseudo-labels, weighted by confidence); "
        "round r of R takes at most r / R of each class's share of the pool (the labelled "
        "class shares), the most confident first",
    )
    pseudo_balance: bool = _f(
        False,
        "--unlabeled: keep the pseudo-labels' class shares at the pool's estimated ones (the "
        "model's mean probability over the pool), dropping the least confident of a class "
        "taken more often (off: with a few labels the estimate can be far off, and on "
        "SpamAssassin 8/class it helped one seed and hurt another; docs/results.md)",
    )
    lora_r: int = _f(8, "lora: rank of the adapters")
    lora_alpha: float = _f(16.0, "lora: scaling numerator (update = alpha / r * B A)")
    lora_dropout: float = _f(0.1, "lora: dropout on the adapters' input")
    lora_lr: float = _f(1e-3, "lora: peak learning rate of the adapters")
    lora_targets: str = _f(
        "",
        "lora: comma-separated module names to adapt (default: PEFT's "
        "choice for the architecture; BERT: query,value)",
    )
    detector: str = _f(
        "fasterrcnn",
        "detect: the torchvision architecture put on the backbone's "
        "multi-scale features: fasterrcnn (two-stage, FPN) | retinanet | fcos",
    )
    fpn_channels: int = _f(128, "detect: channels of the feature pyramid and the new heads")
    tile_overlap: float = _f(
        0.25,
        "detect: share of a tile its neighbours overlap (images larger "
        "than --image-size are cut into tiles for training and inference)",
    )
    nms_iou: float = _f(
        0.5,
        "detect: of two boxes of a class overlapping more than this IoU "
        "only the higher-scoring one is kept; lower it for crowded objects "
        "that rarely overlap (tree crowns, cells)",
    )
    clip_seconds: float | None = _f(
        None,
        "audio: seconds each recording is cropped or "
        "zero-padded to; default: the backbone's own (1 s; GE2E "
        "1.6 s), raised to the 95th percentile of the training "
        "durations (at most 10 s)",
    )
    array_rate: int | None = _f(
        None,
        "audio: sample rate (Hz) of in-memory waveforms; files "
        "carry their own and are resampled to the backbone's rate",
    )
    skip_bad: bool = _f(
        False, "skip unreadable images (and report how many) instead of stopping with an error"
    )
    calibrate: bool = _f(
        True,
        "classification: after training, fit a temperature on the "
        "validation part that scales the logits (calibrated probabilities: "
        "lower NLL and ECE, the same predicted classes)",
    )
    env: str = _f(
        "",
        "control: the target environment, a gymnasium id (Pendulum-v1, Hopper-v5) or "
        "package.module:ClassName",
    )
    env_set: str = _f(
        "",
        "control: changes to the environment's dynamics, NAME=VALUE,... (classic envs: "
        "set an attribute, g=14; MuJoCo: scale the model's value, torso_mass=1.5, "
        "friction=0.5, gravity=1.2, gear=0.8)",
    )
    steps: int = _f(20000, "control: the budget in environment steps")
    algo: str = _f(
        "sac", "control: the Stable-Baselines3 algorithm of a new policy: sac | td3 | ppo"
    )
    eval_every: int = _f(
        1000, "control: steps between evaluations (learning curve) and checkpoints"
    )
    eval_episodes: int = _f(5, "control: episodes of each evaluation, on held-out seeds")
    learning_starts: int = _f(
        100, "control (sac, td3): random-action steps before the first update of a new policy"
    )
    value_fraction: float = _f(
        0.2, "control, lp_ft: the share of the steps that train the value function alone"
    )
    normalize: bool = _f(
        True,
        "control: normalise observations (running mean / variance, carried over from the "
        "source and adapted to the target)",
    )
    adapt_norm: bool = _f(
        True,
        "control, a transferred policy: keep updating the carried-over observation "
        "statistics on the target's observations (--no-adapt-norm: keep the source's)",
    )

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"{name}={value!r} is not valid; choose one of {', '.join(allowed)}"
                )
        self.head_hidden = tuple(int(h) for h in self.head_hidden)
        for name in (
            "epochs",
            "head_epochs",
            "batch_size",
            "eval_batch_size",
            "steps",
            "eval_every",
            "eval_episodes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_budget is not None:
            parse_duration(self.time_budget)  # a clear error now, not after the probe
        if self.operating_point is not None:
            parse_operating_point(self.operating_point)
        if not 0.0 < self.pseudo_threshold < 1.0:
            raise ValueError(
                f"pseudo_threshold is a probability in (0, 1), got {self.pseudo_threshold}"
            )
        if self.pseudo_rounds < 1:
            raise ValueError(f"pseudo_rounds must be >= 1, got {self.pseudo_rounds}")
        if self.train_chunks < 0:
            raise ValueError(f"train_chunks must be >= 0 (0: all), got {self.train_chunks}")
        if self.freeze_groups < 0:
            raise ValueError(f"freeze_groups must be >= 0 (0: all train), got {self.freeze_groups}")
        if not 0.0 < self.wise_mix <= 1.0:
            raise ValueError(
                f"wise_mix is the fine-tuned weights' share in (0, 1] (1: off), got {self.wise_mix}"
            )
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema is a decay in [0, 1) (0: off; e.g. 0.999), got {self.ema}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.value_fraction < 1.0:
            raise ValueError(f"value_fraction must be in [0, 1), got {self.value_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("lr", "head_lr", "lora_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("dropout", "lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(
                f"image_size must be at least 8 pixels (or unset for the "
                f"backbone's own), got {self.image_size}"
            )
        if not self.mix_alpha > 0:
            raise ValueError(f"mix_alpha must be > 0, got {self.mix_alpha}")
        if self.crop_min is not None and not 0.0 < self.crop_min <= 1.0:
            raise ValueError(f"crop_min must be in (0, 1], got {self.crop_min}")
        if self.mix != "none" and self.contrastive:
            raise ValueError(
                f"mix={self.mix} blends images and labels, which the "
                "contrastive loss cannot compare: set contrastive=0 or mix=none"
            )
        if self.exemplars < 0:
            raise ValueError(f"exemplars must be >= 0 (0: none), got {self.exemplars}")
        if self.feature_replay < 0:
            raise ValueError(f"feature_replay must be >= 0 (0: off), got {self.feature_replay}")
        if self.distill < 0 or not self.distill_temperature > 0:
            raise ValueError(
                f"distill must be >= 0 and distill_temperature > 0, got {self.distill} "
                f"and {self.distill_temperature}"
            )
        if self.add_classes and self.mix != "none":
            raise ValueError(
                f"add_classes with mix={self.mix}: mixed labels cannot carry the "
                "distillation targets; use mix=none"
            )
        if self.blend and not self.baseline:
            raise ValueError(
                "blend=True averages in the TF-IDF baseline, but baseline=False: "
                "drop --no-baseline, or --blend"
            )

    def pixel_window(self) -> str | None:
        """How DICOM / NIfTI values become the network's pixels: ``window``, marked
        ``+stack`` for 2.5-D slices (what image readers take as ``window``)."""
        if self.slices == "stack":
            return f"{self.window or 'file'}+stack"
        return self.window

    def replace(self, **changes) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> FitConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(cls.field_names())}"
            )
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> FitConfig:
        return cls.from_dict(cls.read_yaml(path), str(path))

    @staticmethod
    def read_yaml(path: str | Path) -> dict:
        """The settings a YAML file sets (``head-lr`` or ``head_lr``), unvalidated."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the YAML config: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a mapping of field: value")
        return {k.replace("-", "_"): v for k, v in data.items()}


def settings_over(given: dict) -> dict:
    """``given`` settings to lay over a task's defaults: ``--no-baseline`` also drops a
    default ``blend`` (which blends the baseline in) unless blend is asked for too."""
    if given.get("baseline") is False and "blend" not in given:
        return {**given, "blend": False}
    return dict(given)


# Each task's own defaults, over FitConfig's (plain data here, so `headstart fit --help`
# shows them without importing the tasks; each estimator's ``defaults`` is its dict).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {},
    # Transformers fine-tune at far smaller rates than convnets, and their LayerNorm has no
    # statistics to freeze.
    "text": {
        "backbone": "packaged:minilm-l6",
        "strategy": "auto",
        "epochs": 8,
        "min_steps": 60,
        "truncation": "chunks",
        "contrastive": 1.0,
        "batch_size": 16,
        "eval_batch_size": 64,
        # the TF-IDF baseline and the trained encoder's features in one logistic regression:
        # on 8-32 emails per class it beat TF-IDF on every draw, the encoder alone did not
        "blend": True,
        "lr": 1e-4,
        "head_lr": 1e-2,
        "lr_decay": 0.9,
        "weight_decay": 0.01,
        "channels_last": False,
    },
    "audio": {
        "backbone": "packaged:ge2e",
        "strategy": "auto",
        "epochs": 15,
        "batch_size": 32,
        "eval_batch_size": 64,
        "lr": 1e-3,
        "head_lr": 3e-3,
        "lr_decay": 0.8,
        "weight_decay": 0.01,
        "channels_last": False,
    },
    "asr": {
        "backbone": "packaged:ge2e",
        "strategy": "finetune",
        "epochs": 30,
        "batch_size": 16,
        "eval_batch_size": 64,
        "lr": 1e-3,
        "head_lr": 3e-3,
        "lr_decay": 0.8,
        "weight_decay": 0.01,
        "head_hidden": (128,),
        "label_smoothing": 0.0,
        "channels_last": False,
        # read by the Whisper recogniser only (its default); here so that `--wise-mix 1`
        # on the command line differs from the default and is kept
        "wise_mix": 0.8,
    },
    "detect": {
        "strategy": "partial",
        "partial_groups": 5,
        "epochs": 24,
        "head_epochs": 4,
        "batch_size": 4,
        "eval_batch_size": 8,
        "lr": 2e-4,
        "head_lr": 1e-3,
        "weight_decay": 1e-4,
        "warmup": 0.05,
        "early_stopping": 8,
        "augment": "light",
        "val_fraction": 0.2,
        "warmup_steps": 0,  # 5% of the steps warm up, however few (tiles come in fours)
        "channels_last": False,
    },
    # Control: SB3's SAC on small MLPs; a new policy learns at head_lr, a transferred one is
    # fine-tuned at the smaller lr.
    "control": {
        "backbone": "scratch",
        "strategy": "finetune",
        "lr": 3e-4,
        "head_lr": 1e-3,
        "batch_size": 256,
        "head_hidden": (64, 64),
        "weight_decay": 0.0,
        "channels_last": False,
    },
}
