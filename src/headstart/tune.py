"""Hyperparameter search on Optuna: strategy, learning rates, weight decay, dropout and how
many layer groups train, pruned by validation score, resumable from Optuna's storage.

Every trial fits the same architecture on the same train/validation split (``fit``'s own
stratified split, so features cached by one trial are reused by the next: a
``feature_extract`` trial after the first costs seconds). The first trial of a new study
is the default settings, so the table always shows what the search bought. Each epoch's
validation score is reported to Optuna; the median pruner stops trials that trail the
others at the same epoch of a stage that trains the backbone (head-only epochs cost
milliseconds, and a probe still converging is no reason to stop). The best trial is fitted again
and saved as a run (``OUT/best``), and the trial table is written as CSV, JSON and an HTML
report.

The study lives in ``OUT/optuna.db`` (SQLite) unless ``storage`` names another Optuna
storage (any RDB URL lets several machines share one study); its name is derived from
the model, the data and the settings, so rerunning the same command continues it:
finished trials are kept, and only the missing ones run.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import atomic_write_bytes, atomic_write_json
from .config import AUTO_TRANSFER
from .imbalance import effective_monitor

log = logging.getLogger(__name__)

STRATEGIES = ("feature_extract", "lp_ft", "partial", "finetune")
# Stages that train only the head on cached features (see strategies.build_strategy).
HEAD_ONLY_STAGES = ("linear_probe",)
# What every trial trains for: the study's budget (early stopping also ends hopeless runs).
TUNE_BUDGET = {"epochs": 8, "early_stopping": 3}
# Search ranges: (low, high), sampled on a log scale except dropout.
SPACE = {
    "lr": (1e-5, 1e-2),  # backbone peak learning rate (strategies that train it)
    "head_lr": (1e-4, 1e-1),
    "weight_decay": (1e-6, 1e-1),
    "dropout": (0.0, 0.5),
}


@dataclass
class TuneResult:
    study_name: str
    storage: str
    monitor: str
    trials: list[dict]
    best: dict
    default: dict | None
    best_run: str | None
    seconds: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "study_name",
                "storage",
                "monitor",
                "best",
                "default",
                "best_run",
                "seconds",
                "settings",
                "trials",
            )
        }


def tune(
    data,
    y=None,
    *,
    model: str | None = None,
    task: str = "image",
    trials: int = 20,
    out: str | Path = "runs/tune",
    storage: str | None = None,
    study_name: str | None = None,
    strategies=STRATEGIES,
    timeout: float | None = None,
    refit: bool = True,
    seed: int = 0,
    **settings,
) -> TuneResult:
    """Run (or continue) a search of ``trials`` trials in all; ``settings`` are FitConfig
    fields every trial shares (default :data:`TUNE_BUDGET`)."""
    import optuna

    from .tasks import ESTIMATORS
    from .zoo import create_backbone

    if task not in ESTIMATORS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(ESTIMATORS)}")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise ValueError(
            f"strategies must be among {', '.join(STRATEGIES)}; got {', '.join(bad) or 'none'}"
        )
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cls = ESTIMATORS[task]
    settings = {**TUNE_BUDGET, **settings, "seed": seed}
    if model is not None:
        settings["backbone"] = model
    base = cls(**settings).resolved_config()
    source, train_src, val_src = cls(config=base).split(data, y, cfg=base)
    if val_src is None:
        raise ValueError("tuning needs a validation split: set val_fraction > 0")
    n_groups = len(create_backbone(base.backbone, pretrained=False, cut=base.cut).groups())
    neutral = ("num_workers", "device", "feature_cache", "eval_batch_size")
    name = (
        study_name
        or "headstart-"
        + hashlib.sha256(
            json.dumps(
                [
                    task,
                    {k: v for k, v in base.to_dict().items() if k not in neutral},
                    sorted(strategies),
                    train_src.fingerprint(),
                    val_src.fingerprint(),
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
    )
    storage = storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    monitor = effective_monitor(base, train_src.labels, list(source.classes))  # "auto" resolved
    with _quiet_experimental(optuna):
        study = optuna.create_study(
            study_name=name,
            storage=_storage(storage),
            direction="maximize",
            load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
        )
        # seeded, but by how far the study has come: a resumed search must not draw the
        # same first points again (TPE's start-up trials come from its random generator)
        study.sampler = optuna.samplers.TPESampler(seed=seed + 7919 * len(study.trials))
        if not study.trials:  # a new study: the default settings come first
            study.enqueue_trial(
                _default_params(base, strategies, n_groups), user_attrs={"default": True}
            )
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = [t for t in study.trials if t.state in states]
    todo = max(0, trials - len(finished))
    log.info(
        "tune %s: study %s in %s, %d of %d trials finished, %d to run; %d train / %d "
        "validation items",
        base.backbone,
        name,
        storage,
        len(finished),
        trials,
        todo,
        len(train_src),
        len(val_src),
    )
    if todo:
        with _quiet_experimental(optuna):
            study.optimize(
                _objective(cls, base, train_src, val_src, strategies, n_groups, monitor),
                n_trials=todo,
                timeout=timeout,
                gc_after_trial=True,
                catch=(RuntimeError, ValueError),
            )
    table = [_trial_row(t) for t in study.trials]
    done = [r for r in table if r["state"] == "COMPLETE"]
    if not done:
        raise RuntimeError(f"no trial of study {name} finished; see the log for their errors")
    best = max(done, key=lambda r: r["value"])
    default = next((r for r in table if r["default"]), None)
    best_run = None
    if refit:
        run = out / "best"
        params = best["params"]
        clf = cls(config=base.replace(**params), run_dir=run)
        clf.fit(train_src, validation=val_src)
        best_run = str(run)
        log.info(
            "best trial %d refit into %s: validation %s %.4f (trial: %.4f)",
            best["number"],
            run,
            monitor,
            _best_score(clf, monitor),
            best["value"],
        )
    result = TuneResult(
        name,
        storage,
        monitor,
        table,
        best,
        default,
        best_run,
        time.perf_counter() - t0,
        settings={
            "trials": trials,
            "strategies": list(strategies),
            "space": SPACE,
            "n_groups": n_groups,
            "n_train": len(train_src),
            "n_val": len(val_src),
            "fit": {k: v for k, v in base.to_dict().items() if k in settings},
        },
    )
    write_results(result, out)
    return result


@contextlib.contextmanager
def _quiet_experimental(optuna):
    """Heartbeats and enqueued user attributes are marked experimental in Optuna; they
    are what makes resuming safe here, so their warnings are noise for our users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _storage(url: str):
    """An RDB storage with heartbeats: a trial whose process was killed is marked failed
    (and not counted) when the study is resumed."""
    import optuna

    if url.startswith(("sqlite", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(url, heartbeat_interval=10, grace_period=20)
    return url


def _default_params(cfg, strategies, n_groups: int) -> dict:
    own = AUTO_TRANSFER if cfg.strategy == "auto" else cfg.strategy  # auto trains lp_ft
    strategy = own if own in strategies else strategies[0]
    params = {
        "strategy": strategy,
        "head_lr": cfg.head_lr,
        "weight_decay": max(cfg.weight_decay, SPACE["weight_decay"][0]),
        "dropout": cfg.dropout,
    }
    if strategy != "feature_extract":
        params["lr"] = cfg.lr
    if strategy == "partial":
        params["partial_groups"] = min(cfg.partial_groups, n_groups)
    return params


def _suggest(trial, strategies, n_groups: int) -> dict:
    params = {"strategy": trial.suggest_categorical("strategy", list(strategies))}
    params["head_lr"] = trial.suggest_float("head_lr", *SPACE["head_lr"], log=True)
    params["weight_decay"] = trial.suggest_float("weight_decay", *SPACE["weight_decay"], log=True)
    params["dropout"] = trial.suggest_float("dropout", *SPACE["dropout"])
    if params["strategy"] != "feature_extract":
        params["lr"] = trial.suggest_float("lr", *SPACE["lr"], log=True)
    if params["strategy"] == "partial":
        params["partial_groups"] = trial.suggest_int("partial_groups", 1, max(1, n_groups))
    return params


def _score(row: dict, monitor: str) -> float | None:
    """An epoch row's validation score, higher is better (``-val_loss`` for loss)."""
    value = (
        -row["val_loss"] if monitor == "loss" and "val_loss" in row else row.get(f"val_{monitor}")
    )
    return None if value is None or math.isnan(value) else float(value)


def _best_score(clf, monitor: str) -> float:
    """The score of the epoch ``fit`` kept: the best of its last stage."""
    last = clf.history_[-1]["stage"]
    scores = [_score(r, monitor) for r in clf.history_ if r["stage"] == last]
    return max(v for v in scores if v is not None)


def _objective(cls, base, train_src, val_src, strategies, n_groups: int, monitor: str):
    import optuna

    def objective(trial) -> float:
        params = _suggest(trial, strategies, n_groups)
        trained = 0  # epochs so far that trained backbone layers

        def report(row: dict) -> None:
            nonlocal trained
            # Only epochs that train the backbone are reported, at step k = the k-th such
            # epoch, so trials of every strategy are compared at the same point: step 3 is
            # the third fine-tuning epoch of `lp_ft` (after its probe) and of `finetune`.
            # (Numbered by the global epoch, a `finetune` trial's 3rd epoch met the
            # medians of `lp_ft` probes on cached features, and lost to them.) Head-only
            # epochs run in milliseconds: nothing to save by pruning them.
            score = _score(row, monitor)
            if score is None or row["stage"] in HEAD_ONLY_STAGES:
                return
            trained += 1
            trial.report(float(score), step=trained)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fine-tuning epoch {trained}: {monitor} {score:.4f}")

        t0 = time.perf_counter()
        # trials compare networks: the classic baseline (the same for every trial) is not
        # refitted for each
        clf = cls(config=base.replace(baseline=False, **params))
        clf.fit(train_src, validation=val_src, callbacks=[report])
        val = clf.metrics_["validation"]
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("best_epoch", clf.best_)
        trial.set_user_attr("val_accuracy", val["accuracy"])
        trial.set_user_attr("val_macro_f1", val["macro_f1"])
        return _best_score(clf, monitor)

    return objective


def _trial_row(t) -> dict:
    seconds = t.user_attrs.get("seconds")
    if seconds is None and t.datetime_start and t.datetime_complete:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "default": bool(t.user_attrs.get("default")),
        "params": dict(t.params),
        "seconds": seconds,
        "best_epoch": t.user_attrs.get("best_epoch"),
        "val_accuracy": t.user_attrs.get("val_accuracy"),
        "val_macro_f1": t.user_attrs.get("val_macro_f1"),
        "last_step": max(t.intermediate_values) if t.intermediate_values else None,
        "pruned_at": (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        ),
    }


def write_results(result: TuneResult, out: str | Path) -> dict[str, Path]:
    """``tune.csv`` (one row per trial), ``tune.json`` and ``report.html``."""
    import io

    from .report import build_tune_report

    out = Path(out)
    keys = sorted({k for r in result.trials for k in r["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "value", "default", "seconds", "best_epoch", *keys])
    for r in result.trials:
        writer.writerow(
            [
                r["number"],
                r["state"],
                r["value"],
                r["default"],
                "" if r["seconds"] is None else f"{r['seconds']:.1f}",
                r["best_epoch"] or "",
                *[r["params"].get(k, "") for k in keys],
            ]
        )
    paths = {"csv": out / "tune.csv", "json": out / "tune.json", "report": out / "report.html"}
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    atomic_write_json(paths["json"], result.to_dict())
    atomic_write_bytes(paths["report"], build_tune_report(result).encode())
    return paths
