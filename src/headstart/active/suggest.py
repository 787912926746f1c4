"""``suggest``: which unlabelled items of a pool to label next, as a CSV to fill in.

From a trained run (or a fitted estimator): the run's probabilities on the pool
(uncertainty) and its backbone's features (diversity, against the items labelled already:
the run's own training data, or ``labeled``). From a backbone id and no labels at all (a
cold start): a diverse first batch, the most typical item of each of the pool's largest
groups on the frozen features (TypiClust; k-center picked outliers, docs/results.md).
The features go through the estimators' public ``frozen_features`` and the on-disk
feature cache, so a second ``suggest`` (or the ``fit`` after it) does not recompute them.

The CSV has the item column ``fit`` reads (``path``, or the text column), an empty label
column to fill in, and why each item was chosen; ``fit`` takes the filled-in CSV back.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_bytes
from ..config import CLASSIFY_TASKS, FitConfig
from ..data.images import DataError
from ..data.splits import item_keys
from .acquire import Picks, choose, resolve_method
from .settings import WITHOUT_MODEL, SuggestSettings

log = logging.getLogger(__name__)


@dataclass
class Suggestion:
    """One item to label: where it is in the pool, what it is, and why it was chosen."""

    rank: int
    index: int  # position in the pool as read
    item: Any  # a file path, a text, or an in-memory item
    name: str
    score: float
    uncertainty: float | None
    distance: float | None
    predicted: str | None
    confidence: float | None
    reason: str

    def to_dict(self) -> dict:
        """Every field but the item itself (a text or an array: ``name`` says which)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "item"}


