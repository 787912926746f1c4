"""``headstart study --task control`` on a related and an unrelated source (issue 33).

Two sources with Pendulum's observation and action layouts, trained from scratch:
``Pendulum-v1`` itself (related) and ``ReversedPendulum-v0`` (``control_envs.py``: the motor
turns the other way; matched layout, unrelated skill). Each is studied on the same target,
Pendulum-v1 with stronger gravity and a heavier bob: transfer strategies get ``--steps``,
scratch 3x that, seeds 0-2, the same held-out evaluation episodes. The study should say
that the related source pays and flag the unrelated one as negative transfer. The scratch
runs are shared (copied from the first study: same settings, same fingerprint).

    OMP_NUM_THREADS=1 python benchmarks/control_study.py --work /tmp/ctl_study
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import control_envs  # noqa: F401 - registers ReversedPendulum-v0

from headstart.data.envs import parse_env
from headstart.tasks import ControlEstimator
from headstart.tasks.control.study import run_control_study

SOURCES = {"related": "Pendulum-v1", "unrelated": "control_envs:ReversedPendulum-v0"}
TARGET = "Pendulum-v1[g=14,m=1.3]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", default="/tmp/ctl_study")
    p.add_argument("--source-steps", type=int, default=8000)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-episodes", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    common = {"eval_every": args.eval_every, "eval_episodes": args.eval_episodes}
    for name, env in SOURCES.items():
        run = work / f"source-{name}"
        t0 = time.time()
        src = ControlEstimator(env=env, steps=args.source_steps, run_dir=run, **common)
        src.fit(resume=run.exists())
        print(
            f"source {name} ({env}, {args.source_steps} steps): return "
            f"{src.metrics_['validation']['mean_return']:.1f} in its own env, "
            f"{time.time() - t0:.0f} s",
            flush=True,
        )
    first = None
    for name in SOURCES:
        out = work / f"study-{name}"
        if first is not None:  # the same scratch runs: read back, not trained again
            for seed in seeds:
                dst = out / "runs" / f"scratch-s{seed}"
                if not dst.exists():
                    shutil.copytree(first / "runs" / f"scratch-s{seed}", dst)
        study = run_control_study(
            parse_env(TARGET),
            str(work / f"source-{name}"),
            out,
            strategies=("finetune", "lp_ft"),
            seeds=seeds,
            steps=args.steps,
            settings=common,
        )
        first = first or out
        print(f"\n{name} source -> {TARGET} ({study['seconds']:.0f} s): {study['verdict']}")
        for r in study["strategies"]:
            print("  " + r["line"])
        curve = ", ".join(f"{p['steps']}: {p['mean_return']:.0f}" for p in study["scratch_curve"])
        print(f"  scratch curve: {curve}")
        for r in study["strategies"]:
            c = ", ".join(f"{p['steps']}: {p['mean_return']:.0f}" for p in r["curve"])
            print(f"  {r['strategy']} curve: {c}")
        print(f"  report: {out / 'report.html'}", flush=True)


if __name__ == "__main__":
    main()
