"""The policy side of ``--task control``: Stable-Baselines3 algorithms and their parameter
groups, the strategies' stages, observation statistics, episode roll-outs, and the policy
network as one module (what ``export`` writes, checked for parity)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...artifacts import atomic_write_json
from ...data.envs import EnvSpec, make_env, parse_env

ALGOS = {"sac": "SAC", "td3": "TD3", "ppo": "PPO"}
STRATEGIES = ("zero_shot", "finetune", "partial", "lp_ft")
EVAL_SEED = 1_000_000  # evaluation episodes start here: seeds no training episode uses
CHECKPOINT = "checkpoint"
NORM_CLIP, NORM_EPS = 10.0, 1e-8  # VecNormalize's defaults
PRIOR_COUNT = 1000.0  # carried-over normalisation statistics weigh as this many observations


def algo_class(name: str):
    import stable_baselines3

    if name not in ALGOS:
        raise ValueError(f"algo={name!r}: choose one of {', '.join(ALGOS)}")
    return getattr(stable_baselines3, ALGOS[name])


def param_groups(algo: str, policy) -> dict[str, list[torch.nn.Parameter]]:
    """The policy's parameters as the strategies see them: ``features`` (the actor's
    hidden layers), ``last`` (its output layer) and ``value`` (the critic / value net)."""
    if algo == "sac":
        return {
            "features": list(policy.actor.latent_pi.parameters()),
            "last": [*policy.actor.mu.parameters(), *policy.actor.log_std.parameters()],
            "value": list(policy.critic.parameters()),
        }
    if algo == "td3":
        layers = [m for m in policy.actor.mu if isinstance(m, torch.nn.Linear)]
        last = list(layers[-1].parameters())
        ids = {id(p) for p in last}
        return {
            "features": [p for p in policy.actor.parameters() if id(p) not in ids],
            "last": last,
            "value": list(policy.critic.parameters()),
        }
    ext = policy.mlp_extractor
    return {
        "features": list(ext.policy_net.parameters()),
        "last": [*policy.action_net.parameters(), policy.log_std]
        if hasattr(policy, "log_std")
        else list(policy.action_net.parameters()),
        "value": [*ext.value_net.parameters(), *policy.value_net.parameters()],
    }


def plan_stages(
    strategy: str, scratch: bool, steps: int, value_fraction: float, warmup: int = 0
) -> list[dict]:
    """``[{"stage", "steps", "frozen"}]``: what each stage trains, in env steps (``warmup``:
    the first steps only collect data; lp_ft's value stage counts from its end)."""
    if scratch:
        return [{"stage": "scratch", "steps": steps, "frozen": []}]
    if strategy == "zero_shot":
        return []
    if strategy == "finetune":
        return [{"stage": "finetune", "steps": steps, "frozen": []}]
    if strategy == "partial":
        return [{"stage": "partial", "steps": steps, "frozen": ["features"]}]
    first = min(steps, warmup + int(round((steps - warmup) * value_fraction)))
    stages = [{"stage": "value", "steps": first, "frozen": ["features", "last"]}] if first else []
    return stages + [{"stage": "finetune", "steps": steps - first, "frozen": []}]


class SpacesEnv:
    """The spaces of a saved policy, for SB3 to build its networks on (never stepped)."""

    def __new__(cls, spaces: dict):
        import gymnasium as gym

        class SpacesEnv(gym.Env):
            def __init__(self):
                self.observation_space = gym.spaces.Box(
                    -np.inf, np.inf, tuple(spaces["observation_shape"]), np.float32
                )
                if spaces["action_kind"] == "Box":
                    self.action_space = gym.spaces.Box(
                        np.array(spaces["action_low"], np.float32),
                        np.array(spaces["action_high"], np.float32),
                    )
                else:
                    self.action_space = gym.spaces.Discrete(spaces["action_n"])

            def reset(self, *, seed=None, options=None):
                return self.observation_space.sample(), {}

            def step(self, action):
                raise RuntimeError("a stand-in for the saved spaces; not an environment")

        return SpacesEnv()


def env_spaces(env) -> dict:
    obs, act = env.observation_space, env.action_space
    out: dict[str, Any] = {
        "observation_shape": list(obs.shape),
        "action_kind": type(act).__name__,
        "action_shape": list(act.shape or ()),
    }
    if out["action_kind"] == "Box":
        out["action_low"], out["action_high"] = act.low.tolist(), act.high.tolist()
    else:
        out["action_n"] = int(act.n)
    return out


class ObsNorm:
    """Running observation mean / variance (VecNormalize's statistics), as plain arrays."""

    def __init__(self, mean, var, count: float):
        self.mean = np.asarray(mean, np.float64)
        self.var = np.asarray(var, np.float64)
        self.count = float(count)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        z = (obs - self.mean) / np.sqrt(self.var + NORM_EPS)
        return np.clip(z, -NORM_CLIP, NORM_CLIP).astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "obs_norm.mean": torch.from_numpy(self.mean.copy()),
            "obs_norm.var": torch.from_numpy(self.var.copy()),
        }


