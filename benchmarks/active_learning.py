"""Does `headstart suggest` need fewer labels than labelling at random?

For each target, a pool of unlabelled items and a fixed test set; labels are bought in
rounds of ``--round`` (20) up to ``--max-labels`` (200), over ``--seeds``:

- ``random``: each round labels items drawn at random from the pool;
- ``auto`` (what ``headstart suggest`` does by default): TypiClust while there are fewer
  than 20 labelled items per class, BADGE from there;
- ``typiclust``, ``kcenter``: the same method every round (no model needed);
- ``badge``, ``margin``: the cold start of `suggest` (TypiClust) in the first round, the
  method from the current classifier's probabilities after it.

Every pick comes from :func:`headstart.active.choose` (what ``suggest`` calls) on the
frozen features of the pool, with the labelled items' features as the labelled set.
The classifier of each round is a linear probe, not a ``headstart fit``: scikit-learn's
logistic regression (standardised features, C = 1, as rank's ``linear`` score) on the
frozen backbone's features, so a round costs a second once the features are cached (the
estimators' public ``frozen_features``, through the on-disk feature cache: a rerun computes
nothing). Targets:

- ``fmnist``: Fashion-MNIST, the pool ``--pool`` training images drawn per seed, the test
  set a fixed stratified ``--test`` of the official test images; EfficientNet-Lite0 at
  the image size fit picks for 28 px (160 px);
- ``spam``: SpamAssassin, the 50/50 stratified split of the seed (as low_data.py), the pool
  ``--pool`` emails of the train half, the test set ``--test`` of the test half; MiniLM-L6
  features of the first 256 tokens (``truncation=head``).

    python benchmarks/active_learning.py --out al.jsonl
    python benchmarks/active_learning.py --summary al.jsonl

The summary prints accuracy against labels (median over seeds) for every method, and per
method the labels it needed to reach random's median accuracy at ``--max-labels`` (the
bar: <= 140 of 200 on both targets, a ratio <= 0.70).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import read_rows

METHODS = ("random", "auto", "typiclust", "badge", "margin", "kcenter")
BAR = 140
COLD = ("kcenter", "typiclust")  # methods that need no model
COLD_START = "auto"  # what the others start from: suggest's cold start (TypiClust)


def features(target: str, pool: int, test: int, seeds: list[int], cache: str):
    """``{seed: (pool feats, pool labels, test feats, test labels)}`` of a target."""
    from headstart import ImageClassifier, TextClassifier
    from headstart.datasets import fashion_mnist, spam_assassin
    from headstart.zoo import create_backbone

    if target == "fmnist":
        x, y, _ = fashion_mnist("train")
        xt, yt, _ = fashion_mnist("test")
        test_idx = _stratified(yt, test, 12345)
        # the features cover the draws of seeds 0, 1, 2 whichever seeds run, so one cache
        # entry serves every run
        draws = {
            s: np.random.default_rng(s).choice(len(y), pool, replace=False)
            for s in sorted(set(seeds) | {0, 1, 2})
        }
        used = np.unique(np.concatenate(list(draws.values())))
        est = ImageClassifier(feature_cache=cache, num_workers=0, device="cpu")
        items, labels = [x[used], xt[test_idx]], [y[used], yt[test_idx]]
    elif target == "spam":
        from sklearn.model_selection import train_test_split

        texts, names, _ = spam_assassin()
        y = np.asarray([n == "spam" for n in names], dtype=np.int64)
        draws, tests = {}, {}
        for s in seeds:
            tr, te = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=s)
            draws[s] = np.random.default_rng(s).choice(tr, min(pool, len(tr)), replace=False)
            tests[s] = te[_stratified(y[te], test, 12345)]
        used = np.arange(len(y))
        est = TextClassifier(
            feature_cache=cache, num_workers=0, device="cpu", truncation="head", max_length=256
        )
        items, labels = [[texts[i] for i in used]], [y[used]]
    else:
        raise ValueError(f"unknown target {target!r}")
    cfg = est.resolved_config()
    backbone = create_backbone(cfg.backbone, pretrained=True).eval()
    sources = [est.read_labeled(i, np.asarray(lab), cfg=cfg) for i, lab in zip(items, labels)]
    pre = est.input_spec(backbone, sources[0], cfg)
    t0 = time.perf_counter()
    feats = [f.numpy() for f in est.frozen_features(backbone, {0: backbone}, pre, sources, cfg)[0]]
    print(f"{target}: features of {sum(map(len, feats))} items in {time.perf_counter() - t0:.0f} s")
    at = {int(u): j for j, u in enumerate(used)}
    out = {}
    for s in seeds:
        rows = np.asarray([at[int(i)] for i in draws[s]])
        if target == "fmnist":
            out[s] = (feats[0][rows], y[draws[s]], feats[1], yt[test_idx])
        else:
            trows = np.asarray([at[int(i)] for i in tests[s]])
            out[s] = (feats[0][rows], y[draws[s]], feats[0][trows], y[tests[s]])
    return out


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A fixed stratified ``n`` of ``labels`` (class shares kept), sorted."""
    from sklearn.model_selection import train_test_split

    if n >= len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed
    )
    return np.sort(keep)


