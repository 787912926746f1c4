"""Frames of a policy acting in an environment, for the control report: one held-out
episode, rendered off-screen at a few evenly spaced steps (MuJoCo through EGL, or OSMesa
when ``MUJOCO_GL`` says so; classic-control envs through pygame).

Rendering is optional: where the env cannot render here (no GL, no pygame, a user's env
without ``rgb_array``) :func:`episode_frames` says why instead of raising, and the report
shows the curves without pictures.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ...data.envs import EnvSpec, make_env
from .policy import play_episode, rollout

log = logging.getLogger(__name__)

FRAMES = 6  # pictures per episode: the start, the end and four between
SIDE = 200  # pixels a side (MuJoCo renders at this size; others are scaled to it)


def episode_frames(act, spec: EnvSpec, seed: int, norm=None, frames: int = FRAMES) -> dict:
    """One episode of ``act`` (observation batch -> action batch; ``norm`` applied first)
    in ``spec`` from ``seed``: ``{"frames": [(step, HxWx3 uint8)], "return", "length"}``,
    the frames evenly spaced from the first step to the last, or ``{"error": why}`` where
    the env does not render here."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # off-screen without a display (mesa's EGL)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws to memory, no window
    length = rollout(act, spec, [seed], norm)["lengths"][0]
    try:
        env = _render_env(spec)
    except Exception as exc:  # noqa: BLE001 - any renderer failure means: no pictures
        return {"error": f"{spec.label} does not render here ({type(exc).__name__}: {exc})"}
    # the same seed and a deterministic policy replay the episode: its length is known now
    wanted = {int(round(s)) for s in np.linspace(0, length, min(frames, length + 1))}
    shots: list[tuple[int, np.ndarray]] = []

    def watch(step: int) -> None:
        if step in wanted:
            shots.append((step, _picture(env.render())))

    try:
        total, n = play_episode(env, act, seed, norm, watch)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"rendering {spec.label} failed ({type(exc).__name__}: {exc})"}
    finally:
        env.close()
    return {"frames": shots, "return": total, "length": n, "seed": int(seed), "env": spec.label}


def _render_env(spec: EnvSpec):
    """``spec`` made to render ``rgb_array`` at :data:`SIDE` pixels where the env takes a
    size (MuJoCo), at its own size otherwise."""
    try:
        return make_env(spec, render_mode="rgb_array", size=SIDE)[0]
    except TypeError:  # an env whose constructor takes no width / height
        return make_env(spec, render_mode="rgb_array")[0]


def _picture(pixels) -> np.ndarray:
    if pixels is None:
        raise RuntimeError("the env rendered nothing (render_mode rgb_array not supported)")
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8)[..., :3]))
    if max(image.size) != SIDE:
        scale = SIDE / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    return np.asarray(image)
