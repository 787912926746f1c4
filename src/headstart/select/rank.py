"""``rank``: score candidate source models (and cut points inside them) on the user's own
labelled data before any training: one frozen pass per candidate over a stratified sample,
then the scores of :mod:`headstart.select.scores`."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CLASSIFY_TASKS
from .scores import SCORES, Score, ScoreError

log = logging.getLogger(__name__)


# ================================================================================ rank()
# N-LEEP ranked as well as or better than LogME at every sample size of our benchmark
# (benchmarks/rank_transfer.py: Kendall tau 0.56 against 0.46 at 300 items, 7 candidates, 3
# targets) and, like LogME, applies to every candidate; LogME stays one flag away.
DEFAULT_SCORE = "nleep"


@dataclass(frozen=True)
class Candidate:
    """A backbone id and how many trailing stages to cut (``id@N`` in the CLI)."""

    backbone: str
    cut: int = 0

    @classmethod
    def parse(cls, text: str) -> Candidate:
        name, sep, cut = text.strip().rpartition("@")
        if sep and cut.isdigit():
            return cls(name, int(cut))
        return cls(text.strip(), 0)

    @property
    def label(self) -> str:
        return f"{self.backbone}@{self.cut}" if self.cut else self.backbone


@dataclass
class RankRow:
    candidate: Candidate
    scores: dict
    feature_dim: int | None = None
    params: int | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "backbone": self.candidate.backbone,
            "cut": self.candidate.cut,
            "label": self.candidate.label,
            "scores": self.scores,
            "feature_dim": self.feature_dim,
            "params": self.params,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@dataclass
class RankResult:
    """Candidates best-first by ``score``; rows that failed to load come last."""

    rows: list[RankRow]
    score: str
    task: str
    n_items: int
    n_classes: int
    sampled: bool
    seconds: float

    @property
    def best(self) -> RankRow:
        ok = [r for r in self.rows if r.error is None]
        if not ok:
            raise ScoreError(
                "no candidate could be scored: "
                + "; ".join(f"{r.candidate.label}: {r.error}" for r in self.rows)
            )
        return ok[0]

    def fit_params(self) -> dict:
        """``backbone`` and ``cut`` of the winner: ``ImageClassifier(**result.fit_params())``."""
        return {"backbone": self.best.candidate.backbone, "cut": self.best.candidate.cut}

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "task": self.task,
            "n_items": self.n_items,
            "n_classes": self.n_classes,
            "sampled": self.sampled,
            "seconds": round(self.seconds, 3),
            "best": self.fit_params() if any(r.error is None for r in self.rows) else None,
            "rows": [r.to_dict() for r in self.rows],
        }

    def table(self) -> str:
        names = list(dict.fromkeys(k for r in self.rows for k in r.scores))
        head = ["#", "candidate", *names, "dim", "params", "seconds"]
        lines: list[list[str]] = []
        said: dict[str, int] = {}
        for i, r in enumerate(self.rows, 1):
            if r.error:  # each cut point of an unloadable model has its error: printed once
                first = said.setdefault(r.error, i)
                lines.append(
                    [
                        str(i),
                        r.candidate.label,
                        f"error: {r.error}" if first == i else f"error: as row {first}",
                    ]
                )
                continue
            cells = [_fmt(r.scores.get(k)) for k in names]
            lines.append(
                [
                    str(i),
                    r.candidate.label,
                    *cells,
                    str(r.feature_dim),
                    f"{r.params / 1e6:.2f}M" if r.params else "-",
                    f"{r.seconds:.1f}",
                ]
            )
        widths = [
            max([len(head[j])] + [len(row[j]) for row in lines if len(row) == len(head) or j < 2])
            for j in range(len(head))
        ]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        for line in lines:
            if len(line) != len(head):
                out.append("  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]), line[2]]))
            else:
                out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        return "\n".join(out)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}"


MIN_PER_CLASS = 5


def _sample(labels: np.ndarray, max_items: int, seed: int) -> np.ndarray:
    """A stratified sample of about ``max_items`` indices: each class in proportion, and
    at least ``MIN_PER_CLASS`` of each (all of a smaller class) so every score has data."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.maximum(
        np.minimum(counts, MIN_PER_CLASS), np.floor(counts * max_items / len(labels))
    ).astype(int)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, share)]
    return np.sort(np.concatenate(picked))


DEFAULT_MAX_ITEMS = 300
RANK_TASKS = CLASSIFY_TASKS  # single-label classes to score by


