"""What trains, when, and how fast: strategies as plain, inspectable data.

A strategy is a list of stages. Each stage says how many of the backbone's last layer
groups train (the new head always trains), for how many epochs, at what learning rates
(discriminative: each earlier group gets ``lr_decay`` times the rate of the next), and
whether BatchNorm layers that train keep their running statistics frozen or update them.
BatchNorm layers in frozen groups never update their statistics.

A stage that trains no backbone layer runs on cached backbone features.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from torch import nn

from .config import AUTO_TRANSFER, FitConfig
from .zoo.base import LayerGroup

log = logging.getLogger(__name__)

ALL = -1  # train_groups value meaning "every group"


@dataclass(frozen=True)
class Stage:
    name: str
    train_groups: int  # how many trailing backbone groups train; 0 = none, ALL = all
    epochs: int
    lr: float  # peak LR of the last backbone group
    head_lr: float
    lr_decay: float
    bn: str  # "frozen" | "train": BN statistics in the groups that train
    adapters: bool = False  # train the backbone's LoRA adapters (and nothing else of it)
    # bn "frozen" also keeps the BN affine weights of the groups that train fixed (detection:
    # torchvision's FrozenBatchNorm2d; batches of a few tiles)
    bn_weights_frozen: bool = False

    @property
    def head_only(self) -> bool:
        return self.train_groups == 0 and not self.adapters

    def trainable_indices(self, n_groups: int) -> list[int]:
        k = n_groups if self.train_groups == ALL else min(self.train_groups, n_groups)
        return list(range(n_groups - k, n_groups))


@dataclass(frozen=True)
class Strategy:
    name: str
    stages: tuple[Stage, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "stages": [asdict(s) for s in self.stages]}

    def describe(self, groups: list[LayerGroup] | None = None, cached: bool = True) -> str:
        """``cached``: head-only stages run on cached backbone features (not detection's)."""
        lines = [f"strategy {self.name}:"]
        for s in self.stages:
            if s.head_only:
                where = "on cached features" if cached else "(backbone frozen)"
                lines.append(
                    f"  {s.name}: {s.epochs} epochs, trains the head only {where}, "
                    f"head lr {s.head_lr:g}"
                )
                continue
            if s.adapters:
                lines.append(
                    f"  {s.name}: {s.epochs} epochs, trains LoRA adapters (lr "
                    f"{s.lr:g}) + head (lr {s.head_lr:g}); backbone weights frozen"
                )
                continue
            what = "all groups" if s.train_groups == ALL else f"the last {s.train_groups} groups"
            lines.append(
                f"  {s.name}: {s.epochs} epochs, trains {what} + head, "
                f"lr {s.lr:g} (x{s.lr_decay:g} per earlier group), head lr "
                f"{s.head_lr:g}, BN statistics {s.bn}"
            )
        return "\n".join(lines)


def build_strategy(cfg: FitConfig, n_groups: int, steps_per_epoch: int | None = None) -> Strategy:
    """The named strategy of ``cfg`` for a backbone with ``n_groups`` layer groups.

    With ``steps_per_epoch`` known, a stage that trains backbone layers runs at least
    ``cfg.min_steps`` optimizer steps: on a few-shot dataset an epoch is one or two steps,
    and a fixed epoch count would barely move the weights."""
    import math

    def bn(default: str) -> str:
        return default if cfg.bn == "auto" else cfg.bn

    def ft_epochs() -> int:
        if not steps_per_epoch or not cfg.min_steps:
            return cfg.epochs
        return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))

    def stage(name, groups, epochs, bn_default, lr=cfg.lr, head_lr=cfg.head_lr):
        return Stage(name, groups, epochs, lr, head_lr, cfg.lr_decay, bn(bn_default))

    probe = stage("linear_probe", 0, cfg.head_epochs, "frozen")
    # lp_ft's fine-tuning groups: all, or all but the first freeze_groups (the last trains)
    full = ALL if not cfg.freeze_groups else max(n_groups - cfg.freeze_groups, 1)
    # auto trains lp_ft; the estimator then weighs it against the classic baseline
    name = AUTO_TRANSFER if cfg.strategy == "auto" else cfg.strategy
    stages: tuple[Stage, ...]
    if name == "feature_extract":
        stages = (probe,)
    elif name == "finetune":
        stages = (stage("finetune", ALL, ft_epochs(), "train"),)
    elif name == "partial":
        if not 1 <= cfg.partial_groups <= n_groups:
            raise ValueError(
                f"partial_groups={cfg.partial_groups} must be between 1 and the "
                f"backbone's {n_groups} layer groups"
            )
        stages = (stage("partial", cfg.partial_groups, ft_epochs(), "train"),)
    elif name == "gradual":
        stages = (probe,) + tuple(
            stage(f"unfreeze_{k}", k, cfg.gradual_epochs, "train") for k in range(1, n_groups + 1)
        )
    elif name == "lp_ft":
        # LP-FT (Kumar et al. 2022): a fitted head first, so fine-tuning does not distort
        # the pretrained features with gradients from a random head; the whole network
        # then trains with the head at the backbone's (small) rate, BN statistics kept.
        stages = (probe, stage("finetune", full, ft_epochs(), "frozen", head_lr=cfg.lr))
    elif name == "lora":
        # LoRA (Hu et al. 2021) after a linear probe: the adapters start as a no-op (B = 0),
        # the fitted head gives them a useful gradient from the first step.
        stages = (
            probe,
            Stage("lora", 0, ft_epochs(), cfg.lora_lr, cfg.lora_lr, 1.0, "frozen", adapters=True),
        )
    elif name == "zero_shot":
        raise ValueError(
            "strategy zero_shot (the source as it is) is for --task control; a classifier "
            "trains at least its new head: use feature_extract"
        )
    else:
        raise ValueError(f"unknown strategy {name!r}")
    return Strategy(name, stages)


