"""``fit --backbone RUN --add-classes``: old head rows kept, the old model's logits as the
distillation target, exemplars stored and replayed, weight aligning, old/new accuracy
apart in ``evaluate``, the CLI end to end, and the errors a user can cause."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.heads import Head, HeadSpec
from headstart.incremental import (
    EXEMPLARS_DIR,
    EXEMPLARS_INDEX,
    DistillTrainer,
    Extension,
    align_new_rows,
    balancing_offset,
    init_head,
    split_metrics,
)
from headstart.tasks.image import ImageClassifier
from headstart.tasks.text import TextClassifier

from conftest import FAST, TEXT_FIT, make_arrays, make_texts, write_folder

# the probe learns the colour classes in a few epochs on cached features; the exemplars'
# replay alone (the synthetic features' replay: test_feature_replay.py)
PROBE = {**FAST, "strategy": "feature_extract", "head_epochs": 30, "head_lr": 0.05}
PROBE["feature_replay"] = 0


@pytest.fixture(scope="module")
def data():
    x, y = make_arrays(120, n_classes=3, seed=1)
    return x, y


@pytest.fixture(scope="module")
def parent(tmp_path_factory, data):
    """A run on classes a and b, 4 exemplars per class stored."""
    x, y = data
    old = y != "c"
    run = tmp_path_factory.mktemp("parent")
    est = ImageClassifier("tiny:cnn", exemplars=4, baseline=False, **PROBE).fit(x[old], y[old])
    est.save(run)
    return run, est


def extend(parent_dir, x, y, **kw):
    return ImageClassifier(str(parent_dir), add_classes=True, **{**PROBE, **kw}).fit(x, y)


def test_old_head_rows_are_kept_at_init():
    torch.manual_seed(0)
    for hidden in ((), (6,)):
        old = Head(8, 2, HeadSpec(hidden))
        for p in old.parameters():
            torch.nn.init.normal_(p)
        new = Head(8, 3, HeadSpec(hidden))
        init_head(new, old, 2, "runs/old")
        feats = torch.randn(5, 8)
        assert torch.allclose(new.logits(feats)[:, :2], old.logits(feats))
        assert torch.all(new.logits(feats)[:, 2] == 0)  # the new row: zero at init


def test_a_head_of_another_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="same --head-hidden"):
        init_head(Head(8, 3, HeadSpec((6,))), Head(8, 2), 2, "runs/old")


def test_distillation_targets_are_the_old_models_logits(parent, data, monkeypatch):
    run, old = parent
    x, y = data
    seen = {}
    original = DistillTrainer.run

    def spy(self, resume=False):
        seen["trainer"] = self
        return original(self, resume)

    monkeypatch.setattr(DistillTrainer, "run", spy)
    new = y == "c"
    extend(run, x[new][:30], y[new][:30])
    trainer = seen["trainer"]
    feats, labels = trainer.features("train")
    assert labels.shape[1] == 2 and torch.equal(labels[:, 1], torch.arange(len(labels)))
    with torch.no_grad():  # the old run's own head, before its temperature
        expected = old.model_.head.logits(feats.to(trainer.targets.device))
    assert trainer.targets.shape == (len(feats), 2)
    assert torch.allclose(trainer.targets, expected.float(), atol=1e-5)


def test_the_distillation_loss_is_zero_only_at_the_target():
    trainer = DistillTrainer.__new__(DistillTrainer)  # the loss alone: no model, no loop
    trainer.cfg = type("C", (), {"label_smoothing": 0.0})()
    trainer.criterion = torch.nn.CrossEntropyLoss()
    trainer.class_weights = None
    trainer.targets = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    trainer.ext = Extension("p", ["a", "b"], ["c"], [], distill=1.0, distill_temperature=2.0)
    y = torch.tensor([[2, 0], [2, 1]])  # (label, item index)
    same = torch.tensor([[2.0, -1.0, 3.0], [0.5, 0.0, 3.0]])
    other = torch.tensor([[-1.0, 2.0, 3.0], [0.5, 0.0, 3.0]])
    assert float(trainer.loss(same, y)["distill"]) == pytest.approx(0.0, abs=1e-6)
    assert float(trainer.loss(other, y)["distill"]) > 0.1
    plain = trainer.loss(same, torch.tensor([2, 2]))  # validation labels: cross-entropy only
    assert isinstance(plain, torch.Tensor)


def test_exemplars_are_stored_and_replayed(parent, data):
    run, _ = parent
    index = json.loads((run / EXEMPLARS_DIR / EXEMPLARS_INDEX).read_text())
    assert index["per_class"] == {"a": 4, "b": 4}
    assert all((run / EXEMPLARS_DIR / e["file"]).is_file() for e in index["items"])
    assert json.loads((run / "config.json").read_text())["exemplars"]["items"] == 8
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30])
    assert est.classes_ == ["a", "b", "c"]
    assert est.added_classes_["replayed"] == 8
    per_class = est.data_summary_["per_class"]
    assert per_class["a"] == per_class["b"] == 4 and per_class["c"] == 30
    alone = extend(run, x[new][:30], y[new][:30], replay=False)
    assert alone.added_classes_["replayed"] == 0
    assert alone.data_summary_["per_class"]["a"] == 0


def test_a_run_without_exemplars_extends_with_distillation_alone(tmp_path, data, caplog):
    x, y = data
    old = y != "c"
    ImageClassifier("tiny:cnn", exemplars=0, baseline=False, **PROBE).fit(x[old], y[old]).save(
        tmp_path / "old"
    )
    assert not (tmp_path / "old" / EXEMPLARS_DIR).exists()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        est = extend(tmp_path / "old", x[~old][:30], y[~old][:30])
    assert "stored no exemplars" in caplog.text
    assert est.added_classes_["replayed"] == 0 and est.classes_ == ["a", "b", "c"]


def test_evaluate_splits_old_and_new_classes_and_survives_a_reload(parent, data, tmp_path):
    run, _ = parent
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30])
    m = est.evaluate(x, y)["add_classes"]
    pred = np.array(est.predict(x))
    assert m["old_n"] == int((~new).sum()) and m["new_n"] == int(new.sum())
    assert m["old_accuracy"] == pytest.approx(float((pred[~new] == y[~new]).mean()))
    assert m["new_accuracy"] == pytest.approx(float((pred[new] == y[new]).mean()))
    assert m["old_accuracy"] > 0.9 and m["new_accuracy"] > 0.9  # separable colours
    est.save(tmp_path / "new")
    loaded = ImageClassifier.load(tmp_path / "new")
    assert loaded.added_classes_["old_classes"] == ["a", "b"]
    assert loaded.evaluate(x, y)["add_classes"] == m
    # a model that never added classes reports no split
    assert "add_classes" not in parent[1].evaluate(x[~new], y[~new])


def test_split_metrics_and_weight_aligning():
    m = split_metrics([0, 1, 2, 2], np.eye(3)[[0, 2, 2, 1]], 2, ["a", "b", "c"])
    assert (m["old_accuracy"], m["new_accuracy"], m["old_called_new"]) == (0.5, 0.5, 0.5)
    head = Head(4, 3)
    with torch.no_grad():
        head.layers[-1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 3, 0]]))
    gamma = align_new_rows(head, 2)
    assert gamma == pytest.approx(1 / 3)
    norms = head.layers[-1].weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones(3))


def test_errors_a_user_can_cause(parent, data, tmp_path):
    run, _ = parent
    x, y = data
    with pytest.raises(ValueError, match="must be its run directory"):
        ImageClassifier("tiny:cnn", add_classes=True, **PROBE).fit(x, y)
    old = y != "c"
    with pytest.raises(ValueError, match="nothing to add"):
        extend(run, x[old], y[old])
    clash = np.where(y == "c", "C", np.where(y == "a", "A", y))  # 'A' looks like 'a'
    with pytest.raises(ValueError, match="differs from .* only in case"):
        extend(run, x, clash)
    with pytest.raises(ValueError, match="mix=none"):
        extend(run, x, y, mix="mixup")


def test_old_class_items_in_the_new_data_train_their_own_rows(parent, data):
    run, _ = parent
    x, y = data
    some = (y == "c") | (np.arange(len(y)) < 10)  # the new class and a few old items
    est = extend(run, x[some], y[some])
    assert est.added_classes_["new_classes"] == ["c"]
    assert est.added_classes_["shared"] == ["a", "b"]
    assert est.classes_ == ["a", "b", "c"]


def test_naive_fine_tuning_forgets_what_add_classes_keeps(parent, data):
    """The point of it all, on the tiny data: trained on the new class alone, the naive
    extension calls old items new; LwF + replay keeps them."""
    run, _ = parent
    x, y = data
    new = y == "c"
    kept = extend(run, x[new][:30], y[new][:30]).evaluate(x, y)["add_classes"]
    naive = extend(
        run, x[new][:30], y[new][:30], distill=0.0, replay=False, balance_new=False
    ).evaluate(x, y)["add_classes"]
    assert kept["old_accuracy"] > naive["old_accuracy"] + 0.3
    assert naive["old_called_new"] > 0.5


def test_cli_end_to_end(parent, data, tmp_path, capsys):
    from headstart.cli import main

    run, _ = parent
    x, y = data
    new = y == "c"
    folder = write_folder(tmp_path / "new", x[new][:30], y[new][:30])
    test = write_folder(tmp_path / "test", x, y)
    out = tmp_path / "added"
    flags = ["--strategy", "feature_extract", "--head-epochs", "30", "--head-lr", "0.05"]
    flags += ["--batch-size", "16", "--num-workers", "0", "--device", "cpu", "--no-baseline"]
    assert (
        main(
            ["-q", "fit", str(folder), "--backbone", str(run), "--add-classes", "--out", str(out)]
            + flags
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["add_classes"]["new_classes"] == ["c"]
    card = (out / "model_card.md").read_text()
    assert "classes added to" in card and "old classes: accuracy" in card
    capsys.readouterr()
    assert main(["-q", "evaluate", str(out), str(test)]) == 0
    assert "old classes (2): accuracy" in capsys.readouterr().out
    assert main(["-q", "evaluate", str(out), str(test), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["add_classes"]["old_n"] == 80 and m["add_classes"]["new_n"] == 40
    bad = ["-q", "fit", str(folder), "--backbone", "tiny:cnn", "--add-classes"]
    code = main(bad + ["--out", str(tmp_path / "r")] + flags)
    assert code != 0
    assert "run directory" in capsys.readouterr().err
    assert Path(out / EXEMPLARS_DIR / EXEMPLARS_INDEX).is_file()
    odd = ["-q", "fit", str(folder), "--backbone", str(run), "--add-classes", "--path-column", "f"]
    assert main(odd + ["--out", str(tmp_path / "r2")] + flags) != 0
    assert "'path' column" in capsys.readouterr().err


def test_text_classifiers_add_classes_too(tmp_path):
    """The shared code serves text: texts stored as exemplars, the contrastive loss of the
    text default reads the labels beside the item positions."""
    texts, labels = make_texts(40, seed=0)
    settings = {**TEXT_FIT, "strategy": "lp_ft", "epochs": 1, "contrastive": 1.0}
    TextClassifier("tiny:bert", exemplars=3, **settings).fit(texts, labels).save(tmp_path / "old")
    index = json.loads((tmp_path / "old" / EXEMPLARS_DIR / EXEMPLARS_INDEX).read_text())
    assert index["per_class"] == {"digits": 3, "letters": 3} and "text" in index["items"][0]
    symbols = [" ".join(["!?", "#", "%&", "*"][: 1 + i % 4]) for i in range(16)]
    new_texts = symbols + texts[:6]  # text data needs two classes: a few old items join
    new_labels = ["symbols"] * 16 + labels[:6]
    est = TextClassifier(str(tmp_path / "old"), add_classes=True, **settings).fit(
        new_texts, new_labels
    )
    assert est.classes_ == ["digits", "letters", "symbols"]
    assert est.added_classes_["replayed"] == 6
    assert any("contrastive" in row for row in est.history_)
    m = est.evaluate(texts + symbols, labels + ["symbols"] * 16)["add_classes"]
    assert m["old_n"] == 40 and m["new_n"] == 16


def test_the_replay_is_drawn_class_balanced_at_any_ratio(parent, data):
    """4 exemplars against 10 new items (2.5x): the sampler balances them all the same
    (the imbalance plan's own threshold is 3x; below it the few old items lost)."""
    run, _ = parent
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:10], y[new][:10], val_fraction=0.3)
    assert est.metrics_["imbalance"]["ratio"] < 3  # below the plan's own threshold
    assert est.metrics_["imbalance"]["method"] == "sample"
    unbalanced = extend(run, x[new][:10], y[new][:10], val_fraction=0.3, imbalance="none")
    assert unbalanced.metrics_["imbalance"]["method"] == "none"


