"""A control study (``headstart study --task control``): does the source policy pay in
this target, and by how many env steps?

Each transfer strategy runs ``steps`` env steps from the source, and the same algorithm
from scratch runs ``scratch_steps`` (default 3x: the budget the transfer should save), per
seed, every run evaluated on the same held-out episodes every ``eval_every`` steps. The
answers, on the mean curves over seeds:

- how many steps scratch needs to reach each strategy's final return (or that it does not
  within its budget), and how many the strategy needs to reach scratch's final return;
- whether it beats the source as it is (zero-shot);
- negative transfer: the strategy ends below scratch at the same number of steps by more
  than the noise (two standard errors of the difference: over seeds where there are two or
  more, else over the evaluation episodes): the source hurts here;
- the jumpstart (Taylor & Stone 2009): the source as it is against an untrained policy of
  the same algorithm on the same episodes; below zero beyond the noise, the source's skill
  points the wrong way in this target (a warning, even where fine-tuning recovers).

Each run is an ordinary control run in ``out/runs/`` (a rerun into ``out`` skips the
finished ones); ``out/study.json`` holds the curves and answers, ``out/report.html`` shows
them with frames of the source, the best strategy and scratch in the target.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from ...artifacts import atomic_write_bytes, atomic_write_json
from ...data.envs import EnvSpec
from .policy import STRATEGIES

log = logging.getLogger(__name__)


def run_control_study(
    spec: EnvSpec,
    source: str,
    out: Path,
    *,
    strategies=("finetune", "lp_ft", "partial"),
    seeds=(0,),
    steps: int,
    scratch_steps: int | None = None,
    settings: dict | None = None,
    progress=None,
) -> dict:
    """Run (or read back) every run and return the study's record (also written to
    ``out/study.json`` and ``out/report.html``)."""
    from ..registry import estimator_class

    ControlEstimator = estimator_class("control")  # through the registry: no import cycle
    bad = [s for s in strategies if s not in STRATEGIES or s == "zero_shot"]
    if bad:
        choices = ", ".join(s for s in STRATEGIES if s != "zero_shot")
        raise ValueError(f"control study: unknown strategy {bad[0]!r}; choose from {choices}")
    scratch_steps = scratch_steps or 3 * steps
    settings = {
        k: v
        for k, v in (settings or {}).items()
        if k not in ("steps", "backbone", "strategy", "seed", "env", "env_set")
    }
    from ...zoo.local import read_run_config

    policy = read_run_config(Path(source))["policy"]
    algo = policy["algo"]  # scratch runs the same algorithm with the same networks
    settings["head_hidden"] = tuple(policy["net_arch"])
    out = Path(out)
    plan = [(s, seed) for seed in seeds for s in (*strategies, "scratch")]
    runs: dict[str, list[dict]] = {name: [] for name in (*strategies, "scratch")}
    t0 = time.time()
    for i, (name, seed) in enumerate(plan):
        if progress is not None:
            progress(i, len(plan), f"{name} seed {seed}")
        transfer = name != "scratch"
        run_dir = out / "runs" / f"{name}-s{seed}"
        est = ControlEstimator(
            **settings,
            backbone=str(source) if transfer else f"scratch:{algo}",
            **({"strategy": name} if transfer else {}),
            steps=steps if transfer else scratch_steps,
            seed=seed,
            run_dir=run_dir,
        )
        # a finished run is read back, an interrupted one goes on from its checkpoint
        est.fit(spec, resume=run_dir.exists())
        runs[name].append(
            {
                "seed": seed,
                "curve": est.metrics_["curve"],
                "episodes": est.config_.eval_episodes,
                "fit_seconds": est.metrics_.get("fit_seconds"),
            }
        )
    if progress is not None:
        progress(len(plan), len(plan), "done")
    record = summarize(runs, steps, scratch_steps)
    record.update(
        env=spec.label,
        source=str(source),
        seeds=list(seeds),
        seconds=time.time() - t0,
        runs=runs,
    )
    atomic_write_json(out / "study.json", record)
    films = _films(out, record, seeds[0])
    from ...report.control import build_control_study_report

    atomic_write_bytes(out / "report.html", build_control_study_report(record, films).encode())
    return record


# ---------------------------------------------------------------------- the answers
def mean_curve(runs: list[dict]) -> list[dict]:
    """The runs' curves averaged step by step (the steps all of them reached)."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for r in runs:
        for p in r["curve"]:
            by_step.setdefault(int(p["steps"]), []).append((p["mean_return"], p["std_return"]))
    n = len(runs)
    return [
        {
            "steps": s,
            "mean_return": float(np.mean([m for m, _ in v])),
            "std_return": float(np.std([m for m, _ in v])),  # over seeds
            "episode_std": float(np.mean([e for _, e in v])),  # over one run's episodes
        }
        for s, v in sorted(by_step.items())
        if len(v) == n
    ]


