"""Accent adaptation for speech recognition: a CTC recogniser of spoken digit strings,
pretrained on one accent group, fine-tuned with 5 or 20 utterances per digit-string slot
(50 / 200 utterances) of another accent; against the same network trained from scratch on
the same target data and against the source recogniser used as it is. Character and word
error rates on held-out target-accent speakers (voice timbres in no training split).

    python benchmarks/accent_asr.py --target spanish --out runs/accent-asr
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from headstart import SpeechRecognizer

from common import accent_corpus

RECIPES = {
    "pretrain": dict(
        strategy="finetune",
        epochs=20,
        lr=3e-3,
        head_lr=3e-3,
        lr_decay=1.0,
        bn="train",
        batch_size=32,
        early_stopping=0,
        val_fraction=0.1,
    ),
    # the source's CTC head is kept (same alphabet); scratch gets the same budget and rates
    "adapt": dict(
        strategy="finetune",
        keep_head=True,
        epochs=40,
        lr=3e-3,
        head_lr=3e-3,
        lr_decay=1.0,
        batch_size=16,
        val_fraction=0.2,
        early_stopping=0,
    ),
    "scratch": dict(
        strategy="finetune",
        epochs=40,
        lr=3e-3,
        head_lr=3e-3,
        lr_decay=1.0,
        bn="train",
        batch_size=16,
        val_fraction=0.2,
        early_stopping=0,
    ),
}


def fit_eval(
    backbone: str, train: Path, test: Path, recipe: str, seed: int, run_dir: Path | None = None
) -> dict:
    t0 = time.perf_counter()
    asr = SpeechRecognizer(backbone, seed=seed, run_dir=run_dir, **RECIPES[recipe])
    asr.fit(str(train))
    m = asr.evaluate(str(test))
    return {
        **{k: m[k] for k in ("cer", "wer", "sentence_accuracy")},
        "fit_seconds": time.perf_counter() - t0,
        "examples": m["examples"][:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="us")
    ap.add_argument("--target", default="spanish")
    ap.add_argument("--out", default="runs/accent-asr")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sizes", default="5,20")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("headstart.train").setLevel(logging.INFO)  # one line per epoch
    out = Path(args.out)
    corpus = accent_corpus(out, args.source, args.target, task="digits")
    source_run = out / f"source-{args.source}"
    if not (source_run / "config.json").is_file():
        r = fit_eval(
            "scratch:audio:cnn",
            corpus / "source.csv",
            corpus / "source-test.csv",
            "pretrain",
            0,
            source_run,
        )
        print(
            f"pretrained on {args.source}: source-test CER {r['cer']:.3f} WER {r['wer']:.3f}"
            f" ({r['fit_seconds']:.0f}s)",
            flush=True,
        )
    src = SpeechRecognizer.load(source_run)
    test = corpus / "target-test.csv"
    m = src.evaluate(str(test))
    rows = [
        {
            "size": "-",
            "what": "source model, no adaptation",
            "seed": 0,
            **{k: m[k] for k in ("cer", "wer", "sentence_accuracy")},
            "fit_seconds": 0.0,
        }
    ]
    own = src.evaluate(str(corpus / "source-test.csv"))
    print(
        f"source recogniser on the {args.target} test speakers: CER {m['cer']:.3f} WER "
        f"{m['wer']:.3f}; on its own accent's held-out speakers: CER {own['cer']:.3f} WER "
        f"{own['wer']:.3f}",
        flush=True,
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        train = corpus / ("target-train.csv" if size == 20 else f"target-train-{size}.csv")
        for backbone, recipe, what in (
            (str(source_run), "adapt", "transfer: fine-tuned"),
            ("scratch:audio:cnn", "scratch", "scratch"),
        ):
            for seed in range(args.seeds):
                r = fit_eval(backbone, train, test, recipe, seed)
                rows.append({"size": size, "what": what, "seed": seed, **r})
                print(
                    f"{size:>3}/slot  {what:<22} seed {seed}: CER {r['cer']:.3f} WER "
                    f"{r['wer']:.3f} sentences {r['sentence_accuracy']:.3f} "
                    f"({r['fit_seconds']:.0f}s)  e.g. {r['examples'][0]}",
                    flush=True,
                )
    print(f"\nsummary (target {args.target}, source {args.source}; mean over seeds):")
    keys = sorted({(str(r["size"]), r["what"]) for r in rows})
    for size, what in keys:
        sel = [r for r in rows if str(r["size"]) == size and r["what"] == what]
        print(
            f"  {size:>3}/slot  {what:<28} CER {np.mean([r['cer'] for r in sel]):.3f}  WER "
            f"{np.mean([r['wer'] for r in sel]):.3f} (+-{np.std([r['wer'] for r in sel]):.3f}"
            f", n={len(sel)})  {np.mean([r['fit_seconds'] for r in sel]):.0f}s"
        )
    (out / f"asr_{args.target}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
