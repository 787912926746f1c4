"""Flags and helpers the command families share: one flag per FitConfig field (its help
names every task's default), the run flags, the data flags, and how parsed arguments become
a FitConfig."""

from __future__ import annotations

import argparse
import logging
import types
import typing
from dataclasses import MISSING, fields

from ..config import CHOICES, CLASSIFY_TASKS, TASK_DEFAULTS, FitConfig, settings_over

TASKS = CLASSIFY_TASKS
FIT_TASKS = (*TASKS, "asr", "detect", "control")


def _show(value) -> str:
    """A default as --help writes it (a tuple as its flag values)."""
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "empty"
    return '""' if value == "" else str(value)


def _default_help(name: str, default, tasks: tuple[str, ...]) -> str:
    """``(default: 12; text: 8, audio: 15)``: FitConfig's default, then each task's own."""
    own = [
        f"{task}: {_show(TASK_DEFAULTS[task][name])}"
        for task in tasks
        if name in TASK_DEFAULTS[task] and TASK_DEFAULTS[task][name] != default
    ]
    return f"(default: {_show(default)}{'; ' + ', '.join(own) if own else ''})"


def add_config_flags(
    parser: argparse.ArgumentParser,
    only: tuple[str, ...] | None = None,
    title: str = "fit settings (also valid as keys of --config YAML)",
    tasks: tuple[str, ...] = FIT_TASKS,
    defaults: dict | None = None,
) -> None:
    """One flag per FitConfig field; its help names the defaults of each of ``tasks`` (the
    command's --task choices). ``defaults``: the command's own, over every task's."""
    hints = typing.get_type_hints(FitConfig)
    group = parser.add_argument_group(title)
    for f in fields(FitConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.default is not MISSING:
            default = f.default
        else:
            assert callable(f.default_factory)  # every FitConfig field has a default
            default = f.default_factory()
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


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """What ``fit`` and ``pretrain`` share besides the fit settings."""
    p.add_argument(
        "--val",
        default=None,
        help="validation data (default: hold out --val-fraction of the training data, stratified)",
    )
    p.add_argument("--test", default=None, help="test data, evaluated after training")
    p.add_argument("--config", default=None, help="YAML file of fit settings")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from its "
        "last checkpoint in --out (a finished run: nothing to do, no file rewritten; "
        "no checkpoint there: says so and starts a new fit)",
    )
    p.add_argument("--path-column", default="path", help="CSV: the column of file paths")
    p.add_argument("--json", action="store_true", help="print the run's metrics as JSON")


# the library's per-epoch loggers, quieted by commands that run many fits
LIBRARY_LOGS = (
    "headstart.tasks",
    "headstart.train",
    "headstart.strategies",
    "headstart.data",
    "headstart.zoo",
    "headstart.features",
    "headstart.select",
)


def quiet_library_logs() -> None:
    for name in LIBRARY_LOGS:
        logging.getLogger(name).setLevel(logging.WARNING)


def fit_config_from_args(args: argparse.Namespace) -> FitConfig:
    task_defaults = dict(TASK_DEFAULTS[getattr(args, "task", "image")])  # the estimator's
    base = FitConfig.read_yaml(args.config) if args.config else {}  # overrides the task's
    given = {f: getattr(args, f) for f in FitConfig.field_names() if hasattr(args, f)}
    return FitConfig.from_dict(
        {**task_defaults, **settings_over({**base, **given})}, args.config or "command line"
    )


def open_labeled(task: str, data, cfg: FitConfig, args, classes=None):
    """Labeled data as the task reads it from the command line."""
    from ..tasks import serving_for

    return serving_for(task).open_labeled(
        data,
        cfg,
        path_column=args.path_column,
        classes=classes,
        fix=getattr(args, "fix_boxes", "error"),
    )


def task_flag(task: str) -> str:
    """`` --task text`` in a command line printed for the user; nothing for the default."""
    return "" if task == "image" else f" --task {task}"


def join_process_group(cfg: FitConfig) -> bool:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1), join the job's process group
    (gloo on CPU, NCCL on GPUs, through Accelerate) so feature passes are shared; True on
    the process that reports."""
    from ..train import launched_processes, use_cpu

    if launched_processes() <= 1:
        return True
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(cfg)).is_main_process


def add_data_flags(
    p: argparse.ArgumentParser,
    config_help: str = "YAML file of fit settings",
    json_help: str | None = "print the result as JSON",
    tasks: tuple[str, ...] = TASKS,
) -> None:
    """What every command that reads labelled data shares: --task, --config, --path-column
    and (unless ``json_help`` is None) --json."""
    p.add_argument("--task", choices=tasks, default="image")
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--path-column", default="path", help="image CSV: the column of file paths")
    if json_help is not None:
        p.add_argument("--json", action="store_true", help=json_help)