def test_the_balancing_offset_lowers_biased_new_logits():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    logits = np.eye(3)[labels] * 4 + rng.normal(0, 0.5, (60, 3))
    offset, nll_0, _ = balancing_offset(logits, labels, 2)
    assert offset <= 0.1  # unbiased: (next to) nothing to take off
    biased = logits.copy()
    biased[:, 2] += 1.5  # the new class's logit 1.5 too high on every item
    offset, before, after = balancing_offset(biased, labels, 2)
    assert 1.0 <= offset <= 2.0 and after < before
    assert after == pytest.approx(balancing_offset(logits, labels, 2)[2], abs=0.02)


def test_the_fit_applies_the_offset_to_the_new_rows(parent, data, monkeypatch):
    from headstart import incremental

    run, _ = parent
    x, y = data
    new = y == "c"
    monkeypatch.setattr(incremental, "balancing_offset", lambda *a, **k: (0.75, 0.5, 0.6))
    est = extend(run, x[new][:30], y[new][:30])
    plain = extend(run, x[new][:30], y[new][:30], balance_new=False)
    assert est.added_classes_["offset"] == 0.75 and plain.added_classes_["offset"] is None
    bias, plain_bias = est.model_.head.layers[-1].bias, plain.model_.head.layers[-1].bias
    assert torch.allclose(bias[:2], plain_bias[:2])
    assert torch.allclose(bias[2:], plain_bias[2:] - 0.75)


def test_a_strategy_that_trains_the_backbone_extends_too(parent, data):
    """lp_ft: the frozen pass that records the old model's outputs ran in inference mode;
    the fine-tuning stage then refused the backbone's weights (a bug the benchmark hit)."""
    run, _ = parent
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30], strategy="lp_ft", epochs=1)
    assert [s["stage"] for s in est.stages_][-1] == "finetune"
    assert est.classes_ == ["a", "b", "c"]
