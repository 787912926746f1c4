"""Accent adaptation with Whisper: packaged Whisper tiny.en zero-shot on espeak-ng
Spanish-accented English digit strings (held-out speakers, the corpus of
``benchmarks/accent_asr.py``), against the same model fine-tuned (decoder only, on cached
encoder states) with 5 and 20 utterances per digit-string slot (50 / 200 recordings), and
against today's CTC recogniser's figure (docs/results.md: WER 0.116 with 200). Forgetting:
WER on the 5 real LibriVox clips of Debian's pocketsphinx-testdata before and after.

    python benchmarks/whisper_accent.py --out runs/accent-asr --seeds 1
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from headstart import SpeechRecognizer
from headstart.tasks.whisper_asr import WhisperRecognizer

from common import accent_corpus

CTC_REFERENCE_WER = 0.116  # docs/results.md, CTC recogniser adapted with 200 utterances
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
DIGITS = "zero one two three four five six seven eight nine".split()


def librivox_csv(out: Path) -> Path:
    """The LibriVox clips as path,transcript (their transcription file's format:
    ``<s> words </s> (file id)``)."""
    rows = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if m:
            rows.append((str(LIBRIVOX / f"{m.group(2)}.wav"), m.group(1).strip()))
    path = out / "librivox.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "transcript"])
        w.writerows(rows)
    return path


def spelled(text: str) -> str:
    """Numerals written out digit by digit (Whisper writes "314" for "three one four")."""
    return re.sub(r"\d", lambda m: f" {DIGITS[int(m.group())]} ", text)


def wer_spelled(est, test: Path) -> float:
    """WER with the numerals of the transcripts spelled out (the encoder states come from
    the feature cache: this decodes again, it does not encode again)."""
    from torchmetrics.functional.text import word_error_rate

    from headstart.data.audio import open_transcribed
    from headstart.tasks.whisper_decode import normalise_text

    source = open_transcribed(str(test), None, est.config_)
    hyp = est.transcribe(source)
    assert source.transcripts is not None
    return float(
        word_error_rate(
            [normalise_text(spelled(h)) for h in hyp],
            [normalise_text(t) for t in source.transcripts],
        )
    )


def wise_eval(asr, zero, alpha: float, test: Path, real: Path) -> dict:
    """WiSE-FT (Wortsman et al. 2022): the decoder's weights mixed, ``alpha`` x fine-tuned +
    (1 - alpha) x source, evaluated on the accent test set and the real clips."""
    tuned = {k: v.clone() for k, v in asr.model_.head.state_dict().items()}
    source = zero.model_.head.state_dict()
    asr.model_.head.load_state_dict(
        {k: alpha * v + (1 - alpha) * source[k].to(v.dtype) for k, v in tuned.items()}
    )
    try:
        m, r = asr.evaluate(str(test)), asr.evaluate(str(real))
    finally:
        asr.model_.head.load_state_dict(tuned)
    return {"wise_alpha": alpha, "wer": m["wer"], "cer": m["cer"], "real_wer": r["wer"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="spanish")
    ap.add_argument("--out", default="runs/accent-asr")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sizes", default="5,20")
    ap.add_argument("--strategy", default="feature_extract")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--head-lr", type=float, default=3e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--feature-cache", default=None, help="keep encoder states on disk here")
    ap.add_argument(
        "--wise-mix",
        type=float,
        default=None,
        help="the fit's wise_mix (the fine-tuned weights' share; default: the Whisper "
        "recogniser's, 0.8 since issue 31's rerun; 1 = the fine-tuned decoder alone)",
    )
    ap.add_argument(
        "--wise",
        default="",
        help="also evaluate WiSE-FT mixes of the fit's result with the source: alphas (0..1, "
        "weight of the fit's decoder; use with --wise-mix 1 for mixes of the fine-tuned one)",
    )
    ap.add_argument(
        "--no-zero-shot", action="store_true", help="skip the zero-shot rows (LibriVox kept)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("headstart.train").setLevel(logging.INFO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = accent_corpus(out, "us", args.target, task="digits")
    test, real = corpus / "target-test.csv", librivox_csv(out)
    print(f"load {os.getloadavg()}; threads {args.threads}", flush=True)

    t0 = time.perf_counter()
    zero = WhisperRecognizer.pretrained("packaged:whisper-tiny.en")
    zero.config_ = zero.config_.replace(feature_cache=args.feature_cache)
    zs_real = zero.evaluate(str(real))
    if args.no_zero_shot:
        zs = {"wer": float("nan"), "cer": float("nan"), "examples": []}
        zs_spelled = float("nan")
    else:
        zs = zero.evaluate(str(test))
        zs_spelled = wer_spelled(zero, test)
    print(
        f"zero-shot whisper-tiny.en: accent WER {zs['wer']:.3f} (CER {zs['cer']:.3f}; "
        f"{zs_spelled:.3f} with numerals spelled out), LibriVox WER {zs_real['wer']:.3f} "
        f"({time.perf_counter() - t0:.0f}s)  e.g. {zs['examples'][:2]}",
        flush=True,
    )
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        train = corpus / ("target-train.csv" if size == 20 else f"target-train-{size}.csv")
        for seed in range(args.seeds):
            t = time.perf_counter()
            asr = SpeechRecognizer(
                "packaged:whisper-tiny.en",
                strategy=args.strategy,
                seed=seed,
                epochs=args.epochs,
                head_epochs=args.epochs,
                head_lr=args.head_lr,
                val_fraction=0.1,
                feature_cache=args.feature_cache,
                **({} if args.wise_mix is None else {"wise_mix": args.wise_mix}),
            ).fit(str(train))
            fit_s = time.perf_counter() - t
            m, r = asr.evaluate(str(test)), asr.evaluate(str(real))
            row = {
                "size": size,
                "seed": seed,
                "wer": m["wer"],
                "cer": m["cer"],
                "real_wer": r["wer"],
                "fit_seconds": fit_s,
                "eval_seconds": time.perf_counter() - t - fit_s,
            }
            rows.append(row)
            for alpha in [float(a) for a in args.wise.split(",") if a]:
                wise_row = wise_eval(asr, zero, alpha, test, real)
                rows.append({**row, **wise_row})
                print(
                    f"{size:>3}/slot seed {seed} WiSE-FT alpha {alpha:g}: accent WER "
                    f"{wise_row['wer']:.3f}; LibriVox WER {wise_row['real_wer']:.3f}",
                    flush=True,
                )
            print(
                f"{size:>3}/slot seed {seed}: accent WER {m['wer']:.3f} CER {m['cer']:.3f}; "
                f"LibriVox WER {r['wer']:.3f} (zero-shot {zs_real['wer']:.3f}); fit "
                f"{fit_s:.0f}s  e.g. {m['examples'][:2]}",
                flush=True,
            )
    mix = "default" if args.wise_mix is None else f"{args.wise_mix:g}"
    print(
        f"\nsummary (target {args.target}; strategy {args.strategy}; wise_mix {mix}; "
        "medians over seeds):"
    )
    print(f"  zero-shot            accent WER {zs['wer']:.3f} (spelled {zs_spelled:.3f})")
    for size in sorted({r["size"] for r in rows}):
        sel = [r for r in rows if r["size"] == size and "wise_alpha" not in r]
        wer = float(np.median([r["wer"] for r in sel]))
        real_wer = float(np.median([r["real_wer"] for r in sel]))
        print(
            f"  {size:>3}/slot fine-tuned  accent WER {wer:.3f}  ratio to zero-shot "
            f"{wer / max(zs['wer'], 1e-9):.2f} (bar <= 0.50; {wer / max(zs_spelled, 1e-9):.2f} "
            f"vs spelled)  vs CTC 0.116 at 200: {wer / CTC_REFERENCE_WER:.2f}x  LibriVox WER "
            f"{zs_real['wer']:.3f} -> {real_wer:.3f} ({real_wer - zs_real['wer']:+.3f}; bar "
            f"<= +0.05)  fit {np.median([r['fit_seconds'] for r in sel]):.0f}s"
        )
    print(f"load at the end {os.getloadavg()}")
    (out / f"whisper_{args.target}.json").write_text(
        json.dumps({"zero_shot": zs, "zero_shot_real": zs_real, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