def first_reaching(curve: list[dict], value: float) -> int | None:
    """The first step at which ``curve`` reaches ``value`` (None: never)."""
    return next((int(p["steps"]) for p in curve if p["mean_return"] >= value), None)


def _at(runs: list[dict], steps: int) -> np.ndarray:
    """Each run's evaluation at ``steps`` (its last one at or before it)."""
    out = []
    for r in runs:
        points = [p for p in r["curve"] if p["steps"] <= steps]
        out.append(points[-1]["mean_return"])
    return np.asarray(out, dtype=np.float64)


def _difference_se(a: np.ndarray, b: np.ndarray, spread: float) -> float:
    """Standard error of mean(a) - mean(b): the larger of the seeds' (paired by position,
    with two or more) and ``spread`` (the evaluation episodes' own)."""
    if len(a) >= 2 and len(a) == len(b):
        return max(float(np.std(a - b, ddof=1) / math.sqrt(len(a))), spread)
    return spread


def summarize(runs: dict[str, list[dict]], steps: int, scratch_steps: int) -> dict:
    """The study's answers (see the module's docstring) from each run's curve."""
    scratch = runs["scratch"]
    scratch_curve = mean_curve(scratch)
    scratch_final = scratch_curve[-1]["mean_return"]
    answers = []
    for name, rs in runs.items():
        if name == "scratch":
            continue
        curve = mean_curve(rs)
        final = curve[-1]["mean_return"]
        zero = curve[0]["mean_return"]  # step 0 of a transfer: the source as it is
        mine, theirs = _at(rs, steps), _at(scratch, steps)
        end, other = curve[-1], next(p for p in scratch_curve if p["steps"] >= steps)
        # over the evaluation episodes (all runs roll out the same held-out seeds)
        episodes = len(rs) * min(r.get("episodes", 1) for r in rs)
        episodes_se = math.hypot(end["episode_std"], other["episode_std"]) / math.sqrt(episodes)
        se = _difference_se(mine, theirs, episodes_se)
        margin = 2 * se
        vs_scratch = float(mine.mean() - theirs.mean())
        known = margin > 0  # one seed and one episode: no estimate of the noise at all
        to_match = first_reaching(curve, scratch_final)
        scratch_needs = first_reaching(scratch_curve, final)
        zero_se = _difference_se(mine, _at(rs, 0), episodes_se)
        row = {
            "strategy": name,
            "curve": curve,
            "final_return": final,
            "zero_shot_return": zero,
            "scratch_at_same_steps": float(theirs.mean()),
            "versus_scratch": vs_scratch,
            "margin": margin,
            "steps_to_scratch_final": to_match,
            "steps_ratio": None if to_match is None else to_match / scratch_steps,
            "scratch_steps_to_match": scratch_needs,
            "beats_zero_shot": bool(known and final - zero > 2 * zero_se),
            "negative_transfer": bool(known and vs_scratch < -margin),
            "noise_known": known,
        }
        row["line"] = _line(row, steps, scratch_steps, scratch_final)
        answers.append(row)
    best = max(answers, key=lambda r: r["final_return"])
    jump = _jumpstart(runs, scratch, scratch_curve)
    return {
        "steps": steps,
        "scratch_steps": scratch_steps,
        "scratch_curve": scratch_curve,
        "scratch_final": scratch_final,
        "zero_shot": answers[0]["zero_shot_return"],
        "strategies": answers,
        "best": best["strategy"],
        "negative_transfer": all(r["negative_transfer"] for r in answers),
        "jumpstart": jump,
        "verdict": _verdict(answers, best, scratch_steps),
        "warning": _jump_warning(jump),
    }


