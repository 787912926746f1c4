"""Prove the transfer on the user's own data: a study of strategies against training from
scratch, over nested fractions of the training data.

Every run uses the same seed policy and budget: the training pool is split once into a
fixed validation set and the rest; fractions of the rest are nested (the 10% subset holds
the 5% subset) and stratified; each (strategy, fraction, seed) is one ``fit`` scored on the
same test set. The same architecture with random weights, fine-tuned end to end at a
from-scratch learning rate, is one baseline; the task's classic baseline (small pixels or
HOG / TF-IDF / log-mel statistics with logistic regression, k-NN or an RBF SVM, chosen by
cross-validation on the same training items) is the other. The verdict at each fraction
weighs the best transfer strategy against the stronger of the two. Finished runs are
appended to ``results.jsonl``: a killed study rerun with the same settings skips them.

Long file: the study's result (its curves and verdicts) and the runner that fills it, one
data model read by the CLI and the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report.words import BASELINE, SCRATCH

log = logging.getLogger(__name__)

STRATEGIES = ("feature_extract", "partial", "finetune", "lp_ft")
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
# The from-scratch baseline: every layer trains from the first step, one learning rate for
# all (discriminative rates only make sense for pretrained layers), BN statistics learnt.
SCRATCH_SETTINGS = {"strategy": "finetune", "lr": 3e-3, "lr_decay": 1.0, "bn": "train"}
RESULTS = "results.jsonl"
# The study's budget where the user sets none: 5 strategies x 5 fractions are 25 fits.
STUDY_BUDGET = {"epochs": 8, "early_stopping": 3}
# A study fits 25 models and scores each on the test set: small images are enlarged at most
# 3x (fit's own cap is 5x), fewer pixels a pass for a few points on every run alike
# (docs/results.md, "Study").
STUDY_UPSCALE_CAP = 3


def nested_fractions(
    labels: np.ndarray, fractions, seed: int, groups=None
) -> dict[float, np.ndarray]:
    """Stratified, nested subsets: for each fraction, the first ceil(f * n_c) items of one
    fixed shuffle of every class c (at least one per class). ``groups`` (patient ids):
    whole groups instead, the first ceil(f * g_c) of one shuffle of the groups whose
    majority class is c, so a patient's images are all in or all out."""
    if groups is not None:
        return _nested_group_fractions(labels, fractions, seed, groups)
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    out = {}
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
        out[f] = np.sort(
            np.concatenate([idx[: max(1, math.ceil(f * len(idx)))] for idx in order.values()])
        )
    return out


def _nested_group_fractions(labels, fractions, seed: int, groups) -> dict[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = np.asarray([str(g) for g in groups])
    ids, codes = np.unique(names, return_inverse=True)
    majority = np.array([np.bincount(labels[codes == g]).argmax() for g in range(len(ids))])
    order = {c: rng.permutation(np.flatnonzero(majority == c)) for c in np.unique(majority)}
    out = {}
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
        chosen = np.concatenate([g[: max(1, math.ceil(f * len(g)))] for g in order.values()])
        out[f] = np.flatnonzero(np.isin(codes, chosen))
    return out


@dataclass(frozen=True)
class RunSpec:
    strategy: str  # a transfer strategy, "scratch" or "baseline"
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}-f{self.fraction:g}-s{self.seed}"

    @property
    def scratch(self) -> bool:
        return self.strategy == SCRATCH

    @property
    def baseline(self) -> bool:
        return self.strategy == BASELINE


