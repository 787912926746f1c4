"""Does the default recipe beat its own probe and today's lp_ft, on every low-data target?

Side by side in one process, over seeds (medians): the default fit (no settings), the probe
alone (``feature_extract``) and the lp_ft settings before the recipe changes of issue 27
(``old``: no warm-up floor, the last stage's best epoch kept, no WiSE-FT), each on the same
training draw and scored on the same test set:

- ``fmnist10``, ``fmnist100``: Fashion-MNIST 10 / 100 training images per class, all 10,000
  official test images;
- ``mnist20``: the MNIST 5k subset, 20 per class for training, the other 4,800 for testing;
- ``digits20``: scikit-learn's 8x8 digits (upscaled to 32 px), 20 per class, the other 1,597;
- ``spam8``, ``spam32``: SpamAssassin, the 50/50 split of ``headstart datasets spam-assassin
  --per-class N --seed S`` (the split and the draw follow the seed), the whole test half;
- ``finefood32``: Amazon Fine Food reviews, 32 per class of the official 4,000, its 1,000 test.

    python benchmarks/low_data.py --targets digits20,fmnist10 --seeds 0,1,2 --out ld.jsonl
    python benchmarks/low_data.py --summary ld.jsonl

Each fit appends one JSON line (target, variant, seed, test accuracy, macro-F1, ECE, NLL,
seconds, the kept epoch and why; text: the TF-IDF baseline on the same split); a rerun with
the same ``--out`` skips the fits already there. The summary prints, per target, each
variant's median test accuracy, ECE and fit time, the default minus the probe (the bar:
>= -0.5 points), and the default's time over the old recipe's.
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

IMAGE_TARGETS = ("fmnist10", "fmnist100", "mnist20", "digits20")
TEXT_TARGETS = ("spam8", "spam32", "finefood32")
VARIANTS = {
    "default": {},
    "probe": {"strategy": "feature_extract"},
    "old": {
        "strategy": "lp_ft",
        "warmup_steps": 0,
        "keep": "last_stage",
        "wise_ft": False,
        "train_chunks": 0,
    },
}


def target_data(name: str, seed: int):
    """(train X, train y, test X, test y) of a target for one seed's draw."""
    from headstart.datasets import (
        digits_upscaled,
        fashion_mnist,
        fine_foods,
        mnist_5k,
        per_class_subset,
        spam_assassin,
    )

    if name.startswith("fmnist"):
        x, y, _ = fashion_mnist("train")
        xt, yt, _ = fashion_mnist("test")
        idx = per_class_subset(y, int(name[6:]), seed)
        return x[idx], y[idx], xt, yt
    if name in ("mnist20", "digits20"):
        x, y, _ = mnist_5k() if name == "mnist20" else digits_upscaled(32)
        idx = per_class_subset(y, 20, seed)
        rest = np.setdiff1d(np.arange(len(y)), idx)
        return x[idx], y[idx], x[rest], y[rest]
    if name.startswith("spam"):
        from sklearn.model_selection import train_test_split

        texts, labels, _ = spam_assassin()
        tr, te = train_test_split(
            np.arange(len(texts)), test_size=0.5, stratify=labels, random_state=seed
        )
        train_y = np.unique([labels[i] for i in tr], return_inverse=True)[1]
        keep = tr[per_class_subset(train_y, int(name[4:]), seed)]
        return (
            [texts[i] for i in keep],
            [labels[i] for i in keep],
            [texts[i] for i in te],
            [labels[i] for i in te],
        )
    if name == "finefood32":
        (texts, labels), (tt, tl) = fine_foods("train"), fine_foods("test")
        keep = per_class_subset(np.unique(labels, return_inverse=True)[1], 32, seed)
        return [texts[i] for i in keep], [labels[i] for i in keep], tt, tl
    raise ValueError(f"unknown target {name!r}")


def test_subset(xt, yt, limit: int | None):
    """A stratified share of the test set, the same for every seed (``--test-limit``)."""
    labels = np.unique(np.asarray(yt), return_inverse=True)[1]
    if not limit or limit >= len(labels):
        return xt, yt
    counts = np.bincount(labels)
    keep = np.concatenate(
        [
            np.flatnonzero(labels == c)[
                np.random.default_rng(12345).permutation(counts[c])[
                    : max(1, round(limit * counts[c] / len(labels)))
                ]
            ]
            for c in range(len(counts))
        ]
    )
    keep.sort()
    pick = (lambda v: v[keep]) if isinstance(xt, np.ndarray) else (lambda v: [v[i] for i in keep])
    return pick(xt), pick(yt) if isinstance(yt, np.ndarray) else [yt[i] for i in keep]


