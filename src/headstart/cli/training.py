"""``fit`` and ``pretrain``: train a model (from a source, or from random weights)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import TASK_DEFAULTS, FitConfig
from .flags import (
    FIT_TASKS,
    TASKS,
    add_config_flags,
    add_run_flags,
    fit_config_from_args,
    open_labeled,
)

log = logging.getLogger("headstart")

# `pretrain` trains from random weights: these settings over every task's defaults
PRETRAIN_DEFAULTS = {"strategy": "finetune", "lr": 3e-3, "lr_decay": 1.0, "bn": "train"}
# `pretrain` without --arch: this architecture (other tasks: the task's default backbone;
# control: the --arch is the Stable-Baselines3 algorithm, sac | td3 | ppo)
PRETRAIN_ARCHS = {"audio": "audio:cnn", "asr": "audio:cnn", "control": "sac"}


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="fine-tune a pre-trained backbone on your images, texts or "
        "recordings, or a detector on your boxes",
    )
    p.add_argument(
        "data",
        nargs="?",
        default=None,
        help="training data. image: a folder with one subfolder per class, "
        "or a CSV of path,label; text: a CSV/TSV/JSONL/Parquet table with text and "
        "label columns; audio: a folder with one subfolder of recordings per class, "
        "or a CSV of path,label; detect: a COCO .json, a folder of Pascal VOC .xml, "
        "or a YOLO folder (images/, labels/, classes.txt); control: the target "
        "environment (or --env; the budget is --steps)",
    )
    p.add_argument(
        "--task",
        choices=FIT_TASKS,
        default="image",
        help="image, text or audio classification, detect (object detection), or control "
        "(a policy in a new environment) (default: image)",
    )
    p.add_argument(
        "--fix-boxes",
        choices=["error", "clip", "drop"],
        default="error",
        help="detect: what a bad box does: stop with an error naming it (default), "
        "clip boxes that stick out of their image, or drop bad boxes",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<strategy>)")
    p.add_argument(
        "--unlabeled",
        default=None,
        metavar="POOL",
        help="image, text, audio: unlabelled items to self-train on (a folder of images "
        "or recordings, a CSV of paths, a table or text file of texts; labels it carries "
        "are not trained on, only used to score the pseudo-labels): the fitted model "
        "labels them, the confident ones (--pseudo-threshold, a quota per class) train a "
        "new model over --pseudo-rounds rounds, kept only if it is at least as good on "
        "validation",
    )
    add_run_flags(p)
    add_config_flags(p)
    p.set_defaults(handler=cmd_fit)

    p = sub.add_parser(
        "pretrain",
        help="train a source model from random weights on a large "
        "source corpus; its run directory is then the --backbone of `fit`",
    )
    p.add_argument(
        "data", nargs="?", default=None, help="the source corpus (as for fit; control: --env)"
    )
    p.add_argument("--task", choices=(*TASKS, "asr", "control"), default="audio")
    p.add_argument(
        "--arch",
        default=None,
        help="the architecture (default: audio:cnn for "
        "audio, the task's default backbone otherwise)",
    )
    p.add_argument("--out", required=True, help="run directory of the source model")
    add_run_flags(p)
    add_config_flags(
        p,
        title="training settings (defaults: strategy finetune, lr 3e-3, "
        "same LR in every layer, BatchNorm trains)",
        tasks=(*TASKS, "asr", "control"),
        defaults=PRETRAIN_DEFAULTS,
    )
    p.set_defaults(handler=cmd_pretrain)


def cmd_fit(args) -> int:
    from ..metrics import baseline_lines, recall_line
    from ..tasks import estimator_class, serving_for

    cfg = fit_config_from_args(args)
    if args.data is None and not serving_for(args.task).data_in_settings:
        raise ValueError(f"fit --task {args.task}: give the training DATA (see `fit --help`)")
    out = Path(args.out or f"runs/{cfg.strategy}")
    if (out / "config.json").exists() and not args.resume:
        log.warning("%s already holds a run: it will be overwritten", out)
    pool = getattr(args, "unlabeled", None)
    if pool is not None and args.task not in TASKS:  # before the data is read
        raise ValueError(
            f"--unlabeled is for image, text and audio classification, not --task {args.task}"
        )
    extra = {"unlabeled": pool} if pool is not None else {}
    if cfg.add_classes:  # read by the fit, over the run's classes and the new ones
        if args.path_column != "path":
            raise ValueError(
                "--add-classes reads a CSV's file paths from its 'path' column: rename "
                f"{args.path_column!r} to 'path' (or use a folder per class)"
            )
        data, val = args.data, args.val
    else:
        data = open_labeled(args.task, args.data, cfg, args)
        val = open_labeled(args.task, args.val, cfg, args, data.classes) if args.val else None
    est = estimator_class(args.task)(config=cfg, run_dir=out).fit(
        data, validation=val, resume=args.resume, **extra
    )
    if not est.is_main_process_:  # torchrun / accelerate launch: the first process reports
        return 0
    test = None
    if args.test:
        test = open_labeled(args.task, args.test, cfg, args, est.classes_)
        est.metrics_["test"] = est.evaluate(test)
        est.save(out)
    serving = est.serving_class()
    notes = serving.after_fit(est, out, test)
    m = est.metrics_
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    kept = serving.kept_words(m["best"])
    if getattr(est, "winner_", "transfer") == "baseline":
        kept = f"the classic baseline; the network's best: {kept}"
    print(
        f"run: {out}  ({serving.model_words(est)}, strategy {cfg.strategy}, "
        f"{serving.input_summary(est)}, fit {m['fit_seconds']:.0f}s, kept {kept})"
    )
    for split in ("test", "validation"):  # the answer first: does transfer pay?
        if (m.get(split) or {}).get("verdict"):
            print(f"  verdict ({split}): {m[split]['verdict']['line']}")
            break
    if m.get("winner"):
        print(f"  strategy auto: {m['winner']['why']}")
    if m.get("semi"):
        print(f"  unlabelled pool: {m['semi']['line']}")
    for s in est.stages_:
        print(
            f"  stage {s['stage']}: trainable {s['trainable_params']:,} / "
            f"{s['total_params']:,} params "
            f"({100 * s['trainable_params'] / s['total_params']:.2f}%){serving.bn_note(s)}"
        )
    if m.get("selection") and "over" in m["selection"]:  # a choice among stages: why
        print(f"  {m['selection']}")
    balance = m.get("imbalance") or {}
    if balance.get("imbalanced") or balance.get("method", "none") != "none":
        print(f"  {balance['message']}")
    for split in ("validation", "test"):
        if split in m:
            print(f"  {split:<10} {serving.format_metrics(m[split])}")
            if m[split].get("per_class"):
                print(f"  {'':<10} {recall_line(m[split]['per_class'])}")
            if m[split].get("add_classes"):
                from ..incremental import format_split

                print(f"  {'':<10} {format_split(m[split]['add_classes'])}")
            for line in baseline_lines(
                m[split], m.get("baseline_name", ""), m.get("blend_mode", "mean")
            ):
                print(f"  {'':<10} {line}")
            if m[split].get("clinical"):
                from ..clinical import format_clinical

                for line in format_clinical(m[split]["clinical"], m[split]["clinical"]["positive"]):
                    print(f"  {'':<10} {line}")
    if (out / "model_card.md").is_file():
        print(f"  model card: {out / 'model_card.md'}")
    for line in notes:
        print(f"  {line}")
    return 0


def cmd_pretrain(args) -> int:
    """``fit`` from random weights: strategy finetune, one LR everywhere, BN trains."""
    arch = (
        args.arch
        or PRETRAIN_ARCHS.get(args.task)
        or TASK_DEFAULTS[args.task].get("backbone", FitConfig.backbone)
    )
    for key, value in PRETRAIN_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    args.backbone = arch if arch.startswith("scratch:") else f"scratch:{arch}"
    args.fix_boxes = "error"
    return cmd_fit(args)
