"""Environments for the control benchmarks, named by import path as a user names their own
(``--env control_envs:ReversedPendulum-v0`` with ``benchmarks/`` on PYTHONPATH).

``ReversedPendulum-v0``: Pendulum-v1 whose motor turns the other way. Its observation and
action layouts are Pendulum's, so a policy learned there passes the layout check, yet what
it learned (which way to push) is wrong for Pendulum: a matched-but-unrelated source, the
negative case of issue 33.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class ReversedPendulum(PendulumEnv):
    """Pendulum-v1 with the torque's sign flipped."""

    def step(self, u):
        return super().step(-np.asarray(u, dtype=np.float32))


if "ReversedPendulum-v0" not in gym.registry:
    gym.register(
        "ReversedPendulum-v0", entry_point=f"{__name__}:ReversedPendulum", max_episode_steps=200
    )
