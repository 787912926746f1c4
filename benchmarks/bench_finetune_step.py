"""Fine-tuning step time: headstart's training loop vs a plain hand-written PyTorch loop.

Both train the same network (packaged EfficientNet-Lite0 + linear head, every layer
trainable, BN in train mode) on the same preprocessed batches for the same number of
steps: forward, label-smoothed cross-entropy, backward, AdamW step. The plain loop gets
its fastest setting here too (channels_last). headstart's side is ``Trainer.run`` with the
``finetune`` strategy (Accelerate, per-group LRs, scheduler, sampler, BN policy), timed per
epoch as the loop itself records it.

    python benchmarks/bench_finetune_step.py [--steps 20] [--batch 32] [--size 128]
Goal: ratio (headstart seconds/step / plain seconds/step) <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from headstart.config import FitConfig
from headstart.heads import Head, TransferModel
from headstart.strategies import build_strategy
from headstart.train import Trainer
from headstart.zoo import create_backbone

from common import report


def make_model(backbone_id: str, classes: int) -> TransferModel:
    backbone = create_backbone(backbone_id)
    return TransferModel(backbone, Head(backbone.feature_dim, classes))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--backbone", default="packaged:efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    n = args.steps * args.batch
    x = torch.randn(n, 3, args.size, args.size)
    y = torch.randint(0, 10, (n,))

    def plain() -> float:
        model = make_model(args.backbone, 10).train().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        batches = [
            (
                x[i : i + args.batch].contiguous(memory_format=torch.channels_last),
                y[i : i + args.batch],
            )
            for i in range(0, n, args.batch)
        ]
        xb, yb = batches[0]  # one warm-up step
        loss_fn(model(xb), yb).backward()
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        for xb, yb in batches:
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / len(batches)

    cfg = FitConfig(
        backbone=args.backbone,
        strategy="finetune",
        epochs=2,
        batch_size=args.batch,
        early_stopping=0,
        num_workers=0,
        device="cpu",
    )

    def headstart() -> float:
        model = make_model(args.backbone, 10)
        groups = model.backbone.groups()
        trainer = Trainer(
            model,
            groups,
            build_strategy(cfg, len(groups)),
            cfg,
            train_set=TensorDataset(x, y),
            val_set=None,
            features=None,
        )
        state = trainer.run()
        return state.history[-1]["seconds"] / args.steps  # epoch 2: warmed up

    t_plain, t_hs = [], []
    for _ in range(args.repeats):  # interleaved so noise hits both alike
        t_plain.append(plain())
        t_hs.append(headstart())
    p, h = statistics.median(t_plain), statistics.median(t_hs)
    report(
        "fine-tune step",
        {
            "backbone": args.backbone,
            "batch": args.batch,
            "size": args.size,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "plain PyTorch loop": f"{p * 1000:.1f} ms/step",
            "headstart Trainer": f"{h * 1000:.1f} ms/step",
        },
        "ratio headstart/plain",
        h / p,
        "<= 1.10",
    )


if __name__ == "__main__":
    main()
