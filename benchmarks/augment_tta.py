"""Image augmentation and test-time augmentation on small images, side by side.

Each variant is a set of FitConfig settings over the default fit (lp_ft, ``augment=light``,
which keeps 0.85-1 of the area for small sources); every fit is scored on the test set as
it is, then with ``tta=flip`` and ``tta=flip+crops`` (the same trained model):

- ``digits20``: scikit-learn's 8x8 digits (upscaled to 32 px), 20 per class, the other 1,597;
- ``fmnist10``: Fashion-MNIST, 10 training images per class; ``--test-limit N`` scores a
  stratified N of the 10,000 test images (the same N for every variant and seed).

    python benchmarks/augment_tta.py --targets digits20,fmnist10 --seeds 0,1 --test-limit 2000 \
        --variant old crop_min=0.7 --variant trivial augment=trivial \
        --variants default,old,trivial --out aug.jsonl
    python benchmarks/augment_tta.py --summary aug.jsonl

One JSON line per fit (target, variant, seed, accuracy, tta accuracies, seconds); a rerun
with the same ``--out`` skips the fits already there. The summary prints per target each
variant's median test accuracy (and with each TTA), and each variant minus ``default``
per seed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import append_row, parse_settings, read_rows

VARIANTS: dict[str, dict] = {"default": {}}
TTA = ("flip", "flip+crops")


def target_data(name: str, seed: int, test_limit: int | None):
    """(train X, train y, test X, test y) of a target for one seed's draw."""
    from headstart.datasets import digits_upscaled, fashion_mnist, per_class_subset

    if name == "digits20":
        x, y, _ = digits_upscaled(32)
        idx = per_class_subset(y, 20, seed)
        rest = np.setdiff1d(np.arange(len(y)), idx)
        xt, yt = x[rest], y[rest]
        x, y = x[idx], y[idx]
    elif name == "fmnist10":
        x, y, _ = fashion_mnist("train")
        xt, yt, _ = fashion_mnist("test")
        idx = per_class_subset(y, 10, seed)
        x, y = x[idx], y[idx]
    else:
        raise ValueError(f"unknown target {name!r}: digits20 or fmnist10")
    if test_limit and test_limit < len(yt):  # stratified, the same for every seed
        keep = per_class_subset(yt, test_limit // len(np.unique(yt)), 12345)
        xt, yt = xt[keep], yt[keep]
    return x, y, xt, yt


def run_one(target: str, variant: str, seed: int, settings: dict, test_limit, tta) -> dict:
    from headstart import ImageClassifier
    from headstart.features import clear_memory_cache

    x, y, xt, yt = target_data(target, seed, test_limit)
    clear_memory_cache()
    t0 = time.perf_counter()
    clf = ImageClassifier(**{**VARIANTS[variant], "seed": seed, **settings}).fit(x, y)
    seconds = time.perf_counter() - t0
    row = {
        "target": target,
        "variant": variant,
        "seed": seed,
        "n_test": len(yt),
        "accuracy": clf.evaluate(xt, yt)["accuracy"],
        "seconds": round(seconds, 1),
        "kept": clf.best_,
        "settings": {**VARIANTS[variant], **settings},
    }
    for kind in tta:
        t0 = time.perf_counter()
        row[f"tta_{kind}"] = clf.evaluate(xt, yt, tta=kind)["accuracy"]
        row[f"tta_{kind}_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def summarise(rows: list[dict]) -> None:
    by = defaultdict(dict)
    for r in rows:
        by[(r["target"], r["variant"])][r["seed"]] = r
    cols = ["accuracy"] + [f"tta_{k}" for k in TTA]
    print(
        f"{'target':<9} {'variant':<12} {'seeds':>5} "
        + " ".join(f"{c:>15}" for c in cols)
        + "   per seed (accuracy)"
    )
    for (target, variant), rs in by.items():
        med = [
            statistics.median(r[c] for r in rs.values())
            if all(c in r for r in rs.values())
            else float("nan")
            for c in cols
        ]
        print(
            f"{target:<9} {variant:<12} {len(rs):>5} "
            + " ".join(f"{100 * m:>14.2f}%" for m in med)
            + "   "
            + " ".join(f"{100 * rs[s]['accuracy']:.2f}" for s in sorted(rs))
        )
        base = by.get((target, "default"))
        if base and variant != "default":
            seeds = sorted(set(base) & set(rs))
            d = [100 * (rs[s]["accuracy"] - base[s]["accuracy"]) for s in seeds]
            if d:
                print(
                    f"{'':<9} {variant} - default: {statistics.median(d):+.2f} points "
                    f"(per seed {' '.join(f'{v:+.2f}' for v in d)})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="digits20,fmnist10")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="score a stratified subset of this many test images",
    )
    parser.add_argument("--tta", default=",".join(TTA), help="TTA kinds to score ('' = none)")
    parser.add_argument("--out", default="augment_tta.jsonl")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE")
    )
    parser.add_argument("--summary", nargs="*", default=None, metavar="JSONL")
    args = parser.parse_args()
    for name, *items in args.variant:
        VARIANTS[name] = parse_settings(items)
    if args.summary is not None:
        summarise(read_rows(*args.summary))
        return
    logging.basicConfig(level=logging.WARNING)
    settings = parse_settings(args.set)
    tta = [k for k in args.tta.split(",") if k]
    out = Path(args.out)
    done = read_rows(out)
    have = {(r["target"], r["variant"], r["seed"]) for r in done}
    for target in args.targets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in args.variants.split(","):
                if (target, variant, seed) in have:
                    continue
                row = run_one(target, variant, seed, settings, args.test_limit, tta)
                append_row(out, row)
                done.append(row)
    summarise(done)


if __name__ == "__main__":
    main()
