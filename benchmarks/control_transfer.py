"""Control transfer: a policy trained in one environment adapts to changed dynamics.

For each source -> target pair: a source policy is trained from scratch in the source
environment (``headstart pretrain --task control``), then, for each seed, the target is
learned from scratch with the full step budget N and by transfer (fine-tune everything at
a small LR, and LP-FT: the value function first) with N/3 steps. Zero-shot is the source
policy in the target as it is (the transfer runs' step-0 evaluation). Every evaluation rolls
out held-out seeds. The bars (issue 33): transfer reaches scratch's final return within
N/3 steps on both pairs, and beats zero-shot.

    python benchmarks/control_transfer.py run --pairs pendulum --seeds 0,1,2 --work /tmp/ctl
    python benchmarks/control_transfer.py summary   # the table, from the rows so far

Rows go to benchmarks/results/control_transfer_2026-12-07.jsonl (a rerun skips done rows),
so the pairs can run in separate processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from common import append_row, read_rows

RESULTS = Path(__file__).parent / "results"
ROWS = RESULTS / "control_transfer_2026-12-07.jsonl"
SUMMARY = RESULTS / "control_transfer_2026-12-07.txt"

PAIRS = {
    # classic control: the pendulum swings up under stronger gravity with a heavier bob
    "pendulum": {
        "source": "Pendulum-v1",
        "target": "Pendulum-v1",
        "target_set": "g=14,m=1.3",
        "source_steps": 8000,
        "steps": 4500,
        "eval_every": 250,
    },
    # MuJoCo: a two-link arm whose motors are much weaker and whose joints are damped
    "reacher": {
        "source": "Reacher-v5",
        "target": "Reacher-v5",
        "target_set": "gear=0.3,damping=3",
        "source_steps": 12000,
        "steps": 9000,
        "eval_every": 750,
        "eval_episodes": 30,  # random goals: returns vary by episode
    },
    # the same arm with motors weaker still and joints more damped: zero-shot breaks
    "reacher_weak": {
        "source": "Reacher-v5",
        "target": "Reacher-v5",
        "target_set": "gear=0.2,damping=5",
        "source_steps": 12000,
        "steps": 9000,
        "eval_every": 750,
        "eval_episodes": 30,
    },
    # the first Reacher target (kept for the record): too mild, the source's zero-shot
    # return was already scratch's final one
    "reacher_mild": {
        "source": "Reacher-v5",
        "target": "Reacher-v5",
        "target_set": "gear=0.5,body1_mass=3",
        "source_steps": 12000,
        "steps": 9000,
        "eval_every": 750,
    },
}
STRATEGIES = (
    "finetune",
    "lp_ft",
    "finetune_w1000",
    "lp_ft_w1000",
    "finetune_fixednorm",
    "lp_ft_fixednorm",
)
MEASURED = ("pendulum", "reacher", "reacher_weak", "reacher_mild")  # every pair, every verdict


def _done(rows, **key) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def run_pair(name: str, seeds: list[int], work: Path, strategies) -> None:
    from headstart.tasks import ControlEstimator

    pair = PAIRS[name]
    common = {"eval_every": pair["eval_every"], "eval_episodes": pair.get("eval_episodes", 5)}
    src_dir = work / f"{pair['source'].lower()}-source"
    rows = read_rows(ROWS)
    if not _done(rows, pair=name, run="source"):
        if (src_dir / "config.json").is_file():  # a source run already there: its own figures
            src = ControlEstimator.load(src_dir)
            wall = src.metrics_["fit_seconds"]
        else:
            t0 = time.time()
            src = ControlEstimator(
                env=pair["source"], steps=pair["source_steps"], seed=100, run_dir=src_dir, **common
            ).fit()
            wall = time.time() - t0
        append_row(ROWS, _row(name, "source", 100, src, wall))
    for seed in seeds:
        todo = [("scratch", pair["steps"])] + [(s, pair["steps"] // 3) for s in strategies]
        for run, steps in todo:
            if _done(read_rows(ROWS), pair=name, run=run, seed=seed):
                continue
            # STRATEGY_wK: the source policy collects K steps before the first update
            # STRATEGY_fixednorm: the source's observation statistics, not adapted
            strategy = run.removesuffix("_fixednorm")
            extra: dict = {"adapt_norm": False} if strategy != run else {}
            strategy, _, warm = strategy.partition("_w")
            if warm:
                extra["learning_starts"] = int(warm)
            t0 = time.time()
            est = ControlEstimator(
                backbone="scratch" if run == "scratch" else str(src_dir),
                strategy="finetune" if run == "scratch" else strategy,
                **extra,
                env=pair["target"],
                env_set=pair["target_set"],
                steps=steps,
                seed=seed,
                **common,
            ).fit()
            append_row(ROWS, _row(name, run, seed, est, time.time() - t0))


def _row(pair: str, run: str, seed: int, est, wall: float) -> dict:
    m = est.metrics_
    return {
        "pair": pair,
        "run": run,
        "seed": seed,
        "env": m["env"],
        "steps": m["steps"],
        "curve": [[c["steps"], round(c["mean_return"], 2)] for c in m["curve"]],
        "final": round(m["validation"]["mean_return"], 2),
        "final_std": round(m["validation"]["std_return"], 2),
        "wall_s": round(wall, 1),
    }


def _mean_curve(rows) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([s for s, _ in rows[0]["curve"]])
    values = np.array([[v for _, v in r["curve"]] for r in rows])
    return steps, values.mean(0)


def summary() -> str:
    """The table: every comparison on the learning curves' evaluation seeds (the same
    held-out episodes for zero-shot, transfer and scratch), the fits' final evaluation on
    other held-out seeds beside it."""
    rows = read_rows(ROWS)
    lines = [
        "control transfer (benchmarks/control_transfer.py): SAC, 64x64 MLPs, mean over the "
        "seeds of each evaluation's mean return (held-out episodes)",
        "",
    ]
    verdicts = []
    for name, pair in PAIRS.items():
        src = _done(rows, pair=name, run="source")
        scratch = [r for r in rows if r["pair"] == name and r["run"] == "scratch"]
        if not src or not scratch:
            lines.append(f"{name}: not run yet")
            continue
        n = pair["steps"]
        s_steps, s_curve = _mean_curve(scratch)
        s_final = float(s_curve[-1])
        lines.append(
            f"{name}: source {pair['source']} ({pair['source_steps']} steps, return "
            f"{src['final']:.1f}, {src['wall_s']:.0f}s) -> target {pair['target']}"
            f"[{pair['target_set']}]; budget N = {n} steps; "
            f"{pair.get('eval_episodes', 5)} episodes per evaluation"
        )
        lines.append(
            f"  scratch  ({len(scratch)} seeds, N steps): final {s_final:.1f} "
            f"(other held-out seeds: {np.mean([r['final'] for r in scratch]):.1f}); wall "
            f"{np.mean([r['wall_s'] for r in scratch]):.0f}s per seed; curve "
            + ", ".join(f"{s}: {v:.1f}" for s, v in zip(s_steps, s_curve))
        )
        for strat in STRATEGIES:
            tr = [r for r in rows if r["pair"] == name and r["run"] == strat]
            if not tr:
                continue
            t_steps, t_curve = _mean_curve(tr)
            t_final, zero = float(t_curve[-1]), float(t_curve[0])
            reach = next((int(s) for s, v in zip(t_steps, t_curve) if v >= s_final), None)
            s_match = next((int(s) for s, v in zip(s_steps, s_curve) if v >= t_final), None)
            s_same = float(np.interp(t_steps[-1], s_steps, s_curve))
            bar_reach = reach is not None and reach <= n / 3
            bar_zero = t_final > zero
            lines.append(
                f"  {strat:<8} ({len(tr)} seeds, N/3 = {t_steps[-1]} steps): final {t_final:.1f} "
                f"(other held-out seeds: {np.mean([r['final'] for r in tr]):.1f}); zero-shot "
                f"{zero:.1f}; wall {np.mean([r['wall_s'] for r in tr]):.0f}s per seed; curve "
                + ", ".join(f"{s}: {v:.1f}" for s, v in zip(t_steps, t_curve))
            )
            lines.append(
                f"           reaches scratch's final {s_final:.1f} at step "
                f"{reach if reach is not None else 'never (within N/3)'}: "
                f"{'PASS' if bar_reach else 'FAIL'} (bar <= {n // 3}); beats zero-shot: "
                f"{'PASS' if bar_zero else 'FAIL'} ({t_final:.1f} vs {zero:.1f}); scratch at "
                f"{t_steps[-1]} steps: {s_same:.1f}"
                + (" (NEGATIVE TRANSFER)" if t_final < s_same else "")
                + "; scratch reaches transfer's final at step "
                + (str(s_match) if s_match is not None else "never (within N)")
            )
            gains = [r["curve"][-1][1] - r["curve"][0][1] for r in tr]
            lines.append(
                "           final - zero-shot per seed: "
                + ", ".join(f"{g:+.1f}" for g in gains)
                + f" (a gain within one seed's spread, {np.std(gains):.1f}, is noise)"
            )
            if name in MEASURED:
                verdicts.append((name, strat, bar_reach and bar_zero))
    if verdicts:
        lines.append("")
        for strat in STRATEGIES:
            got = [ok for _, s, ok in verdicts if s == strat]
            if got:
                each = ", ".join(
                    f"{n} {'PASS' if ok else 'FAIL'}" for n, s, ok in verdicts if s == strat
                )
                lines.append(f"bar ({strat}): passed on {sum(got)}/{len(got)} pairs ({each})")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["run", "summary"])
    p.add_argument("--pairs", default=",".join(PAIRS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default=",".join(STRATEGIES[:2]))
    p.add_argument("--work", default="/tmp/control_transfer")
    args = p.parse_args()
    if args.what == "run":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for name in args.pairs.split(","):
            run_pair(
                name,
                [int(s) for s in args.seeds.split(",")],
                Path(args.work),
                args.strategies.split(","),
            )
    text = summary()
    print(text)
    SUMMARY.write_text(text + "\n")


if __name__ == "__main__":
    main()
