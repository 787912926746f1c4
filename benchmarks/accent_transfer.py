"""Accent adaptation: does a model pretrained on one accent group adapt to another with 5
or 20 recordings per word, better than training from scratch and better than using the
source model as it is? Also: packaged encoders trained on real recordings (CREPE, GE2E),
frozen and fine-tuned, on the same target data.

    python benchmarks/accent_transfer.py --target spanish --out runs/accent

The corpus is synthesised with espeak-ng (headstart.data.speech); the source model is
``audio:cnn`` pretrained by headstart on the source accent group. Every fit uses one
recipe per strategy (stated below), seed 0 unless --seeds says more; test accuracy is on
held-out speakers of the target accent whose voice timbres appear in no training split.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from headstart import AudioClassifier

from common import accent_corpus

# One recipe per family, the same for transfer and scratch (only the weights differ).
RECIPES = {
    "pretrain": dict(
        strategy="finetune", epochs=12, lr=3e-3, lr_decay=1.0, batch_size=32, early_stopping=0
    ),
    "adapt": dict(
        strategy="finetune",
        epochs=40,
        lr=1e-3,
        head_lr=3e-3,
        lr_decay=1.0,
        batch_size=16,
        val_fraction=0.2,
        early_stopping=0,
        augment="light",
    ),
    "scratch": dict(
        strategy="finetune",
        epochs=40,
        lr=3e-3,
        head_lr=3e-3,
        lr_decay=1.0,
        batch_size=16,
        val_fraction=0.2,
        early_stopping=0,
        augment="light",
    ),
    "frozen": dict(strategy="feature_extract", head_epochs=200, val_fraction=0.2, head_lr=3e-3),
    "encoder_ft": dict(
        strategy="lp_ft",
        epochs=10,
        head_epochs=200,
        lr=3e-4,
        head_lr=3e-3,
        lr_decay=0.8,
        batch_size=16,
        val_fraction=0.2,
        early_stopping=0,
    ),
}


def fit_eval(
    backbone: str, train: Path, test: Path, recipe: str, seed: int, run_dir: Path | None = None
) -> dict:
    t0 = time.perf_counter()
    clf = AudioClassifier(backbone, seed=seed, run_dir=run_dir, **RECIPES[recipe])
    clf.fit(str(train))
    acc = clf.evaluate(str(test))["accuracy"]
    return {
        "backbone": backbone,
        "recipe": recipe,
        "seed": seed,
        "test_accuracy": acc,
        "fit_seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="us")
    ap.add_argument("--target", default="spanish")
    ap.add_argument("--out", default="runs/accent")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sizes", default="5,20", help="recordings per word of the target")
    ap.add_argument(
        "--encoders",
        default="packaged:crepe-tiny,packaged:ge2e",
        help="packaged encoders compared frozen and fine-tuned ('' = none)",
    )
    ap.add_argument(
        "--encoder-sizes",
        default="5",
        help="target sizes the encoders run at "
        "(CREPE fine-tuning costs ~10 s an epoch per 50 recordings on 2 cores)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    corpus = accent_corpus(out, args.source, args.target)
    source_run = out / f"source-{args.source}"
    if not (source_run / "config.json").is_file():
        r = fit_eval(
            "scratch:audio:cnn",
            corpus / "source",
            corpus / "source-test",
            "pretrain",
            0,
            source_run,
        )
        print(
            f"pretrained audio:cnn on {args.source}: source-test accuracy "
            f"{r['test_accuracy']:.3f} ({r['fit_seconds']:.0f}s)"
        )
    src = AudioClassifier.load(source_run)
    test = corpus / "target-test"
    rows = [
        {
            "size": "-",
            "what": "source model, no adaptation",
            "seed": 0,
            "test_accuracy": src.evaluate(str(test))["accuracy"],
            "fit_seconds": 0.0,
        }
    ]
    print(
        f"source model on the {args.target} test speakers: {rows[0]['test_accuracy']:.3f}; "
        f"on its own accent's held-out speakers: "
        f"{src.evaluate(str(corpus / 'source-test'))['accuracy']:.3f}"
    )
    encoders = [e for e in args.encoders.split(",") if e]
    for size in [int(s) for s in args.sizes.split(",")]:
        train = corpus / ("target-train" if size == 20 else f"target-train-{size}")
        plan = [
            (str(source_run), "adapt", "transfer: pretrained audio:cnn, fine-tuned"),
            ("scratch:audio:cnn", "scratch", "scratch: audio:cnn from random init"),
        ]
        if str(size) in args.encoder_sizes.split(","):
            for enc in encoders:
                plan += [
                    (enc, "frozen", f"{enc} frozen + linear head"),
                    (enc, "encoder_ft", f"{enc} lp_ft"),
                ]
        for backbone, recipe, what in plan:
            seeds = (
                range(args.seeds)
                if backbone.endswith("audio:cnn") or backbone == str(source_run)
                else range(1)
            )
            for seed in seeds:
                r = fit_eval(backbone, train, test, recipe, seed)
                rows.append(
                    {
                        "size": size,
                        "what": what,
                        "seed": seed,
                        "test_accuracy": r["test_accuracy"],
                        "fit_seconds": r["fit_seconds"],
                    }
                )
                print(
                    f"{size:>3}/word  {what:<45} seed {seed}: test accuracy "
                    f"{r['test_accuracy']:.3f}  ({r['fit_seconds']:.0f}s)",
                    flush=True,
                )
    print(f"\nsummary (target {args.target}, source {args.source}; mean over seeds):")
    keys = sorted({(r["size"], r["what"]) for r in rows}, key=lambda k: (str(k[0]), k[1]))
    for size, what in keys:
        accs = [r["test_accuracy"] for r in rows if r["size"] == size and r["what"] == what]
        secs = [r["fit_seconds"] for r in rows if r["size"] == size and r["what"] == what]
        print(
            f"  {str(size):>3}/word  {what:<45} {np.mean(accs):.3f} "
            f"(+-{np.std(accs):.3f}, n={len(accs)})  {np.mean(secs):.0f}s"
        )
    (out / f"accent_{args.target}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
