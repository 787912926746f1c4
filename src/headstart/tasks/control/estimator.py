"""Control: transfer a policy to an environment whose dynamics differ (``--task control``).

A source policy (a headstart control run: ``headstart pretrain --task control --env ...``)
adapts to a target environment (a gymnasium id plus changes, :mod:`headstart.data.envs`)
within a budget of environment steps, on Stable-Baselines3 (SAC, TD3, PPO). Strategies:

- ``zero_shot``: the source policy as it is (no step taken);
- ``finetune``: every network (policy and value function) at the small ``lr``;
- ``partial``: the policy's feature layers frozen, its last layer and the value function
  train at ``lr``;
- ``lp_ft``: the value function alone first (``value_fraction`` of the steps: the source
  critic is wrong about the new dynamics, the policy waits for it), then everything;
- from scratch (``--backbone scratch``): a new policy at ``head_lr``, the baseline.

The one exception to "every task trains through ``train.Trainer``": reinforcement learning
collects its own data while it trains, so SB3's algorithm owns the update loop; this module
keeps everything else on the contract (settings in FitConfig, safetensors + JSON artifacts,
resumable atomic checkpoints, ``get_params``/``clone``, the serving half in
``tasks/serving/control.py``). Observation normalisation (SB3's ``VecNormalize``) is carried
over from the source and keeps adapting to the target's observations.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...artifacts import atomic_save_tensors, atomic_write_json
from ...config import TASK_DEFAULTS, FitConfig
from ...data.envs import EnvSpec, check_spaces, make_env, parse_env
from ...data.images import DataError
from ...zoo.local import RUN_CONFIG, RUN_WEIGHTS, read_run_config
from ..base import FORMAT_VERSION, NotFittedError, TransferEstimator, refuse_pool
from ..serving.control import ControlServing
from .policy import (
    CHECKPOINT,
    EVAL_SEED,
    NORM_CLIP,
    NORM_EPS,
    PRIOR_COUNT,
    STRATEGIES,
    ObsNorm,
    PolicyGraph,
    SpacesEnv,
    algo_class,
    env_spaces,
    export_policy,
    param_groups,
    plan_stages,
    rollout,
    torch_threads,
)

log = logging.getLogger(__name__)


class ControlEstimator(TransferEstimator):
    """A policy transferred to a target environment (scikit-learn contract).

    ``fit(env)`` (a gymnasium id, ``ID[k=v]`` or an :class:`EnvSpec`; default: the ``env``
    and ``env_set`` settings) trains; ``predict(observations)`` gives actions;
    ``evaluate(env)`` rolls out episodes on held-out seeds and reports their returns.
    """

    task = "control"
    modality = None
    model_: Any  # the fitted Stable-Baselines3 algorithm (its .policy holds the networks)
    norm_: ObsNorm | None
    spec_: EnvSpec
    spaces_: dict
    algo_: str
    defaults = TASK_DEFAULTS["control"]
    serving_class = ControlServing
    augments = ("none",)

    # ------------------------------------------------------------ settings and env
    def resolved_config(self) -> FitConfig:
        cfg = super().resolved_config()
        if cfg.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy={cfg.strategy} is not a control strategy; choose one of "
                f"{', '.join(STRATEGIES)} (or --backbone scratch for the baseline)"
            )
        return cfg

    def _target(self, X, cfg: FitConfig) -> EnvSpec:
        if isinstance(X, EnvSpec):
            return X
        if X is None:
            if not cfg.env:
                raise DataError("no target environment: pass --env ID (e.g. --env Pendulum-v1)")
            return parse_env(cfg.env, cfg.env_set)
        return parse_env(str(X), cfg.env_set if not cfg.env or str(X) == cfg.env else "")

    @staticmethod
    def _scratch_algo(backbone: str, cfg: FitConfig) -> str | None:
        """The algorithm of a new policy where ``backbone`` says scratch (None: a source)."""
        if backbone == "scratch":
            return cfg.algo
        if backbone.startswith("scratch:"):
            algo = backbone.split(":", 1)[1]
            algo_class(algo)  # a clear error for an unknown one
            return algo
        return None

    def _source(self, backbone: str) -> dict:
        path = Path(backbone)
        if not (path / RUN_CONFIG).is_file():
            raise DataError(
                f"backbone {backbone!r}: not a control run directory (no {RUN_CONFIG}); give "
                "a run of `headstart pretrain --task control` or --backbone scratch"
            )
        config = read_run_config(path)
        if config.get("task") != self.task:
            raise DataError(
                f"{backbone}: a {config.get('task')!r} run; a control policy transfers from a "
                "control run (`headstart pretrain --task control --env ...`)"
            )
        return config

    # ------------------------------------------------------------ building the SB3 model
    def _new_model(self, algo: str, venv, cfg: FitConfig, lr: float, buffer: int):  # type: ignore[override]
        cls = algo_class(algo)
        kw: dict[str, Any] = {
            "policy_kwargs": {"net_arch": list(cfg.head_hidden) or [64, 64]},
            "learning_rate": lr,
            "seed": cfg.seed,
            "verbose": 0,
            "device": "cpu",
        }
        if algo in ("sac", "td3"):
            kw.update(
                batch_size=cfg.batch_size,
                buffer_size=max(buffer, 1000),
                learning_starts=cfg.learning_starts,
            )
            if algo == "td3":  # TD3 explores through noise on its actions
                from stable_baselines3.common.noise import NormalActionNoise

                dim = venv.action_space.shape[0]
                kw["action_noise"] = NormalActionNoise(np.zeros(dim), 0.1 * np.ones(dim))
        else:
            kw.update(n_steps=min(2048, max(64, cfg.eval_every)), batch_size=64)
        return cls("MlpPolicy", venv, **kw)

    @staticmethod
    def _policy_tensors(model) -> dict[str, torch.Tensor]:
        out = {
            f"policy.{k}": v.detach().cpu().contiguous()
            for k, v in model.policy.state_dict().items()
        }
        if getattr(model, "log_ent_coef", None) is not None:
            out["log_ent_coef"] = model.log_ent_coef.detach().cpu().reshape(1).contiguous()
        return out

    @staticmethod
    def _load_policy_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
        state = {k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")}
        model.policy.load_state_dict(state)
        if "log_ent_coef" in tensors and getattr(model, "log_ent_coef", None) is not None:
            with torch.no_grad():
                model.log_ent_coef.copy_(tensors["log_ent_coef"].reshape(model.log_ent_coef.shape))

    def _venv(self, spec: EnvSpec, cfg: FitConfig, norm: ObsNorm | None):
        from stable_baselines3.common.monitor import Monitor
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        base = DummyVecEnv([lambda: Monitor(make_env(spec)[0])])
        base.seed(cfg.seed)
        if not cfg.normalize:
            return base
        venv = VecNormalize(base, norm_obs=True, norm_reward=False, clip_obs=NORM_CLIP)
        if norm is not None:  # carried over, then adapted: they weigh as PRIOR_COUNT steps
            rms: Any = venv.obs_rms
            rms.mean, rms.var = norm.mean.copy(), norm.var.copy()
            rms.count = min(norm.count, PRIOR_COUNT)
            venv.training = cfg.adapt_norm
        return venv

    @staticmethod
    def _norm_of(venv) -> ObsNorm | None:
        rms = getattr(venv, "obs_rms", None)
        return None if rms is None else ObsNorm(rms.mean, rms.var, rms.count)

    # ------------------------------------------------------------ fit
    def fit(
        self,
        X=None,
        y=None,
        *,
        validation=None,
        resume: bool = False,
        callbacks=(),
        unlabeled=None,
        sample_weight=None,
    ):
        """Train in the target environment ``X`` for ``steps`` env steps (a learning curve
        on held-out seeds every ``eval_every``); ``resume``: go on from the run's last
        checkpoint."""
        refuse_pool(self.task, unlabeled, sample_weight)
        torch_threads()
        t0 = time.time()
        cfg = self.resolved_config()
        spec = self._target(X, cfg)
        target_env, applied = make_env(spec)  # clear errors now: unknown id or parameter
        spaces = env_spaces(target_env)
        target_env.close()
        scratch_algo = self._scratch_algo(cfg.backbone, cfg)
        source = None if scratch_algo else self._source(cfg.backbone)
        algo = scratch_algo or (source or {})["policy"]["algo"]
        if source is not None:
            check_spaces(source["policy"]["spaces"], make_env(spec)[0], cfg.backbone, spec.label)
            if source["fit_config"]["head_hidden"] != list(cfg.head_hidden):
                cfg = cfg.replace(head_hidden=tuple(source["fit_config"]["head_hidden"]))
        if scratch_algo is None and cfg.strategy == "zero_shot":
            cfg = cfg.replace(steps=1)  # nothing trains; the setting is kept honest
        stages = plan_stages(
            cfg.strategy,
            source is None,
            cfg.steps,
            cfg.value_fraction,
            cfg.learning_starts if source is not None and algo in ("sac", "td3") else 0,
        )
        total = sum(s["steps"] for s in stages)
        fingerprint = self._fingerprint(cfg, spec)
        run_dir = Path(self.run_dir) if self.run_dir else None
        ckpt = run_dir / CHECKPOINT if run_dir else None
        if (
            resume
            and run_dir
            and ckpt
            and not ckpt.exists()
            and self._finished(run_dir, fingerprint)
        ):
            log.info("%s: the run is finished; nothing to do", run_dir)
            return self._load_into(run_dir)
        state = self._read_checkpoint(ckpt, fingerprint) if (resume and ckpt) else None

        norm = None
        tensors = None
        if source is not None:
            from safetensors.torch import load_file

            tensors = load_file(str(Path(cfg.backbone) / RUN_WEIGHTS))
            if "obs_norm.mean" in tensors:
                n = source["policy"].get("obs_norm_count", PRIOR_COUNT)
                norm = ObsNorm(tensors["obs_norm.mean"].numpy(), tensors["obs_norm.var"].numpy(), n)
        venv = self._venv(spec, cfg, norm if cfg.normalize else None)
        lr = cfg.head_lr if source is None else cfg.lr
        cls = algo_class(algo)
        curve: list[dict] = []
        done = 0
        if state is not None and ckpt is not None:
            model = cls.load(str(ckpt / "model.zip"), env=venv, device="cpu")
            if (ckpt / "replay.pkl").is_file() and hasattr(model, "load_replay_buffer"):
                model.load_replay_buffer(str(ckpt / "replay.pkl"))
            if state.get("obs_norm") and hasattr(venv, "obs_rms"):
                venv.obs_rms.mean = np.array(state["obs_norm"]["mean"])
                venv.obs_rms.var = np.array(state["obs_norm"]["var"])
                venv.obs_rms.count = state["obs_norm"]["count"]
            curve, done = state["curve"], int(state["steps_done"])
            log.info("%s: resumed at step %d of %d", run_dir, done, total)
        else:
            if ckpt is not None and ckpt.exists():
                shutil.rmtree(ckpt)
            model = self._new_model(algo, venv, cfg, lr, total + 1)
            if tensors is not None:
                self._load_policy_tensors(model, tensors)
        # A transferred policy collects its first learning_starts steps itself (SB3 acts at
        # random before learning_starts): learning_starts 0, no update during that warm-up.
        warmup = 0
        if source is not None and algo in ("sac", "td3"):
            model.learning_starts, warmup = 0, min(cfg.learning_starts, total)
        self.model_, self.algo_, self.spec_, self.spaces_ = model, algo, spec, spaces
        self.config_, self.env_changes_, self.classes_ = cfg, applied, []
        if validation is not None:  # the curve's evaluations run there (default: the target)
            eval_spec = self._target(validation, cfg.replace(env_set=""))
            check_spaces(spaces, make_env(eval_spec)[0], spec.label, eval_spec.label)
        else:
            eval_spec = spec
        groups = param_groups(algo, model.policy)
        eval_seeds = [EVAL_SEED + i for i in range(cfg.eval_episodes)]
        if not curve:
            curve.append({"steps": 0, **self._curve_point(venv, eval_spec, eval_seeds)})
        summaries = []
        offset = 0
        for s in stages:
            for name, params in groups.items():
                for p in params:
                    p.requires_grad_(name not in s["frozen"])
            trainable = sum(p.numel() for ps in groups.values() for p in ps if p.requires_grad)
            all_params = sum(p.numel() for ps in groups.values() for p in ps)
            summaries.append(
                {
                    "stage": s["stage"],
                    "steps": s["steps"],
                    "frozen": s["frozen"],
                    "trainable_params": trainable,
                    "total_params": all_params,
                    "lr": lr,
                }
            )
            log.info(
                "stage %s: %d steps, trainable %d / %d params",
                s["stage"],
                s["steps"],
                trainable,
                all_params,
            )
            end = offset + s["steps"]
            while done < end:
                chunk = min(cfg.eval_every - done % cfg.eval_every, end - done)
                if done < warmup:
                    chunk = min(chunk, warmup - done)
                if hasattr(model, "gradient_steps"):
                    model.gradient_steps = 0 if done < warmup else 1
                model.learn(chunk, reset_num_timesteps=False, progress_bar=False)
                done += chunk
                if done % cfg.eval_every == 0 or done == total:
                    curve.append({"steps": done, **self._curve_point(venv, eval_spec, eval_seeds)})
                    log.info("step %d: mean return %.1f", done, curve[-1]["mean_return"])
                    if ckpt is not None and done < total:
                        self._write_checkpoint(ckpt, model, venv, fingerprint, curve, done)
                    for cb in callbacks:
                        cb(curve[-1])
            offset = end
        for ps in groups.values():
            for p in ps:
                p.requires_grad_(True)
        self.norm_ = self._norm_of(venv) if cfg.normalize else None
        venv.close()
        self.stages_ = summaries
        final = self.evaluate(eval_spec)
        best = max(curve, key=lambda c: c["mean_return"])
        self.metrics_ = {
            "fit_seconds": time.time() - t0,
            "env": spec.to_dict(),
            "env_changes": applied,
            "source": None if source is None else {"run": cfg.backbone, "env": source["env"]},
            "steps": done,
            "curve": curve,
            "zero_shot": curve[0] if source is not None else None,
            "best": {"steps": best["steps"], "mean_return": best["mean_return"]},
            "validation": final,
        }
        self.fit_seconds_ = self.metrics_["fit_seconds"]
        self.fingerprint_ = fingerprint
        self.is_main_process_ = True
        self.data_origin_ = spec.label
        if run_dir is not None:
            self.save(run_dir)
            if ckpt is not None and ckpt.exists():
                shutil.rmtree(ckpt)
        return self

    def _fingerprint(self, cfg: FitConfig, spec: EnvSpec) -> str:
        import hashlib

        neutral = ("device", "num_workers", "eval_batch_size", "feature_cache", "calibrate")
        # settings at FitConfig's own defaults are left out: a field a later version adds
        # (at its default) does not turn a finished run into one to train again
        defaults = FitConfig().to_dict()
        settings = {
            k: v for k, v in cfg.to_dict().items() if k not in neutral and v != defaults.get(k)
        }
        return hashlib.sha256(
            json.dumps([settings, spec.to_dict()], sort_keys=True, default=str).encode()
        ).hexdigest()[:24]

    def _curve_point(self, venv, spec: EnvSpec, seeds: list[int]) -> dict:
        norm = self._norm_of(venv) if hasattr(venv, "obs_rms") else None
        model = self.model_
        r = rollout(lambda x: model.predict(x, deterministic=True)[0], spec, seeds, norm)
        return {"mean_return": r["mean_return"], "std_return": r["std_return"]}

    # ------------------------------------------------------------ checkpoints
    @staticmethod
    def _write_checkpoint(ckpt: Path, model, venv, fingerprint: str, curve, done: int) -> None:
        """SB3's own checkpoint (model zip, replay buffer), each file written to a temporary
        name and renamed; ``state.json`` last, so a checkpoint is whole or absent."""
        ckpt.mkdir(parents=True, exist_ok=True)
        tmp = ckpt / f".model.{os.getpid()}.zip"
        model.save(str(tmp))
        os.replace(tmp, ckpt / "model.zip")
        if hasattr(model, "save_replay_buffer"):
            tmp = ckpt / f".replay.{os.getpid()}.pkl"
            model.save_replay_buffer(str(tmp))
            os.replace(tmp, ckpt / "replay.pkl")
        rms = getattr(venv, "obs_rms", None)
        atomic_write_json(
            ckpt / "state.json",
            {
                "fingerprint": fingerprint,
                "steps_done": done,
                "curve": curve,
                "obs_norm": None
                if rms is None
                else {
                    "mean": rms.mean.tolist(),
                    "var": rms.var.tolist(),
                    "count": float(rms.count),
                },
            },
        )

    @staticmethod
    def _read_checkpoint(ckpt: Path, fingerprint: str) -> dict | None:
        path = ckpt / "state.json"
        if not path.is_file() or not (ckpt / "model.zip").is_file():
            log.warning("%s: no checkpoint to resume from; starting a new fit", ckpt.parent)
            return None
        state = json.loads(path.read_text())
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{ckpt.parent}: its checkpoint was written by a fit with other settings or "
                "another environment; resume with the same ones, or drop --resume to start over"
            )
        return state

    def _finished(self, run_dir: Path, fingerprint: str) -> bool:
        if not (run_dir / RUN_CONFIG).is_file():
            return False
        return read_run_config(run_dir).get("fingerprint") == fingerprint

    def _load_into(self, run_dir: Path):
        done = type(self).load(run_dir)
        self.__dict__.update({k: v for k, v in vars(done).items() if k.endswith("_")})
        return self

    # ------------------------------------------------------------ using the policy
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this ControlEstimator is not fitted yet: call fit() or load()")

    def predict(self, X) -> Any:
        """Deterministic actions for observations ``X`` (``(n, obs_dim)`` or one row)."""
        self._check_fitted()
        x = np.asarray(X, np.float32)
        one = x.ndim == 1
        x = x[None] if one else x
        want = tuple(self.spaces_["observation_shape"])
        if x.shape[1:] != want:
            raise ValueError(
                f"observations of shape {x.shape[1:]}; this policy reads {want} "
                f"(the observations of {self.spec_.label})"
            )
        if self.norm_ is not None:
            x = self.norm_(x)
        actions = self.model_.predict(x, deterministic=True)[0]
        return actions[0] if one else actions

    def predict_proba(self, X, tta: str | None = None):
        raise NotImplementedError(
            "a control policy gives actions (predict), not class probabilities"
        )

    def evaluate(self, X=None, y=None, tta: str | None = None, episodes: int | None = None) -> dict:
        """Episodes on held-out seeds in ``X`` (default: the run's target environment):
        mean / std return and each episode's return."""
        self._check_fitted()
        spec = (
            self.spec_
            if X is None or X == "run"
            else X
            if isinstance(X, EnvSpec)
            else parse_env(str(X))
        )
        env, _ = make_env(spec)
        check_spaces(self.spaces_, env, "policy", spec.label)
        env.close()
        n = episodes or self.config_.eval_episodes
        seeds = [EVAL_SEED + 10_000 + i for i in range(n)]
        policy = self.model_.policy

        def act(x):
            return self.model_.predict(x, deterministic=True)[0]

        with torch.no_grad():
            policy.set_training_mode(False)
            return rollout(act, spec, seeds, self.norm_)

    def films(self, spec: EnvSpec | None = None) -> dict[str, dict]:
        """Frames of one held-out episode in ``spec`` (default: the run's target) of the
        source policy as it is (where the run has a source run) and of this policy."""
        from .frames import episode_frames

        self._check_fitted()
        spec = spec or self.spec_
        seed = EVAL_SEED + 10_000  # the first of evaluate's episodes
        out = {}
        source = (self.metrics_.get("source") or {}).get("run")
        if source and Path(source, RUN_CONFIG).is_file():
            src = type(self).load(source)
            out["the source as it is"] = episode_frames(src._act, spec, seed, src.norm_)
        name = "from scratch" if self.config_.backbone.startswith("scratch") else "adapted"
        out[name] = episode_frames(self._act, spec, seed, self.norm_)
        return out

    def _act(self, x):
        with torch.no_grad():
            return self.model_.predict(x, deterministic=True)[0]

    def score(self, X=None, y=None) -> float:
        return self.evaluate(X)["mean_return"]

    # ------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        self._check_fitted()
        versions = {}
        for pkg in (
            "headstart",
            "torch",
            "stable-baselines3",
            "gymnasium",
            "mujoco",
            "safetensors",
        ):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        return {
            "format": "headstart-run",
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": [],
            "policy": {
                "algo": self.algo_,
                "net_arch": list(self.config_.head_hidden),
                "spaces": self.spaces_,
                "obs_norm": self.norm_ is not None,
                "obs_norm_count": None if self.norm_ is None else self.norm_.count,
                "obs_norm_clip": NORM_CLIP,
                "obs_norm_epsilon": NORM_EPS,
            },
            "env": self.spec_.to_dict(),
            "strategy": "scratch"
            if self.config_.backbone.startswith("scratch")
            else self.config_.strategy,
            "stages": getattr(self, "stages_", []),
            "metrics": getattr(self, "metrics_", {}),
            "data": {"origin": self.spec_.label},
            "fingerprint": getattr(self, "fingerprint_", None),
            "fit_config": self.config_.to_dict(),
            "versions": versions,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, run_dir: str | Path) -> Path:
        """The policy (safetensors: every network, the entropy coefficient, the observation
        statistics) then config.json, each written atomically."""
        run_dir = Path(run_dir)
        tensors = self._policy_tensors(self.model_)
        if self.norm_ is not None:
            tensors.update(self.norm_.tensors())
        atomic_save_tensors(run_dir / RUN_WEIGHTS, tensors, metadata={"format": "pt"})
        atomic_write_json(run_dir / RUN_CONFIG, self.run_config())
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> ControlEstimator:
        from safetensors.torch import load_file

        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.get("task") != cls.task:
            raise ValueError(f"{run_dir}: a {config.get('task')!r} model, not {cls.task!r}")
        cfg = FitConfig.from_dict(config["fit_config"])
        pol = config["policy"]
        est = cls(config=cfg, run_dir=run_dir)
        env = SpacesEnv(pol["spaces"])
        model = est._new_model(
            pol["algo"], env, cfg.replace(head_hidden=tuple(pol["net_arch"])), cfg.lr, 1
        )
        tensors = load_file(str(run_dir / RUN_WEIGHTS))
        cls._load_policy_tensors(model, tensors)
        model.policy.set_training_mode(False)
        est.model_, est.algo_, est.spaces_ = model, pol["algo"], pol["spaces"]
        est.spec_ = EnvSpec.from_dict(config["env"])
        est.config_ = cfg
        est.norm_ = (
            ObsNorm(
                tensors["obs_norm.mean"].numpy(),
                tensors["obs_norm.var"].numpy(),
                pol["obs_norm_count"],
            )
            if pol.get("obs_norm")
            else None
        )
        est.metrics_ = config.get("metrics", {})
        est.classes_ = []
        est.stages_ = config.get("stages", [])
        est.fingerprint_ = config.get("fingerprint")
        est.data_origin_ = (config.get("data") or {}).get("origin")
        est.env_changes_ = est.metrics_.get("env_changes", [])
        return est

    def export_policy(
        self,
        run_dir,
        format: str = "onnx",
        out=None,
        check=None,
        n_check: int = 32,
        tolerance: float = 1e-4,
        opset: int = 18,
    ) -> dict:
        """The policy network as ONNX or TorchScript, checked for parity
        (:func:`headstart.tasks.control.policy.export_policy`)."""
        self._check_fitted()
        return export_policy(self, run_dir, format, out, check, n_check, tolerance, opset)

    def actor_module(self) -> torch.nn.Module:
        """observations (raw) -> deterministic actions, normalisation inside: the graph an
        export writes."""
        self._check_fitted()
        return PolicyGraph(self)
