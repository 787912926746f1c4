"""The shared training loop against a plain PyTorch loop: the same initial weights, data
order and optimizer give the same weights after every step of a fine-tuning stage.

What the plain loop writes out by hand is what the Trainer promises: AdamW with one rate per
layer group (``lr * lr_decay ** distance from the last group``, the head at ``head_lr``), no
weight decay on biases and norm weights, a cosine schedule after a linear warm-up, batches in
the order of :class:`headstart.train.EpochSampler`, BatchNorm in training mode."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from headstart.config import FitConfig
from headstart.heads import Head, HeadSpec, TransferModel
from headstart.strategies import build_strategy
from headstart.train import EpochSampler, Trainer
from headstart.zoo import create_backbone

from conftest import make_arrays

BATCH, EPOCHS, WARMUP = 8, 3, 4


def _plain_param_groups(model: TransferModel, cfg: FitConfig) -> list[dict]:
    groups = model.backbone.groups()
    out = []

    def add(params, lr):
        out.append(
            {
                "params": [p for p in params if p.ndim > 1],
                "lr": lr,
                "weight_decay": cfg.weight_decay,
            }
        )
        out.append({"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0})

    for i, group in enumerate(groups):
        add(list(group.parameters()), cfg.lr * cfg.lr_decay ** (len(groups) - 1 - i))
    add(list(model.head.parameters()), cfg.head_lr)
    return [g for g in out if g["params"]]


def _plain_fit(
    model: TransferModel,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FitConfig,
) -> list[dict[str, torch.Tensor]]:
    """Fine-tune every weight; return the state after each epoch."""
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(_plain_param_groups(model, cfg), lr=cfg.lr)
    steps = len(x) // BATCH  # the loop drops the last, short batch
    total = EPOCHS * steps

    def factor(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        return 0.5 * (1 + math.cos(math.pi * min((step - WARMUP) / (total - WARMUP), 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    sampler = EpochSampler(len(x), cfg.seed)
    states = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)  # stage 0: the loop's epoch key is stage * 100000 + epoch
        order = list(sampler)
        model.train()
        for b in range(steps):
            idx = torch.tensor(order[b * BATCH : (b + 1) * BATCH])
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


@pytest.mark.parametrize("lr_decay", [1.0, 0.5])
def test_shared_loop_matches_a_plain_pytorch_loop(lr_decay):
    x, names = make_arrays(n=44, n_classes=3, seed=4)  # 5 full batches and a short one
    y = np.unique(names, return_inverse=True)[1]
    # contiguous NCHW: both loops then run the same convolution kernels
    x = (torch.as_tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0).contiguous()
    y = torch.as_tensor(y, dtype=torch.long)
    cfg = FitConfig(
        backbone="tiny:cnn",
        strategy="finetune",
        epochs=EPOCHS,
        min_steps=0,
        batch_size=BATCH,
        lr=3e-3,
        head_lr=1e-2,
        lr_decay=lr_decay,
        weight_decay=0.05,
        schedule="cosine",
        warmup=0.0,
        warmup_steps=WARMUP,
        label_smoothing=0.0,
        bn="train",
        early_stopping=0,
        num_workers=0,
        device="cpu",
        seed=7,
        wise_ft=False,
        precision="no",
        channels_last=False,
    )
    torch.manual_seed(0)
    backbone = create_backbone("tiny:cnn", pretrained=True)
    head = Head(backbone.feature_dim, 3, HeadSpec())
    nn.init.normal_(head.layers[-1].weight, std=0.1)  # a zero head gives the body no gradient
    model = TransferModel(backbone, head)
    plain = copy.deepcopy(model)

    epochs_seen = []
    trainer = Trainer(
        model,
        backbone.groups(),
        build_strategy(cfg, len(backbone.groups())),
        cfg,
        train_set=TensorDataset(x, y),
        val_set=None,
        features=None,
        callbacks=[
            lambda row: epochs_seen.append(
                {k: v.detach().clone() for k, v in model.state_dict().items()}
            )
        ],
    )
    trainer.run()
    expected = _plain_fit(plain, x, y, cfg)

    assert len(epochs_seen) == EPOCHS
    for epoch, (got, want) in enumerate(zip(epochs_seen, expected), start=1):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(
                got[name],
                want[name],
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, n=name, e=epoch: f"epoch {e}, {n}: {m}",
            )
    start = create_backbone("tiny:cnn", pretrained=True).state_dict()
    assert any(
        not torch.equal(start[k], expected[-1]["backbone." + k])
        for k in start
        if start[k].is_floating_point()
    ), "training did not move the backbone"
