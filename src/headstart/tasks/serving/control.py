"""Control, served: what ``fit``, ``evaluate``, ``predict`` and ``export`` mean for a policy.

The "data" of a control task is an environment (``Pendulum-v1``, ``Hopper-v5[torso_mass=1.5]``,
or the run's own target: ``run``); ``evaluate`` and ``predict`` roll out episodes on
held-out seeds and report each episode's return (``predict``: one CSV row per episode).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from .base import TaskServing


class ControlServing(TaskServing):
    task = "control"
    what = "control policies"
    served = False  # no HTTP route: a policy acts in a loop, not on uploaded files
    kind = "environments"
    data_in_settings = True

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        """The target environment: ``data`` (an env id, ``ID[k=v]``), else ``--env``."""
        from ...data.envs import parse_env
        from ...data.images import DataError

        if classes is not None:  # fit's --val / --test: another environment, as named
            return parse_env(str(data))
        if data and cfg.env and str(data) != cfg.env:
            raise DataError(
                f"two target environments: DATA {data!r} and --env {cfg.env!r}; give one"
            )
        env = data or cfg.env
        if not env:
            raise DataError("no target environment: pass --env ID (e.g. --env Pendulum-v1)")
        return parse_env(str(env), cfg.env_set if str(env) == (cfg.env or str(env)) else "")

    def refusal(self, doing: str, run_dir) -> str | None:
        if doing == "exporting":
            return None  # the policy network exports (export_run); serving over HTTP does not
        return (
            f"{run_dir}: {doing} {self.what} over HTTP is not supported; export the policy "
            f"(`headstart export {run_dir}`) or roll it out with `headstart predict {run_dir} ENV`"
        )

    def export_run(
        self, estimator, run_dir, format, out, check, n_check: int, tolerance: float, opset: int
    ) -> dict | None:
        """The policy network (raw observations -> actions, normalisation inside) as ONNX or
        TorchScript, kept only where it gives the actions ``predict`` gives on real
        observations (an episode of ``check``, default the run's target env)."""
        return estimator.export_policy(run_dir, format, out, check, n_check, tolerance, opset)

    def input_summary(self, estimator) -> str:
        shape = estimator.spaces_["observation_shape"]
        return f"{estimator.algo_.upper()} on {estimator.spec_.label}, observations {shape}"

    def model_words(self, estimator) -> str:
        source = estimator.config_.backbone
        return "a new policy (scratch)" if source.startswith("scratch") else f"policy from {source}"

    def kept_words(self, best) -> str:
        if not best:
            return "the last step"
        return f"the last step (best evaluation: {best['mean_return']:.1f} at step {best['steps']})"

    def format_metrics(self, m: dict) -> str:
        return (
            f"return {m['mean_return']:.1f} +- {m['std_return']:.1f} over {m['episodes']} "
            f"held-out episodes (mean length {m['mean_length']:.0f}) in {m['env']}"
        )

    def after_fit(self, estimator, run_dir, test) -> list[str]:
        m = estimator.metrics_
        lines = []
        if m.get("zero_shot"):
            lines.append(
                f"zero-shot (the source as it is): return {m['zero_shot']['mean_return']:.1f}"
            )
        curve = m.get("curve") or []
        if curve:
            lines.append(
                "learning curve (steps: return): "
                + ", ".join(f"{c['steps']}: {c['mean_return']:.0f}" for c in curve)
            )
        for change in m.get("env_changes") or []:
            lines.append(f"env change {change['name']}: {change['before']} -> {change['after']}")
        if run_dir is not None:
            lines.append(f"report: {write_report(estimator, run_dir)}")
        return lines

    def run_study(self, args, cfg, given: dict, out, progress) -> list[str]:
        """Transfer strategies against scratch over env steps (``tasks.control.study``)."""
        from ...zoo.local import is_run_dir
        from ..control.study import run_control_study

        source = args.model
        if not source or not is_run_dir(Path(source)):
            raise ValueError(
                f"study --task control: --model {source!r} is not a control run; give the "
                "source policy's run directory (`headstart pretrain --task control ...`)"
            )
        spec = self.open_labeled(args.data, cfg)
        strategies = [s.strip() for s in (args.strategies or "finetune,lp_ft,partial").split(",")]
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        study = run_control_study(
            spec,
            source,
            out,
            strategies=[s for s in strategies if s],
            seeds=seeds,
            steps=cfg.steps,
            scratch_steps=args.scratch_steps,
            settings=given,
            progress=progress,
        )
        lines = [f"study: {out}  ({source} -> {spec.label}, seeds {args.seeds})", study["verdict"]]
        lines += [study["warning"]] if study["warning"] else []
        lines += [f"  {r['line']}" for r in study["strategies"]]
        return [*lines, f"report: {Path(out) / 'report.html'}  (also study.json)"]

    def evaluate(self, estimator, data, tta: str = "none", fix: str = "error") -> dict:
        if tta != "none":
            raise ValueError("a control policy has no test-time augmentation (drop --tta)")
        return estimator.evaluate(data)

    def evaluation_lines(self, estimator, m: dict) -> list[str]:
        return [
            self.format_metrics(m),
            "episode returns (seed: return): "
            + ", ".join(f"{s}: {r:.1f}" for s, r in zip(m["seeds"], m["returns"])),
        ]

    def predict_to_csv(
        self,
        run_dir,
        inputs: list,
        out=None,
        *,
        engine: str = "torch",
        tta: str = "none",
        batch_size: int = 64,
        min_score: float | None = None,
        progress: bool = True,
    ) -> str:
        """One row per episode (``env, seed, return, length``) of each input environment,
        on held-out seeds."""
        from ...artifacts import atomic_write_bytes
        from ..registry import load_estimator

        if engine != "torch" or tta != "none":
            raise ValueError("a control policy rolls out with --engine torch and no --tta")
        est = load_estimator(run_dir)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["env", "seed", "return", "length"])
        n = 0
        for env in inputs:
            m = est.evaluate(env)
            for seed, ret, length in zip(m["seeds"], m["returns"], m["lengths"]):
                w.writerow([m["env"], seed, ret, length])
                n += 1
        text = buf.getvalue()
        if out:
            atomic_write_bytes(Path(out), text.encode())
        else:
            sys.stdout.write(text)
        return f"wrote {n} episodes of {len(inputs)} environment(s) to {out}"


def write_report(estimator, run_dir) -> Path:
    """``run_dir/report.html``: the learning curve, the env changes, what trained, and one
    held-out episode of the source as it is and of the adapted policy in the target."""
    from ...artifacts import atomic_write_bytes
    from ...report.control import build_control_report

    path = Path(run_dir) / "report.html"
    html = build_control_report(estimator.run_config(), estimator.films())
    atomic_write_bytes(path, html.encode())
    return path
