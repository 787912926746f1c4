"""Strategies on tiny:cnn: trainable parameter counts computed by hand, discriminative
learning rates, weight decay only on weight matrices / kernels, stage logs.

tiny:cnn groups: stem 9*3*8+2*8 = 232, block1 9*8*16+2*16 = 1184, block2 9*16*32+2*32 = 4672
(6088 in all); linear head on 2 classes: 32*2+2 = 66.
"""

from __future__ import annotations

import logging

import pytest
import torch

from headstart import ImageClassifier
from headstart.config import FitConfig
from headstart.heads import Head, HeadSpec
from headstart.strategies import ALL, build_strategy, configure_stage, set_bn_mode
from headstart.zoo import create_backbone

from conftest import FAST

STEM, BLOCK1, BLOCK2, HEAD = 232, 1184, 4672, 66
BACKBONE = STEM + BLOCK1 + BLOCK2
TOTAL = BACKBONE + HEAD

# strategy kwargs -> trainable params of each stage
EXPECTED = {
    "feature_extract": ({"strategy": "feature_extract"}, [HEAD]),
    "finetune": ({"strategy": "finetune"}, [TOTAL]),
    "partial1": ({"strategy": "partial", "partial_groups": 1}, [BLOCK2 + HEAD]),
    "partial2": ({"strategy": "partial", "partial_groups": 2}, [BLOCK1 + BLOCK2 + HEAD]),
    "partial3": ({"strategy": "partial", "partial_groups": 3}, [TOTAL]),
    "gradual": ({"strategy": "gradual"}, [HEAD, BLOCK2 + HEAD, BLOCK1 + BLOCK2 + HEAD, TOTAL]),
    "lp_ft": ({"strategy": "lp_ft"}, [HEAD, TOTAL]),
}


def parts(num_classes: int = 2, hidden=()):
    backbone = create_backbone("tiny:cnn")
    head = Head(backbone.feature_dim, num_classes, HeadSpec(tuple(hidden)))
    return backbone, head, backbone.groups()


def test_tiny_cnn_group_sizes_match_the_hand_count():
    backbone, head, groups = parts()
    assert [g.name for g in groups] == ["stem", "block1", "block2"]
    assert [g.num_params() for g in groups] == [STEM, BLOCK1, BLOCK2]
    assert sum(p.numel() for p in backbone.parameters()) == BACKBONE
    assert sum(p.numel() for p in head.parameters()) == HEAD
    assert backbone.feature_dim == 32


@pytest.mark.parametrize("key", list(EXPECTED))
def test_configure_stage_trainable_counts(key):
    kwargs, expected = EXPECTED[key]
    cfg = FitConfig(backbone="tiny:cnn", **kwargs)
    backbone, head, groups = parts()
    strategy = build_strategy(cfg, len(groups))
    assert len(strategy.stages) == len(expected)
    for stage, want in zip(strategy.stages, expected):
        param_groups, summary = configure_stage(backbone, head, groups, stage, cfg.weight_decay)
        requires_grad = sum(p.numel() for p in backbone.parameters() if p.requires_grad) + sum(
            p.numel() for p in head.parameters() if p.requires_grad
        )
        in_optimizer = sum(p.numel() for g in param_groups for p in g["params"])
        assert summary["trainable_params"] == want, stage.name
        assert requires_grad == want, stage.name
        assert in_optimizer == want, stage.name
        assert summary["total_params"] == TOTAL
        # no parameter is handed to the optimizer twice
        ids = [id(p) for g in param_groups for p in g["params"]]
        assert len(ids) == len(set(ids))


def test_stage_shapes_of_each_strategy():
    n = 3
    cfg = FitConfig(backbone="tiny:cnn", epochs=5, head_epochs=7, gradual_epochs=2)
    fe = build_strategy(cfg.replace(strategy="feature_extract"), n)
    assert [(s.name, s.train_groups, s.epochs) for s in fe.stages] == [("linear_probe", 0, 7)]
    assert fe.stages[0].head_only
    ft = build_strategy(cfg.replace(strategy="finetune"), n)
    assert [(s.train_groups, s.epochs, s.bn) for s in ft.stages] == [(ALL, 5, "train")]
    gr = build_strategy(cfg.replace(strategy="gradual"), n)
    assert [(s.train_groups, s.epochs) for s in gr.stages] == [(0, 7), (1, 2), (2, 2), (3, 2)]
    lp = build_strategy(cfg.replace(strategy="lp_ft"), n)
    assert [(s.train_groups, s.epochs, s.bn) for s in lp.stages] == [
        (0, 7, "frozen"),
        (ALL, 5, "frozen"),
    ]
    # an explicit bn setting overrides every stage's default
    lp_train = build_strategy(cfg.replace(strategy="lp_ft", bn="train"), n)
    assert lp_train.stages[1].bn == "train"
    assert "linear_probe" in lp.describe() and "BN statistics frozen" in lp.describe()