def _probe_parts(est, source, cfg, max_items: int):
    """(fit's training part, the parts a rank probes, whether they are a sample): a
    stratified sample of the training part when there are more than ``max_items`` items,
    else fit's own train/validation split (its feature cache keys match)."""
    from ..data.images import DataError

    try:
        _, train_src, val_src = est.split(source, cfg=cfg)
    except DataError:  # too few items for fit's validation split: rank them all as one part
        train_src, val_src = source, None
    if len(source) > max_items:
        return (
            train_src,
            [train_src.subset(_sample(np.asarray(train_src.labels), max_items, cfg.seed))],
            True,
        )
    return train_src, [p for p in (train_src, val_src) if p is not None], False


def probed_items(est, source, cfg, max_items: int = DEFAULT_MAX_ITEMS):
    """The items ``rank`` probes on ``source``, as one source (what ``advise`` fits the
    classic baseline on)."""
    _, parts, sampled = _probe_parts(est, source, cfg, max_items)
    return parts[0] if sampled or len(parts) == 1 else source


def rank(
    data,
    models,
    y=None,
    *,
    task: str = "image",
    scores=None,
    score=None,
    max_items: int = DEFAULT_MAX_ITEMS,
    config=None,
    **settings,
) -> RankResult:
    """Score candidate backbones on labeled target data before any training.

    ``models``: ids (``packaged:efficientnet_lite0``, ``hf:...``, a run directory), with an
    optional ``@N`` to cut the last N stages, or :class:`Candidate` objects. For each one:
    one frozen forward pass over the data (a stratified sample of about ``max_items``: on
    three real targets the scores ranked as well from 200 items as from 1000, see
    benchmarks/rank_transfer.py),
    then every score of ``scores`` (default: all; LEEP and NCE only where the backbone has
    its source head): built-in names, and your own as named functions
    ``fn(features, labels, source_probs) -> float`` (higher is better; float64 features of
    the sample, labels 0..C-1) or :class:`Score` objects; ``score`` (a name, or the
    function or Score itself) is the one that orders the rows. ``settings`` are FitConfig
    fields that shape the features (image size, text truncation, ``feature_cache``,
    ``seed``, ``val_fraction``): with the same values and no sampling, a later
    ``feature_extract`` fit reuses the cached features.
    A candidate that cannot be loaded becomes a row with its error, not an exception.
    In a data-parallel job (``torchrun ... -m headstart rank``, or a process group the
    caller initialised) the processes share each forward pass; all get the same result."""
    import time

    from ..features import sharded_passes
    from ..tasks import ESTIMATORS
    from ..zoo import create_backbone

    t_start = time.perf_counter()
    if task not in RANK_TASKS:
        raise ValueError(
            f"task={task!r}: rank scores classifier backbones, choose one of "
            f"{', '.join(RANK_TASKS)}"
            + (
                " (detection and speech-recognition backbones are not ranked yet)"
                if task in ESTIMATORS
                else ""
            )
        )
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1 (items ranked), got {max_items}")
    specs = _score_specs(scores)
    names = list(specs)
    if score is not None and not isinstance(score, str):  # the Score or function itself
        score = score.name if isinstance(score, Score) else getattr(score, "__name__", score)
    score = score or (DEFAULT_SCORE if DEFAULT_SCORE in names else names[0])
    if score not in names:
        raise ValueError(f"score={score!r} is not among the computed scores {names}")
    candidates = [m if isinstance(m, Candidate) else Candidate.parse(m) for m in models]
    if not candidates:
        raise ValueError("no candidate models given")
    est = ESTIMATORS[task](config=config, **settings)
    cfg = est.resolved_config()
    source = est.read_labeled(data, y, cfg=cfg)  # read once; split takes the source
    if source.labels.ndim != 1:
        raise ValueError(
            "rank needs single-label data (one class per item); multi-label "
            "rows cannot be ranked yet"
        )
    train_src, parts, sampled = _probe_parts(est, source, cfg, max_items)
    labels = np.concatenate([np.asarray(p.labels) for p in parts])
    device = torch.device(
        "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:  # the cut points of one backbone share its forward pass
        groups.setdefault(cand.backbone, []).append(cand)
    rows = []
    for model_id, group in groups.items():
        t0 = time.perf_counter()
        try:
            torch.manual_seed(cfg.seed)  # a random-init candidate gets the weights fit starts from
            base = create_backbone(
                model_id, pretrained=True, cut=group[0].cut if len(group) == 1 else 0
            ).to(device)
            preprocess = est.input_spec(base, train_src, cfg)
        except Exception as exc:  # noqa: BLE001 - one bad candidate must not end the ranking
            log.warning("rank: %s could not be loaded: %s", model_id, exc)
            rows += [
                RankRow(
                    c, {}, seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"
                )
                for c in group
            ]
            continue
        variants, errors = _variants(base, group, device, cfg.seed)
        rows += [RankRow(c, {}, error=e) for c, e in errors.items()]
        try:
            with sharded_passes():  # under torchrun: each process computes a share
                feats = {
                    c: torch.cat(f)
                    for c, f in est.frozen_features(base, variants, preprocess, parts, cfg).items()
                }
        except Exception as exc:  # noqa: BLE001
            log.warning("rank: %s: the forward pass failed: %s", model_id, exc)
            rows += [RankRow(c, {}, error=f"{type(exc).__name__}: {exc}") for c in variants]
            continue
        seconds = (time.perf_counter() - t0) / max(1, len(variants))
        for cand, backbone in variants.items():
            t1 = time.perf_counter()
            values = _scores(specs, feats[cand], labels, backbone.source_head(), device)
            rows.append(
                RankRow(
                    cand,
                    values,
                    feature_dim=int(feats[cand].shape[1]),
                    params=sum(p.numel() for p in backbone.parameters()),
                    seconds=seconds + time.perf_counter() - t1,
                )
            )
        del base, variants

    def order(row: RankRow):
        v = row.scores.get(score, float("nan"))
        return (row.error is not None, math.isnan(v), -v if not math.isnan(v) else 0.0)

    rows.sort(key=order)
    return RankResult(
        rows,
        score,
        task,
        n_items=len(labels),
        n_classes=len(np.unique(labels)),
        sampled=sampled,
        seconds=time.perf_counter() - t_start,
    )


def _variants(base, group: list[Candidate], device, seed: int):
    """The backbone of each candidate of one model id: ``base`` itself, or copies of it
    cut as asked (no second load). Families without ``with_cut`` are built again."""
    from ..zoo import create_backbone

    if len(group) == 1:
        return {group[0]: base}, {}
    variants, errors = {}, {}
    for cand in group:
        try:
            if cand.cut == 0:
                variants[cand] = base
            elif hasattr(base, "with_cut"):
                variants[cand] = base.with_cut(cand.cut).to(device)
            else:
                torch.manual_seed(seed)
                variants[cand] = create_backbone(cand.backbone, pretrained=True, cut=cand.cut).to(
                    device
                )
        except Exception as exc:  # noqa: BLE001 - e.g. a cut out of range
            log.warning("rank: %s could not be built: %s", cand.label, exc)
            errors[cand] = f"{type(exc).__name__}: {exc}"
    return variants, errors


def _score_specs(scores) -> dict[str, Score]:
    """name -> Score for ``rank(scores=...)``: built-in names, :class:`Score` objects and
    named functions ``fn(features, labels, source_probs) -> float``; default: every
    built-in score."""
    if not scores:
        return dict(SCORES)
    if isinstance(scores, str):
        scores = [scores]
    specs: dict[str, Score] = {}
    unknown = []
    for item in scores:
        if isinstance(item, Score):
            spec = item
        elif callable(item):
            name = getattr(item, "__name__", "")
            if not name.isidentifier():  # a lambda or a partial
                raise ValueError(
                    f"the score function {item!r} needs a name for its column: "
                    "define it with def, or pass Score('name', fn)"
                )
            spec = Score(name, item, False, (item.__doc__ or "").strip().split("\n")[0])
        elif item in SCORES:
            spec = SCORES[item]
        else:
            unknown.append(str(item))
            continue
        if spec.name in specs:
            raise ValueError(f"two scores are named {spec.name!r}: give one another name")
        specs[spec.name] = spec
    if unknown:
        raise ValueError(
            f"unknown score(s) {', '.join(unknown)}; choose from "
            f"{', '.join(SCORES)}, or pass a function or a Score"
        )
    return specs


def _scores(specs: dict[str, Score], feats, labels: np.ndarray, head, device) -> dict:
    probs = None
    if head is not None and any(spec.needs_source for spec in specs.values()):
        with torch.inference_mode():
            probs = torch.softmax(head.to(device)(feats.to(device)).double(), 1).cpu().numpy()
    f = feats.double().numpy()
    values = {}
    for name, spec in specs.items():
        if spec.needs_source and probs is None:
            values[name] = float("nan")  # no source head: the score does not apply
        else:
            try:
                values[name] = float(spec.fn(f, labels, probs))
            except ScoreError as exc:  # e.g. a class too small for cross-validation
                log.warning("rank: %s not computed: %s", name, exc)
                values[name] = float("nan")
    return values