DETECT_STRATEGIES = ("feature_extract", "partial", "finetune", "lp_ft")


def build_detection_strategy(cfg: FitConfig) -> Strategy:
    """A detector's stages. The new layers (feature pyramid, RPN, box heads) always train,
    at ``head_lr``: ``feature_extract`` trains them alone for ``epochs``; ``partial`` with
    the last ``partial_groups`` backbone groups; ``finetune`` with every group; ``lp_ft``
    alone for ``head_epochs``, then with every group for ``epochs``. BatchNorm (statistics
    and affine weights) is frozen on pretrained weights (batches of a few tiles) and
    trains on a from-scratch backbone (``bn`` overrides)."""
    if cfg.strategy not in DETECT_STRATEGIES:
        raise ValueError(
            f"strategy={cfg.strategy!r} is not available for detection; "
            f"choose one of {', '.join(DETECT_STRATEGIES)}"
        )
    bn = (
        cfg.bn if cfg.bn != "auto" else "train" if cfg.backbone.startswith("scratch:") else "frozen"
    )

    def stage(name: str, groups: int, epochs: int) -> Stage:
        return Stage(
            name, groups, epochs, cfg.lr, cfg.head_lr, cfg.lr_decay, bn, bn_weights_frozen=True
        )

    stages = {
        "feature_extract": (stage("heads", 0, cfg.epochs),),
        "partial": (stage("partial", cfg.partial_groups, cfg.epochs),),
        "finetune": (stage("finetune", ALL, cfg.epochs),),
        "lp_ft": (stage("heads", 0, cfg.head_epochs), stage("finetune", ALL, cfg.epochs)),
    }
    return Strategy(cfg.strategy, stages[cfg.strategy])


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def configure_stage(
    backbone: nn.Module,
    head: nn.Module,
    groups: list[LayerGroup],
    stage: Stage,
    weight_decay: float,
) -> tuple[list[dict], dict]:
    """Set ``requires_grad`` for the stage and return AdamW param groups and a summary.

    Each trainable layer group gets its own rate: ``lr * lr_decay ** (distance from the
    last group)``; biases and norm weights get no weight decay.
    """
    for p in backbone.parameters():
        p.requires_grad_(False)
    trainable = [] if stage.adapters else stage.trainable_indices(len(groups))
    param_groups: list[dict] = []
    n = len(groups)
    if stage.adapters:
        adapters = [p for name, p in backbone.named_parameters() if "lora_" in name]
        if not adapters:
            raise ValueError("strategy lora: the backbone has no LoRA adapters (add_lora)")
        for p in adapters:
            p.requires_grad_(True)
        param_groups += _split_decay(adapters, stage.lr, weight_decay, "lora")
    frozen_bn = (
        {
            id(p)
            for i in trainable
            for module in groups[i].modules
            for m in module.modules()
            if _is_bn(m)
            for p in m.parameters()
        }
        if stage.bn == "frozen" and stage.bn_weights_frozen
        else set()
    )
    for i in trainable:
        lr = stage.lr * stage.lr_decay ** (n - 1 - i)
        params = [p for p in groups[i].parameters() if id(p) not in frozen_bn]
        for p in params:
            p.requires_grad_(True)
        param_groups += _split_decay(params, lr, weight_decay, groups[i].name)
    for p in head.parameters():
        p.requires_grad_(True)
    param_groups += _split_decay(list(head.parameters()), stage.head_lr, weight_decay, "head")
    total = sum(p.numel() for p in backbone.parameters()) + sum(
        p.numel() for p in head.parameters()
    )
    n_train = sum(p.numel() for g in param_groups for p in g["params"])
    summary = {
        "stage": stage.name,
        "trainable_params": n_train,
        "total_params": total,
        "trainable_groups": ["lora adapters"]
        if stage.adapters
        else [groups[i].name for i in trainable],
        "bn": stage.bn if trainable else "frozen",
    }
    log.info(
        "stage %s: trainable %s / %s parameters (%.1f%%), groups [%s] + head, BN %s",
        stage.name,
        f"{n_train:,}",
        f"{total:,}",
        100 * n_train / max(total, 1),
        ", ".join(summary["trainable_groups"]),
        summary["bn"],
    )
    return param_groups, summary


def _split_decay(params: list, lr: float, weight_decay: float, name: str) -> list[dict]:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    out = []
    if decay:
        out.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
    if no_decay:
        out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return out


def set_bn_mode(backbone: nn.Module, groups: list[LayerGroup], stage: Stage) -> None:
    """Call after ``model.train()``: BN layers whose statistics stay fixed go to eval mode."""
    trainable = set(stage.trainable_indices(len(groups)))
    for i, group in enumerate(groups):
        keep_stats = i not in trainable or stage.bn == "frozen"
        if keep_stats:
            for module in group.modules:
                for m in module.modules():
                    if _is_bn(m):
                        m.eval()