@pytest.mark.parametrize("groups", [0, 4, -1])
def test_partial_groups_out_of_range_raises(groups):
    cfg = FitConfig(backbone="tiny:cnn", strategy="partial", partial_groups=groups)
    with pytest.raises(ValueError, match="partial_groups"):
        build_strategy(cfg, 3)


def test_invalid_strategy_name_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="strategy"):
        FitConfig(strategy="everything")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"lr": -1.0}, "lr must be > 0, got -1.0"),
        ({"head_lr": 0.0}, "head_lr must be > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"image_size": 0}, "image_size must be at least 8 pixels"),
    ],
)
def test_out_of_range_settings_are_named_by_the_config(bad, message):
    """Before a model is built: not torch's "Invalid learning rate" from the optimizer, and
    not a silent fallback to the backbone's image size for 0."""
    with pytest.raises(ValueError, match=message):
        FitConfig(**bad)


@pytest.mark.parametrize("strategy", ["finetune", "partial2", "lp_ft"])
def test_discriminative_learning_rates(strategy):
    kwargs, _ = EXPECTED[strategy]
    cfg = FitConfig(backbone="tiny:cnn", lr=1e-3, head_lr=5e-2, lr_decay=0.5, **kwargs)
    backbone, head, groups = parts()
    stage = build_strategy(cfg, 3).stages[-1]
    param_groups, _ = configure_stage(backbone, head, groups, stage, cfg.weight_decay)
    n = len(groups)
    lr_of = {}
    for g in param_groups:
        lr_of.setdefault(g["name"], []).append(g["lr"])
    assert all(len(set(v)) == 1 for v in lr_of.values())  # decay / no-decay halves agree
    lr_of = {k: v[0] for k, v in lr_of.items()}
    for i, group in enumerate(groups):
        if i in stage.trainable_indices(n):
            assert lr_of[group.name] == pytest.approx(1e-3 * 0.5 ** (n - 1 - i))
        else:
            assert group.name not in lr_of
    # LP-FT's fine-tuning stage trains the head at the backbone's rate, the others at head_lr
    assert lr_of["head"] == pytest.approx(1e-3 if strategy == "lp_ft" else 5e-2)
    if strategy == "finetune":
        assert lr_of["stem"] == pytest.approx(2.5e-4)
        assert lr_of["block1"] == pytest.approx(5e-4)
        assert lr_of["block2"] == pytest.approx(1e-3)


def test_biases_and_norms_get_no_weight_decay():
    cfg = FitConfig(backbone="tiny:cnn", strategy="finetune", weight_decay=0.07)
    backbone, head, groups = parts()
    stage = build_strategy(cfg, 3).stages[0]
    param_groups, _ = configure_stage(backbone, head, groups, stage, cfg.weight_decay)
    decay_of = {id(p): g["weight_decay"] for g in param_groups for p in g["params"]}
    norm_params = {
        id(p)
        for m in backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert len(norm_params) == 6  # weight + bias of 3 BatchNorms
    for name, p in list(backbone.named_parameters()) + list(head.named_parameters()):
        want = 0.0 if (id(p) in norm_params or name.endswith("bias")) else 0.07
        assert decay_of[id(p)] == want, name
    # conv kernels and the head's weight matrix do decay
    assert decay_of[id(head.layers[-1].weight)] == 0.07
    assert decay_of[id(backbone.stem[0].weight)] == 0.07


def test_set_bn_mode_puts_frozen_groups_bn_in_eval():
    cfg = FitConfig(backbone="tiny:cnn", strategy="partial", partial_groups=1, bn="train")
    backbone, head, groups = parts()
    stage = build_strategy(cfg, 3).stages[0]
    backbone.train()
    set_bn_mode(backbone, groups, stage)
    assert not backbone.stem[1].training and not backbone.block1[1].training
    assert backbone.block2[1].training
    frozen = build_strategy(cfg.replace(bn="frozen"), 3).stages[0]
    backbone.train()
    set_bn_mode(backbone, groups, frozen)
    assert not any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("key", list(EXPECTED))
def test_fit_reports_stage_counts(key, arrays, caplog):
    kwargs, expected = EXPECTED[key]
    caplog.set_level(logging.INFO, logger="headstart")
    clf = ImageClassifier(
        "tiny:cnn", **{**FAST, "epochs": 1, "head_epochs": 1, "val_fraction": 0.0}, **kwargs
    )
    assert clf.fit(*arrays) is clf
    assert [s["trainable_params"] for s in clf.stages_] == expected
    assert all(s["total_params"] == TOTAL for s in clf.stages_)
    stage_lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "headstart.strategies" and r.getMessage().startswith("stage ")
    ]
    assert len(stage_lines) == len(expected)
    for line, want in zip(stage_lines, expected):
        assert "trainable" in line and "BN" in line
        assert f"{want:,} / {TOTAL:,}" in line
    if key == "lp_ft":
        assert [s["bn"] for s in clf.stages_] == ["frozen", "frozen"]
    if key == "finetune":
        assert clf.stages_[0]["bn"] == "train"
        assert clf.stages_[0]["trainable_groups"] == ["stem", "block1", "block2"]


