"""What a run directory costs a fit: checkpoints of only what training changes.

A fit with ``run_dir`` writes, at each epoch, ``checkpoints/last/`` (resumable) and, when the
epoch is the best so far, ``checkpoints/best.safetensors``. They hold the tensors training can
change (the head, trained layer groups or LoRA adapters, BatchNorm statistics); frozen weights
are the backbone's own. Measured on real data and weights: packaged MiniLM, ``feature_extract``
with ``--head-epochs`` head epochs (every epoch on cached features, so the checkpoints are
most of what an epoch costs) on ``--per-class`` SpamAssassin emails per class.

Three fits, alternated ``--repeats`` times after a warm-up that caches the features, medians:
  reference  no run directory (the best epoch's weights kept in memory)
  headstart  a run directory (checkpoints, history, TensorBoard, the saved model)
  whole      a run directory whose checkpoints hold the whole model (what headstart wrote
             before: 90 MB twice per epoch)

    python benchmarks/bench_checkpoints.py [--head-epochs 40] [--per-class 32]
Goal: headstart / reference <= 2.0 (the saved model and its config are a fixed cost).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from headstart import TextClassifier
from headstart.artifacts import state_dict_tensors
from headstart.datasets import per_class_subset, spam_assassin
from headstart.train import Trainer

from common import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="packaged:minilm-l6")
    ap.add_argument("--head-epochs", type=int, default=40)
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    texts, labels, _ = spam_assassin()
    keep = per_class_subset(labels, args.per_class, 0)
    X, y = [texts[i] for i in keep], [labels[i] for i in keep]
    settings = dict(
        strategy="feature_extract",
        head_epochs=args.head_epochs,
        early_stopping=0,
        val_fraction=0.2,
        num_workers=0,
        seed=0,
    )
    work = Path(tempfile.mkdtemp(prefix="headstart-ckpt-"))
    partial = Trainer._changeable_tensors

    def fit(kind: str) -> float:
        run_dir = None if kind == "reference" else work / kind
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        if kind == "whole":
            Trainer._changeable_tensors = lambda self: state_dict_tensors(self.model)
        try:
            t0 = time.perf_counter()
            TextClassifier(args.backbone, run_dir=run_dir, **settings).fit(X, y)
            return time.perf_counter() - t0
        finally:
            Trainer._changeable_tensors = partial

    fit("reference")  # warm-up: loads the weights, caches the features in memory
    kinds = ("reference", "headstart", "whole")
    times = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            times[kind].append(fit(kind))
    med = {k: statistics.median(v) for k, v in times.items()}

    def size(path: Path) -> str:
        n = path.stat().st_size
        return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"

    run = work / "headstart"
    report(
        f"run-directory cost: {args.backbone} feature_extract, {args.head_epochs} head "
        f"epochs, {len(X)} SpamAssassin emails",
        {
            "reference (no run directory)": f"{med['reference']:.2f} s",
            "headstart (run directory)": f"{med['headstart']:.2f} s",
            "whole-model checkpoints": f"{med['whole']:.2f} s "
            f"({med['whole'] / med['headstart']:.1f}x headstart)",
            "model.safetensors": size(run / "model.safetensors"),
            "checkpoints/best.safetensors": size(run / "checkpoints" / "best.safetensors"),
            "the whole model's best.safetensors": size(
                work / "whole" / "checkpoints" / "best.safetensors"
            ),
        },
        "headstart / reference",
        med["headstart"] / med["reference"],
        "<= 2.0",
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
