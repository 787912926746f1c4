"""Class imbalance on a real target: SpamAssassin with spam subsampled to 1:10.

The corpus is split 50/50, stratified (seed 0, as in text_transfer.py). Draw d trains on
``--ham`` ham and ``--spam`` spam emails from the train half (seeded by d; the fit's seed is
d too); every model is scored on one fixed test set from the test half at the same 1:10
ratio (``--test-ham`` / ``--test-spam``). Fits use the text defaults (MiniLM-L6, lp_ft, 4 x
256-token chunks, 10% held out for validation) with only ``strategy`` and ``imbalance``
changed. Each fit appends one JSON line: the encoder's macro-F1, accuracy and per-class
recall; those of the TF-IDF baseline the fit itself trains (on the fit's train part,
class-balanced when the fit counters imbalance); and those of a class-balanced TF-IDF +
logistic regression on all of the draw's training emails (the stronger alternative: it
also sees the validation part). A table of means and of paired differences closes the run.

    cd benchmarks; OMP_NUM_THREADS=2 python imbalance.py --strategies feature_extract \\
        --imbalance weight,sample,none --draws 5 --out probe.jsonl
    cd benchmarks; OMP_NUM_THREADS=2 python imbalance.py --strategies lp_ft \\
        --imbalance auto --draws 2 --out lpft.jsonl
    python imbalance.py --summary probe.jsonl lpft.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from text_transfer import corpus


def draw(texts, labels, n: dict, seed: int):
    """``n[c]`` items of each class ``c``, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in n.items()]
        )
    )
    return [texts[i] for i in keep], [str(labels[i]) for i in keep]


def scores(y_true, proba, classes) -> dict:
    from headstart.metrics import classification_metrics

    index = {c: i for i, c in enumerate(classes)}
    m = classification_metrics(np.array([index[c] for c in y_true]), proba, classes)
    return {
        "macro_f1": m["macro_f1"],
        "accuracy": m["accuracy"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
    }


def short(m: dict) -> dict:
    return (
        {
            "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"],
            "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        }
        if "per_class" in m
        else {k: m[k] for k in ("macro_f1", "accuracy")}
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategies", default="lp_ft")
    parser.add_argument(
        "--imbalance", default="auto", help="comma-separated: auto, weight, sample, none"
    )
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--first-draw", type=int, default=0)
    parser.add_argument("--ham", type=int, default=100)
    parser.add_argument("--spam", type=int, default=10)
    parser.add_argument("--test-ham", type=int, default=300)
    parser.add_argument("--test-spam", type=int, default=30)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument("--cache", default="/tmp/headstart-text-features")
    parser.add_argument(
        "--summary",
        nargs="*",
        default=None,
        metavar="JSONL",
        help="only summarise these result files",
    )
    args = parser.parse_args()
    if args.summary is not None:
        rows = [
            json.loads(line)
            for path in args.summary
            for line in Path(path).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        summary(rows)
        return
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    from headstart import TextClassifier
    from headstart.baselines import TfidfBaseline

    train, test = corpus("spam")
    test_x, test_y = draw(*test, {"ham": args.test_ham, "spam": args.test_spam}, 10_000)
    rows = []
    for d in range(args.first_draw, args.first_draw + args.draws):
        x, y = draw(*train, {"ham": args.ham, "spam": args.spam}, d)
        classes = sorted(set(y))
        tfidf = TfidfBaseline(seed=d, class_weight="balanced").fit(
            x, np.array([classes.index(c) for c in y])
        )
        tfidf_all = scores(test_y, tfidf.predict_proba(test_x), classes)
        for strategy in args.strategies.split(","):
            for method in args.imbalance.split(","):
                t0 = time.perf_counter()
                clf = TextClassifier(
                    strategy=strategy, imbalance=method, seed=d, feature_cache=args.cache
                ).fit(x, y)
                m = clf.evaluate(test_x, test_y)
                balance = clf.metrics_["imbalance"]
                row = {
                    "strategy": strategy,
                    "imbalance": method,
                    "draw": d,
                    "n_train": len(x),
                    "n_test": len(test_x),
                    "resolved": [balance["monitor"], balance["method"]],
                    "kept": clf.best_,
                    **short(m),
                    "fit_baseline": {
                        **short(m["baseline"]),
                        "name": clf.metrics_.get("baseline_name"),
                    },
                    "tfidf_balanced_all": tfidf_all,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                rows.append(row)
    summary(rows)


def summary(rows: list[dict]) -> None:
    """Means over draws per (strategy, imbalance), and the paired difference in macro-F1
    against the class-balanced TF-IDF on all training emails (same draw)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["strategy"], r["imbalance"])].append(r)
    print(
        f"\n{'strategy':<16} {'imbalance':<9} {'F1':>6} {'acc':>6} {'spam R':>6} "
        f"{'ham R':>6} | {'fit TF-IDF F1':>13} | {'bal. TF-IDF F1':>14} "
        f"{'F1 - bal. TF-IDF (per draw)':>28}"
    )
    for (strategy, method), rs in groups.items():

        def mean(f, rs=rs):
            return 100 * np.mean([f(r) for r in rs])

        diff = [100 * (r["macro_f1"] - r["tfidf_balanced_all"]["macro_f1"]) for r in rs]
        print(
            f"{strategy:<16} {method:<9} {mean(lambda r: r['macro_f1']):6.2f} "
            f"{mean(lambda r: r['accuracy']):6.2f} "
            f"{mean(lambda r: r['recall']['spam']):6.2f} "
            f"{mean(lambda r: r['recall']['ham']):6.2f} | "
            f"{mean(lambda r: r['fit_baseline']['macro_f1']):13.2f} | "
            f"{mean(lambda r: r['tfidf_balanced_all']['macro_f1']):14.2f} "
            f"{np.mean(diff):+7.2f} ({' '.join(f'{v:+.2f}' for v in diff)}; n={len(rs)})"
        )


if __name__ == "__main__":
    main()