def test_frozen_groups_keep_their_weights(arrays):
    before = create_backbone("tiny:cnn").state_dict()
    clf = ImageClassifier(
        "tiny:cnn", strategy="partial", partial_groups=1, **{**FAST, "val_fraction": 0.0}
    ).fit(*arrays)
    after = clf.model_.backbone.state_dict()
    for name, t in before.items():
        if name.startswith(("stem.", "block1.")):
            assert torch.equal(t, after[name]), name
    assert not torch.equal(before["block2.0.weight"], after["block2.0.weight"])


def test_mlp_head_counts_and_zero_init_last_layer(arrays):
    backbone, head, groups = parts(hidden=(16,))
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 16), (16, 2)]
    n_head = 32 * 16 + 16 + 16 * 2 + 2
    assert sum(p.numel() for p in head.parameters()) == n_head == 562
    assert torch.count_nonzero(linears[-1].weight) == 0
    assert torch.count_nonzero(linears[-1].bias) == 0
    assert torch.count_nonzero(linears[0].weight) > 0
    assert float(linears[0].weight.detach().std()) < 0.05  # trunc-normal std 0.02
    assert torch.equal(head(torch.randn(5, 32)), torch.zeros(5, 2))  # uniform predictions
    # dropout layers appear only when asked for
    assert not any(isinstance(m, torch.nn.Dropout) for m in head.layers)
    with_dropout = Head(32, 2, HeadSpec((16,), dropout=0.3))
    assert sum(isinstance(m, torch.nn.Dropout) for m in with_dropout.layers) == 2
    cfg = FitConfig(backbone="tiny:cnn", strategy="feature_extract", head_hidden=(16,))
    _, summary = configure_stage(backbone, head, groups, build_strategy(cfg, 3).stages[0], 0.05)
    assert summary["trainable_params"] == n_head
    assert summary["total_params"] == BACKBONE + n_head
    clf = ImageClassifier(
        "tiny:cnn",
        strategy="lp_ft",
        head_hidden=[16],
        **{**FAST, "epochs": 1, "head_epochs": 1, "val_fraction": 0.0},
    )
    clf.fit(*arrays)
    assert [s["trainable_params"] for s in clf.stages_] == [n_head, BACKBONE + n_head]


def test_min_steps_lengthens_training_stages_on_tiny_datasets():
    cfg = FitConfig(epochs=8, head_epochs=60, min_steps=60)

    def epochs(name, steps):
        stages = build_strategy(cfg.replace(strategy=name), 7, steps).stages
        return [(s.name, s.epochs) for s in stages]

    assert epochs("lp_ft", 1) == [("linear_probe", 60), ("finetune", 60)]
    assert epochs("lp_ft", 4) == [("linear_probe", 60), ("finetune", 15)]
    assert epochs("lp_ft", 100) == [("linear_probe", 60), ("finetune", 8)]
    assert epochs("finetune", 7) == [("finetune", 9)]
    assert epochs("lora", 30) == [("linear_probe", 60), ("lora", 8)]
    assert epochs("gradual", 1)[1] == ("unfreeze_1", cfg.gradual_epochs)  # per-stage count kept
    assert epochs("lp_ft", None) == [("linear_probe", 60), ("finetune", 8)]
    assert build_strategy(cfg.replace(min_steps=0), 7, 1).stages[1].epochs == 8


def test_bf16_mixed_precision_on_cpu(arrays):
    """--precision bf16: the backbone computes in bfloat16 under autocast while it trains
    (here on CPU), the weights stay float32 and the fit still learns; fits of either
    precision may follow each other in one process (Accelerate keeps one state per
    process, which refused a second precision)."""
    from torch.nn.modules.module import register_module_forward_hook

    def fit(precision: str):
        dtypes = set()

        def spy(module, args, output):
            if isinstance(module, torch.nn.Conv2d) and torch.is_grad_enabled():
                dtypes.add(output.dtype)

        handle = register_module_forward_hook(spy)
        try:
            clf = ImageClassifier(
                "tiny:cnn", strategy="finetune", precision=precision, **{**FAST, "epochs": 4}
            ).fit(*arrays)
        finally:
            handle.remove()
        return clf, dtypes

    _, before = fit("no")
    clf, during = fit("bf16")
    _, after = fit("no")
    assert before == after == {torch.float32}
    assert torch.bfloat16 in during
    assert all(p.dtype == torch.float32 for p in clf.model_.parameters())
    assert clf.score(*arrays) >= 0.9
