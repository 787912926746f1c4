"""Class imbalance: weights from the class counts (against scikit-learn's "balanced"), the
``auto`` monitor and method, the weighted loss (against a hand-written one), the seeded
balanced sampler, and what a fit logs and records, on tiny:cnn / tiny:bert."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from headstart import ImageClassifier, TextClassifier
from headstart.config import FitConfig
from headstart.imbalance import class_weights, loop_weights, plan
from headstart.train import BucketBatchSampler, EpochSampler, ShardedBatchSampler, Trainer

from conftest import FAST, TEXT_FIT, make_arrays, make_texts


def imbalanced_arrays(major: int = 40, minor: int = 10):
    """``major`` images of class a, ``minor`` of class b (4:1 by default)."""
    images, labels = make_arrays(n=2 * major)
    keep = np.concatenate(
        [np.flatnonzero(labels == "a")[:major], np.flatnonzero(labels == "b")[:minor]]
    )
    return images[keep], labels[keep]


def test_class_weights_follow_the_class_counts():
    from sklearn.utils.class_weight import compute_class_weight

    counts = np.array([40, 10, 5])
    w = class_weights(counts)
    assert w == pytest.approx([55 / 120, 55 / 30, 55 / 15])  # n / (k * count)
    labels = np.repeat([0, 1, 2], counts)
    assert w == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=labels))
    assert w[labels].mean() == pytest.approx(1.0)  # the loss keeps its scale
    assert class_weights([6, 0, 2]) == pytest.approx([8 / 12, 0.0, 8 / 4])  # no items: 0


def test_auto_monitor_and_method_follow_the_counts():
    four_to_one = np.array([0] * 40 + [1] * 10)
    b = plan(FitConfig(), four_to_one, ["a", "b"])
    # auto: the balanced sampler, which measured better than the weighted loss
    # (benchmarks/results/imbalance_2026-12-04.txt)
    assert (b.monitor, b.method, b.ratio, b.imbalanced) == ("macro_f1", "sample", 4.0, True)
    assert b.weights == {"a": 0.625, "b": 2.5} and b.counts == {"a": 40, "b": 10}
    assert b.message() == (
        "imbalanced classes (a 40, b 10: 4.0x): monitoring macro-F1, "
        "class-balanced sampler (weights a 0.62, b 2.50)"
    )
    items = loop_weights(b, four_to_one)["sample_weights"]
    assert items.tolist() == [0.625] * 40 + [2.5] * 10
    weighted = plan(FitConfig(imbalance="weight"), four_to_one, ["a", "b"])
    assert loop_weights(weighted, four_to_one)["class_weights"].tolist() == [0.625, 2.5]
    assert "class-weighted loss (weights a 0.62, b 2.50)" in weighted.message()
    even = plan(FitConfig(), np.array([0, 1] * 20), ["a", "b"])
    assert (even.monitor, even.method, even.weights) == ("accuracy", "none", None)
    just_under = plan(FitConfig(), np.array([0] * 29 + [1] * 10), ["a", "b"])
    assert (just_under.monitor, just_under.method) == ("accuracy", "none")


def test_explicit_choices_are_kept():
    four_to_one = np.array([0] * 40 + [1] * 10)
    b = plan(FitConfig(monitor="loss", imbalance="none"), four_to_one, ["a", "b"])
    assert (b.monitor, b.method) == ("loss", "none")
    assert "monitoring loss (set)" in b.message()
    b = plan(FitConfig(monitor="accuracy", imbalance="sample"), np.array([0, 1] * 5), ["a", "b"])
    assert (b.monitor, b.method, b.weights) == ("accuracy", "sample", {"a": 1.0, "b": 1.0})


def test_multi_label_targets_are_left_as_they_are():
    rows = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)
    b = plan(FitConfig(), rows, ["a", "b"])
    assert (b.monitor, b.method, b.ratio) == ("accuracy", "none", None)
    assert loop_weights(b, rows) == {}
    with pytest.raises(ValueError, match="multi-label.*imbalance auto or none"):
        plan(FitConfig(imbalance="weight"), rows, ["a", "b"])


def test_the_weighted_loss_weighs_each_item_by_its_own_class():
    w = torch.tensor([0.625, 2.5])
    trainer = Trainer(
        None,
        [],
        None,
        FitConfig(device="cpu", label_smoothing=0.1),
        train_set=None,
        val_set=None,
        features=None,
        class_weights=w,
    )
    assert trainer.cfg.monitor == "accuracy"  # "auto" without labels to resolve it from
    logits, y = (
        torch.randn(6, 2, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 0, 0, 0, 1, 1]),
    )
    target = torch.nn.functional.one_hot(y, 2) * 0.9 + 0.05  # smoothing 0.1 over 2 classes
    per_item = -(target * logits.log_softmax(1)).sum(1)
    expected = (w[y] * per_item).sum() / w[y].sum()
    assert trainer.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    # not torch's weighted cross-entropy, which also weighs each class's smoothing term by
    # that class's weight: a majority item's target then leans towards the minority class
    torch_weighted = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1)(logits, y)
    assert abs(torch_weighted.item() - expected.item()) > 1e-3


def test_balanced_sampler_is_seeded_balanced_and_shared_across_processes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = torch.tensor([100 / 180, 100 / 20])[labels]
    a, b = EpochSampler(100, 3, weights=weights), EpochSampler(100, 3, weights=weights)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)  # same (seed, epoch): same draws
    b.set_epoch(3)
    assert list(a) != list(b)
    draws = [i for e in range(20) for i in (a.set_epoch(e), list(a))[1]]
    share = float((labels[draws] == 1).float().mean())
    assert 0.45 < share < 0.55  # the 10% class drawn about half the time
    # data-parallel: the two processes' batches are the one-process draws, shared out
    one = [i for batch in ShardedBatchSampler(100, 10, 3, weights=weights) for i in batch]
    two = [ShardedBatchSampler(100, 5, 3, rank=r, world=2, weights=weights) for r in (0, 1)]
    assert sorted(one) == sorted(i for s in two for batch in s for i in batch)
    bucket = BucketBatchSampler(list(range(100)), 10, 3, weights=weights)
    assert sorted(one) == sorted(i for batch in bucket for i in batch)


@pytest.mark.parametrize("method", ["auto", "weight"])
def test_fit_on_imbalanced_classes_says_so_and_monitors_macro_f1(method, caplog):
    caplog.set_level(logging.WARNING, logger="headstart")
    clf = ImageClassifier("tiny:cnn", imbalance=method, **{**FAST, "val_fraction": 0.2}).fit(
        *imbalanced_arrays()
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    how = "class-weighted loss" if method == "weight" else "class-balanced sampler"
    assert (
        f"imbalanced classes (a 32, b 8: 4.0x): monitoring macro-F1, {how} (weights a 0.62, b 2.50)"
    ) in warnings
    m = clf.metrics_["imbalance"]
    assert (m["monitor"], m["method"], m["ratio"], m["monitor_set"]) == (
        "macro_f1",
        "weight" if method == "weight" else "sample",
        4.0,
        "auto",
    )
    assert "macro-f1" in clf.selection_  # the loop picked its epochs by macro-F1
    assert clf.config_.monitor == "auto"  # the setting itself stays the user's
    assert "recall" in clf.metrics_["validation"]["per_class"]["b"]


def test_fit_on_balanced_classes_monitors_accuracy(arrays, caplog):
    caplog.set_level(logging.INFO, logger="headstart")
    clf = ImageClassifier("tiny:cnn", **{**FAST, "val_fraction": 0.25}).fit(*arrays)
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and "imbalanced" in r.getMessage()
    ]
    assert (clf.metrics_["imbalance"]["monitor"], clf.metrics_["imbalance"]["method"]) == (
        "accuracy",
        "none",
    )
    assert "accuracy" in clf.selection_


def test_explicit_monitor_reaches_the_loop():
    clf = ImageClassifier("tiny:cnn", monitor="accuracy", **{**FAST, "val_fraction": 0.2}).fit(
        *imbalanced_arrays()
    )
    assert clf.metrics_["imbalance"]["monitor"] == "accuracy"
    assert "macro-f1" not in clf.selection_ and "accuracy" in clf.selection_


def test_sampled_fits_are_deterministic():
    def fit():
        return ImageClassifier(
            "tiny:cnn", imbalance="sample", strategy="finetune", **{**FAST, "val_fraction": 0.2}
        ).fit(*imbalanced_arrays())

    a, b = fit(), fit()
    assert a.metrics_["imbalance"]["method"] == "sample"
    for (name, x), (_, y) in zip(a.model_.state_dict().items(), b.model_.state_dict().items()):
        assert torch.equal(x, y), name
    plain = ImageClassifier(
        "tiny:cnn", imbalance="none", strategy="finetune", **{**FAST, "val_fraction": 0.2}
    ).fit(*imbalanced_arrays())
    assert any(
        not torch.equal(x, y)
        for x, y in zip(
            a.model_.head.state_dict().values(), plain.model_.head.state_dict().values()
        )
    )


def test_the_tfidf_baseline_is_class_balanced_where_the_network_is(tmp_path):
    texts, labels = make_texts(100, seed=0)
    keep = [i for i, c in enumerate(labels) if c == "letters"][:40] + [
        i for i, c in enumerate(labels) if c == "digits"
    ][:10]
    x, y = [texts[i] for i in keep], [labels[i] for i in keep]
    settings = {**TEXT_FIT, "baseline": True, "epochs": 1, "head_epochs": 2}
    clf = TextClassifier("tiny:bert", strategy="feature_extract", **settings).fit(x, y)
    assert clf.metrics_["imbalance"]["method"] == "sample"
    assert clf.baseline_.clf_.class_weight == "balanced"
    assert clf.metrics_["baseline_name"].endswith("(class-balanced)")
    clf.save(tmp_path / "run")
    assert TextClassifier.load(tmp_path / "run").baseline_.class_weight == "balanced"
    even = TextClassifier("tiny:bert", strategy="feature_extract", **settings).fit(
        *make_texts(40, seed=0)
    )
    assert even.baseline_.clf_.class_weight is None
    assert "balanced" not in even.metrics_["baseline_name"]


def test_fit_summary_shows_the_counts_and_the_recall_of_each_class(tmp_path, capsys):
    from headstart.cli import main

    from conftest import write_folder

    train = write_folder(tmp_path / "train", *imbalanced_arrays())
    code = main(
        [
            "-q",
            "fit",
            str(train),
            "--backbone",
            "tiny:cnn",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--head-epochs",
            "2",
            "--val-fraction",
            "0.2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (
        "  imbalanced classes (a 32, b 8: 4.0x): monitoring macro-F1, class-balanced "
        "sampler (weights a 0.62, b 2.50)" in out
    )
    line = next(s for s in out.splitlines() if "recall per class" in s)
    assert re.fullmatch(r" +recall per class: a \d\.\d\d, b \d\.\d\d", line)
