"""Does an unlabelled pool pay? ``fit`` with and without ``unlabeled=`` (self-training).

For each target and seed, the same fit twice in one process, scored on the same test set:
``without`` (the labelled items alone) and ``with`` (plus the pool, its labels never
trained on: they only score the pseudo-labels). Targets:

- ``fmnist``: Fashion-MNIST, 10 training images per class (``per_class_subset`` of the
  seed, as low_data.py), the pool 5,000 other training images drawn by the seed, the test
  set a fixed stratified ``--test-limit`` of the official test images;
- ``spam``: SpamAssassin, the 50/50 split of the seed, 8 emails per class of its train
  half (as low_data.py's spam8), the pool the rest of the train half, the test set a fixed
  stratified ``--test-limit`` of the test half.

Default settings: ``strategy=feature_extract`` (the probe on cached frozen features: three
seeds fit the CPU budget; the text default's TF-IDF + encoder blend is on, so the
pseudo-labels reach it) and, for text, the first 256 tokens (``truncation=head``). Other
settings: ``--set key=value``.

    python benchmarks/semi_supervised.py --targets fmnist,spam --seeds 0,1,2 --out semi.jsonl
    python benchmarks/semi_supervised.py --summary semi.jsonl

Each fit appends one JSON line; a rerun with the same ``--out`` skips the fits already
there. The summary prints per seed the test accuracy without and with the pool, the gain,
the pseudo-labels used and their accuracy, then the median and mean gain against the bar
(>= 2 points on both targets).
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

BAR = 2.0  # points of test accuracy
DEFAULTS = {"strategy": "feature_extract"}
TEXT_DEFAULTS = {"truncation": "head", "max_length": 256}
POOL = {"fmnist": 5000}


def target_data(name: str, seed: int, test_limit: int):
    """(train X, train y, pool X, pool y, test X, test y) of a target for one seed."""
    from headstart.datasets import fashion_mnist, per_class_subset, spam_assassin

    if name == "fmnist":
        x, y, _ = fashion_mnist("train")
        xt, yt, _ = fashion_mnist("test")
        idx = per_class_subset(y, 10, seed)
        rest = np.setdiff1d(np.arange(len(y)), idx)
        pool = np.sort(np.random.default_rng(seed).choice(rest, POOL["fmnist"], replace=False))
        test = _stratified(yt, test_limit)
        return x[idx], y[idx], x[pool], y[pool], xt[test], yt[test]
    if name == "spam":
        from sklearn.model_selection import train_test_split

        texts, labels, _ = spam_assassin()
        tr, te = train_test_split(
            np.arange(len(texts)), test_size=0.5, stratify=labels, random_state=seed
        )
        train_y = np.unique([labels[i] for i in tr], return_inverse=True)[1]
        keep = tr[per_class_subset(train_y, 8, seed)]
        pool = np.setdiff1d(tr, keep)
        test = te[_stratified(np.asarray([labels[i] for i in te]), test_limit)]

        def pick(rows):
            return [texts[i] for i in rows], [labels[i] for i in rows]

        return (*pick(keep), *pick(pool), *pick(test))
    raise ValueError(f"unknown target {name!r}")


def _stratified(labels: np.ndarray, n: int) -> np.ndarray:
    """A fixed stratified ``n`` of ``labels`` (the same for every seed), sorted."""
    from sklearn.model_selection import train_test_split

    if not n or n >= len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=n, stratify=labels, random_state=12345
    )
    return np.sort(keep)


def run_one(target: str, variant: str, seed: int, settings: dict, test_limit: int) -> dict:
    from headstart import ImageClassifier, TextClassifier

    x, y, px, py, xt, yt = target_data(target, seed, test_limit)
    cls = TextClassifier if target == "spam" else ImageClassifier
    own = {**DEFAULTS, **(TEXT_DEFAULTS if target == "spam" else {}), **settings}
    clf = cls(**{**own, "seed": seed})
    t0 = time.perf_counter()
    if variant == "with":
        clf.fit(x, y, unlabeled=(px, py))
    else:
        clf.fit(x, y)
    seconds = time.perf_counter() - t0
    m = clf.evaluate(xt, yt)
    row = {
        "target": target,
        "variant": variant,
        "seed": seed,
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "seconds": round(seconds, 1),
        "n_train": len(y),
        "n_pool": len(py),
        "n_test": m["n"],
        "settings": own,
        "load": Path("/proc/loadavg").read_text().split()[:3],
    }
    semi = clf.metrics_.get("semi")
    if semi:
        row["semi"] = {
            k: semi[k]
            for k in ("kept", "pseudo_labels", "validation_without_pool", "validation_with_pool")
        }
        row["semi"]["rounds"] = [
            {k: r.get(k) for k in ("round", "pseudo_labels", "accuracy", "before", "after", "kept")}
            for r in semi["rounds"]
        ]
        row["semi"]["line"] = semi["line"]
    if "baseline" in m:
        row["baseline_accuracy"] = m["baseline"]["accuracy"]
    return row


def summarise(rows: list[dict]) -> None:
    by = defaultdict(dict)
    for r in rows:
        by[(r["target"], r["seed"])][r["variant"]] = r
    targets = sorted({t for t, _ in by})
    verdicts = []
    for target in targets:
        gains = []
        print(f"\n{target}:")
        print(
            f"  {'seed':>4}  {'without':>8}  {'with':>8}  {'gain':>6}  {'pseudo':>6}  "
            f"{'right':>6}  kept  seconds (without / with)"
        )
        for (t, seed), pair in sorted(by.items()):
            if t != target or not {"without", "with"} <= set(pair):
                continue
            a, b = pair["without"], pair["with"]
            gain = 100 * (b["accuracy"] - a["accuracy"])
            gains.append(gain)
            semi = b.get("semi") or {}
            used = [r for r in semi.get("rounds", []) if r.get("kept")]
            acc = used[-1].get("accuracy") if used else None
            print(
                f"  {seed:>4}  {100 * a['accuracy']:>7.2f}%  {100 * b['accuracy']:>7.2f}%  "
                f"{gain:>+6.2f}  {semi.get('pseudo_labels', 0):>6}  "
                f"{'' if acc is None else f'{100 * acc:.1f}%':>6}  "
                f"{'yes' if semi.get('kept') else 'no':>4}  {a['seconds']:.0f} / {b['seconds']:.0f}"
            )
            if semi.get("line"):
                print(f"        {semi['line']}")
        if not gains:
            continue
        med, mean = statistics.median(gains), statistics.mean(gains)
        met = med >= BAR and mean >= BAR
        verdicts.append((target, met))
        print(
            f"  gain over {len(gains)} seeds: median {med:+.2f}, mean {mean:+.2f} points "
            f"(bar >= {BAR:.0f}: {'met' if met else 'MISSED'})"
        )
    if verdicts:
        print(
            "\nbar (>= 2 points on both targets): "
            + ", ".join(f"{t} {'met' if m else 'MISSED'}" for t, m in verdicts)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="fmnist,spam")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--test-limit", type=int, default=2000, help="test items (stratified, fixed)"
    )
    parser.add_argument("--set", nargs="*", default=[], help="fit settings, key=value")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/headstart/features"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON lines to append to")
    parser.add_argument("--summary", nargs="*", default=None, help="summarise these JSON lines")
    args = parser.parse_args()
    if args.summary is not None:
        summarise(read_rows(*(args.summary or [args.out])))
        return
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    settings = {
        "feature_cache": args.cache,
        "num_workers": 0,
        "device": "cpu",
        **parse_settings(args.set),
    }
    done = (
        {(r["target"], r["variant"], r["seed"]) for r in read_rows(args.out)}
        if args.out and Path(args.out).exists()
        else set()
    )
    rows = []
    for target in args.targets.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in ("without", "with"):
                if (target, variant, seed) in done:
                    continue
                row = run_one(target, variant, seed, settings, args.test_limit)
                rows.append(row)
                print(
                    f"{target} seed {seed} {variant}: {100 * row['accuracy']:.2f}% "
                    f"({row['seconds']:.0f} s, load {' '.join(row['load'])})",
                    flush=True,
                )
                if args.out:
                    append_row(args.out, row)
    summarise(read_rows(args.out) if args.out else rows)


if __name__ == "__main__":
    main()