@dataclass
class Suggestions:
    """The items to label, best first; ``to_csv`` writes the sheet to fill in."""

    rows: list[Suggestion]
    method: str
    model: str
    task: str
    pool_size: int
    labeled_size: int
    excluded: int  # pool items left out: labelled already
    item_column: str
    label_column: str

    @property
    def indices(self) -> np.ndarray:
        return np.asarray([r.index for r in self.rows], dtype=np.int64)

    def to_csv(self, path: str | Path) -> Path:
        """The sheet to fill in: the item (a path relative to the CSV's folder, or the
        text), an empty label, then rank, predicted, confidence, uncertainty, distance,
        score and reason. Written atomically."""
        path = Path(path)
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: the suggestions are written as CSV; name a .csv file")
        head = [
            self.item_column,
            self.label_column,
            "rank",
            "predicted",
            "confidence",
            "uncertainty",
            "distance",
            "score",
            "reason",
        ]
        lines: list[list[str]] = []
        for r in self.rows:
            lines.append(
                [
                    _cell(r, self.item_column, path),
                    "",
                    str(r.rank),
                    r.predicted or "",
                    _num(r.confidence),
                    _num(r.uncertainty),
                    _num(r.distance),
                    _num(r.score),
                    r.reason,
                ]
            )
        from io import StringIO

        buf = StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(head)
        writer.writerows(lines)
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
        return path

    def summary(self) -> str:
        labelled = (
            f", diverse against {self.labeled_size} labelled items" if self.labeled_size else ""
        )
        left = f"; {self.excluded} pool items already labelled left out" if self.excluded else ""
        return (
            f"{len(self.rows)} of {self.pool_size} pool items suggested by {self.method} "
            f"({self.task}, {self.model}{labelled}){left}"
        )

    def table(self, limit: int = 10) -> str:
        out = []
        for r in self.rows[:limit]:
            what = r.name if self.item_column == "path" else f"{r.name}: {r.item}"
            out.append(f"{r.rank:>4}  {_short(what, 48):<48}  {r.reason}")
        if len(self.rows) > limit:
            out.append(f"  ... and {len(self.rows) - limit} more")
        return "\n".join(out)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _cell(r: Suggestion, column: str, csv_path: Path) -> str:
    """The item as the CSV names it: a file path relative to the CSV's folder (absolute
    where there is none), or the text itself."""
    if not isinstance(r.item, (str, Path)):
        raise ValueError(
            f"pool item {r.index} ({r.name}) is in memory and has no file to name in "
            f"the {column!r} column; pass the pool as files, or use Suggestions.indices"
        )
    if column != "path":
        return str(r.item)
    try:
        return Path(os.path.relpath(Path(r.item).resolve(), csv_path.resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows)
        return str(Path(r.item).resolve())


def suggest(
    model,
    pool,
    budget: int = SuggestSettings.budget,
    *,
    labeled=None,
    method: str = SuggestSettings.method,
    task: str | None = None,
    seed: int = SuggestSettings.seed,
    config: FitConfig | None = None,
    **settings,
) -> Suggestions:
    """The ``budget`` items of ``pool`` most worth labelling next.

    ``model``: a run directory or a fitted estimator (uncertainty from its predictions,
    diversity on its backbone's features), or a backbone id such as
    ``packaged:efficientnet_lite0`` (a cold start: the typical items of the pool's largest
    groups; ``task`` is the backbone's modality unless given). ``pool``: unlabelled items
    as the task reads them for ``predict`` (a folder, a CSV with a path column, a table of
    texts, a list).
    ``labeled``: items labelled already (their labels are not read); default: the run's
    own training data, where its files are still there. Pool items that are labelled
    already are left out. ``method``: :data:`headstart.active.METHODS`. ``settings`` /
    ``config``: FitConfig fields for a cold start's features (``feature_cache``, image
    size, text truncation, ...); a run reads items as it was trained, and takes only
    ``feature_cache``."""
    est, fitted, label = _estimator(model, task, config, settings)
    ignored = sorted(set(settings) - {"feature_cache"}) + (["config"] if config else [])
    if fitted and ignored:
        raise ValueError(
            f"{label}: a trained run reads its items as it was trained; "
            f"{', '.join(ignored)} would not apply (only feature_cache does): leave "
            f"{'it' if len(ignored) == 1 else 'them'} out"
        )
    cfg = est.config_ if fitted else est.resolved_config()
    if settings.get("feature_cache") and fitted:
        cfg = cfg.replace(feature_cache=settings["feature_cache"])
    serving = est.serving_class()
    source = _read(est, pool, "pool", serving.pool_help)
    done = None
    if labeled is not None:
        done = _read(est, labeled, "labeled", serving.pool_help, allow_empty=True)
    elif fitted:
        done = _run_training_data(est, serving.pool_help)
    keep = _not_labelled(source, done)
    excluded = len(source) - len(keep)
    if not len(keep):
        raise ValueError(
            f"{source.origin}: every pool item is labelled already ({len(source)} items); "
            "point --pool at items without labels"
        )
    if excluded:
        log.info("suggest: %d pool items are labelled already: left out", excluded)
        source = source.subset(keep)
    if not 1 <= budget <= len(source):
        raise ValueError(
            f"budget {budget}: the pool {source.origin} has {len(source)} items to choose "
            f"from; pass a budget between 1 and {len(source)} (--budget)"
        )
    multi = fitted and getattr(est, "multi_label_", False)
    if multi and method not in ("auto", *WITHOUT_MODEL):
        raise ValueError(
            f"method={method}: a multi-label run has no single-label uncertainty yet; "
            f"pass method={' or '.join(WITHOUT_MODEL)} (--method) to choose by the features"
        )
    backbone = est.model_.backbone if fitted else _cold_backbone(est, cfg)
    preprocess = est.preprocess_ if fitted else est.input_spec(backbone, source, cfg)
    parts = [source] + ([done] if done is not None and len(done) else [])
    feats = est.frozen_features(backbone, {0: backbone}, preprocess, parts, cfg)[0]
    pool_f = feats[0].float().numpy()
    lab_f = feats[1].float().numpy() if len(feats) > 1 else None
    # the run's probabilities: uncertainty, and the predicted column the labeller sees
    proba = est.predict_proba(source) if fitted and not multi else None
    count = len(lab_f) if lab_f is not None else _trained_on(est) if fitted else 0
    n_classes = len(est.classes_) if fitted else None
    resolved = resolve_method(method, proba is not None, count, n_classes)
    lab_p = est.predict_proba(done) if resolved == "badge" and lab_f is not None else None
    picks = choose(
        pool_f, budget, proba, lab_f, lab_p, method=resolved, seed=seed, labeled_count=count
    )
    classes = list(getattr(est, "classes_", []) or [])
    rows = _rows(source, picks, proba, classes, lab_f is not None)
    return Suggestions(
        rows,
        picks.method,
        label,
        est.task,
        pool_size=len(source) + excluded,
        labeled_size=0 if lab_f is None else len(lab_f),
        excluded=excluded,
        item_column=serving.item_column(cfg),
        label_column=cfg.label_column,
    )


def _estimator(model, task: str | None, config, settings: dict):
    """(estimator, whether it is fitted, how to name the model) of ``suggest``'s model."""
    from ..tasks import ESTIMATORS, TransferEstimator, load_estimator, run_task
    from ..zoo import create_backbone
    from ..zoo.local import is_run_dir

    if isinstance(model, TransferEstimator):
        if not hasattr(model, "model_"):
            raise ValueError(
                f"this {type(model).__name__} is not fitted; fit it first, or pass a "
                "backbone id for a cold start"
            )
        _check_task(model.task, "the estimator")
        return model, True, type(model).__name__
    if isinstance(model, (str, Path)) and is_run_dir(model):
        _check_task(run_task(model).task, str(model))
        return load_estimator(model), True, str(model)
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        raise ValueError(
            f"{model}: a folder but not a headstart run (no config.json and weights); pass "
            "a run directory `headstart fit --out` wrote, or a backbone id "
            "(`headstart models --offline`)"
        )
    name = str(model)
    if ":" not in name and not Path(name).exists() and ("/" in name or os.sep in name):
        raise ValueError(
            f"{name}: no such run directory; pass a run `headstart fit --out` wrote, or a "
            "backbone id (`headstart models --offline`)"
        )
    if task is None:
        modality = create_backbone(name, pretrained=False).meta.modality
        found = [t for t in CLASSIFY_TASKS if ESTIMATORS[t].modality == modality]
        if not found:
            raise ValueError(f"{name} is a {modality} model; suggest chooses for classifiers")
        task = found[0]
    _check_task(task, name)
    return ESTIMATORS[task](backbone=name, config=config, **settings), False, name


def _check_task(task: str, where: str) -> None:
    if task not in CLASSIFY_TASKS:
        raise ValueError(
            f"{where}: a {task} model; suggest chooses items for classifiers "
            f"({', '.join(CLASSIFY_TASKS)})"
        )


def _cold_backbone(est, cfg: FitConfig):
    import torch

    from ..zoo import create_backbone

    torch.manual_seed(cfg.seed)  # a random-init backbone gets the weights fit starts from
    return create_backbone(cfg.backbone, pretrained=True, cut=cfg.cut).eval()


def _read(est, data, what: str, hint: str, allow_empty: bool = False):
    """The items of ``data`` (labels ignored); a missing path or an empty pool is a clear
    error naming it."""
    if isinstance(data, (str, Path)) and not Path(data).exists():
        raise DataError(f"{data}: no such file or folder; the {what} items are {hint}")
    source = est.read_unlabeled(data)
    if not len(source) and not allow_empty:
        raise DataError(f"{getattr(source, 'origin', data)}: the {what} is empty; it is {hint}")
    return source


def _run_training_data(est, hint: str):
    """The run's own training items (from ``data.origin`` in its config), or None with a
    note where they are not on disk (arrays, or moved)."""
    origin = getattr(est, "data_origin_", None)
    if not origin or not Path(origin).exists():
        log.info(
            "suggest: the run's training data (%s) is not on disk; diversity is measured "
            "within the pool alone (pass labeled= / --labeled to count labelled items)",
            origin or "in memory",
        )
        return None
    try:
        return est.read_unlabeled(origin)
    except DataError as exc:  # moved, deleted or unreadable since the fit
        log.warning(
            "suggest: the run's training data %s cannot be read (%s); diversity is measured "
            "within the pool alone (pass labeled= / --labeled)",
            origin,
            str(exc).splitlines()[0],
        )
        return None


def _trained_on(est) -> int:
    """How many items the run was trained on (its config's data summary)."""
    summary = getattr(est, "data_summary_", None) or {}
    return int(summary.get("train") or summary.get("items") or 0)


def _items(source) -> list:
    """What each item is: the texts of a text source, else its items (paths, arrays)."""
    texts = getattr(source, "texts", None)
    return list(texts) if texts is not None else list(source.items)


def _not_labelled(source, done) -> np.ndarray:
    """Positions of the pool items that are not among the labelled ones."""
    if done is None or not len(done):
        return np.arange(len(source))
    seen = {k for k in item_keys(done) if k is not None}
    return np.asarray(
        [i for i, k in enumerate(item_keys(source)) if k is None or k not in seen], dtype=np.int64
    )


def _rows(source, picks: Picks, proba, classes: list[str], has_labeled: bool) -> list:
    items = _items(source)
    rows = []
    for rank, (i, score) in enumerate(zip(picks.indices, picks.score), 1):
        i = int(i)
        u = None if picks.uncertainty is None else float(picks.uncertainty[rank - 1])
        d = None if picks.distance is None else float(picks.distance[rank - 1])
        predicted = confidence = None
        why = []
        if picks.notes is not None:
            why.append(picks.notes[rank - 1])
        if proba is not None:
            p = np.asarray(proba[i], dtype=np.float64)
            top = np.argsort(-p)[:2]
            predicted, confidence = classes[top[0]], float(p[top[0]])
            if picks.uncertainty is not None:  # chosen (partly) for the model's doubt
                why.insert(
                    0,
                    f"unsure: {classes[top[0]]} {p[top[0]]:.2f} vs {classes[top[1]]} "
                    f"{p[top[1]]:.2f}",
                )
            else:
                why.append(f"the run guesses {predicted} ({confidence:.2f})")
        if d is not None and np.isfinite(d):
            against = "labelled or already chosen" if has_labeled else "already chosen"
            why.append(f"distance {d:.3f} to the nearest {against} item")
        elif d is not None and picks.method == "kcenter":
            why.append("the first pick: the item nearest the pool's mean")
        rows.append(
            Suggestion(
                rank,
                i,
                items[i],
                source.name(i),
                float(score),
                u,
                d if d is not None and np.isfinite(d) else None,
                predicted,
                confidence,
                "; ".join(why),
            )
        )
    return rows


__all__ = ["Suggestion", "Suggestions", "suggest"]