@dataclass
class StudyResult:
    """Every finished run (dicts, as in results.jsonl) and what they add up to."""

    runs: list[dict]
    model: str
    task: str
    classes: list[str]
    settings: dict = field(default_factory=dict)
    advice: dict = field(default_factory=dict)  # fraction -> Advice.to_dict()

    def advice_check(self) -> list[dict]:
        """Per fraction: what ``advise`` recommended for that much data, what won, and the
        points the advice left on the table."""
        out = []
        for f, adv in sorted(self.advice.items()):
            scores = {
                s: c["accuracy"]
                for s in self.strategies()
                for c in self.curve(s)
                if c["fraction"] == f
            }
            if not scores:
                continue
            best = max(scores, key=lambda s: scores[s])
            got = scores.get(adv["strategy"])
            out.append(
                {
                    "fraction": f,
                    "advised": adv["strategy"],
                    "best": best,
                    "hit": adv["strategy"] == best,
                    "points_lost": None if got is None else 100 * (scores[best] - got),
                    "reasons": adv["reasons"],
                }
            )
        return out

    def curve(self, strategy: str) -> list[dict]:
        """Per fraction: n_train, mean and std test accuracy over seeds, mean seconds."""
        rows = []
        for f in sorted({r["fraction"] for r in self.runs}):
            rs = [r for r in self.runs if r["strategy"] == strategy and r["fraction"] == f]
            if rs:
                acc = [r["test"]["accuracy"] for r in rs]
                rows.append(
                    {
                        "fraction": f,
                        "n_train": rs[0]["n_train"],
                        "accuracy": float(np.mean(acc)),
                        "std": float(np.std(acc)),
                        "seeds": len(rs),
                        "seconds": float(np.mean([r["fit_seconds"] for r in rs])),
                    }
                )
        return rows

    def strategies(self) -> list[str]:
        return [
            s
            for s in dict.fromkeys(r["strategy"] for r in self.runs)
            if s not in (SCRATCH, BASELINE)
        ]

    def gains(self) -> list[dict]:
        """Per fraction: the best transfer strategy against scratch and against the classic
        baseline, the gain in points over each, the training data each needed to match it
        (or transfer needed to match the baseline), and the verdict: transfer (better than
        both by more than two standard errors of the test-set difference), negative
        transfer (scratch or the baseline better by more than that; ``rival`` says which),
        or a tie."""
        scratch = {c["fraction"]: c for c in self.curve(SCRATCH)}
        baseline = {c["fraction"]: c for c in self.curve(BASELINE)}
        curves = {s: {c["fraction"]: c for c in self.curve(s)} for s in self.strategies()}
        out = []
        for f in sorted({r["fraction"] for r in self.runs}):
            cands = [(c[f]["accuracy"], s, c[f]) for s, c in curves.items() if f in c]
            rivals = {
                name: curve[f]
                for name, curve in ((SCRATCH, scratch), (BASELINE, baseline))
                if f in curve
            }
            if not cands or not rivals:
                continue
            acc, best, cell = max(cands)
            n_test = min(r["test"]["n"] for r in self.runs if r["fraction"] == f)
            row = {
                "fraction": f,
                "n_train": cell["n_train"],
                "best_strategy": best,
                "transfer_accuracy": acc,
            }
            outcome = {}
            for name, rc in rivals.items():
                # two standard errors of the difference of two accuracies on this test
                # set: a smaller gap either way is a tie, not a verdict
                p = (acc + rc["accuracy"]) / 2
                margin = 2 * math.sqrt(max(p * (1 - p), 1e-12) * 2 / max(n_test, 1))
                diff = acc - rc["accuracy"]
                outcome[name] = "win" if diff > margin else "loss" if -diff > margin else "tie"
                spread = max(cell["std"], rc["std"])
                row.update(
                    {
                        f"{name}_accuracy": rc["accuracy"],
                        f"{name}_gain_points": 100 * diff,
                        f"{name}_margin_points": 100 * margin,
                        f"{name}_beyond_seed_spread": bool(abs(diff) > 2 * spread)
                        if spread > 0
                        else None,
                    }
                )
            strongest = max(rivals, key=lambda k: rivals[k]["accuracy"])
            lost = [k for k, v in outcome.items() if v == "loss"]
            verdict = (
                "negative transfer"
                if lost
                else "transfer"
                if all(v == "win" for v in outcome.values())
                else "tie"
            )
            row.update(
                {
                    "verdict": verdict,
                    "rival": lost[0] if len(lost) == 1 else strongest,
                    "scratch_items_to_match": self._to_match(SCRATCH, acc)
                    if SCRATCH in rivals
                    else None,
                    "baseline_items_to_match": self._to_match(BASELINE, acc)
                    if BASELINE in rivals
                    else None,
                    "transfer_items_to_match_baseline": self._to_match(
                        best, rivals[BASELINE]["accuracy"]
                    )
                    if BASELINE in rivals
                    else None,
                    "negative_transfer": bool(lost),
                    # the keys of a study without a classic baseline, as before
                    "margin_points": row.get(f"{strongest}_margin_points"),
                    "gain_points": row.get(f"{strongest}_gain_points"),
                    "beyond_seed_spread": row.get(f"{strongest}_beyond_seed_spread"),
                }
            )
            out.append(row)
        return out

    def _to_match(self, strategy: str, accuracy: float) -> float | None:
        """Training items ``strategy`` needs to reach ``accuracy`` (linear in log n between
        the measured fractions); None when it never does within the data."""
        from .baselines import items_to_match

        return items_to_match(
            [(c["n_train"], c["accuracy"]) for c in self.curve(strategy)], accuracy
        )

    def _scratch_to_match(self, accuracy: float) -> float | None:
        return self._to_match(SCRATCH, accuracy)

    def best_run(self) -> dict:
        """The run with the highest test accuracy at the largest fraction."""
        top = max(r["fraction"] for r in self.runs)
        return max(
            (r for r in self.runs if r["fraction"] == top), key=lambda r: r["test"]["accuracy"]
        )

    def table_rows(self) -> list[dict]:
        keys = (
            "name",
            "strategy",
            "fraction",
            "n_train",
            "seed",
            "fit_seconds",
            "epochs",
            "epochs_to_best",
            "train_accuracy",
            "val_accuracy",
            "gap",
        )
        return [
            {
                **{k: r.get(k) for k in keys},
                "test_accuracy": r["test"]["accuracy"],
                "test_macro_f1": r["test"]["macro_f1"],
            }
            for r in sorted(self.runs, key=lambda r: (r["fraction"], r["strategy"], r["seed"]))
        ]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "task": self.task,
            "classes": self.classes,
            "settings": self.settings,
            "gains": self.gains(),
            "advice": self.advice_check(),
            "curves": {s: self.curve(s) for s in [*self.strategies(), SCRATCH, BASELINE]},
            "runs": self.runs,
        }

    def report_data(self) -> dict:
        """What the HTML report renders: plain data, no methods."""
        return {**self.to_dict(), "best_run": self.best_run(), "table_rows": self.table_rows()}

    def write(self, out: str | Path) -> dict[str, Path]:
        """results.csv (one row per run), study.json (everything), report.html."""
        import csv
        import io

        from .artifacts import atomic_write_bytes, atomic_write_json
        from .report import build_report

        out = Path(out)
        rows = self.table_rows()
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
        atomic_write_json(out / "study.json", self.to_dict())
        atomic_write_bytes(out / "report.html", build_report(self.report_data()).encode())
        return {
            "csv": out / "results.csv",
            "json": out / "study.json",
            "report": out / "report.html",
        }


