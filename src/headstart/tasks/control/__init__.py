"""Control: a policy transferred to an environment with other dynamics (``--task control``):
the estimator (:mod:`.estimator`) and the policy side it drives (:mod:`.policy`)."""

from .estimator import ControlEstimator
from .policy import PolicyGraph, rollout

__all__ = ["ControlEstimator", "PolicyGraph", "rollout"]
