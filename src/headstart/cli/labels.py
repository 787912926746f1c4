"""``suggest``: label less — which unlabelled items to label next."""

from __future__ import annotations

import json
import sys

from ..config import CLASSIFY_TASKS
from .flags import add_config_flags, task_flag

# FitConfig fields a cold start reads the pool with (flags given are passed on)
COLD_START_SETTINGS = (
    "image_size",
    "window",
    "slices",
    "max_length",
    "truncation",
    "text_column",
    "clip_seconds",
)


def add_parsers(sub) -> None:
    from ..active.settings import METHODS

    p = sub.add_parser(
        "suggest",
        help="choose which unlabelled items to label next (active learning), "
        "written as a CSV to fill in that `fit` reads back",
        description="Rank a pool of unlabelled items by what labelling them is worth and "
        "write the best BUDGET as a CSV with an empty label column. From a backbone id (a "
        "cold start, no labels yet): the most typical item of each of the largest groups "
        "in the pool. From a trained run: the same while labels are few (fewer than 20 "
        "per class), away from what it was trained on; from there, the items its model is "
        "least sure of, spread over its features. Fill in the label column, then "
        "`headstart fit OUT.csv` (images, audio: a path,label CSV; text: a text,label "
        "table).",
    )
    p.add_argument(
        "model",
        metavar="RUN_OR_MODEL",
        help="a run directory `headstart fit --out` wrote, or a backbone id for a cold "
        "start (e.g. packaged:efficientnet_lite0, packaged:minilm-l6; "
        "`headstart models --offline`)",
    )
    p.add_argument(
        "--pool",
        required=True,
        help="the unlabelled items: a folder of images or recordings (searched "
        "recursively), a CSV with a 'path' column, or a table of texts (CSV, TSV, JSONL, "
        "Parquet) with a text column",
    )
    _setting_flag(p, "budget", type=int)
    p.add_argument(
        "--out",
        default="to_label.csv",
        help="the CSV to fill in (default: to_label.csv); paths in it are relative to its folder",
    )
    p.add_argument(
        "--labeled",
        default=None,
        help="items labelled already, as for fit (their labels are not read): picks "
        "keep away from them, and pool items among them are left out (default: the "
        "run's own training data, where it is still on disk)",
    )
    _setting_flag(p, "method", choices=METHODS)
    p.add_argument(
        "--task",
        choices=CLASSIFY_TASKS,
        default=None,
        help="cold start: the task the items are for (default: the backbone's modality); "
        "a run knows its own",
    )
    p.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="where frozen features are cached (default: $HEADSTART_CACHE/features, as rank's)",
    )
    _setting_flag(p, "seed", type=int)
    p.add_argument("--json", action="store_true", help="print the suggestions as JSON")
    add_config_flags(
        p,
        only=COLD_START_SETTINGS,
        title="cold start: how the pool is read (a run reads items as it was trained)",
        tasks=CLASSIFY_TASKS,
    )
    p.set_defaults(handler=cmd_suggest)


def _setting_flag(p, name: str, **kw) -> None:
    """``--NAME`` with SuggestSettings' default and help (the library's defaults)."""
    from ..active.settings import SuggestSettings

    default = getattr(SuggestSettings, name)
    helptext = f"{SuggestSettings.help(name)} (default: {default})"
    p.add_argument(f"--{name}", default=default, help=helptext, **kw)


def cmd_suggest(args) -> int:
    from ..active import suggest
    from ..features import default_cache_dir

    cache = args.feature_cache or str(default_cache_dir())
    result = suggest(
        args.model,
        args.pool,
        args.budget,
        labeled=args.labeled,
        method=args.method,
        task=args.task,
        seed=args.seed,
        feature_cache=cache,
        **{k: getattr(args, k) for k in COLD_START_SETTINGS if hasattr(args, k)},
    )
    out = result.to_csv(args.out)
    if args.json:
        print(json.dumps([r.to_dict() for r in result.rows], indent=2))
    else:
        print(result.summary())
        print(result.table())
    before = (
        " (fit reads one file: add these rows to the items labelled before)"
        if result.labeled_size
        else ""
    )
    print(
        f"wrote {out}: fill in its {result.label_column!r} column, then "
        f"`headstart fit {out}{task_flag(result.task)}`{before}",
        file=sys.stderr,
    )
    return 0
