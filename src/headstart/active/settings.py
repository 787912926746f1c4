"""Every default of ``suggest`` in one place (the flags of ``headstart suggest``); light to
import: the command line builds its parser from it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# The methods `choose` takes; `auto` resolves to one of them (choose.resolve_method).
METHODS = ("auto", "typiclust", "badge", "margin", "entropy", "margin-kcenter", "kcenter")
# The ones that need no model (a cold start).
WITHOUT_MODEL = ("typiclust", "kcenter")


def _s(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SuggestSettings:
    """Every default of ``suggest`` (the CLI flags of ``headstart suggest``)."""

    budget: int = _s(50, "how many items to suggest for labelling")
    method: str = _s(
        "auto",
        "how to choose: typiclust (the most typical item of each of the largest groups "
        "not labelled yet; no model needed) | badge (unsure and diverse at once: "
        "k-means++ on the last layer's gradient embeddings) | margin | entropy (the "
        "least sure items) | margin-kcenter (the least sure 4 x budget, then spread "
        "out) | kcenter (spread out over the features; no model needed) | auto "
        "(typiclust while there are fewer than 20 labelled items per class or no "
        "model, badge from there)",
    )
    seed: int = _s(0, "seed of the k-means and BADGE draws")

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)
