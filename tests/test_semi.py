"""Self-training on an unlabelled pool (``fit(..., unlabeled=)``, ``fit --unlabeled``).

The choosing functions on probabilities whose answer is known (thresholds, quotas, the
most confident first); the fit on the tiny random models and separable data: the pool's
labels never reach training (an oracle with poisoned labels), the never-lose rule (wrong
pseudo-labels forced in: the model without the pool is kept), the text blend's refit
reading the pseudo-labels, the command line end to end and a bad pool path.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart import ImageClassifier, TextClassifier, semi
from headstart.cli import main
from headstart.data.images import DataError

from conftest import FAST, TEXT_FIT, make_arrays, make_texts, write_csv, write_folder

SEMI_FAST = {**FAST, "val_fraction": 0.25, "pseudo_threshold": 0.5}


# ---------------------------------------------------------------------- choosing
def test_class_thresholds_lower_the_bar_of_a_class_the_model_is_rarely_sure_of():
    # 12 items predicted "0" at 0.95, 3 predicted "1" at 0.95, 5 unsure ones of class 2
    p = np.array([[0.95, 0.03, 0.02]] * 12 + [[0.03, 0.95, 0.02]] * 3 + [[0.3, 0.3, 0.4]] * 5)
    bars = semi.class_thresholds(p, 0.9)
    # FlexMatch: b = count / max(largest count 12, items below every bar 5); bar = 0.9 b/(2-b)
    b = np.array([12, 3, 0]) / 12
    floor = 0.5 * (1 + 1 / 3)  # halfway between chance and certainty
    assert bars == pytest.approx(np.maximum(0.9 * b / (2 - b), floor))
    assert bars[0] == pytest.approx(0.9) and bars[1] == bars[2] == pytest.approx(floor)
    # ten classes: a lower floor (0.55), so the bar of a class 9/10 as sure is in between
    p = np.full((100, 10), 0.004)
    p[np.arange(100), np.repeat(np.arange(10), 10)] = 0.964
    p[90:, 9] = 0.5  # class 9: only 9 of its 10 items sure... after one more is unsure
    p[90, 9] = 0.964
    p[91:, 9], p[91:, 0] = 0.5, 0.468  # 9 items of class 9 unsure
    sure = semi.class_thresholds(p, 0.9)
    assert sure[0] == pytest.approx(0.9)
    assert sure[9] == pytest.approx(max(0.9 * 0.1 / 1.9, 0.55))


def test_pseudo_labels_respect_the_bars_and_the_quota_of_each_class():
    rng = np.random.default_rng(0)
    # a dominant class 0 (300 confident items) beside a class 1 with few confident ones
    conf0 = rng.uniform(0.8, 1.0, 300)
    conf1 = np.concatenate([rng.uniform(0.9, 1.0, 20), rng.uniform(0.5, 0.7, 80)])
    p = np.concatenate([np.stack([conf0, 1 - conf0], 1), np.stack([1 - conf1, conf1], 1)])
    quota = semi.class_quota([5, 5], len(p), 0.5)  # labelled 5 + 5: 100 of each at most
    assert quota.tolist() == [100, 100]
    pl = semi.select_pseudo_labels(p, 0.9, quota)
    counts = np.bincount(pl.labels, minlength=2)
    assert counts[0] == 100  # the dominant class is capped at its quota ...
    assert 20 <= counts[1] < 100  # ... the other keeps what reaches its (lower) bar
    assert (pl.confidence >= pl.thresholds[pl.labels] - 1e-12).all()
    assert np.array_equal(pl.labels, p[pl.indices].argmax(1))
    # class 0's chosen are its 100 most confident items, most confident first
    mine = pl.indices[pl.labels == 0]
    assert set(mine) == set(np.argsort(-conf0)[:100])
    assert (np.diff(pl.confidence[pl.labels == 0]) <= 0).all()
    # a bar nobody reaches: nothing chosen
    flat = np.full((10, 2), 0.5)
    assert len(semi.select_pseudo_labels(flat, 0.9, [10, 10]).indices) == 0


def test_balance_keeps_the_pseudo_labels_at_the_pools_estimated_class_shares():
    # the pool is 2:1, yet the model is sure of class 0 eight times as often
    assert semi.balanced_counts([800, 100], [2 / 3, 1 / 3]).tolist() == [200, 100]
    assert semi.balanced_counts([150, 100], [2 / 3, 1 / 3]).tolist() == [150, 75]
    # a class with none chosen does not stop the others
    assert semi.balanced_counts([50, 0, 30], [0.2, 0.5, 0.3]).tolist() == [20, 0, 30]
    assert semi.balanced_counts([0, 0], [0.5, 0.5]).tolist() == [0, 0]
    rng = np.random.default_rng(1)
    conf0 = rng.uniform(0.95, 1.0, 600)  # predicted class 0, sure
    conf1 = np.concatenate([rng.uniform(0.92, 0.99, 50), rng.uniform(0.5, 0.8, 250)])
    p = np.concatenate([np.stack([conf0, 1 - conf0], 1), np.stack([1 - conf1, conf1], 1)])
    quota = semi.class_quota([5, 5], len(p), 1.0)
    off = semi.select_pseudo_labels(p, 0.9, quota)
    on = semi.select_pseudo_labels(p, 0.9, quota, balance=True)
    n_off, n_on = np.bincount(off.labels, minlength=2), np.bincount(on.labels, minlength=2)
    assert n_off[0] == 450 and n_on[1] == n_off[1]  # 450: the quota; class 1 keeps its own
    prior = p.mean(0)
    assert n_on[0] == int(np.floor(n_on[1] / prior[1] * prior[0] + 1e-9))
    # the ones kept are class 0's most confident
    assert set(on.indices[on.labels == 0]) == set(np.argsort(-conf0)[: n_on[0]])


def test_class_quota_follows_the_labelled_class_shares():
    assert semi.class_quota([10, 30], 1000, 1.0).tolist() == [250, 750]
    assert semi.class_quota([10, 30], 1000, 0.5).tolist() == [125, 375]
    assert semi.class_quota([10, 0], 1000, 1.0).tolist() == [1000, 0]


def test_a_refit_on_more_items_runs_about_the_labelled_fits_steps():
    from headstart.config import FitConfig

    cfg = FitConfig(head_epochs=60, epochs=12)
    big = semi.refit_config(cfg, 90, 2700)  # 30x the items: 2 head epochs -> floor 10
    assert (big.head_epochs, big.epochs) == (10, 2)
    small = semi.refit_config(cfg, 90, 180)  # twice the items: half the epochs
    assert (small.head_epochs, small.epochs) == (30, 6)
    assert semi.refit_config(cfg, 90, 90) == cfg


# ---------------------------------------------------------------------- the fit
def _spy_joined(monkeypatch) -> list:
    """Record what each refit trains on: (all labels, pool rows, pool labels given)."""
    seen: list = []
    real = semi.joined

    def spy(train_src, pool, rows, labels):
        out = real(train_src, pool, rows, labels)
        seen.append((np.asarray(out.labels).copy(), np.asarray(rows), np.asarray(labels)))
        return out

    monkeypatch.setattr(semi, "joined", spy)
    return seen


def test_pool_labels_never_reach_training(monkeypatch):
    """Oracle: the pool comes with every label wrong. Training must see the model's
    pseudo-labels (right, on this separable data), and the report scores them against the
    poisoned labels: 0% right."""
    x, y = make_arrays(n=24, n_classes=3, seed=0)
    px, py = make_arrays(n=60, n_classes=3, seed=5)
    classes = sorted(set(y))
    poisoned = np.asarray([classes[(classes.index(c) + 1) % 3] for c in py])
    seen = _spy_joined(monkeypatch)
    clf = ImageClassifier("tiny:cnn", **SEMI_FAST).fit(x, y, unlabeled=(px, poisoned))
    assert seen, "no refit ran"
    truth = np.asarray([classes.index(c) for c in py])
    for labels, rows, given in seen:
        assert np.array_equal(given, truth[rows])  # the model's own (right) labels
        assert not np.any(given == np.asarray([classes.index(c) for c in poisoned])[rows])
        assert np.array_equal(labels[-len(rows) :], given)
    s = clf.metrics_["semi"]
    assert s["pool"] == 60 and s["pool_labels_known"]
    assert all(r["accuracy"] == 0.0 and r["scored"] == r["pseudo_labels"] for r in s["rounds"])
    assert clf.score(px, py) == 1.0  # the model learnt the truth, not the poison


def test_a_pool_that_hurts_on_validation_is_not_kept(monkeypatch):
    """Never lose: pseudo-labels forced wrong (every pool item, full weight) make a model
    worse on validation; the fit returns the model trained without the pool."""
    x, y = make_arrays(n=24, n_classes=3, seed=0)
    px, _ = make_arrays(n=90, n_classes=3, seed=5)

    def wrong(proba, threshold, quota, balance=False):
        pred = (np.asarray(proba).argmax(1) + 1) % 3
        n = len(proba)
        return semi.PseudoLabels(
            np.arange(n), pred, np.ones(n), np.full(3, threshold), np.asarray(quota)
        )

    monkeypatch.setattr(semi, "select_pseudo_labels", wrong)
    alone = ImageClassifier("tiny:cnn", **SEMI_FAST).fit(x, y)
    clf = ImageClassifier("tiny:cnn", **{**SEMI_FAST, "pseudo_rounds": 1}).fit(x, y, unlabeled=px)
    s = clf.metrics_["semi"]
    assert s["rounds"][0]["after"] < s["rounds"][0]["before"]
    assert not s["kept"] and "did not help" in s["line"]
    assert s["validation_with_pool"] == s["validation_without_pool"]
    assert clf.data_summary_["train"] == alone.data_summary_["train"]
    np.testing.assert_allclose(clf.predict_proba(px), alone.predict_proba(px), atol=1e-5)


def test_a_tie_on_validation_keeps_the_pool_model():
    x, y = make_arrays(n=24, n_classes=3, seed=0)
    px, _ = make_arrays(n=30, n_classes=3, seed=5)
    clf = ImageClassifier("tiny:cnn", **{**SEMI_FAST, "pseudo_rounds": 1}).fit(x, y, unlabeled=px)
    r = clf.metrics_["semi"]["rounds"][0]
    assert r["after"] == r["before"] == 1.0 and r["kept"]  # separable: both perfect
    assert clf.data_summary_["train"] == 18 + r["pseudo_labels"]
    assert clf.metrics_["semi"]["pool_labels_known"] is False


def test_text_blend_refit_reads_the_pseudo_labels(monkeypatch):
    """The TF-IDF baseline and the joint TF-IDF + encoder blend are refitted on the
    labelled texts and the pseudo-labelled ones."""
    from headstart.baselines import TfidfBaseline

    fitted: list[int] = []
    real = TfidfBaseline.fit

    def spy(self, texts, labels, *args, **kwargs):
        fitted.append(len(texts))
        return real(self, texts, labels, *args, **kwargs)

    monkeypatch.setattr(TfidfBaseline, "fit", spy)
    texts, labels = make_texts(24, seed=0)
    pool, pool_labels = make_texts(40, seed=9)
    settings = {**TEXT_FIT, "baseline": True, "blend": True, "blend_mode": "joint"}
    settings.update(val_fraction=0.25, pseudo_threshold=0.6, pseudo_rounds=1)
    clf = TextClassifier("tiny:bert", **settings).fit(texts, labels, unlabeled=(pool, pool_labels))
    r = clf.metrics_["semi"]["rounds"][0]
    assert r["pseudo_labels"] > 0
    # labelled fit: baseline + joint on 18 texts; the refit: both on 18 + the pseudo-labels
    assert fitted[:2] == [18, 18]
    assert fitted[2:] == [18 + r["pseudo_labels"]] * 2
    if r["kept"]:
        assert clf.data_summary_["train"] == 18 + r["pseudo_labels"]


# ---------------------------------------------------------------------- command line
def test_fit_unlabeled_end_to_end(tmp_path, capsys):
    train = write_folder(tmp_path / "train", *make_arrays(n=24, n_classes=3, seed=0))
    pool = write_folder(tmp_path / "pool", *make_arrays(n=30, n_classes=3, seed=5))
    out = tmp_path / "run"
    flags = ["--backbone", "tiny:cnn", "--epochs", "2", "--head-epochs", "2", "--lr", "0.01"]
    flags += ["--head-lr", "0.01", "--early-stopping", "0", "--num-workers", "0"]
    flags += ["--device", "cpu", "--val-fraction", "0.25", "--pseudo-threshold", "0.5"]
    code = main(["fit", str(train), "--unlabeled", str(pool), "--out", str(out), *flags])
    assert code == 0
    text = capsys.readouterr().out
    assert "unlabelled pool: 30 unlabelled items; round 1:" in text
    config = json.loads((out / "config.json").read_text())
    s = config["metrics"]["semi"]
    assert config["fit_config"]["pseudo_threshold"] == 0.5
    assert s["pool"] == 30 and s["pool_labels_known"] and s["threshold"] == 0.5
    assert len(s["rounds"]) == 2 and s["rounds"][0]["accuracy"] == 1.0
    assert sum(s["rounds"][0]["per_class"].values()) == s["rounds"][0]["pseudo_labels"]
    assert "self-training on 30 unlabelled items" in (out / "model_card.md").read_text()
    test = write_csv(tmp_path / "test", *make_arrays(n=9, n_classes=3, seed=7))
    assert main(["-q", "evaluate", str(out), str(test)]) == 0
    assert "trained with an unlabelled pool: 30 unlabelled items" in capsys.readouterr().out


def test_a_missing_pool_is_a_clear_error(tmp_path, capsys):
    train = write_folder(tmp_path / "train", *make_arrays(n=12, n_classes=3, seed=0))
    missing = tmp_path / "no-such-pool"
    code = main(
        ["fit", str(train), "--unlabeled", str(missing), "--backbone", "tiny:cnn"]
        + ["--epochs", "1", "--head-epochs", "1", "--device", "cpu", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file or folder" in err
    assert "Traceback" not in err
    with pytest.raises(DataError, match="no such file"):
        ImageClassifier("tiny:cnn", **SEMI_FAST).fit(
            *make_arrays(n=12, n_classes=3), unlabeled=str(missing)
        )
    with pytest.raises(ValueError, match="validation"):
        ImageClassifier("tiny:cnn", **{**SEMI_FAST, "val_fraction": 0.0}).fit(
            *make_arrays(n=12, n_classes=3), unlabeled=make_arrays(n=6, n_classes=3)[0]
        )


def test_sample_weight_reaches_the_sampler_for_the_training_part_only():
    import torch

    from headstart.tasks.base import _with_item_weights

    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = _with_item_weights({}, w, np.array([4, 0, 2]), 5)  # the training part's rows
    assert out["sample_weights"].tolist() == [5.0, 1.0, 3.0]
    balanced = {"sample_weights": torch.tensor([2.0, 1.0, 1.0])}  # imbalance="sample"
    assert _with_item_weights(balanced, w, np.array([4, 0, 2]), 5)["sample_weights"].tolist() == [
        10.0,
        1.0,
        3.0,
    ]
    for bad in (w[:4], -w, np.zeros(5), np.array([1.0, np.nan, 1.0, 1.0, 1.0])):
        with pytest.raises(ValueError, match="sample_weight"):
            _with_item_weights({}, bad, np.arange(3), 5)


def test_joined_texts_keep_one_group_per_text():
    """A text table read with a group column: the joined source's groups stay one per
    text (the labelled ones' own, each pseudo-labelled text a group of its own), or the
    baseline's grouped cross-validation and ``subset`` read the wrong texts."""
    from headstart.data.text import TextSource

    train = TextSource(
        ["a", "b", "c", "d"],
        np.array([0, 1, 0, 1]),
        ["x", "y"],
        "t.csv",
        groups=np.array(["s1", "s1", "s2", "s2"], dtype=object),
    )
    pool = TextSource(["e", "f", "g"], np.zeros(3, np.int64), ["x", "y"], "p.csv")
    out = semi.joined(train, pool, np.array([2, 0]), np.array([1, 0]))
    assert out.texts == ["a", "b", "c", "d", "g", "e"]
    assert out.labels.tolist() == [0, 1, 0, 1, 1, 0]
    assert out.groups is not None and len(out.groups) == len(out.texts)
    assert out.groups[:4].tolist() == ["s1", "s1", "s2", "s2"]
    assert len(set(out.groups[4:])) == 2 and not set(out.groups[4:]) & {"s1", "s2"}
    assert out.subset([1, 5]).groups.tolist() == ["s1", out.groups[5]]


def test_resume_with_a_pool_resumes_the_labelled_fit(tmp_path, caplog):
    """The labelled fit keeps its checkpoints in the run directory, so ``resume=True``
    continues it instead of silently starting over (the rounds then run again)."""
    import logging

    x, y = make_arrays(n=24, n_classes=3, seed=0)
    px, _ = make_arrays(n=30, n_classes=3, seed=5)
    settings = {**SEMI_FAST, "pseudo_rounds": 1}
    run = tmp_path / "run"
    first: list = []
    ImageClassifier("tiny:cnn", run_dir=run, **settings).fit(
        x, y, unlabeled=px, callbacks=[first.append]
    )
    assert (run / "checkpoints" / "last" / "state.json").is_file()
    epochs: list = []
    with caplog.at_level(logging.INFO):
        clf = ImageClassifier("tiny:cnn", run_dir=run, **settings).fit(
            x, y, unlabeled=px, resume=True, callbacks=[epochs.append]
        )
    assert "starting a new fit" not in caplog.text
    refit = clf.metrics_["semi"]["rounds"][0]["refit"]
    # the resumed run trains only the round's refit; the first also trained the labelled fit
    assert len(epochs) == refit["head_epochs"] + refit["epochs"]
    assert len(first) == len(epochs) + SEMI_FAST["head_epochs"] + SEMI_FAST["epochs"]
    assert clf.metrics_["semi"]["rounds"]
    assert json.loads((run / "config.json").read_text())["metrics"]["semi"]["pool"] == 30
