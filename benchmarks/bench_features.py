"""Feature extraction throughput: headstart's pipeline vs the raw backbone forward.

headstart side: PNG files on disk -> decode -> preprocessing derived from the weights'
config -> frozen backbone -> pooled features (``headstart.features.compute_features``,
what ``feature_extract``, ``lp_ft`` and ``predict`` run).
Reference: the same backbone's forward on tensors already preprocessed in memory, in its
fastest setting here (channels_last, inference_mode), same batch size and resolution. Also
printed: that forward with BatchNorm folded into the convolutions (what headstart's frozen
passes run, ``features.fold_batchnorm``), to show what the fold is worth by itself, and a
90/10 train/validation split read in one pass (what ``fit`` and ``rank`` run) against one
pass per part (what they ran before).

    python benchmarks/bench_features.py [--n 1000] [--size 128] [--batch 128]
Goal: ratio (headstart images/s / reference images/s) >= 0.85.
"""

from __future__ import annotations

import argparse

import torch

from headstart.data import ImageDataset, ImageTransform, from_folder
from headstart.features import compute_features, concat_datasets, fold_batchnorm
from headstart.train import default_workers
from headstart.zoo import create_backbone

from common import fashion_mnist_pngs, median_time, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backbone", default="packaged:efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    folder, _ = fashion_mnist_pngs(args.n)
    backbone = create_backbone(args.backbone).eval()
    pre = backbone.preprocess
    source = from_folder(folder)
    transform = ImageTransform(args.size, pre)
    dataset = ImageDataset(source, transform)
    workers = default_workers()

    def headstart_pass():
        compute_features(backbone, dataset, args.batch, "cpu", True, workers)

    # Reference: preprocessed tensors in memory, channels_last model and input.
    batches = [
        torch.stack(
            [dataset[i][0] for i in range(s, min(s + args.batch, len(dataset)))]
        ).contiguous(memory_format=torch.channels_last)
        for s in range(0, len(dataset), args.batch)
    ]
    ref_model = create_backbone(args.backbone).eval().to(memory_format=torch.channels_last)

    folded = fold_batchnorm(ref_model) or ref_model
    folded.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def raw_pass(model=ref_model):
        for b in batches:
            model(b)

    # interleave the three so machine noise hits all alike
    t_raw, t_fold, t_hs = [], [], []
    for _ in range(args.repeats):
        t_raw.append(median_time(raw_pass, repeats=1, warmup=0 if t_raw else 1))
        t_fold.append(median_time(lambda: raw_pass(folded), repeats=1, warmup=0 if t_fold else 1))
        t_hs.append(median_time(headstart_pass, repeats=1, warmup=0 if t_hs else 1))
    raw, fold, hs = (len(dataset) / sorted(t)[len(t) // 2] for t in (t_raw, t_fold, t_hs))

    cut = len(source) * 9 // 10
    parts = [
        ImageDataset(source.subset(range(cut)), transform),
        ImageDataset(source.subset(range(cut, len(source))), transform),
    ]
    t_two, t_one = [], []
    for _ in range(args.repeats):
        t_two.append(
            median_time(
                lambda: [
                    compute_features(backbone, p, args.batch, "cpu", True, workers) for p in parts
                ],
                repeats=1,
                warmup=0,
            )
        )
        t_one.append(
            median_time(
                lambda: compute_features(
                    backbone, concat_datasets(parts), args.batch, "cpu", True, workers
                ),
                repeats=1,
                warmup=0,
            )
        )
    two, one = (sorted(t)[len(t) // 2] for t in (t_two, t_one))
    report(
        "feature extraction",
        {
            "backbone": args.backbone,
            "images": len(dataset),
            "size": args.size,
            "batch": args.batch,
            "threads": torch.get_num_threads(),
            "loader workers": workers,
            "reference (raw forward, channels_last, preloaded)": f"{raw:.1f} images/s",
            "raw forward with BatchNorm folded": f"{fold:.1f} images/s ({fold / raw:.2f}x)",
            "headstart (decode + preprocess + forward)": f"{hs:.1f} images/s",
            "90/10 split: one pass per part / one pass over both": f"{two:.2f} s / {one:.2f} s "
            f"({two / one:.2f}x)",
        },
        "ratio headstart/reference",
        hs / raw,
        ">= 0.85",
    )


if __name__ == "__main__":
    main()