def probe(f: np.ndarray, y: np.ndarray):
    """Standardised features + logistic regression (C = 1): rank's linear probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(f, y)


def run_curve(data, method: str, seed: int, step: int, max_labels: int) -> list[dict]:
    """Accuracy on the test set after each round of ``step`` labels."""
    from headstart.active import choose

    pf, py, tf, ty = data
    rng = np.random.default_rng(1000 + seed)
    labeled = np.zeros(0, dtype=np.int64)
    rows = []
    model = None
    while len(labeled) < max_labels:
        rest = np.setdiff1d(np.arange(len(pf)), labeled)
        t0 = time.perf_counter()
        if method == "random":
            new = rng.choice(rest, step, replace=False)
        else:
            now = phase(method, len(labeled) // step)
            if now in COLD or model is None or len(np.unique(py[labeled])) < 2:
                cold = now if now in COLD else COLD_START
                picks = choose(
                    pf[rest],
                    step,
                    labeled=pf[labeled],
                    method=cold,
                    seed=seed * 1000 + len(labeled),
                )
            else:
                picks = choose(
                    pf[rest],
                    step,
                    proba=model.predict_proba(pf[rest]),
                    labeled=pf[labeled],
                    labeled_proba=model.predict_proba(pf[labeled]),
                    method=now,
                    seed=seed * 1000 + len(labeled),
                )
            new = rest[picks.indices]
        choose_s = time.perf_counter() - t0
        labeled = np.concatenate([labeled, new])
        if len(np.unique(py[labeled])) < 2:
            acc, model = float(np.mean(ty == py[labeled][0])), None
        else:
            model = probe(pf[labeled], py[labeled])
            acc = float(model.score(tf, ty))
        rows.append(
            {
                "labels": int(len(labeled)),
                "accuracy": acc,
                "classes_seen": int(len(np.unique(py[labeled]))),
                "choose_seconds": round(choose_s, 3),
            }
        )
    return rows


def phase(spec: str, round_: int) -> str:
    """The method of round ``round_`` (0-based) of a method spec: ``badge``, or
    ``typiclust:3>margin`` (typiclust for the first 3 rounds, then margin; ``A>B``: A for
    the first round)."""
    if ">" not in spec:
        return spec
    first, _, then = spec.partition(">")
    name, _, rounds = first.partition(":")
    return name if round_ < int(rounds or 1) else then


def needed(curve: dict[int, float], target: float) -> int | None:
    """The fewest labels whose accuracy reaches ``target`` (None: never)."""
    for n in sorted(curve):
        if curve[n] >= target - 1e-12:
            return n
    return None


def summarise(rows: list[dict], max_labels: int) -> None:
    by = defaultdict(lambda: defaultdict(dict))  # (target, method) -> seed -> labels -> acc
    for r in rows:
        by[(r["target"], r["method"])][r["seed"]][r["labels"]] = r["accuracy"]
    for target in dict.fromkeys(r["target"] for r in rows):
        methods = [m for m in dict.fromkeys(r["method"] for r in rows) if (target, m) in by]
        grid = sorted({n for m in methods for s in by[(target, m)].values() for n in s})
        seeds = sorted({s for m in methods for s in by[(target, m)]})
        print(f"\n== {target}: test accuracy (%) against labels, median over seeds {seeds}")
        print(f"{'method':<15}" + "".join(f"{n:>7}" for n in grid))
        med: dict[str, dict[int, float]] = {}
        for m in methods:
            per = by[(target, m)]
            med[m] = {
                n: statistics.median(per[s][n] for s in per if n in per[s])
                for n in grid
                if any(n in per[s] for s in per)
            }
            print(f"{m:<15}" + "".join(f"{100 * med[m].get(n, float('nan')):>7.2f}" for n in grid))
        if "random" not in med or max_labels not in med["random"]:
            continue
        goal = med["random"][max_labels]
        print(
            f"random at {max_labels} labels: {100 * goal:.2f}% (median); labels each method "
            f"needs to reach it (bar: <= {BAR}, ratio <= {BAR / max_labels:.2f}):"
        )
        mean = {
            m: {
                n: statistics.fmean(c[n] for c in by[(target, m)].values() if n in c)
                for n in med[m]
            }
            for m in methods
        }
        mean_goal = mean["random"][max_labels]
        for m in methods:
            if m == "random":
                continue
            n = needed(med[m], goal)
            n_mean = needed(mean[m], mean_goal)
            per_seed = []
            for s, curve in sorted(by[(target, m)].items()):
                own = by[(target, "random")].get(s, {})
                k = needed(curve, own.get(max_labels, float("inf")))
                per_seed.append("-" if k is None else str(k))
            ratio = "never" if n is None else f"{n / max_labels:.2f}"
            verdict = "PASS" if n is not None and n <= BAR else "FAIL"
            print(
                f"  {m:<15} median curve: {n if n is not None else '>' + str(max_labels)} "
                f"labels, ratio {ratio} {verdict}; mean curve: "
                f"{n_mean if n_mean is not None else '>' + str(max_labels)} (random's mean "
                f"{100 * mean_goal:.2f}%); per seed against that seed's random: "
                f"{' '.join(per_seed)}; at {max_labels}: {100 * med[m][max_labels]:.2f}% "
                f"({100 * (med[m][max_labels] - goal):+.2f} points)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="fmnist,spam")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool", type=int, default=3000, help="unlabelled items per seed")
    parser.add_argument("--test", type=int, default=2000, help="fixed test items")
    parser.add_argument("--round", type=int, default=20, help="labels bought per round")
    parser.add_argument("--max-labels", type=int, default=200)
    parser.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "headstart" / "features"),
        help="the feature cache (as fit's --feature-cache)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--out", default="active_learning.jsonl", help="append JSON lines here")
    parser.add_argument("--summary", nargs="*", default=None, metavar="JSONL")
    args = parser.parse_args()
    if args.summary is not None:
        summarise(read_rows(*args.summary), args.max_labels)
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    setup = {"pool": args.pool, "test": args.test, "round": args.round}
    out = Path(args.out)
    done = read_rows(out)
    have = {(r["target"], r["method"], r["seed"]) for r in done if r.get("setup") == setup}
    for target in args.targets.split(","):
        data = features(target, args.pool, args.test, seeds, args.cache)
        for seed in seeds:
            for method in args.methods.split(","):
                if (target, method, seed) in have:
                    continue
                t0 = time.perf_counter()
                with threadpool_limits(limits=args.threads):
                    curve = run_curve(data[seed], method, seed, args.round, args.max_labels)
                for point in curve:
                    row = {"target": target, "method": method, "seed": seed, **point}
                    done.append({**row, "setup": setup})
                    with out.open("a") as f:
                        f.write(json.dumps({**row, "setup": setup}) + "\n")
                last = curve[-1]
                print(
                    f"{target} {method} seed {seed}: {100 * last['accuracy']:.2f}% at "
                    f"{last['labels']} labels ({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
    summarise([r for r in done if r.get("setup") == setup], args.max_labels)


if __name__ == "__main__":
    main()
