"""Accuracy of text transfer against the TF-IDF baseline on real offline corpora.

SpamAssassin: stratified 50/50 split (seed 0); ``--sizes`` training emails per class drawn
from the train half (``all`` = the whole half), ``--draws`` draws each; every model is
scored on the whole test half. Fine Food: the official 4000 / 1000 split (``--sizes all``).

    python benchmarks/text_transfer.py spam --strategies feature_extract,lp_ft \\
        --sizes 8,32,128,all --draws 3 --out spam.jsonl

Each fit appends one JSON line (strategy, size, draw, accuracy, macro-F1, the TF-IDF
baseline's on the same split, the blend's (mean of the two models' probabilities, what
``--blend`` predicts), seconds); a summary table of means closes the run. ``--joint`` fits
with ``--blend --blend-mode joint`` and records that model too (``joint_accuracy``: one
logistic regression on TF-IDF + the trained encoder's features); ``accuracy`` stays the
encoder's alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import parse_settings


def corpus(name: str, seed: int = 0):
    from sklearn.model_selection import train_test_split

    from headstart.datasets import fine_foods, spam_assassin

    if name == "spam":
        texts, labels, _ = spam_assassin()
        idx = np.arange(len(texts))
        tr, te = train_test_split(idx, test_size=0.5, stratify=labels, random_state=seed)
        pick = lambda ids: ([texts[i] for i in ids], [labels[i] for i in ids])  # noqa: E731
        return pick(tr), pick(te)
    return fine_foods("train"), fine_foods("test")


def draw(train, size: str, seed: int):
    from headstart.datasets import per_class_subset

    if size == "all":
        return train
    y = np.unique(train[1], return_inverse=True)[1]
    keep = per_class_subset(y, int(size), seed)
    return [train[0][i] for i in keep], [train[1][i] for i in keep]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus", choices=["spam", "finefood"])
    parser.add_argument("--strategies", default="feature_extract,lp_ft")
    parser.add_argument("--sizes", default="8,32,128,all")
    parser.add_argument("--draws", type=int, default=3, help="draws per size (1 for 'all')")
    parser.add_argument("--first-draw", type=int, default=0)
    parser.add_argument("--out", default=None, help="append JSON lines here")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig settings, e.g. epochs=4 truncation=head_tail",
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=0,
        help="score on this many test texts per class (drawn once, seed 0) instead of the "
        "whole test half: for encoders too slow on the CPU for 3000 emails (MPNet)",
    )
    parser.add_argument("--cache", default="/tmp/headstart-text-features")
    parser.add_argument(
        "--save-proba",
        default=None,
        metavar="DIR",
        help="write each fit's features, encoder and TF-IDF probabilities on "
        "the train and test texts to DIR/CORPUS_STRATEGY_SIZE_DRAW.npz",
    )
    parser.add_argument(
        "--joint",
        action="store_true",
        help="fit with --blend --blend-mode joint and record that model too",
    )
    parser.add_argument(
        "--summary",
        nargs="*",
        default=None,
        metavar="JSONL",
        help="only summarise these result files (e.g. several --out files)",
    )
    args = parser.parse_args()
    if args.summary is not None:
        results = defaultdict(list)
        for path in args.summary:
            for line in Path(path).read_text().splitlines():
                if not line.strip() or line.startswith("#"):  # results files: comments
                    continue
                row = json.loads(line)
                if row["corpus"] == args.corpus:
                    results[(row["size"], row["strategy"])].append(row)
        summary(results)
        return
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    from headstart import TextClassifier

    settings = parse_settings(args.set)
    if args.joint:
        settings.update(blend=True, blend_mode="joint")
    train, test = corpus(args.corpus)
    if args.test_per_class:
        test = draw(test, str(args.test_per_class), 0)
    results = defaultdict(list)
    for size in args.sizes.split(","):
        for d in range(args.first_draw, args.first_draw + (1 if size == "all" else args.draws)):
            x, y = draw(train, size, d)
            for strategy in args.strategies.split(","):
                t0 = time.perf_counter()
                clf = TextClassifier(
                    strategy=strategy,
                    val_fraction=0.0,
                    seed=d,
                    feature_cache=args.cache,
                    **settings,
                ).fit(x, y)
                m = clf.evaluate(*test)
                encoder = m.get("encoder", m)  # a blending model's own metrics: the blend's
                mean = m["blend"] if "blend" in m else m
                row = {
                    "corpus": args.corpus,
                    "strategy": strategy,
                    "size": size,
                    "draw": d,
                    "n_train": len(x),
                    "n_test": len(test[0]),
                    "accuracy": encoder["accuracy"],
                    "macro_f1": encoder["macro_f1"],
                    "tfidf_accuracy": m["baseline"]["accuracy"],
                    "tfidf_macro_f1": m["baseline"]["macro_f1"],
                    "blend_accuracy": mean["accuracy"],
                    "blend_macro_f1": mean["macro_f1"],
                    **(
                        {"joint_accuracy": m["accuracy"], "joint_macro_f1": m["macro_f1"]}
                        if clf._joint()
                        else {}
                    ),
                    "trainable": [s["trainable_params"] for s in clf.stages_],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "settings": settings,
                }
                print(json.dumps(row), flush=True)
                if args.save_proba:  # every item's probabilities: other fusion rules offline
                    save_proba(
                        clf,
                        Path(args.save_proba) / f"{args.corpus}_{strategy}_{size}_{d}.npz",
                        (x, y),
                        test,
                    )
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                results[(size, strategy)].append(row)
    summary(results)


def save_proba(clf, path: Path, train, test) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"classes": np.array(clf.classes_)}
    for name, (texts, labels) in (("train", train), ("test", test)):
        source = clf._open_unlabeled(list(texts))
        feats = clf._features(source)  # the head's input
        out[f"{name}_features"] = feats.float().numpy()
        out[f"{name}_encoder"] = clf._head_proba(feats)
        out[f"{name}_tfidf"] = clf.baseline_.predict_proba(list(texts))
        out[f"{name}_labels"] = np.array([clf.classes_.index(c) for c in labels])
    np.savez(path, **out)


def summary(results: dict) -> None:
    """Means over draws, and the transfer-minus-TF-IDF accuracy difference per draw (the
    same training texts for both): its mean and standard error, since which few texts are
    drawn moves both by several points."""
    print(
        f"\n{'size':>6} {'strategy':<16} {'acc':>7} {'F1':>7} {'tfidf acc':>9} {'tfidf F1':>8}"
        f"  {'acc - tfidf (mean +- SE over draws)':>36}"
    )
    for (size, strategy), rows in results.items():
        mean = {
            k: 100 * np.mean([r[k] for r in rows])
            for k in ("accuracy", "macro_f1", "tfidf_accuracy", "tfidf_macro_f1")
        }
        diff = 100 * np.array([r["accuracy"] - r["tfidf_accuracy"] for r in rows])
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        print(
            f"{size:>6} {strategy:<16} {mean['accuracy']:7.2f} {mean['macro_f1']:7.2f} "
            f"{mean['tfidf_accuracy']:9.2f} {mean['tfidf_macro_f1']:8.2f}  "
            f"{diff.mean():+8.2f} +- {se:.2f} (n={len(rows)}: "
            f"{' '.join(f'{d:+.2f}' for d in diff)})"
        )
        # the encoder and TF-IDF averaged (--blend), and in one logistic regression
        # (--blend-mode joint), against TF-IDF alone
        for key, name in (("blend", "+ TF-IDF blend"), ("joint", "+ TF-IDF joint")):
            blended = [r for r in rows if f"{key}_accuracy" in r]
            if not blended:
                continue
            diff = 100 * np.array([r[f"{key}_accuracy"] - r["tfidf_accuracy"] for r in blended])
            se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            acc = 100 * np.mean([r[f"{key}_accuracy"] for r in blended])
            f1 = 100 * np.mean([r[f"{key}_macro_f1"] for r in blended])
            print(
                f"{'':>6} {name:<16} {acc:7.2f} {f1:7.2f} {'':>9} {'':>8}  "
                f"{diff.mean():+8.2f} +- {se:.2f} (n={len(blended)}: "
                f"{' '.join(f'{d:+.2f}' for d in diff)})"
            )


if __name__ == "__main__":
    main()
