"""Environments as data for ``--task control``: a gymnasium id (or a user's own env by
import path) plus changes to its dynamics, made into environments with the changes applied.

``--env Pendulum-v1 --env-set g=14`` sets the attribute ``g`` of a classic-control env to 14
(its own units). For a MuJoCo env the changes scale the model's own values (so
``torso_mass=1.5`` is a torso 1.5 times as heavy):

- ``gravity``: the gravity vector; ``mass``: every body's mass (and inertia);
  ``friction``: every geom's sliding friction; ``gear``: every actuator's gear (its
  strength); ``damping``: every joint's damping;
- ``<body>_mass``, ``<geom>_friction``, ``<actuator>_gear``, ``<joint>_damping``: one
  body, geom, actuator or joint, named as the model names it.

An env is named ``ID`` or ``ID[k=v,k=v]`` (the changes inline, as ``evaluate`` and
``predict`` take it); a user's env by import path is ``package.module:ClassName`` (a
``gymnasium.Env`` subclass, made with no arguments) or ``package.module:Env-v0`` (an id that
the module registers when imported).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from .images import DataError

MUJOCO_GROUPS = {  # change name -> (MuJoCo object kind, model array, what it scales)
    "mass": ("body", "body_mass", "mass"),
    "friction": ("geom", "geom_friction", "sliding friction"),
    "gear": ("actuator", "actuator_gear", "gear"),
    "damping": ("joint", "dof_damping", "damping"),
}


@dataclass(frozen=True)
class EnvSpec:
    """A target (or source) environment: a gymnasium id and the changes made to it."""

    id: str
    changes: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    @property
    def label(self) -> str:
        if not self.changes:
            return self.id
        return f"{self.id}[{','.join(f'{k}={v:g}' for k, v in self.changes)}]"

    def to_dict(self) -> dict:
        return {"id": self.id, "changes": {k: v for k, v in self.changes}}

    @classmethod
    def from_dict(cls, d: dict) -> EnvSpec:
        return cls(d["id"], tuple((k, float(v)) for k, v in (d.get("changes") or {}).items()))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def make(self, render_mode: str | None = None):
        """A new environment with the changes applied (:func:`make_env`)."""
        return make_env(self, render_mode=render_mode)[0]


def parse_changes(text: str | None, where: str = "--env-set") -> tuple[tuple[str, float], ...]:
    """``"torso_mass=1.5,friction=0.5"`` -> ``(("torso_mass", 1.5), ("friction", 0.5))``;
    a clear error naming the bad item."""
    out: list[tuple[str, float]] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise DataError(f"{where}: {item!r} is not NAME=VALUE (e.g. g=14 or torso_mass=1.5)")
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"{where}: {item!r}: {value.strip()!r} is not a number") from None
        if any(k == name for k, _ in out):
            raise DataError(f"{where}: {name!r} is set twice")
        out.append((name, number))
    return tuple(out)


def parse_env(text: str, env_set: str | None = None) -> EnvSpec:
    """``ID``, ``ID[k=v,...]`` or an import path, plus the changes of ``env_set``."""
    text = (text or "").strip()
    if not text:
        raise DataError("no environment named: give a gymnasium id (--env Pendulum-v1)")
    inline: tuple[tuple[str, float], ...] = ()
    if text.endswith("]") and "[" in text:
        text, _, rest = text.partition("[")
        inline = parse_changes(rest[:-1], where=f"{text}[...]")
    extra = parse_changes(env_set)
    clash = {k for k, _ in inline} & {k for k, _ in extra}
    if clash:
        raise DataError(f"{', '.join(sorted(clash))} set both inline and in --env-set: set once")
    return EnvSpec(text, inline + extra)


def _base_env(env_id: str, render_mode: str | None, size: int | None = None):
    import gymnasium as gym

    kw: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}
    if render_mode and size:  # MuJoCo envs take the picture's size; others raise TypeError
        kw.update(width=size, height=size)
    module, sep, name = env_id.partition(":")
    if sep:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise DataError(
                f"environment {env_id!r}: cannot import {module!r} ({exc}); put its package "
                "on PYTHONPATH or install it"
            ) from None
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, gym.Env):
            return cls(**kw)
    try:
        return gym.make(env_id, **kw)
    except gym.error.Error as exc:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"unknown environment {env_id!r} ({exc}){hint} Name a gymnasium id "
            "(`python -c 'import gymnasium; gymnasium.pprint_registry()'` lists them) or "
            "your own env as package.module:ClassName"
        ) from None


def _mujoco_names(model, kind: str) -> list[str]:
    import mujoco

    obj = {
        "body": mujoco.mjtObj.mjOBJ_BODY,
        "geom": mujoco.mjtObj.mjOBJ_GEOM,
        "actuator": mujoco.mjtObj.mjOBJ_ACTUATOR,
        "joint": mujoco.mjtObj.mjOBJ_JOINT,
    }[kind]
    count = {"body": model.nbody, "geom": model.ngeom, "actuator": model.nu, "joint": model.njnt}
    names = [mujoco.mj_id2name(model, obj, i) or "" for i in range(count[kind])]
    if kind == "actuator":  # Hopper's, Walker's and Ant's motors are unnamed: use their joint's
        joint = mujoco.mjtObj.mjOBJ_JOINT
        names = [
            n or (mujoco.mj_id2name(model, joint, int(model.actuator_trnid[i, 0])) or "")
            for i, n in enumerate(names)
        ]
    return names


def _mujoco_rows(model, kind: str, target: str | None) -> list[int]:
    """Rows of the model array that a change of ``target`` (None: all) touches."""
    names = _mujoco_names(model, kind)
    if target is None:
        rows = list(range(len(names)))
        return rows[1:] if kind == "body" else rows  # the world body has no mass
    if target not in names:
        return []
    i = names.index(target)
    if kind == "joint":  # damping lives per degree of freedom
        start = int(model.jnt_dofadr[i])
        width = {0: 6, 1: 3, 2: 1, 3: 1}[int(model.jnt_type[i])]
        return list(range(start, start + width))
    return [i]


def _mujoco_change(model, name: str, factor: float, env_id: str) -> dict:
    import numpy as np

    # 0 is a real target for all but mass: a disabled motor (gear), no friction, no damping
    if factor < 0 or (factor == 0 and name.endswith("mass")):
        raise DataError(
            f"{env_id}: {name}={factor:g}: a MuJoCo change scales a value; give > 0"
            + (" (0 too for gear: a disabled motor)" if name.endswith("mass") else "")
        )
    if name == "gravity":
        before = model.opt.gravity.copy()
        model.opt.gravity[:] = before * factor
        return {
            "name": name,
            "scale": factor,
            "before": before.tolist(),
            "after": model.opt.gravity.tolist(),
        }
    target, _, group = name.rpartition("_")
    if group not in MUJOCO_GROUPS:
        target, group = "", name
    if group not in MUJOCO_GROUPS:
        raise _unknown_change(model, name, env_id)
    kind, array, what = MUJOCO_GROUPS[group]
    rows = _mujoco_rows(model, kind, target or None)
    if not rows:
        raise _unknown_change(model, name, env_id)
    values = getattr(model, array)
    before = np.array(values[rows, 0] if values.ndim == 2 else values[rows])
    if values.ndim == 2:
        values[rows, 0] = before * factor
    else:
        values[rows] = before * factor
    if group == "mass":
        model.body_inertia[rows] *= factor
    return {
        "name": name,
        "scale": factor,
        "what": f"{what} of {target or 'every ' + kind}",
        "before": before.round(6).tolist(),
        "after": (before * factor).round(6).tolist(),
    }


def _unknown_change(model, name: str, env_id: str) -> DataError:
    names = {
        k: [n for n in _mujoco_names(model, k) if n] for k in ("body", "geom", "actuator", "joint")
    }
    options = ["gravity", *MUJOCO_GROUPS]
    for group, (kind, _, _) in MUJOCO_GROUPS.items():
        options += [f"{n}_{group}" for n in names[kind] if n != "world"]
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return DataError(
        f"{env_id}: the model has no parameter {name!r}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f"; it takes {', '.join(options)}"
    )


def _classic_change(env, name: str, value: float, env_id: str) -> dict:
    import numpy as np

    base = env.unwrapped
    numeric = sorted(
        k
        for k, v in vars(base).items()
        if not k.startswith("_")
        and isinstance(v, (int, float, np.floating))
        and not isinstance(v, bool)
    )
    if name not in numeric:
        close = difflib.get_close_matches(name, numeric, n=3, cutoff=0.5)
        raise DataError(
            f"{env_id}: the environment has no parameter {name!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; its numeric parameters: {', '.join(numeric) or 'none'}"
        )
    before = float(getattr(base, name))
    setattr(
        base,
        name,
        type(getattr(base, name))(value) if isinstance(getattr(base, name), int) else value,
    )
    return {"name": name, "before": before, "after": float(value)}


def make_env(spec: EnvSpec, render_mode: str | None = None, size: int | None = None):
    """``(env, applied)``: a new environment of ``spec`` with its changes applied, and what
    each change did (``before`` / ``after``); clear errors for an unknown id or parameter.
    ``size``: the rendered picture's side, for envs that take one."""
    env = _base_env(spec.id, render_mode, size)
    model = getattr(env.unwrapped, "model", None)
    is_mujoco = type(model).__name__ == "MjModel"
    applied = []
    for name, value in spec.changes:
        if is_mujoco:
            applied.append(_mujoco_change(model, name, value, spec.id))
        else:
            applied.append(_classic_change(env, name, value, spec.id))
    if is_mujoco and spec.changes:
        import mujoco

        mujoco.mj_setConst(model, env.unwrapped.data)
    return env, applied