def _fingerprint(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_study(
    data,
    y=None,
    *,
    model: str | None = None,
    out: str | Path,
    test=None,
    task: str = "image",
    strategies=STRATEGIES,
    fractions=FRACTIONS,
    seeds=(0,),
    scratch: bool = True,
    baseline: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    progress=None,
    advise: bool = True,
    **settings,
) -> StudyResult:
    """Run (or finish) a study and write its results and report under ``out``.

    ``scratch`` / ``baseline``: also fit the network from random weights / the task's
    classic baseline at every fraction and seed (the verdict weighs transfer against both).

    ``settings`` are FitConfig fields shared by every run (the budget: ``epochs``,
    ``head_epochs``, ``image_size``, ...; default ``STUDY_BUDGET``: 8 epochs, early stop
    after 3, and images enlarged at most 3x (:data:`STUDY_UPSCALE_CAP`)). Without ``test``,
    a stratified ``test_fraction`` of ``data`` is held out. ``progress(done, total, name)``
    is called after each run."""
    from .data.splits import stratified_split
    from .tasks import ESTIMATORS

    if task not in ESTIMATORS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(ESTIMATORS)}")
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(
            f"unknown strategy {bad[0]!r} for a study; choose from {', '.join(STRATEGIES)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = bool(settings.pop("baseline", baseline))  # --no-baseline: no classic runs
    settings = {**STUDY_BUDGET, **settings}
    est = ESTIMATORS[task](backbone=model, **settings)
    cfg = est.resolved_config()
    model = cfg.backbone  # None: the task's default backbone, as for fit
    source = est.read_labeled(data, y, cfg=cfg)
    if source.labels.ndim != 1:
        raise ValueError("a study needs single-label data")
    if test is None:
        pool_idx, test_idx = stratified_split(
            source.labels, test_fraction, cfg.seed, getattr(source, "groups", None)
        )
        pool, test_src = source.subset(pool_idx), source.subset(test_idx)
    else:
        tx, ty = test if isinstance(test, tuple) else (test, None)  # data, or (X, y)
        pool, test_src = source, est.read_labeled(tx, ty, source.classes, cfg)
    if task == "image" and "image_size" not in settings:
        cfg = cfg.replace(image_size=_study_image_size(cfg, source))
        settings["image_size"] = cfg.image_size  # shown in the report, used by the advice
    tr_idx, va_idx = stratified_split(
        pool.labels, val_fraction, cfg.seed, getattr(pool, "groups", None)
    )
    train_pool, val_src = pool.subset(tr_idx), pool.subset(va_idx)
    subsets = nested_fractions(
        np.asarray(train_pool.labels), fractions, cfg.seed, getattr(train_pool, "groups", None)
    )
    specs = [
        RunSpec(s, f, seed)
        for f in sorted(fractions)
        for seed in seeds
        for s in [*strategies, *([SCRATCH] if scratch else []), *([BASELINE] if baseline else [])]
    ]
    key = _fingerprint(
        [
            model,
            task,
            {k: v for k, v in cfg.to_dict().items() if k not in ("num_workers", "device")},
            train_pool.fingerprint(),
            val_src.fingerprint(),
            test_src.fingerprint(),
        ]
    )
    results = out / RESULTS
    done = _finished(results, key)
    total = len(specs)
    log.info(
        "study of %s: %d runs (%d finished), %d training items in the pool, %d validation, %d test",
        model,
        total,
        sum(s.name in done for s in specs),
        len(train_pool),
        len(val_src),
        len(test_src),
    )
    for i, spec in enumerate(specs, 1):
        if spec.name not in done:
            run = _one_baseline_run if spec.baseline else _one_run
            record = run(
                ESTIMATORS[task],
                spec,
                model,
                cfg,
                train_pool.subset(subsets[spec.fraction]),
                val_src,
                test_src,
                out / "work" / spec.name,
            )
            record["study"] = key
            _append(results, record)
            done[spec.name] = record
            log.info(
                "study %d/%d %s: test accuracy %.4f (%.0f s)",
                i,
                total,
                spec.name,
                record["test"]["accuracy"],
                record["fit_seconds"],
            )
        if progress is not None:
            progress(i, total, spec.name)
    shutil.rmtree(out / "work", ignore_errors=True)
    advice = {}
    if advise:  # what advise says for each amount of data, checked against what won
        from .advise import advise as advise_fn
        from .config import FEATURE_SETTINGS

        feature = {k: v for k, v in settings.items() if k in FEATURE_SETTINGS}
        for f in sorted(fractions):
            subset = train_pool.subset(subsets[f])
            try:
                advice[f] = advise_fn(subset, model=model, task=task, **feature).to_dict()
            except Exception as exc:  # noqa: BLE001 - the study stands without its advice
                log.warning("advice for fraction %g failed: %s", f, exc)
    result = StudyResult(
        [done[s.name] for s in specs],
        model,
        task,
        list(source.classes),
        settings={
            "fractions": sorted(fractions),
            "strategies": list(strategies),
            "seeds": list(seeds),
            "scratch": SCRATCH_SETTINGS if scratch else None,
            "baseline": baseline,
            "fit": {k: v for k, v in cfg.to_dict().items() if k in settings},
            "n_pool": len(train_pool),
            "n_val": len(val_src),
            "n_test": len(test_src),
        },
        advice=advice,
    )
    result.write(out)
    return result


def _study_image_size(cfg, source) -> int:
    """The backbone's own input side, but small images enlarged at most
    :data:`STUDY_UPSCALE_CAP` times (rounded up to 32 px, at least 64)."""
    from .data.transforms import median_side
    from .zoo import create_backbone

    own = create_backbone(cfg.backbone, pretrained=False, cut=cfg.cut).preprocess.input_size
    side = median_side(source)
    if not side:
        return own
    return min(own, max(64, int(math.ceil(STUDY_UPSCALE_CAP * side / 32) * 32)))


def _append(results: Path, record: dict) -> None:
    """One JSON line, flushed to disk; a line torn by an earlier kill is closed first so
    it cannot swallow this one."""
    import os

    torn = False
    if results.is_file() and results.stat().st_size > 0:
        with results.open("rb") as f:  # the last byte only, not the whole file
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with results.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finished(results: Path, key: str) -> dict[str, dict]:
    """Runs of this study (same data, model and settings) already in results.jsonl; a
    torn last line (killed mid-write) is ignored."""
    done = {}
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("study") == key:
                done[r["name"]] = r
    return done


def _one_run(cls, spec: RunSpec, model: str, cfg, train_src, val_src, test_src, work: Path) -> dict:
    changes: dict[str, Any] = (
        dict(SCRATCH_SETTINGS, backbone=f"scratch:{model}")
        if spec.scratch
        else {"strategy": spec.strategy, "backbone": model}
    )
    changes["baseline"] = False  # the study's own baseline runs fit it once per subset
    run_cfg = cfg.replace(seed=spec.seed, **changes)
    clf = cls(config=run_cfg, run_dir=work)
    t0 = time.perf_counter()
    clf.fit(train_src, validation=val_src, resume=(work / "checkpoints" / "last").is_dir())
    seconds = time.perf_counter() - t0
    history = clf.history_
    val_acc = [h.get("val_accuracy", float("nan")) for h in history]
    best_epoch = (
        int(np.nanargmax(val_acc)) + 1 if history and not np.all(np.isnan(val_acc)) else None
    )
    train_acc = clf.evaluate(train_src)["accuracy"]
    val = clf.metrics_.get("validation") or clf.evaluate(val_src)
    test = clf.evaluate(test_src)
    return {
        "name": spec.name,
        "strategy": spec.strategy,
        "fraction": spec.fraction,
        "seed": spec.seed,
        "n_train": len(train_src),
        "backbone": run_cfg.backbone,
        "fit_seconds": seconds,
        "epochs": len(history),
        "epochs_to_best": best_epoch,
        "best": clf.best_,
        "train_accuracy": train_acc,
        "val_accuracy": val["accuracy"],
        "gap": train_acc - val["accuracy"],
        "test": {
            k: test[k]
            for k in (
                "accuracy",
                "macro_f1",
                "auroc",
                "n",
                "per_class",
                "confusion_matrix",
                "log_loss",
                "ece",
                "reliability",
                "calibration",
            )
            if k in test
        },
        "history": [
            {
                k: h[k]
                for k in ("stage", "global_epoch", "train_loss", "val_loss", "val_accuracy")
                if k in h
            }
            for h in history
        ],
    }


def _one_baseline_run(
    cls, spec: RunSpec, model: str, cfg, train_src, val_src, test_src, work: Path
) -> dict:
    """The classic baseline alone on the run's training subset, scored like a run."""
    from .metrics import classification_metrics
    from .tasks.baselined import baseline_only

    t0 = time.perf_counter()
    est = baseline_only(cls, cfg.replace(seed=spec.seed, backbone=model), train_src)
    seconds = time.perf_counter() - t0

    def scored(src) -> dict:
        return classification_metrics(src.labels, est.baseline_proba(src), est.classes_)

    train, val, test = scored(train_src), scored(val_src), scored(test_src)
    return {
        "name": spec.name,
        "strategy": BASELINE,
        "fraction": spec.fraction,
        "seed": spec.seed,
        "n_train": len(train_src),
        "backbone": est.baseline_.name,
        "fit_seconds": seconds,
        "epochs": 0,
        "epochs_to_best": None,
        "best": None,
        "train_accuracy": train["accuracy"],
        "val_accuracy": val["accuracy"],
        "gap": train["accuracy"] - val["accuracy"],
        "test": {
            k: test[k]
            for k in (
                "accuracy",
                "macro_f1",
                "auroc",
                "n",
                "per_class",
                "confusion_matrix",
                "log_loss",
                "ece",
                "reliability",
            )
            if k in test
        },
        "baseline_fit": est.baseline_.summary(),
        "history": [],
    }