def play_episode(env, act, seed: int, norm: ObsNorm | None, watch=None) -> tuple[float, int]:
    """One episode of ``act`` (observation batch -> action batch) in ``env`` from ``seed``:
    its return and length. ``watch(step)`` sees the env before each action and after the
    last step (the report's frames)."""
    obs, _ = env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    total, n, done = 0.0, 0, False
    while True:
        if watch is not None:
            watch(n)
        if done:
            return total, n
        x = np.asarray(obs, np.float32)[None]
        action = act(norm(x) if norm is not None else x)[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        n += 1
        done = terminated or truncated


def rollout(act, spec: EnvSpec, seeds: list[int], norm: ObsNorm | None) -> dict:
    """Episodes of ``act`` (observation batch -> action batch) on ``spec``, one per seed:
    returns, lengths, their mean and standard deviation."""
    env, _ = make_env(spec)
    returns, lengths = [], []
    try:
        for seed in seeds:
            total, n = play_episode(env, act, seed, norm)
            returns.append(total)
            lengths.append(n)
    finally:
        env.close()
    return {
        "env": spec.label,
        "episodes": len(seeds),
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": [round(r, 3) for r in returns],
        "lengths": lengths,
        "seeds": [int(s) for s in seeds],
    }


def torch_threads() -> None:
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


class PolicyGraph(torch.nn.Module):
    """A fitted policy as one module: raw observations in, the actions ``predict`` gives
    out (normalised, clipped, through the actor, scaled to the action bounds)."""

    mean: torch.Tensor
    std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    actor: Any

    def __init__(self, est):  # a fitted ControlEstimator
        super().__init__()
        norm = est.norm_
        dim = est.spaces_["observation_shape"][0]
        mean = torch.zeros(dim) if norm is None else torch.tensor(norm.mean, dtype=torch.float32)
        std = (
            torch.ones(dim)
            if norm is None
            else torch.sqrt(torch.tensor(norm.var, dtype=torch.float64) + NORM_EPS).float()
        )
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.clip = NORM_CLIP if norm is not None else 3.0e38
        self.algo = est.algo_
        policy = est.model_.policy
        self.actor = policy.actor if est.algo_ in ("sac", "td3") else policy
        low = np.array(est.spaces_.get("action_low", [-1.0]), np.float32)
        high = np.array(est.spaces_.get("action_high", [1.0]), np.float32)
        self.register_buffer("low", torch.from_numpy(low))
        self.register_buffer("high", torch.from_numpy(high))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = ((obs - self.mean) / self.std).clamp(-self.clip, self.clip)
        x = x.flatten(1)  # SB3's features extractor of a vector observation
        if self.algo == "sac":  # the Gaussian's mean, squashed: the deterministic action
            a = torch.tanh(self.actor.mu(self.actor.latent_pi(x)))
        elif self.algo == "td3":
            a = self.actor.mu(x)  # ends in tanh
        else:  # PPO: the Gaussian's mean, clipped to the bounds as predict clips it
            mean = self.actor.action_net(self.actor.mlp_extractor.forward_actor(x))
            return torch.maximum(torch.minimum(mean, self.high), self.low)
        return self.low + 0.5 * (a + 1.0) * (self.high - self.low)


def export_policy(
    est,
    run_dir,
    format: str = "onnx",
    out=None,
    check=None,
    n_check: int = 32,
    tolerance: float = 1e-4,
    opset: int = 18,
) -> dict:
    """The policy network as ONNX (input ``observation [N, obs_dim]`` float32, output
    ``action [N, act_dim]``) or TorchScript, written only where it gives the actions
    of :meth:`predict` on ``n_check`` real observations (one held-out episode of
    ``check``, default the run's target env) within ``tolerance``, for a batch of all
    of them and for one alone. Returns the export's result fields."""
    import warnings

    from ...artifacts import temp_sibling

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    spec = est.spec_ if check is None else parse_env(str(check))
    obs = _observations(est, spec, n_check)
    expected = np.asarray(est.predict(obs), np.float32)
    graph = PolicyGraph(est).eval()
    name = {"onnx": "policy.onnx", "torchscript": "policy.torchscript.pt"}[format]
    out = Path(out) if out else run_dir / "export" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = temp_sibling(out)
    os.close(fd)
    tmp = Path(tmp_name)
    example = torch.from_numpy(obs)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if format == "onnx":
                import onnx
                import onnxruntime as ort

                program = torch.onnx.export(
                    graph,
                    (example,),
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    input_names=["observation"],
                    output_names=["action"],
                    dynamic_shapes={"obs": {0: torch.export.Dim("batch", min=1, max=65536)}},
                    opset_version=opset,
                )
                if program is None:
                    raise RuntimeError("torch.onnx.export returned no program")
                onnx.save_model(program.model_proto, str(tmp))
                onnx.checker.check_model(str(tmp))
                session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

                def run(x):
                    return session.run(["action"], {"observation": x})[0]

            else:
                traced = torch.jit.trace(graph, (example,), check_trace=False)
                traced.save(str(tmp))
                loaded = torch.jit.load(str(tmp))

                def run(x):
                    return loaded(torch.from_numpy(x)).numpy()

            diff = max(
                float(np.abs(run(obs) - expected).max()),
                float(np.abs(run(obs[:1]) - expected[:1]).max()),
            )
        if not np.isfinite(diff) or diff >= tolerance:
            raise ValueError(
                f"{format} export does not match the fitted policy: largest action "
                f"difference {diff:.3g} >= tolerance {tolerance:g} on {len(obs)} "
                f"observations of {spec.label}"
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sidecar = out.with_name(out.name + ".json")
    result = {
        "path": str(out),
        "format": format,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "checked_items": len(obs),
        "checked_on": f"observations of a held-out episode of {spec.label}",
        "batch_sizes": [len(obs), 1],
        "seconds": time.perf_counter() - t0,
        "size_bytes": out.stat().st_size,
        "sidecar": str(sidecar),
        "notes": ["inputs: observation float32 [N, obs_dim] (raw: normalised inside)"],
    }
    atomic_write_json(
        sidecar,
        {
            "task": est.task,
            "file": out.name,
            "inputs": {"observation": ["N", *est.spaces_["observation_shape"]]},
            "outputs": {"action": ["N", *est.spaces_["action_shape"]]},
            "action_bounds": [est.spaces_.get("action_low"), est.spaces_.get("action_high")],
            "env": est.spec_.to_dict(),
            "parity": result,
        },
    )
    return result


def _observations(est, spec: EnvSpec, n: int) -> np.ndarray:
    """Up to ``n`` observations the policy meets in an episode of ``spec`` (held-out
    seed), as the parity check's real inputs."""
    env, _ = make_env(spec)
    try:
        obs, _ = env.reset(seed=EVAL_SEED + 20_000)
        seen = [np.asarray(obs, np.float32)]
        while len(seen) < n:
            obs, _, terminated, truncated, _ = env.step(est.predict(seen[-1]))
            if terminated or truncated:
                obs, _ = env.reset()
            seen.append(np.asarray(obs, np.float32))
    finally:
        env.close()
    return np.stack(seen)
