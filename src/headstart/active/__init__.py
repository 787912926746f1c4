"""Label less: which unlabelled items are worth labelling next (``suggest``)."""

from .choose import METHODS, Picks, badge, choose, kcenter_greedy, margin_kcenter, uncertainty
from .suggest import Suggestion, Suggestions, SuggestSettings, suggest

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
    "uncertainty",
]
