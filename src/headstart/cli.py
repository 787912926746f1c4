"""``headstart`` command line: fit | rank | study | advise | evaluate | predict | models |
datasets.

``fit`` flags are generated from :class:`headstart.config.FitConfig` (``--head-lr`` sets
``head_lr``); a YAML file given with ``--config`` uses the same names, and flags given on
the command line override it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .config import CHOICES, CLASSIFY_TASKS, FEATURE_SETTINGS, TASK_DEFAULTS, FitConfig

TASKS = CLASSIFY_TASKS
FIT_TASKS = (*TASKS, "asr", "detect")
# `pretrain` trains from random weights: these settings over every task's defaults
PRETRAIN_DEFAULTS = {"strategy": "finetune", "lr": 3e-3, "lr_decay": 1.0, "bn": "train"}
# `pretrain` without --arch: this architecture (other tasks: the task's default backbone)
PRETRAIN_ARCHS = {"audio": "audio:cnn", "asr": "audio:cnn"}

log = logging.getLogger("headstart")


def _show(value) -> str:
    """A default as --help writes it (a tuple as its flag values)."""
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "empty"
    return '""' if value == "" else str(value)


def _default_help(name: str, default, tasks: tuple[str, ...]) -> str:
    """``(default: 12; text: 8, audio: 15)``: FitConfig's default, then each task's own."""
    own = [f"{task}: {_show(TASK_DEFAULTS[task][name])}" for task in tasks
           if name in TASK_DEFAULTS[task] and TASK_DEFAULTS[task][name] != default]
    return f"(default: {_show(default)}{'; ' + ', '.join(own) if own else ''})"


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                      title: str = "fit settings (also valid as keys of --config YAML)",
                      tasks: tuple[str, ...] = FIT_TASKS, defaults: dict | None = None) -> None:
    """One flag per FitConfig field; its help names the defaults of each of ``tasks`` (the
    command's --task choices). ``defaults``: the command's own, over every task's."""
    hints = typing.get_type_hints(FitConfig)
    group = parser.add_argument_group(title)
    for f in fields(FitConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        default = f.default if f.default is not MISSING else f.default_factory()
        if defaults and f.name in defaults:
            helptext = f"{f.metadata['help']} {_default_help(f.name, defaults[f.name], ())}"
        else:
            helptext = f"{f.metadata['help']} {_default_help(f.name, default, tasks)}"
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        args = typing.get_args(kind)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, type=int, nargs="*", metavar="N", **kw)
        elif isinstance(kind, types.UnionType) and type(None) in args:
            inner = next(a for a in args if a is not type(None))
            group.add_argument(flag, type=inner, **kw)
        else:
            group.add_argument(flag, type=kind, choices=CHOICES.get(f.name), **kw)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """What ``fit`` and ``pretrain`` share besides the fit settings."""
    p.add_argument("--val", default=None, help="validation data (default: hold out "
                   "--val-fraction of the training data, stratified)")
    p.add_argument("--test", default=None, help="test data, evaluated after training")
    p.add_argument("--config", default=None, help="YAML file of fit settings")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its "
                   "last checkpoint in --out (a finished run: nothing to do, no file rewritten; "
                   "no checkpoint there: says so and starts a new fit)")
    p.add_argument("--path-column", default="path", help="CSV: the column of file paths")
    p.add_argument("--json", action="store_true", help="print the run's metrics as JSON")


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headstart", description="Transfer learning: pre-trained model in, measured "
        "fine-tuned model out.")
    parser.add_argument("--version", action="version", version=f"headstart {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fine-tune a pre-trained backbone on your images, texts or "
                       "recordings, or a detector on your boxes")
    p.add_argument("data", help="training data. image: a folder with one subfolder per class, "
                   "or a CSV of path,label; text: a CSV/TSV/JSONL/Parquet table with text and "
                   "label columns; audio: a folder with one subfolder of recordings per class, "
                   "or a CSV of path,label; detect: a COCO .json, a folder of Pascal VOC .xml, "
                   "or a YOLO folder (images/, labels/, classes.txt)")
    p.add_argument("--task", choices=FIT_TASKS, default="image",
                   help="image, text or audio classification, or detect (object detection) "
                   "(default: image)")
    p.add_argument("--fix-boxes", choices=["error", "clip", "drop"], default="error",
                   help="detect: what a bad box does: stop with an error naming it (default), "
                   "clip boxes that stick out of their image, or drop bad boxes")
    p.add_argument("--out", default=None, help="run directory (default: runs/<strategy>)")
    _add_run_flags(p)
    _add_config_flags(p)

    p = sub.add_parser("pretrain", help="train a source model from random weights on a large "
                       "source corpus; its run directory is then the --backbone of `fit`")
    p.add_argument("data", help="the source corpus (as for fit)")
    p.add_argument("--task", choices=(*TASKS, "asr"), default="audio")
    p.add_argument("--arch", default=None, help="the architecture (default: audio:cnn for "
                   "audio, the task's default backbone otherwise)")
    p.add_argument("--out", required=True, help="run directory of the source model")
    _add_run_flags(p)
    _add_config_flags(p, title="training settings (defaults: strategy finetune, lr 3e-3, "
                      "same LR in every layer, BatchNorm trains)", tasks=(*TASKS, "asr"),
                      defaults=PRETRAIN_DEFAULTS)

    p = sub.add_parser("rank", help="score candidate source models (and cut points) on your "
                       "labeled data before any training: LogME, LEEP, NCE, H-score, kNN, "
                       "linear probe")
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument("--models", required=True, help="comma-separated backbone ids or run "
                   "directories; ID@N removes the last N stages (e.g. "
                   "packaged:efficientnet_lite0@2)")
    p.add_argument("--layers", default=None, help="comma-separated cut points tried for every "
                   "model, e.g. 0,1,2 (stages removed from the end)")
    p.add_argument("--task", choices=TASKS, default="image")
    p.add_argument("--scores", default=None, help="comma-separated scores to compute "
                   "(default: all of logme, leep, nce, nleep, h_score, knn, linear)")
    p.add_argument("--score", default=None, help="the score that orders the table (default: "
                   "nleep)")
    p.add_argument("--max-items", type=int, default=None, help="rank a stratified sample of "
                   "about this many items, at least 5 per class (default: 300); data this "
                   "small or smaller is ranked whole and its features serve the next fit")
    p.add_argument("--config", default=None, help="YAML file of fit settings")
    p.add_argument("--path-column", default="path", help="image CSV: the column of file paths")
    p.add_argument("--write-config", default=None, metavar="YAML", help="write the winner's "
                   "backbone, cut and these feature settings as a fit config: `headstart fit "
                   "DATA --config YAML` trains it (and reuses the cached features)")
    p.add_argument("--json", action="store_true", help="print the ranking as JSON")
    _add_config_flags(p, only=FEATURE_SETTINGS, title="feature settings (as for fit; with the "
                      "same values a later fit reuses the cached features)", tasks=TASKS)

    p = sub.add_parser("study", help="prove the transfer: transfer strategies against the same "
                       "network trained from scratch and the classic baseline (--no-baseline "
                       "skips it), over nested fractions of your data, with an HTML report")
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument("--model", default=None, help="source model id or run directory (default: "
                   "the task's default backbone, as for fit)")
    p.add_argument("--test", default=None, help="test data (default: hold out --test-fraction "
                   "of DATA, stratified)")
    p.add_argument("--task", choices=TASKS, default="image")
    p.add_argument("--out", default=None, help="study folder (default: studies/<model>); "
                   "rerunning into it skips the finished runs")
    p.add_argument("--fractions", default="0.05,0.1,0.25,0.5,1", help="nested, stratified "
                   "fractions of the training pool")
    p.add_argument("--strategies", default="feature_extract,partial,finetune,lp_ft")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (spread shown)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--config", default=None, help="YAML file of fit settings (the budget)")
    p.add_argument("--path-column", default="path", help="image CSV: the column of file paths")
    p.add_argument("--json", action="store_true", help="print the gains as JSON")
    _add_config_flags(p, only=tuple(f for f in FitConfig.field_names()
                                    if f not in ("backbone", "strategy")),
                      title="fit settings shared by every run (the budget)", tasks=TASKS)

    p = sub.add_parser("advise", help="which strategy and settings for this model on this data, "
                       "and why (dataset facts + one cheap probe)")
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument("--model", default=None, help="source model id or run directory (default: "
                   "the task's default backbone, as for fit)")
    p.add_argument("--task", choices=TASKS, default="image")
    p.add_argument("--config", default=None, help="YAML file of fit settings")
    p.add_argument("--path-column", default="path", help="image CSV: the column of file paths")
    p.add_argument("--json", action="store_true")
    _add_config_flags(p, only=FEATURE_SETTINGS, title="feature settings (as for fit)",
                      tasks=TASKS)

    p = sub.add_parser("tune", help="hyperparameter search on Optuna: strategy, learning "
                       "rates, weight decay, dropout, unfrozen depth; pruned, resumable")
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument("--model", default=None, help="source model id or run directory (default: "
                   "the task's default backbone)")
    p.add_argument("--task", choices=TASKS, default="image")
    p.add_argument("--trials", type=int, default=20, help="trials in all (a rerun adds only "
                   "the missing ones)")
    p.add_argument("--out", default=None, help="folder for optuna.db, the trial table, the "
                   "report and the best run (default: tunes/<model>)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in "
                   "OUT; a shared RDB URL lets several machines work on one study)")
    p.add_argument("--study-name", default=None, help="default: derived from the model, data "
                   "and settings")
    p.add_argument("--strategies", default="feature_extract,lp_ft,partial,finetune")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after "
                   "this many seconds")
    p.add_argument("--no-refit", action="store_true", help="do not refit the best trial")
    p.add_argument("--config", default=None, help="YAML file of fit settings (the budget)")
    p.add_argument("--path-column", default="path", help="image CSV: the column of file paths")
    _add_config_flags(p, only=tuple(f for f in FitConfig.field_names()
                                    if f not in ("backbone", "strategy")),
                      title="fit settings shared by every trial (the budget)", tasks=TASKS)

    p = sub.add_parser("evaluate", help="metrics of a trained run on labeled data")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument("data", help="labeled data: image class folders or CSV; text table; "
                   "annotated boxes (COCO/VOC/YOLO) for a detector")
    p.add_argument("--fix-boxes", choices=["error", "clip", "drop"], default="error")
    p.add_argument("--tta", choices=["none", "flip", "flip+crops"], default="none",
                   help="test-time augmentation (image models): average "
                   "the probabilities over views of each image: flip (the evaluation crop and "
                   "its mirror image) | flip+crops (also its four corner crops); each view "
                   "costs one more pass")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert-boxes", help="convert box annotations between COCO JSON, "
                       "Pascal VOC XML and YOLO txt (checking every box)")
    p.add_argument("source", help="a COCO .json, a folder of VOC .xml, or a YOLO folder")
    p.add_argument("--to", choices=["coco", "voc", "yolo"], required=True)
    p.add_argument("--out", required=True, help="COCO: the .json to write; VOC/YOLO: a folder")
    p.add_argument("--images", default=None, help="folder of the images, when not beside the "
                   "annotations")
    p.add_argument("--fix-boxes", choices=["error", "clip", "drop"], default="error")

    p = sub.add_parser("predict", help="predict classes for images or texts, streamed to a CSV")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively), or a "
                   "CSV with a path column; text: table files (the run's text column) or texts "
                   "in quotes")
    p.add_argument("--out", default=None, help="write predictions to this CSV (default: stdout)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="onnx: run RUN/export/model.onnx with ONNX Runtime")
    p.add_argument("--tta", choices=["none", "flip", "flip+crops"], default="none",
                   help="test-time augmentation (image models): average "
                   "the probabilities over views of each image: flip (the evaluation crop and "
                   "its mirror image) | flip+crops (also its four corner crops); each view "
                   "costs one more pass")
    p.add_argument("--min-score", type=float, default=0.5,
                   help="detect: the lowest score of a box written (default: 0.5)")

    p = sub.add_parser("export", help="export a run to ONNX or TorchScript, checked for parity")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", default=None, help="model file (default: RUN/export/model.onnx or "
                   "model.torchscript.pt)")
    p.add_argument("--check", default=None, help="real items for the parity check (image "
                   "folder/CSV, text table; default: the run's training data)")
    p.add_argument("--n-check", type=int, default=32, help="items the parity check predicts")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed probability difference")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("serve", help="serve runs over HTTP: API, OpenAPI docs and a web page")
    p.add_argument("runs", nargs="+", help="run directories, or NAME=RUN to name them; the "
                   "first is the default model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--max-batch", type=int, default=32, help="items per model call")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="how long a batch waits for more requests")
    p.add_argument("--preload", action="store_true", help="load every model at start")

    p = sub.add_parser("models", help="list the source models of the zoo")
    p.add_argument("--modality", default=None)
    p.add_argument("--offline", action="store_true", help="only models usable with no network")
    p.add_argument("--source", default=None, help="id prefix: packaged, timm, tiny")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("datasets", help="export a real offline dataset: image folders, or "
                       "train.csv/test.csv for text")
    p.add_argument("name", choices=["fashion-mnist", "spam-assassin", "fine-foods",
                                     "tree-crowns", "accent-commands", "accent-digits"])
    p.add_argument("--source-accent", default="us", help="accent-*: the source accent group "
                   "(us, gb, north-england, scotland, caribbean, german, spanish, french, "
                   "italian)")
    p.add_argument("--target-accent", default="spanish", help="accent-*: the target accent")
    p.add_argument("--out", required=True, help="folder to write train and test data into")
    p.add_argument("--per-class", type=int, default=100, help="training items per class "
                   "(0: all; fine-foods: the official 4000 when 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test images per class (default: the whole official test split)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "filelock", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:  # the app, not the library, quiets transformers' loading bars
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    handler = {"fit": cmd_fit, "rank": cmd_rank, "study": cmd_study, "advise": cmd_advise,
               "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
               "serve": cmd_serve, "tune": cmd_tune, "models": cmd_models,
               "datasets": cmd_datasets, "pretrain": cmd_pretrain,
               "convert-boxes": cmd_convert_boxes}[args.command]
    from .data.images import DataError
    from .zoo.base import ZooError

    levels = {name: logging.getLogger(name).level for name in _LIBRARY_LOGS}
    try:
        return handler(args) or 0
    except (DataError, ZooError, ValueError, FileNotFoundError) as exc:
        print(f"headstart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .export import ExportError

        if not isinstance(exc, ExportError):
            raise
        print(f"headstart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:  # a command's quieting ends with it (main() may run again in one process)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# the library's per-epoch loggers, quieted by commands that run many fits
_LIBRARY_LOGS = ("headstart.tasks", "headstart.train", "headstart.strategies",
                 "headstart.data", "headstart.zoo", "headstart.features", "headstart.select")


def _quiet_library_logs() -> None:
    for name in _LIBRARY_LOGS:
        logging.getLogger(name).setLevel(logging.WARNING)


def fit_config_from_args(args: argparse.Namespace) -> FitConfig:
    task_defaults = dict(TASK_DEFAULTS[getattr(args, "task", "image")])  # the estimator's
    base = FitConfig.read_yaml(args.config) if args.config else {}  # overrides the task's
    given = {f: getattr(args, f) for f in FitConfig.field_names() if hasattr(args, f)}
    return FitConfig.from_dict({**task_defaults, **base, **given},
                               args.config or "command line")


def _open(task: str, data, cfg: FitConfig, args, classes=None):
    """Labeled data as the task reads it from the command line."""
    from .tasks import serving_for

    return serving_for(task).open_labeled(data, cfg, path_column=args.path_column,
                                          classes=classes)


def _task_flag(task: str) -> str:
    """`` --task text`` in a command line printed for the user; nothing for the default."""
    return "" if task == "image" else f" --task {task}"


def cmd_fit(args) -> int:
    from .metrics import baseline_lines, recall_line
    from .tasks import ESTIMATORS

    cfg = fit_config_from_args(args)
    out = Path(args.out or f"runs/{cfg.strategy}")
    if (out / "config.json").exists() and not args.resume:
        log.warning("%s already holds a run: it will be overwritten", out)
    if args.task == "detect":
        return _fit_detect(args, cfg, out)
    data = _open(args.task, args.data, cfg, args)
    val = _open(args.task, args.val, cfg, args, data.classes) if args.val else None
    clf = ESTIMATORS[args.task](config=cfg, run_dir=out).fit(data, validation=val,
                                                             resume=args.resume)
    if not clf.is_main_process_:  # torchrun / accelerate launch: the first process reports
        return 0
    if args.test:
        clf.metrics_["test"] = clf.evaluate(_open(args.task, args.test, cfg, args, clf.classes_))
        clf.save(out)
    m = clf.metrics_
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    serving = clf.serving_class()
    size = serving.input_summary(clf)
    kept = m["best"] or "the last epoch (no validation)"
    if getattr(clf, "winner_", "transfer") == "baseline":
        kept = f"the classic baseline; the network's best: {kept}"
    print(f"run: {out}  ({cfg.backbone}, strategy {cfg.strategy}, {size}, "
          f"fit {m['fit_seconds']:.0f}s, kept {kept})")
    for split in ("test", "validation"):  # the answer first: does transfer pay?
        if (m.get(split) or {}).get("verdict"):
            print(f"  verdict ({split}): {m[split]['verdict']['line']}")
            break
    if m.get("winner"):
        print(f"  strategy auto: {m['winner']['why']}")
    for s in clf.stages_:
        print(f"  stage {s['stage']}: trainable {s['trainable_params']:,} / "
              f"{s['total_params']:,} params "
              f"({100 * s['trainable_params'] / s['total_params']:.2f}%){serving.bn_note(s)}")
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
            for line in baseline_lines(m[split], m.get("baseline_name", ""),
                                       m.get("blend_mode", "mean")):
                print(f"  {'':<10} {line}")
    return 0


def _fit_detect(args, cfg: FitConfig, out: Path) -> int:
    from .data.boxes import read_boxes
    from .metrics import format_detection_metrics
    from .tasks.detect import ObjectDetector

    det = ObjectDetector(config=cfg, run_dir=out).fit(args.data, validation=args.val,
                                                      resume=args.resume, fix=args.fix_boxes)
    test = None
    if args.test:
        test = read_boxes(args.test, classes=det.classes_, fix=args.fix_boxes)
        det.metrics_["test"] = det.evaluate(test)
        det.save(out)
    report = det.write_report(out, test if test is not None else None)
    m = det.metrics_
    if args.json:
        print(json.dumps(m, indent=2, default=str))
        return 0
    best = m["best"]
    kept = (f"epoch {best['epoch']} of {best['stage']}" if best else
            "the last epoch (no validation)")
    print(f"run: {out}  ({cfg.detector} on {cfg.backbone}, strategy {cfg.strategy}, "
          f"{m['tile_size']}px tiles, fit {m['fit_seconds']:.0f}s, kept {kept})")
    for s in det.stage_summaries_:
        print(f"  stage {s['stage']}: trainable {s['trainable_params']:,} / "
              f"{s['total_params']:,} params, BN {s['bn']}")
    for split in ("validation", "test"):
        if split in m:
            print(f"  {split:<10} {format_detection_metrics(m[split])}")
    print(f"  report: {report}")
    return 0


def cmd_convert_boxes(args) -> int:
    from .data.boxes import read_boxes, write_boxes

    source = read_boxes(args.source, fix=args.fix_boxes, images=args.images)
    out = write_boxes(source, args.out, args.to)
    print(f"wrote {len(source)} images, {source.num_boxes} boxes, classes "
          f"{', '.join(source.classes)} as {args.to} to {out}"
          + (f"; dropped {len(source.dropped)} bad box(es)" if source.dropped else ""))
    return 0


def _join_process_group(cfg: FitConfig) -> bool:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1), join the job's process group
    (gloo on CPU, NCCL on GPUs, through Accelerate) so feature passes are shared; True on
    the process that reports."""
    from .train import launched_processes, use_cpu

    if launched_processes() <= 1:
        return True
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(cfg)).is_main_process


def cmd_rank(args) -> int:
    from .features import default_cache_dir
    from .select import DEFAULT_MAX_ITEMS, Candidate, rank

    cfg = fit_config_from_args(args)
    given = {f: getattr(args, f) for f in FEATURE_SETTINGS if hasattr(args, f)}
    if cfg.feature_cache is None:  # rank's features are worth keeping for the fit after it
        cfg = cfg.replace(feature_cache=str(default_cache_dir()))
    models = [m for m in args.models.split(",") if m.strip()]
    cands = [Candidate.parse(m) for m in models]
    if args.layers:
        cuts = [int(c) for c in args.layers.split(",") if c.strip()]
        cands = [Candidate(c.backbone, k) for c in cands for k in cuts]
    scores = [s.strip() for s in args.scores.split(",")] if args.scores else None
    main_process = _join_process_group(cfg)
    data = _open(args.task, args.data, cfg, args)
    result = rank(data, cands, task=args.task, scores=scores, score=args.score,
                  max_items=DEFAULT_MAX_ITEMS if args.max_items is None else args.max_items,
                  config=cfg)
    if not main_process:  # every process has the result; the first one reports it
        return 0
    if args.write_config and any(r.error is None for r in result.rows):
        import yaml

        from .artifacts import atomic_write_bytes

        settings = {**{k: v for k, v in cfg.to_dict().items() if k in FEATURE_SETTINGS
                       and (k in given or k == "feature_cache")}, **result.fit_params()}
        atomic_write_bytes(Path(args.write_config), ("# written by headstart rank\n" +
                           yaml.safe_dump(settings, sort_keys=False)).encode())
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if any(r.error is None for r in result.rows) else 2
    sample = f"a stratified sample of {result.n_items}" if result.sampled else \
        f"all {result.n_items}"
    n = len(result.rows)
    print(f"ranked {n} candidate{'s' if n != 1 else ''} on {sample} items, "
          f"{result.n_classes} classes, by {result.score} ({result.seconds:.1f} s); higher is "
          "better for every score")
    print(result.table())
    if not any(r.error is None for r in result.rows):
        print("no candidate could be scored", file=sys.stderr)
        return 2
    best = result.best.candidate
    cut = f" --cut {best.cut}" if best.cut else ""
    task = _task_flag(args.task)
    how = f"--config {args.write_config}" if args.write_config else \
        f"--backbone {best.backbone}{cut} --feature-cache {cfg.feature_cache}"
    print(f"\nbest: {best.label}. Train it with:\n  headstart fit {args.data}{task} {how}")
    return 0


def cmd_study(args) -> int:
    from tqdm.auto import tqdm

    from .study import describe_gain, run_study

    if not args.verbose:  # one line per run, not every epoch of every run
        _quiet_library_logs()
    cfg = fit_config_from_args(args)
    args.model = args.model or cfg.backbone
    from_yaml = FitConfig.read_yaml(args.config) if args.config else {}
    given = {f: getattr(cfg, f) for f in FitConfig.field_names()
             if hasattr(args, f) or f in from_yaml}
    out = Path(args.out or f"studies/{Path(args.model).name.replace(':', '-')}")
    data = _open(args.task, args.data, cfg, args)
    test = _open(args.task, args.test, cfg, args, data.classes) if args.test else None
    bar = tqdm(total=None, desc="study", unit="run", disable=None)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name)
        bar.update(done - bar.n)

    try:
        result = run_study(
            data, model=args.model, out=out, test=test, task=args.task,
            fractions=[float(f) for f in args.fractions.split(",") if f.strip()],
            strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
            seeds=[int(x) for x in args.seeds.split(",") if x.strip()],
            scratch=not args.no_scratch, test_fraction=args.test_fraction,
            progress=progress, **given)
    finally:
        bar.close()
    gains = result.gains()
    if args.json:
        print(json.dumps(gains, indent=2))
        return 0
    print(f"study: {out}  ({args.model}, {len(result.runs)} runs)")
    for g in gains:
        head, detail = describe_gain(g)
        print(f"  {g['n_train']:>6} items: {head}: {detail}")
    print(f"report: {out / 'report.html'}  (also results.csv, study.json)")
    return 0


def cmd_tune(args) -> int:
    import optuna

    from .tune import tune

    optuna.logging.disable_default_handler()  # Optuna's lines go through our logging
    optuna.logging.enable_propagation()
    if not args.verbose:  # one line per trial, not every epoch of every trial
        _quiet_library_logs()
    cfg = fit_config_from_args(args)
    from_yaml = FitConfig.read_yaml(args.config) if args.config else {}
    given = {f: getattr(cfg, f) for f in FitConfig.field_names()
             if (hasattr(args, f) or f in from_yaml) and f not in ("backbone", "strategy")}
    seed = given.pop("seed", 0)
    model = args.model or cfg.backbone
    out = Path(args.out or f"tunes/{Path(model).name.replace(':', '-')}")
    data = _open(args.task, args.data, cfg, args)
    result = tune(data, model=model, task=args.task, trials=args.trials, out=out,
                  storage=args.storage, study_name=args.study_name,
                  strategies=[x.strip() for x in args.strategies.split(",") if x.strip()],
                  timeout=args.timeout, refit=not args.no_refit, seed=seed, **given)
    best, default = result.best, result.default
    states = {}
    for t in result.trials:
        states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
    print(f"tune: {out}  ({model}, {len(result.trials)} trials: "
          + ", ".join(f"{n} {k}" for k, n in sorted(states.items())) + f"; {result.seconds:.0f} s)")
    print(f"best trial {best['number']}: validation {result.monitor} {best['value']:.4f}  "
          + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in best["params"].items()))
    if default is not None and default["value"] is not None:
        print(f"default settings (trial {default['number']}): {default['value']:.4f}  "
              f"({best['value'] - default['value']:+.4f} for the search)")
    if result.best_run:
        print(f"best refit saved: {result.best_run}")
    print(f"report: {out / 'report.html'}  (trials also in tune.csv, tune.json)")
    return 0


def cmd_advise(args) -> int:
    from .advise import advise

    cfg = fit_config_from_args(args)
    args.model = args.model or cfg.backbone
    data = _open(args.task, args.data, cfg, args)
    given = {f: getattr(cfg, f) for f in FEATURE_SETTINGS}
    advice = advise(data, model=args.model, task=args.task, **given)
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2))
        return 0
    f = advice.facts
    print(f"{args.model} on {args.data}: {f['n_items']} items, {f['n_classes']} classes "
          f"({f['smallest_class']}-{f['largest_class']} per class); probe on "
          f"{f['probe_items']} items: linear {100 * f['probe_linear']:.1f}%, kNN "
          f"{100 * f['probe_knn']:.1f}%")
    if f.get("baseline_cv") is not None:
        print(f"classic baseline on the same items: {f['baseline']}, cross-validated "
              f"{100 * f['baseline_cv']:.1f}%" + ("" if f["transfer_pays"] else
                                                  "  (transfer may not pay here)"))
    print(advice.text())
    settings = dict(advice.settings)
    strategy = settings.pop("strategy", advice.strategy)  # auto: transfer may not pay
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    print(f"\n  headstart fit {args.data}{_task_flag(args.task)} --backbone {args.model} "
          f"--strategy {strategy} {flags}".rstrip())
    return 0


def cmd_evaluate(args) -> int:
    from .tasks import load_estimator
    from .tasks.base import tta_views

    est = load_estimator(args.run)
    tta_views(est, args.tta)  # a clear error where the model has no test-time views
    serving = est.serving_class()
    m = serving.evaluate(est, args.data, tta=args.tta, fix=args.fix_boxes)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    for line in serving.evaluation_lines(est, m):
        print(line)
    return 0


def cmd_predict(args) -> int:
    from .tasks import run_task

    line = run_task(args.run).serving_class().predict_to_csv(
        args.run, args.inputs, args.out, engine=args.engine, tta=args.tta,
        batch_size=args.batch_size, min_score=args.min_score, progress=not args.quiet)
    if args.out:
        print(line, file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from .export import export_model

    result = export_model(args.run, args.format, out=args.out, check=args.check,
                          n_check=args.n_check, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"exported {result.path} ({result.format}, {result.size_bytes / 1e6:.1f} MB) in "
          f"{result.seconds:.1f}s\nparity: max |probability difference| "
          f"{result.max_abs_diff:.2e} (limit {result.tolerance:g}) on {result.checked_items} "
          f"items of {result.checked_on}, batch sizes {result.batch_sizes}\n"
          f"inputs, classes and preprocessing: {result.sidecar}")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeSettings, serve

    runs: dict[str, str] = {}
    for entry in args.runs:
        name, sep, run = entry.partition("=")
        if not sep:
            name, run = Path(entry).resolve().name, entry
        if name in runs:
            raise ValueError(f"two models are named {name!r}; name them: NAME=RUN")
        runs[name] = run
    settings = ServeSettings(engine=args.engine,
                             max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                             max_pixels=args.max_pixels, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms)
    print(f"serving {', '.join(runs)} on http://{args.host}:{args.port}/ (API docs: /docs)",
          file=sys.stderr)
    serve(runs, host=args.host, port=args.port, settings=settings, preload=args.preload)
    return 0


def cmd_models(args) -> int:
    from .zoo import list_models

    metas = list_models(modality=args.modality, offline=True if args.offline else None,
                        source=args.source)
    if args.json:
        print(json.dumps([m.to_dict() for m in metas], indent=2))
        return 0
    print(f"{'id':<36} {'modality':<8} {'params':>10} {'offline':<7} {'licence':<12} source "
          "data / task")
    for m in metas:
        params = f"{m.params / 1e6:.2f}M" if m.params else "?"
        print(f"{m.id:<36} {m.modality:<8} {params:>10} {'yes' if m.offline else 'no':<7} "
              f"{m.licence:<12} {m.source_data} / {m.source_task}")
    print("\nAlso: timm:<any timm model name> and hf:<any hub text encoder, or wav2vec2 / "
          "HuBERT / WavLM speech encoder> (hub weights, need network) and the directory of a "
          "run headstart wrote (`headstart pretrain` makes one from your own source data).")
    from .tasks.detect import TORCHVISION_DETECTORS

    print("Detection (--task detect): --detector fasterrcnn | retinanet | fcos on any image "
          "backbone above, or a whole COCO-pretrained detector (needs network): "
          + ", ".join(f"torchvision:{n}" for n in TORCHVISION_DETECTORS) + ".")
    return 0


def cmd_pretrain(args) -> int:
    """``fit`` from random weights: strategy finetune, one LR everywhere, BN trains."""
    arch = args.arch or PRETRAIN_ARCHS.get(args.task) or TASK_DEFAULTS[args.task].get(
        "backbone", FitConfig.backbone)
    for key, value in PRETRAIN_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    args.backbone = arch if arch.startswith("scratch:") else f"scratch:{arch}"
    args.fix_boxes = "error"
    return cmd_fit(args)


def cmd_datasets(args) -> int:
    if args.name.startswith("accent-"):
        from .data.speech import build_accent_corpus

        summary = build_accent_corpus(args.out, source=args.source_accent,
                                      target=args.target_accent,
                                      task=args.name.removeprefix("accent-"), seed=args.seed)
        for split, info in summary["splits"].items():
            print(f"wrote {split}: {info['recordings']} recordings to {Path(args.out) / split}")
        return 0
    if args.name == "tree-crowns":
        return _tree_dataset(args)
    if args.name != "fashion-mnist":
        return _text_dataset(args)
    from .datasets import export_image_folder, fashion_mnist, per_class_subset

    out = Path(args.out)
    x, y, classes = fashion_mnist("train")
    idx = per_class_subset(y, args.per_class, args.seed)
    export_image_folder(x[idx], y[idx], classes, out / "train")
    xt, yt, _ = fashion_mnist("test")
    tidx = (per_class_subset(yt, args.test_per_class, args.seed) if args.test_per_class
            else slice(None))
    export_image_folder(xt[tidx], yt[tidx], classes, out / "test")
    print(f"wrote {len(idx)} training images to {out / 'train'} and "
          f"{len(yt[tidx])} test images to {out / 'test'}")
    return 0


def _text_dataset(args) -> int:
    """SpamAssassin: stratified 50/50 split (--seed), --per-class of the train half;
    Fine Food: the official split. Written as train.csv / test.csv (text,label)."""
    import numpy as np

    from .datasets import export_text_csv, fine_foods, per_class_subset, spam_assassin

    out = Path(args.out)
    if args.name == "spam-assassin":
        from sklearn.model_selection import train_test_split

        texts, labels, _ = spam_assassin()
        idx = np.arange(len(texts))
        tr, te = train_test_split(idx, test_size=0.5, stratify=labels, random_state=args.seed)
        train = ([texts[i] for i in tr], [labels[i] for i in tr])
        test = ([texts[i] for i in te], [labels[i] for i in te])
    else:
        train, test = fine_foods("train"), fine_foods("test")
    if args.per_class:
        y = np.unique(train[1], return_inverse=True)[1]
        keep = per_class_subset(y, args.per_class, args.seed)
        train = ([train[0][i] for i in keep], [train[1][i] for i in keep])
    if args.test_per_class:
        y = np.unique(test[1], return_inverse=True)[1]
        keep = per_class_subset(y, args.test_per_class, args.seed)
        test = ([test[0][i] for i in keep], [test[1][i] for i in keep])
    export_text_csv(*train, out / "train.csv")
    export_text_csv(*test, out / "test.csv")
    print(f"wrote {len(train[0])} training texts to {out / 'train.csv'} and {len(test[0])} "
          f"test texts to {out / 'test.csv'}")
    return 0


def _tree_dataset(args) -> int:
    """The DeepForest tree crowns as Pascal VOC folders (images copied): train/ (one large
    scene) and test/ (two held-out images)."""
    import shutil

    from .data.boxes import BoxSource, write_voc
    from .datasets import tree_crowns

    out = Path(args.out)
    for split in ("train", "test"):
        source = tree_crowns(split)
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        copied = []
        for s in source.samples:
            target = folder / Path(s.path).name
            if not target.exists():
                shutil.copyfile(s.path, target)
            copied.append(type(s)(str(target), s.width, s.height, s.boxes, s.labels))
        write_voc(BoxSource(copied, source.classes, source.origin), folder)
        print(f"wrote {split}: {len(source)} image(s), {source.num_boxes} tree crowns to {folder}")
    return 0
