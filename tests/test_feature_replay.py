"""``--feature-replay``: class statistics of the frozen features stored at fit time, synthetic
old-class features drawn from them in an ``--add-classes`` fit that keeps the backbone
frozen, and never used where the extension trains the backbone or sees other features."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open

from headstart.feature_replay import STATS_FILE, read_feature_stats, sample_features
from headstart.incremental import DistillTrainer
from headstart.tasks.image import ImageClassifier

from conftest import FAST, make_arrays

PROBE = {**FAST, "strategy": "feature_extract", "head_epochs": 30, "head_lr": 0.05}


@pytest.fixture(scope="module")
def data():
    return make_arrays(120, n_classes=3, seed=1)


@pytest.fixture(scope="module")
def parent(tmp_path_factory, data):
    """A run on classes a and b: its feature statistics stored, 4 exemplars per class."""
    x, y = data
    old = y != "c"
    run = tmp_path_factory.mktemp("parent")
    est = ImageClassifier("tiny:cnn", exemplars=4, baseline=False, **PROBE).fit(x[old], y[old])
    est.save(run)
    return run, est


def extend(parent_dir, x, y, **kw):
    return ImageClassifier(str(parent_dir), add_classes=True, **{**PROBE, **kw}).fit(x, y)


def test_the_statistics_are_stored_with_the_right_shapes(parent):
    run, est = parent
    dim = est.model_.backbone.feature_dim
    with safe_open(str(run / STATS_FILE), framework="pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    assert shapes == {
        "means": (2, dim),
        "variances": (2, dim),
        "counts": (2,),
        "covariance": (dim, dim),
    }
    stats = read_feature_stats(run)
    assert stats is not None and stats["classes"] == ["a", "b"]
    assert 0.0 <= stats["shrinkage"] <= 1.0
    cov = stats["covariance"].double()
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > 0
    config = json.loads((run / "config.json").read_text())
    assert config["feature_stats"]["feature_dim"] == dim
    assert config["feature_stats"]["bytes"] == (run / STATS_FILE).stat().st_size


def test_the_means_are_the_class_means_of_the_training_features(data, tmp_path):
    x, y = data
    old = y != "c"
    est = ImageClassifier("tiny:cnn", baseline=False, **PROBE)
    _, train_src, _ = est.split(x[old], y[old])
    est.fit(x[old], y[old])
    feats = est._features(train_src)
    labels = np.asarray(train_src.labels)
    stats = est._feature_stats
    for k in range(2):
        assert torch.allclose(stats["means"][k], feats[labels == k].mean(0), atol=1e-5)
    assert stats["counts"].tolist() == [int((labels == k).sum()) for k in range(2)]


def test_sampling_follows_the_statistics():
    stats = {
        "classes": ["a", "b"],
        "means": torch.tensor([[0.0, 0.0], [5.0, -5.0]]),
        "variances": torch.tensor([[1.0, 1.0], [4.0, 0.25]]),
        "counts": torch.tensor([10, 0]),  # b had no items: never drawn
        "covariance": torch.tensor([[1.0, 0.8], [0.8, 1.0]]),
    }
    feats, labels = sample_features(stats, ["a", "b", "c"], 4000, seed=0)
    assert feats.shape == (4000, 2) and set(labels.tolist()) == {0}
    assert torch.allclose(torch.cov(feats.T.double()), stats["covariance"].double(), atol=0.1)
    stats["counts"] = torch.tensor([10, 10])
    del stats["covariance"]  # features too wide for one: each class's own variances
    feats, labels = sample_features(stats, ["b"], 4000, seed=0)
    assert (labels == 0).all()
    assert torch.allclose(feats.mean(0), torch.tensor([5.0, -5.0]), atol=0.1)
    assert torch.allclose(feats.var(0), torch.tensor([4.0, 0.25]), atol=0.2)


def test_synthetic_features_reach_the_head_with_their_targets(parent, data, monkeypatch):
    run, old = parent
    x, y = data
    seen = {}
    original = DistillTrainer.run

    def spy(self, resume=False):
        seen["trainer"] = self
        return original(self, resume)

    monkeypatch.setattr(DistillTrainer, "run", spy)
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30], feature_replay=25)
    assert est.added_classes_["feature_replayed"] == 50
    trainer = seen["trainer"]
    feats, labels = trainer.features("train")
    n_real = len(feats) - 50
    synthetic = labels[n_real:, 0]
    assert sorted(synthetic.unique().tolist()) == [0, 1]  # a and b, 25 each
    assert (torch.bincount(synthetic) == 25).all()
    assert torch.equal(labels[:, 1], torch.arange(len(labels)))
    # the distillation targets cover them: the old head's logits on the synthetic vectors
    with torch.no_grad():
        expected = old.model_.head.logits(feats[n_real:].to(trainer.targets.device))
    assert torch.allclose(trainer.targets[n_real:], expected.float(), atol=1e-5)
    assert len(trainer.sample_weights) == len(feats)  # the sampler draws them, balanced
    off = extend(run, x[new][:30], y[new][:30], feature_replay=0)
    assert off.added_classes_["feature_replayed"] == 0


def test_feature_replay_alone_keeps_the_old_classes(parent, data):
    """Without exemplars and without distillation, the head forgets the old classes; the
    synthetic features alone keep them."""
    run, _ = parent
    x, y = data
    new = y == "c"
    plain = {"distill": 0.0, "replay": False, "balance_new": False}
    kept = extend(run, x[new][:30], y[new][:30], feature_replay=40, **plain)
    forgot = extend(run, x[new][:30], y[new][:30], feature_replay=0, **plain)
    kept_m, forgot_m = (e.evaluate(x, y)["add_classes"] for e in (kept, forgot))
    assert forgot_m["old_called_new"] > 0.5
    assert kept_m["old_accuracy"] > forgot_m["old_accuracy"] + 0.3


def test_an_extension_that_trains_the_backbone_does_not_use_stale_statistics(parent, data, caplog):
    run, _ = parent
    x, y = data
    new = y == "c"
    with caplog.at_level(logging.INFO, logger="headstart"):
        est = extend(run, x[new][:30], y[new][:30], strategy="lp_ft", epochs=1, feature_replay=25)
    assert est.added_classes_["feature_replayed"] == 0
    assert "trains the backbone" in est.added_classes_["feature_replay_skipped"]
    assert "no feature replay" in caplog.text


def test_another_input_size_does_not_use_the_statistics(parent, data):
    run, _ = parent
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30], feature_replay=25, image_size=24)
    assert est.added_classes_["feature_replayed"] == 0
    assert "differs" in est.added_classes_["feature_replay_skipped"]


def test_an_extension_keeps_its_parents_old_class_statistics(parent, data, tmp_path):
    run, _ = parent
    x, y = data
    new = y == "c"
    est = extend(run, x[new][:30], y[new][:30], feature_replay=25)
    est.save(tmp_path / "added")
    mine, theirs = read_feature_stats(tmp_path / "added"), read_feature_stats(run)
    assert mine["classes"] == ["a", "b", "c"]
    assert torch.equal(mine["means"][:2], theirs["means"])
    assert torch.equal(mine["counts"][:2], theirs["counts"])
    assert mine["counts"][2] > 0
    # an extension of a run without statistics: said, not an error
    off = ImageClassifier("tiny:cnn", baseline=False, feature_stats=False, **PROBE)
    off.fit(x[~new], y[~new]).save(tmp_path / "nostats")
    assert not (tmp_path / "nostats" / STATS_FILE).exists()
    est = extend(tmp_path / "nostats", x[new][:30], y[new][:30], feature_replay=25)
    assert "stored no feature statistics" in est.added_classes_["feature_replay_skipped"]


def test_a_fine_tuned_parents_statistics_serve_a_frozen_extension(data, tmp_path):
    """The statistics describe the fitted backbone (one pass after fine-tuning), and an
    extension loading that run's weights finds the same fingerprint."""
    x, y = data
    new = y == "c"
    tuned = ImageClassifier("tiny:cnn", baseline=False, **{**PROBE, "strategy": "lp_ft"})
    tuned.fit(x[~new], y[~new]).save(tmp_path / "tuned")
    _, train_src, _ = tuned.split(x[~new], y[~new])
    labels = np.asarray(train_src.labels)
    feats = tuned._features(train_src)  # the fine-tuned backbone's features
    stats = read_feature_stats(tmp_path / "tuned")
    assert torch.allclose(stats["means"][0], feats[labels == 0].mean(0), atol=1e-5)
    est = extend(tmp_path / "tuned", x[new][:30], y[new][:30], feature_replay=25)
    assert est.added_classes_["feature_replayed"] == 50


def test_auto_extends_head_only_where_the_parent_stored_statistics(parent, data, tmp_path):
    x, y = data
    new = y == "c"
    est = extend(parent[0], x[new], y[new], strategy="auto")
    assert est.config_.strategy == "feature_extract"
    assert est.added_classes_["feature_replayed"] > 0
    # without replay, or with a strategy asked for, auto is not reinterpreted
    kept = extend(parent[0], x[new], y[new], strategy="auto", feature_replay=0)
    assert kept.config_.strategy == "auto"
    bare = tmp_path / "bare"
    est0 = ImageClassifier("tiny:cnn", baseline=False, feature_stats=False, **PROBE)
    est0.fit(x[~new], y[~new]).save(bare)
    assert extend(bare, x[new], y[new], strategy="auto").config_.strategy == "auto"