def _jumpstart(runs: dict[str, list[dict]], scratch: list[dict], scratch_curve) -> dict:
    """The source as it is against an untrained policy of the same algorithm (scratch's step
    0) on the same episodes: Taylor & Stone's jumpstart; below zero by more than the noise,
    what the source learned misleads it in this target."""
    first = next(rs for name, rs in runs.items() if name != "scratch")
    zero, untrained = _at(first, 0), _at(scratch, 0)
    start = mean_curve(first)[0]
    episodes = len(first) * min(r.get("episodes", 1) for r in first)
    spread = math.hypot(start["episode_std"], scratch_curve[0]["episode_std"]) / math.sqrt(episodes)
    se = _difference_se(zero, untrained, spread)
    value = float(zero.mean() - untrained.mean())
    return {
        "value": value,
        "margin": 2 * se,
        "source": float(zero.mean()),
        "untrained": float(untrained.mean()),
        "negative": bool(se > 0 and value < -2 * se),
    }


def _jump_warning(jump: dict) -> str | None:
    if not jump["negative"]:
        return None
    return (
        f"The source as it is ({jump['source']:.1f}) does worse than an untrained policy "
        f"({jump['untrained']:.1f}; jumpstart {jump['value']:+.1f}, noise +-{jump['margin']:.1f}): "
        "what it learned points the wrong way in this target, and training has to undo it "
        "first. A source from a related task should start above an untrained policy."
    )


def _line(row: dict, steps: int, scratch_steps: int, scratch_final: float) -> str:
    name, final = row["strategy"], row["final_return"]
    if row["negative_transfer"]:
        return (
            f"{name}: NEGATIVE TRANSFER: {final:.1f} after {steps} steps where scratch "
            f"reaches {row['scratch_at_same_steps']:.1f} with the same steps "
            f"(difference {row['versus_scratch']:+.1f}, noise +-{row['margin']:.1f}): "
            "the source hurts in this target"
        )
    unknown = (
        ""
        if row["noise_known"]
        else " (noise unknown with one seed and one episode: give --seeds or --eval-episodes)"
    )
    needs = row["scratch_steps_to_match"]
    scratch_words = (
        f"scratch needs {needs} steps to match it"
        if needs is not None
        else f"scratch does not match it within {scratch_steps} steps"
    )
    reach = row["steps_to_scratch_final"]
    reach_words = (
        f"it reaches scratch's final {scratch_final:.1f} at step {reach} "
        f"({reach / scratch_steps:.2f} of scratch's steps)"
        if reach is not None
        else f"it does not reach scratch's final {scratch_final:.1f}"
    )
    zero = "beats" if row["beats_zero_shot"] else "does not beat"
    return (
        f"{name}: {final:.1f} after {steps} steps; {scratch_words}; {reach_words}; "
        f"it {zero} the source as it is ({row['zero_shot_return']:.1f}){unknown}"
    )


def _verdict(answers: list[dict], best: dict, scratch_steps: int) -> str:
    if all(r["negative_transfer"] for r in answers):
        return (
            "Negative transfer: every strategy ends below the same algorithm trained from "
            "scratch with the same steps. Train from scratch, or choose another source."
        )
    if not best["beats_zero_shot"]:
        return (
            f"The source as it is ({best['zero_shot_return']:.1f}) is as good as any "
            f"adaptation here (best: {best['line']}); keep it as it is, or give more steps."
        )
    if best["steps_to_scratch_final"] is not None:
        return f"Transfer pays: {best['line']}."
    ahead = best["versus_scratch"] > best["margin"]
    return (
        f"Transfer {'is ahead at this budget' if ahead else 'does not pay clearly'}, but "
        f"does not reach what scratch reaches with {scratch_steps} steps: {best['line']}."
    )


def _films(out: Path, record: dict, seed: int) -> dict[str, dict]:
    """Frames of the source as it is, the best strategy's and scratch's policies (their
    first seed's runs) in the target."""
    from ..registry import estimator_class

    ControlEstimator = estimator_class("control")
    best = ControlEstimator.load(out / "runs" / f"{record['best']}-s{seed}").films()
    scratch = ControlEstimator.load(out / "runs" / f"scratch-s{seed}").films()
    films = {k: v for k, v in best.items() if k == "the source as it is"}
    films[f"{record['best']} ({record['steps']} steps)"] = best["adapted"]
    films[f"scratch ({record['scratch_steps']} steps)"] = scratch["from scratch"]
    return films