def describe_space(space) -> str:
    shape = getattr(space, "shape", None)
    return f"{type(space).__name__}{tuple(shape) if shape is not None else ''}"


def check_spaces(source: dict, target_env, source_label: str, target_label: str) -> None:
    """A clear error where a source policy cannot act in the target: another observation
    or action layout (``source``: the run's saved spaces)."""
    import numpy as np

    obs, act = target_env.observation_space, target_env.action_space
    problems = []
    if list(getattr(obs, "shape", ()) or ()) != list(source["observation_shape"]):
        problems.append(
            f"observations: the source policy reads {source['observation_shape']} values, "
            f"{target_label} gives {describe_space(obs)}"
        )
    if type(act).__name__ != source["action_kind"] or list(getattr(act, "shape", ()) or ()) != list(
        source["action_shape"]
    ):
        problems.append(
            f"actions: the source policy gives {source['action_kind']}"
            f"{tuple(source['action_shape'])}, {target_label} takes {describe_space(act)}"
        )
    elif source["action_kind"] == "Box" and not (
        np.allclose(act.low, source["action_low"]) and np.allclose(act.high, source["action_high"])
    ):
        problems.append(
            f"action bounds: the source's are {source['action_low']}..{source['action_high']}, "
            f"{target_label}'s {act.low.tolist()}..{act.high.tolist()}"
        )
    if problems:
        raise DataError(
            f"the source {source_label} cannot act in {target_label}: {'; '.join(problems)}. "
            "Transfer needs the same observation and action layout: pick a source trained on "
            "this robot (or one with the same layout), or train from scratch (--backbone scratch)"
        )
