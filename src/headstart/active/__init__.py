"""Label less: which unlabelled items are worth labelling next (``suggest``).

The names load on first use (PEP 562): the command line reads :mod:`.settings` without
loading torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .settings import METHODS, SuggestSettings

_PUBLIC = {
    "Picks": ".acquire",
    "badge": ".acquire",
    "choose": ".acquire",
    "kcenter_greedy": ".acquire",
    "margin_kcenter": ".acquire",
    "typiclust": ".acquire",
    "uncertainty": ".acquire",
    "Suggestion": ".suggest",
    "Suggestions": ".suggest",
    "suggest": ".suggest",
}
__all__ = [
    "METHODS",
    "Picks",
    "SuggestSettings",
    "Suggestion",
    "Suggestions",
    "badge",
    "choose",
    "kcenter_greedy",
    "margin_kcenter",
    "suggest",
    "typiclust",
    "uncertainty",
]

if TYPE_CHECKING:
    from .acquire import (
        Picks,
        badge,
        choose,
        kcenter_greedy,
        margin_kcenter,
        typiclust,
        uncertainty,
    )
    from .suggest import Suggestion, Suggestions, suggest


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'headstart.active' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
