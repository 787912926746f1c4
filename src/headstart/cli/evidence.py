"""``rank``, ``study``, ``advise``, ``tune``: evidence before and about training."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..config import FEATURE_SETTINGS, FitConfig
from .flags import (
    TASKS,
    add_config_flags,
    add_data_flags,
    fit_config_from_args,
    join_process_group,
    open_labeled,
    quiet_library_logs,
    task_flag,
)

log = logging.getLogger("headstart")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "rank",
        help="score candidate source models (and cut points) on your "
        "labeled data before any training: LogME, LEEP, NCE, H-score, kNN, "
        "linear probe",
    )
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument(
        "--models",
        required=True,
        help="comma-separated backbone ids or run "
        "directories; ID@N removes the last N stages (e.g. "
        "packaged:efficientnet_lite0@2)",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated cut points tried for every "
        "model, e.g. 0,1,2 (stages removed from the end)",
    )
    p.add_argument(
        "--scores",
        default=None,
        help="comma-separated scores to compute "
        "(default: all of logme, leep, nce, nleep, h_score, knn, linear)",
    )
    p.add_argument("--score", default=None, help="the score that orders the table (default: nleep)")
    p.add_argument(
        "--max-items",
        type=int,
        default=None,
        help="rank a stratified sample of "
        "about this many items, at least 5 per class (default: 300); data this "
        "small or smaller is ranked whole and its features serve the next fit",
    )
    p.add_argument(
        "--write-config",
        default=None,
        metavar="YAML",
        help="write the winner's "
        "backbone, cut and these feature settings as a fit config: `headstart fit "
        "DATA --config YAML` trains it (and reuses the cached features)",
    )
    add_data_flags(p, json_help="print the ranking as JSON")
    add_config_flags(
        p,
        only=FEATURE_SETTINGS,
        title="feature settings (as for fit; with the "
        "same values a later fit reuses the cached features)",
        tasks=TASKS,
    )
    p.set_defaults(handler=cmd_rank)

    p = sub.add_parser(
        "study",
        help="prove the transfer: transfer strategies against the same "
        "network trained from scratch and the classic baseline (--no-baseline "
        "skips it), over nested fractions of your data (control: over env steps), "
        "with an HTML report",
    )
    p.add_argument(
        "data", nargs="?", default=None, help="labeled data, as for fit (control: --env)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="source model id or run directory (default: the task's default backbone, as for fit)",
    )
    p.add_argument(
        "--test",
        default=None,
        help="test data (default: hold out --test-fraction of DATA, stratified)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="study folder (default: studies/<model>); rerunning into it skips the finished runs",
    )
    p.add_argument(
        "--fractions",
        default="0.05,0.1,0.25,0.5,1",
        help="nested, stratified fractions of the training pool",
    )
    p.add_argument(
        "--strategies",
        default=None,
        help="comma-separated (default: feature_extract,partial,finetune,lp_ft; "
        "control: finetune,lp_ft,partial)",
    )
    p.add_argument(
        "--scratch-steps",
        type=int,
        default=None,
        help="control: env steps of the from-scratch runs (default: 3x --steps, the "
        "budget transfer should save)",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (spread shown)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("--test-fraction", type=float, default=0.2)
    add_data_flags(
        p,
        config_help="YAML file of fit settings (the budget)",
        json_help="print the gains as JSON",
        tasks=(*TASKS, "control"),
    )
    add_config_flags(
        p,
        only=tuple(f for f in FitConfig.field_names() if f not in ("backbone", "strategy")),
        title="fit settings shared by every run (the budget)",
        tasks=(*TASKS, "control"),
    )
    p.set_defaults(handler=cmd_study)

    p = sub.add_parser(
        "advise",
        help="which strategy and settings for this model on this data, "
        "and why (dataset facts + one cheap probe)",
    )
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument(
        "--model",
        default=None,
        help="source model id or run directory (default: the task's default backbone, as for fit)",
    )
    add_data_flags(p, json_help="print the advice as JSON")
    add_config_flags(p, only=FEATURE_SETTINGS, title="feature settings (as for fit)", tasks=TASKS)
    p.set_defaults(handler=cmd_advise)

    p = sub.add_parser(
        "tune",
        help="hyperparameter search on Optuna: strategy, learning "
        "rates, weight decay, dropout, unfrozen depth; pruned, resumable",
    )
    p.add_argument("data", help="labeled data, as for fit")
    p.add_argument(
        "--model",
        default=None,
        help="source model id or run directory (default: the task's default backbone)",
    )
    p.add_argument(
        "--trials", type=int, default=20, help="trials in all (a rerun adds only the missing ones)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for optuna.db, the trial table, the "
        "report and the best run (default: tunes/<model>)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: SQLite in "
        "OUT; a shared RDB URL lets several machines work on one study)",
    )
    p.add_argument(
        "--study-name", default=None, help="default: derived from the model, data and settings"
    )
    p.add_argument("--strategies", default="feature_extract,lp_ft,partial,finetune")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    p.add_argument("--no-refit", action="store_true", help="do not refit the best trial")
    add_data_flags(p, config_help="YAML file of fit settings (the budget)", json_help=None)
    add_config_flags(
        p,
        only=tuple(f for f in FitConfig.field_names() if f not in ("backbone", "strategy")),
        title="fit settings shared by every trial (the budget)",
        tasks=TASKS,
    )
    p.set_defaults(handler=cmd_tune)


def cmd_rank(args) -> int:
    from ..features import default_cache_dir
    from ..select import DEFAULT_MAX_ITEMS, Candidate, rank

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
    main_process = join_process_group(cfg)
    data = open_labeled(args.task, args.data, cfg, args)
    result = rank(
        data,
        cands,
        task=args.task,
        scores=scores,
        score=args.score,
        max_items=DEFAULT_MAX_ITEMS if args.max_items is None else args.max_items,
        config=cfg,
    )
    if not main_process:  # every process has the result; the first one reports it
        return 0
    if args.write_config and any(r.error is None for r in result.rows):
        import yaml

        from ..artifacts import atomic_write_bytes

        settings = {
            **{
                k: v
                for k, v in cfg.to_dict().items()
                if k in FEATURE_SETTINGS and (k in given or k == "feature_cache")
            },
            **result.fit_params(),
        }
        atomic_write_bytes(
            Path(args.write_config),
            ("# written by headstart rank\n" + yaml.safe_dump(settings, sort_keys=False)).encode(),
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if any(r.error is None for r in result.rows) else 2
    sample = (
        f"a stratified sample of {result.n_items}" if result.sampled else f"all {result.n_items}"
    )
    n = len(result.rows)
    print(
        f"ranked {n} candidate{'s' if n != 1 else ''} on {sample} items, "
        f"{result.n_classes} classes, by {result.score} ({result.seconds:.1f} s); higher is "
        "better for every score"
    )
    print(result.table())
    if not any(r.error is None for r in result.rows):
        print("no candidate could be scored", file=sys.stderr)
        return 2
    best = result.best.candidate
    cut = f" --cut {best.cut}" if best.cut else ""
    task = task_flag(args.task)
    how = (
        f"--config {args.write_config}"
        if args.write_config
        else f"--backbone {best.backbone}{cut} --feature-cache {cfg.feature_cache}"
    )
    print(f"\nbest: {best.label}. Train it with:\n  headstart fit {args.data}{task} {how}")
    return 0


def cmd_study(args) -> int:
    from tqdm.auto import tqdm

    from ..report.words import describe_gain
    from ..study import run_study

    if not args.verbose:  # one line per run, not every epoch of every run
        quiet_library_logs()
    cfg = fit_config_from_args(args)
    args.model = args.model or cfg.backbone
    from_yaml = FitConfig.read_yaml(args.config) if args.config else {}
    given = {
        f: getattr(cfg, f) for f in FitConfig.field_names() if hasattr(args, f) or f in from_yaml
    }
    out = Path(args.out or f"studies/{Path(args.model).name.replace(':', '-')}")
    bar = tqdm(total=None, desc="study", unit="run", disable=None)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name)
        bar.update(done - bar.n)

    from ..tasks import serving_for

    try:
        lines = serving_for(args.task).run_study(args, cfg, given, out, progress)
    finally:
        bar.close()
    if lines is not None:  # the task studied itself (control: over env steps)
        print("\n".join(lines))
        return 0
    if args.data is None:
        raise ValueError(f"study --task {args.task}: give the labelled DATA (see `study --help`)")
    data = open_labeled(args.task, args.data, cfg, args)
    test = open_labeled(args.task, args.test, cfg, args, data.classes) if args.test else None
    strategies = args.strategies or "feature_extract,partial,finetune,lp_ft"
    bar = tqdm(total=None, desc="study", unit="run", disable=None)
    try:
        result = run_study(
            data,
            model=args.model,
            out=out,
            test=test,
            task=args.task,
            fractions=[float(f) for f in args.fractions.split(",") if f.strip()],
            strategies=[s.strip() for s in strategies.split(",") if s.strip()],
            seeds=[int(x) for x in args.seeds.split(",") if x.strip()],
            scratch=not args.no_scratch,
            test_fraction=args.test_fraction,
            progress=progress,
            **given,
        )
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

    from ..tune import tune

    optuna.logging.disable_default_handler()  # Optuna's lines go through our logging
    optuna.logging.enable_propagation()
    if not args.verbose:  # one line per trial, not every epoch of every trial
        quiet_library_logs()
    cfg = fit_config_from_args(args)
    from_yaml = FitConfig.read_yaml(args.config) if args.config else {}
    given = {
        f: getattr(cfg, f)
        for f in FitConfig.field_names()
        if (hasattr(args, f) or f in from_yaml) and f not in ("backbone", "strategy")
    }
    seed = given.pop("seed", 0)
    model = args.model or cfg.backbone
    out = Path(args.out or f"tunes/{Path(model).name.replace(':', '-')}")
    data = open_labeled(args.task, args.data, cfg, args)
    result = tune(
        data,
        model=model,
        task=args.task,
        trials=args.trials,
        out=out,
        storage=args.storage,
        study_name=args.study_name,
        strategies=[x.strip() for x in args.strategies.split(",") if x.strip()],
        timeout=args.timeout,
        refit=not args.no_refit,
        seed=seed,
        **given,
    )
    best, default = result.best, result.default
    states: dict[str, int] = {}
    for t in result.trials:
        states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
    print(
        f"tune: {out}  ({model}, {len(result.trials)} trials: "
        + ", ".join(f"{n} {k}" for k, n in sorted(states.items()))
        + f"; {result.seconds:.0f} s)"
    )
    print(
        f"best trial {best['number']}: validation {result.monitor} {best['value']:.4f}  "
        + " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in best["params"].items()
        )
    )
    if default is not None and default["value"] is not None:
        print(
            f"default settings (trial {default['number']}): {default['value']:.4f}  "
            f"({best['value'] - default['value']:+.4f} for the search)"
        )
    if result.best_run:
        print(f"best refit saved: {result.best_run}")
    print(f"report: {out / 'report.html'}  (trials also in tune.csv, tune.json)")
    return 0


def cmd_advise(args) -> int:
    from ..advise import advise

    cfg = fit_config_from_args(args)
    args.model = args.model or cfg.backbone
    data = open_labeled(args.task, args.data, cfg, args)
    given = {f: getattr(cfg, f) for f in FEATURE_SETTINGS}
    advice = advise(data, model=args.model, task=args.task, **given)
    if args.json:
        print(json.dumps(advice.to_dict(), indent=2))
        return 0
    f = advice.facts
    print(
        f"{args.model} on {args.data}: {f['n_items']} items, {f['n_classes']} classes "
        f"({f['smallest_class']}-{f['largest_class']} per class); probe on "
        f"{f['probe_items']} items: linear {100 * f['probe_linear']:.1f}%, kNN "
        f"{100 * f['probe_knn']:.1f}%"
    )
    if f.get("baseline_cv") is not None:
        print(
            f"classic baseline on the same items: {f['baseline']}, cross-validated "
            f"{100 * f['baseline_cv']:.1f}%"
            + ("" if f["transfer_pays"] else "  (transfer may not pay here)")
        )
    print(advice.text())
    settings = dict(advice.settings)
    strategy = settings.pop("strategy", advice.strategy)  # auto: transfer may not pay
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
    print(
        f"\n  headstart fit {args.data}{task_flag(args.task)} --backbone {args.model} "
        f"--strategy {strategy} {flags}".rstrip()
    )
    return 0