def run_one(
    target: str, variant: str, seed: int, settings: dict, test_limit: int | None = None
) -> dict:
    from headstart import ImageClassifier, TextClassifier
    from headstart.features import clear_memory_cache

    x, y, xt, yt = target_data(target, seed)
    xt, yt = test_subset(xt, yt, test_limit)
    clear_memory_cache()  # each variant pays for its own frozen pass
    cls = TextClassifier if target in TEXT_TARGETS else ImageClassifier
    t0 = time.perf_counter()
    clf = cls(**{**VARIANTS[variant], "seed": seed, **settings}).fit(x, y)
    seconds = time.perf_counter() - t0
    m = clf.evaluate(xt, yt)
    row = {
        "target": target,
        "variant": variant,
        "seed": seed,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ece": m.get("ece"),
        "nll": m.get("log_loss"),
        "seconds": round(seconds, 1),
        "n_test": m["n"],
        "kept": clf.best_,
        "selection": clf.metrics_.get("selection", ""),
        "settings": settings,
    }
    if "baseline" in m:
        row["baseline_accuracy"] = m["baseline"]["accuracy"]
        row["baseline_macro_f1"] = m["baseline"]["macro_f1"]
    return row


def summarise(rows: list[dict]) -> None:
    by = defaultdict(list)
    for r in rows:
        by[(r["target"], r["variant"])].append(r)

    def med(rs, k):
        values = [r[k] for r in rs if r.get(k) is not None]
        return statistics.median(values) if values else float("nan")

    print(
        f"{'target':<11} {'variant':<8} {'seeds':>5} {'test acc':>9} {'ECE':>6} "
        f"{'seconds':>8}  per seed"
    )
    for target in dict.fromkeys(r["target"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            rs = sorted(by.get((target, variant), []), key=lambda r: r["seed"])
            if not rs:
                continue
            print(
                f"{target:<11} {variant:<8} {len(rs):>5} {100 * med(rs, 'accuracy'):>8.2f}% "
                f"{med(rs, 'ece'):>6.3f} {med(rs, 'seconds'):>8.1f}  "
                + " ".join(f"{100 * r['accuracy']:.2f}" for r in rs)
            )
        base = by.get((target, "default"), [])
        if base and "baseline_accuracy" in base[0]:
            print(
                f"{target:<11} {'tf-idf':<8} {len(base):>5} "
                f"{100 * med(base, 'baseline_accuracy'):>8.2f}%  "
                + " ".join(f"{100 * r['baseline_accuracy']:.2f}" for r in base)
            )
        pairs = {v: {r["seed"]: r for r in by[(t, v)]} for t, v in by if t == target}
        for other in [v for v in pairs if v != "default"]:
            seeds = sorted(set(pairs.get("default", {})) & set(pairs[other]))
            if not seeds:
                continue
            diff = [
                100 * (pairs["default"][s]["accuracy"] - pairs[other][s]["accuracy"]) for s in seeds
            ]
            ratio = [
                pairs["default"][s]["seconds"] / max(pairs[other][s]["seconds"], 1e-9)
                for s in seeds
            ]
            print(
                f"{target:<11} default - {other}: {statistics.median(diff):+.2f} points "
                f"(per seed {' '.join(f'{d:+.2f}' for d in diff)}), time ratio "
                f"{statistics.median(ratio):.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(IMAGE_TARGETS + TEXT_TARGETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="low_data.jsonl", help="append JSON lines here")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig settings for every fit, e.g. device=cuda",
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        metavar="N",
        help="score on a stratified N of the test set (the same for every "
        "seed; class proportions kept) instead of all of it",
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="one more variant to compare: a name and its FitConfig settings "
        "(add its name to --variants)",
    )
    parser.add_argument(
        "--summary",
        nargs="*",
        default=None,
        metavar="JSONL",
        help="only summarise these result files",
    )
    args = parser.parse_args()
    for name, *items in args.variant:
        VARIANTS[name] = parse_settings(items)
    if args.summary is not None:
        summarise(read_rows(*args.summary))
        return
    logging.basicConfig(level=logging.WARNING)
    settings = parse_settings(args.set)
    out = Path(args.out)
    done = read_rows(out)
    have = {
        (r["target"], r["variant"], r["seed"])
        for r in done
        if r.get("settings", {}) == settings and r.get("test_limit") == args.test_limit
    }
    for target in args.targets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in args.variants.split(","):
                if (target, variant, seed) in have:
                    continue
                row = run_one(target, variant, seed, settings, args.test_limit)
                row["test_limit"] = args.test_limit
                append_row(out, row)
                done.append(row)
    summarise([r for r in done if r.get("settings", {}) == settings])


if __name__ == "__main__":
    main()
