"""Choosing the source model: transferability scores as pure functions (:mod:`.scores`) and
``rank``, which scores candidates on the user's own data before any training (:mod:`.rank`)."""

from .rank import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_SCORE,
    MIN_PER_CLASS,
    RANK_TASKS,
    Candidate,
    RankResult,
    RankRow,
    probed_items,
    rank,
)
from .scores import (
    SCORES,
    Score,
    ScoreError,
    h_score,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    nce,
    nleep,
)

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_SCORE",
    "MIN_PER_CLASS",
    "RANK_TASKS",
    "SCORES",
    "Candidate",
    "RankResult",
    "RankRow",
    "Score",
    "ScoreError",
    "h_score",
    "knn_accuracy",
    "leep",
    "linear_probe_accuracy",
    "logme",
    "nce",
    "nleep",
    "probed_items",
    "rank",
]
