"""When not to transfer: the default fit against the best classic baseline and against the
same network trained from scratch, on the same training draw and test set (issue 28).

One ``fit --strategy auto`` per (target, seed) gives three figures at once: the network
(lp_ft), the classic baseline fitted on the same training part (images: small pixels / HOG
with logistic regression, k-NN or an RBF SVM chosen by 5-fold CV; text: TF-IDF + logistic
regression) and what ``auto`` kept by validation; a second fit trains the network from
random weights (the study's scratch settings). Targets as in ``low_data.py``:
``digits20``, ``fmnist10``, ``fmnist100``, ``spam8``, ``spam32``; and the speech accent task
of ``accent_transfer.py`` (``accent5``, ``accent20``: Spanish-accented command words, 5 or 20
recordings per word, 16 held-out speakers), where transfer is that benchmark's recipe (the
audio:cnn pretrained by headstart on US-accented speakers, fine-tuned; its baseline is the
log-mel statistics model) and scratch its scratch recipe.

    python benchmarks/baselines.py --targets digits20,fmnist10 --seeds 0,1,2 --out bl.jsonl
    python benchmarks/baselines.py --summary bl.jsonl

The summary prints, per target, the mean test accuracy of each model with a 95% interval
over seeds (t, n-1 degrees of freedom), the winner by test accuracy beyond that interval,
what the test-set verdict of ``evaluate`` said per seed (paired 95% interval), and what
``auto`` kept.
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
from low_data import TEXT_TARGETS, target_data, test_subset

ACCENT_TARGETS = ("accent5", "accent20")
ACCENT_DIR = Path("runs/accent")  # the corpus and the source model, built once (espeak-ng)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # t quantiles, 95% two-sided


def accent_fit(target: str, kind: str, seed: int, settings: dict):
    """(fitted classifier, test folder) of the accent task for one seed."""
    from headstart import AudioClassifier

    from accent_transfer import RECIPES, fit_eval
    from common import accent_corpus

    corpus = accent_corpus(ACCENT_DIR, "us", "spanish")
    source_run = ACCENT_DIR / "source-us"
    if not (source_run / "config.json").is_file():
        fit_eval(
            "scratch:audio:cnn",
            corpus / "source",
            corpus / "source-test",
            "pretrain",
            0,
            source_run,
        )
    train = corpus / ("target-train" if target == "accent20" else "target-train-5")
    if kind == "scratch":
        clf = AudioClassifier(
            "scratch:audio:cnn", seed=seed, baseline=False, **{**RECIPES["scratch"], **settings}
        )
    else:
        clf = AudioClassifier(str(source_run), seed=seed, **{**RECIPES["adapt"], **settings})
    return clf.fit(str(train)), str(corpus / "target-test")


def run_one(target: str, kind: str, seed: int, settings: dict, test_limit: int | None) -> dict:
    from headstart import ImageClassifier, TextClassifier
    from headstart.config import TASK_DEFAULTS
    from headstart.features import clear_memory_cache
    from headstart.study import SCRATCH_SETTINGS

    clear_memory_cache()
    if target in ACCENT_TARGETS:
        t0 = time.perf_counter()
        clf, test = accent_fit(target, kind, seed, settings)
        seconds = time.perf_counter() - t0
        m = clf.evaluate(test)
        return _row(target, kind, seed, settings, test_limit, seconds, clf, m)
    x, y, xt, yt = target_data(target, seed)
    xt, yt = test_subset(xt, yt, test_limit)
    text = target in TEXT_TARGETS
    cls = TextClassifier if text else ImageClassifier
    if kind == "scratch":
        backbone = TASK_DEFAULTS["text"]["backbone"] if text else "packaged:efficientnet_lite0"
        params = {**SCRATCH_SETTINGS, "backbone": f"scratch:{backbone}", "baseline": False}
    else:
        params = {"strategy": "auto"}
    t0 = time.perf_counter()
    clf = cls(**{**params, "seed": seed, **settings}).fit(x, y)
    seconds = time.perf_counter() - t0
    return _row(target, kind, seed, settings, test_limit, seconds, clf, clf.evaluate(xt, yt))


def _row(target, kind, seed, settings, test_limit, seconds, clf, m) -> dict:
    row = {
        "target": target,
        "kind": kind,
        "seed": seed,
        "seconds": round(seconds, 1),
        "n_test": m["n"],
        "settings": settings,
        "test_limit": test_limit,
    }
    if kind == "scratch":
        row["accuracy"] = m["accuracy"]
        return row
    network = m.get("transfer") or m
    row.update(
        {
            "transfer": network["accuracy"],
            "baseline": m["baseline"]["accuracy"],
            "baseline_name": m["baseline"]["name"],
            "auto": m["accuracy"],
            "kept": clf.metrics_.get("winner", {}).get("kept"),
            "why": clf.metrics_.get("winner", {}).get("why"),
            "val": {
                k: clf.metrics_.get("winner", {}).get(k) for k in ("transfer", "baseline", "n")
            },
            "verdict": {
                k: m["verdict"][k] for k in ("winner", "diff_points", "low_points", "high_points")
            },
            "baseline_cv": clf.metrics_.get("baseline_fit", {}).get("choice", {}).get("cv"),
        }
    )
    return row


def _mean_ci(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float(np.mean(values)), float("nan")
    sd = statistics.stdev(values)
    return float(np.mean(values)), T95.get(len(values) - 1, 2.0) * sd / len(values) ** 0.5


def summarise(rows: list[dict]) -> None:
    by = defaultdict(list)
    for r in rows:
        by[(r["target"], r["kind"])].append(r)
    print(
        f"{'target':<10} {'seeds':>5} {'transfer':>15} {'baseline':>15} {'scratch':>15} "
        f"{'auto':>8}  winner (test, beyond the seeds' 95% interval); per-seed verdicts; "
        "auto kept; the baseline"
    )
    for target in dict.fromkeys(r["target"] for r in rows):
        tr = sorted(by.get((target, "transfer"), []), key=lambda r: r["seed"])
        sc = sorted(by.get((target, "scratch"), []), key=lambda r: r["seed"])
        if not tr:
            continue
        cells, means = [], {}
        for name, vals in (
            ("transfer", [r["transfer"] for r in tr]),
            ("baseline", [r["baseline"] for r in tr]),
            ("scratch", [r["accuracy"] for r in sc]),
        ):
            if not vals:
                cells.append(f"{'-':>15}")
                continue
            mean, ci = _mean_ci(vals)
            means[name] = (mean, ci)
            cells.append(f"{100 * mean:>7.2f} +-{100 * ci:>4.1f}")
        auto = 100 * float(np.mean([r["auto"] for r in tr]))
        (best, (bm, bci)), (second, (sm, sci)) = sorted(means.items(), key=lambda kv: -kv[1][0])[:2]
        winner = best if bm - bci > sm + sci else f"tie ({best} ahead)"
        verdicts = " ".join(
            f"{r['verdict']['winner']}[{r['verdict']['low_points']:+.1f},"
            f"{r['verdict']['high_points']:+.1f}]"
            for r in tr
        )
        kept = ",".join(str(r["kept"]) for r in tr)
        names = sorted({r["baseline_name"] for r in tr})
        print(
            f"{target:<10} {len(tr):>5} {' '.join(cells)} {auto:>7.2f}%  {winner}; "
            f"{verdicts}; auto kept {kept}; {' | '.join(names)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="digits20,fmnist10,fmnist100,spam8,spam32")
    parser.add_argument("--kinds", default="transfer,scratch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="baselines.jsonl", help="append JSON lines here")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig settings for every fit, e.g. device=cuda",
    )
    parser.add_argument("--test-limit", type=int, default=None, metavar="N")
    parser.add_argument("--summary", nargs="*", default=None, metavar="JSONL")
    args = parser.parse_args()
    if args.summary is not None:
        summarise(read_rows(*args.summary))
        return
    logging.basicConfig(level=logging.WARNING)
    settings = parse_settings(args.set)
    out = Path(args.out)
    done = read_rows(out)
    have = {
        (r["target"], r["kind"], r["seed"])
        for r in done
        if r.get("settings", {}) == settings and r.get("test_limit") == args.test_limit
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        for target in args.targets.split(","):
            for kind in args.kinds.split(","):
                if (target, kind, seed) in have:
                    continue
                row = run_one(target, kind, seed, settings, args.test_limit)
                append_row(out, row)
                done.append(row)
    summarise([r for r in done if r.get("settings", {}) == settings])


if __name__ == "__main__":
    main()
