"""Run directories: safetensors + JSON only, exact save/load round trip, atomic writes,
and a fine-tuned run as the source of the next transfer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart import ImageClassifier, NotFittedError
from headstart.artifacts import (
    atomic_save_tensors,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from headstart.features import clear_memory_cache
from headstart.zoo import ZooError, create_backbone

from conftest import FAST, make_arrays

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".npy", ".npz"}


def all_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def fitted_runs(tmp_path_factory):
    """A feature_extract and a finetune run of tiny:cnn, each saved in its run dir."""
    images, labels = make_arrays(n=48, n_classes=3)
    runs = {}
    for strategy in ("feature_extract", "finetune"):
        run_dir = tmp_path_factory.mktemp(strategy)
        clf = ImageClassifier("tiny:cnn", strategy=strategy, run_dir=run_dir, **FAST)
        clf.fit(images, labels)
        runs[strategy] = (clf, run_dir)
    return runs, images, labels


@pytest.mark.parametrize("strategy", ["feature_extract", "finetune"])
def test_save_load_gives_identical_probabilities(fitted_runs, strategy):
    runs, images, _ = fitted_runs
    clf, run_dir = runs[strategy]
    expected = clf.predict_proba(images)
    clear_memory_cache()  # the loaded model must compute its own features
    loaded = ImageClassifier.load(run_dir)
    got = loaded.predict_proba(images)
    assert got.shape == (len(images), 3)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
    assert loaded.classes_ == clf.classes_ == ["a", "b", "c"]
    assert loaded.predict(images[:5]) == clf.predict(images[:5])
    # the saved weights are exactly the fitted model's
    saved = load_file(str(run_dir / "model.safetensors"))
    current = clf.model_.state_dict()
    assert set(saved) == set(current)
    assert all(torch.equal(saved[k], current[k].cpu()) for k in saved)


@pytest.mark.parametrize("strategy", ["feature_extract", "finetune"])
def test_run_dir_holds_no_pickle(fitted_runs, strategy):
    runs, _, _ = fitted_runs
    _, run_dir = runs[strategy]
    files = all_files(run_dir)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "config.json").is_file()
    assert not [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    assert not [p for p in files if p.name.endswith(".tmp")], "temporary files left behind"
    for p in files:
        if p.suffix == ".safetensors":
            assert load_file(str(p))  # readable without pickle
    for p in (run_dir / "checkpoints").rglob("*"):
        if p.is_file():
            assert p.suffix in (".safetensors", ".json"), p


def test_config_json_contents(fitted_runs):
    runs, _, _ = fitted_runs
    clf, run_dir = runs["finetune"]
    config = json.loads((run_dir / "config.json").read_text())
    for key in (
        "classes",
        "preprocess",
        "backbone",
        "strategy",
        "metrics",
        "versions",
        "fit_config",
    ):
        assert key in config, key
    assert config["format"] == "headstart-run"
    assert config["classes"] == ["a", "b", "c"]
    assert config["backbone"]["id"] == "tiny:cnn"
    assert config["backbone"]["architecture"] == {"id": "tiny:cnn", "cut": 0}
    assert config["backbone"]["meta"]["source_data"] == "none (random init)"
    assert config["preprocess"]["input_size"] == 32
    assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert config["strategy"]["name"] == "finetune"
    assert config["fit_config"]["lr"] == FAST["lr"]
    assert config["fit_config"]["strategy"] == "finetune"
    assert "torch" in config["versions"] and "headstart" in config["versions"]
    assert 0.0 <= config["metrics"]["validation"]["accuracy"] <= 1.0
    assert config["stages"][0]["trainable_params"] == 6088 + 32 * 3 + 3


def test_unfitted_estimator_raises():
    with pytest.raises(NotFittedError, match="fit"):
        ImageClassifier("tiny:cnn").predict_proba(np.zeros((1, 16, 16, 3), np.uint8))


def test_load_of_a_non_run_dir_raises(tmp_path):
    with pytest.raises(ZooError, match="config.json"):
        ImageClassifier.load(tmp_path)


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_json_roundtrip_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_atomic_write_json_failing_dump_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"version": 1})

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_write_json_failing_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"version": 1})

    def broken(*a, **k):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_atomic_save_tensors_failing_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    atomic_save_tensors(path, {"w": torch.ones(3)})
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        atomic_save_tensors(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(load_file(str(path))["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_checkpoint_crash_mid_swap_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "last"
    save_checkpoint(ckpt, {"x": torch.tensor([1.0])}, {"step": 1})
    real_replace = os.replace
    calls = []

    def fail_final_swap(src, dst):
        calls.append((src, dst))
        # 1: tensors into the temp dir, 2: json into it, 3: old dir aside, 4: temp -> final
        if len(calls) == 4:
            raise OSError("killed mid-swap")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_final_swap)
    with pytest.raises(OSError, match="mid-swap"):
        save_checkpoint(ckpt, {"x": torch.tensor([2.0])}, {"step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(ckpt)
    assert meta == {"step": 1} and torch.equal(tensors["x"], torch.tensor([1.0]))
    save_checkpoint(ckpt, {"x": torch.tensor([3.0])}, {"step": 3})
    tensors, meta = load_checkpoint(ckpt)
    assert meta == {"step": 3}
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "state.safetensors"]


def test_load_checkpoint_of_nothing_is_none(tmp_path):
    assert load_checkpoint(tmp_path / "nope") is None


# ---------------------------------------------------------------- chained transfer
def test_run_dir_is_a_backbone(fitted_runs):
    runs, images, labels = fitted_runs
    clf, run_dir = runs["finetune"]
    backbone = create_backbone(str(run_dir))
    saved = load_file(str(run_dir / "model.safetensors"))
    own = backbone.state_dict()
    assert set(own) == {k.removeprefix("backbone.") for k in saved if k.startswith("backbone.")}
    for k, v in own.items():
        assert torch.equal(v, saved["backbone." + k]), k
    # fine-tuned weights differ from the random init they started from
    init = create_backbone("tiny:cnn").state_dict()
    assert not torch.equal(own["block2.0.weight"], init["block2.0.weight"])
    assert "tiny:cnn" in backbone.meta.notes["lineage"]
    assert "tiny:cnn" in backbone.meta.source_task
    assert backbone.meta.offline
    assert backbone.feature_dim == 32 and len(backbone.groups()) == 3
    assert backbone.preprocess.input_size == 32


def test_chained_transfer_fits_and_saves(fitted_runs, tmp_path):
    runs, images, labels = fitted_runs
    _, run_dir = runs["finetune"]
    # the next task: two of the classes, new names
    keep = labels != "c"
    new_labels = np.where(labels[keep] == "a", "x", "y")
    second_dir = tmp_path / "second"
    clf = ImageClassifier(
        backbone=str(run_dir), strategy="finetune", run_dir=second_dir, **FAST
    ).fit(images[keep], new_labels)
    assert clf.classes_ == ["x", "y"]
    assert clf.predict_proba(images[keep]).shape == (int(keep.sum()), 2)
    config = json.loads((second_dir / "config.json").read_text())
    assert config["backbone"]["id"] == str(run_dir)
    assert config["backbone"]["architecture"]["id"] == "tiny:cnn"
    assert config["backbone"]["meta"]["notes"]["lineage"] == ["tiny:cnn"]
    # and the chained run loads and predicts the same
    clear_memory_cache()
    np.testing.assert_array_equal(
        ImageClassifier.load(second_dir).predict_proba(images[keep]),
        clf.predict_proba(images[keep]),
    )
    third = create_backbone(str(second_dir))
    assert third.meta.notes["lineage"] == ["tiny:cnn", str(run_dir)]


def test_cutting_a_run_dir_is_refused(fitted_runs):
    runs, _, _ = fitted_runs
    _, run_dir = runs["finetune"]
    with pytest.raises(ZooError, match="cut"):
        create_backbone(str(run_dir), cut=1)


# ---------------------------------------------------------------- feature cache
def test_feature_cache_on_disk_is_safetensors_and_reused(tmp_path, caplog):
    import logging

    from PIL import Image

    from conftest import write_folder

    folder = write_folder(tmp_path / "data", *make_arrays(n=24))
    cache = tmp_path / "cache"
    kwargs = {**FAST, "val_fraction": 0.0}
    clear_memory_cache()
    first = ImageClassifier(
        "tiny:cnn", strategy="feature_extract", feature_cache=cache, **kwargs
    ).fit(folder)
    files = sorted(p.name for p in cache.iterdir())
    assert files and all(name.endswith(".safetensors") for name in files)
    clear_memory_cache()
    caplog.set_level(logging.INFO, logger="headstart.features")
    second = ImageClassifier(
        "tiny:cnn", strategy="feature_extract", feature_cache=cache, **kwargs
    ).fit(folder)
    assert any(str(cache) in r.getMessage() for r in caplog.records)  # read from disk
    assert sorted(p.name for p in cache.iterdir()) == files  # nothing recomputed
    np.testing.assert_array_equal(first.predict_proba(folder), second.predict_proba(folder))
    # a changed image is a new cache entry, never stale features
    changed = folder / "a" / "000.png"
    Image.new("RGB", (16, 16), (255, 255, 255)).save(changed)
    clear_memory_cache()
    ImageClassifier("tiny:cnn", strategy="feature_extract", feature_cache=cache, **kwargs).fit(
        folder
    )
    assert len(list(cache.iterdir())) > len(files)


def test_fit_reads_train_and_validation_in_one_frozen_pass(tmp_path, monkeypatch):
    """A head-only stage gets both parts' features from one pass (one BatchNorm fold, one
    loader); each part is cached under its own key, equal to a pass over it alone."""
    import headstart.tasks.base as base

    x, y = make_arrays(n=40)
    cache = tmp_path / "cache"
    passes = []
    real = base.compute_features

    def counted(*args, **kwargs):
        passes.append(len(args[1]))  # items in the pass
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "compute_features", counted)
    clear_memory_cache()
    clf = ImageClassifier(
        "tiny:cnn",
        strategy="feature_extract",
        feature_cache=cache,
        **{**FAST, "val_fraction": 0.25},
    ).fit(x, y)
    assert passes == [40]  # not [30, 10]; evaluating the validation part found it cached
    cfg = clf.config_
    _, train, val = clf._split(clf._open_labeled(x, y, None, cfg), None, None, cfg)
    net = clf.model_.backbone
    for part in (train, val):
        saved = load_file(
            str(cache / f"{clf._feature_key(net, clf.preprocess_, part)}.safetensors")
        )["features"]
        alone = clf._compute_features(net, net, clf.preprocess_, part, cfg)
        torch.testing.assert_close(saved, alone, rtol=1e-5, atol=1e-6)
        assert len(saved) == len(part)


def test_estimator_follows_the_sklearn_contract():
    from sklearn.base import clone

    clf = ImageClassifier("tiny:cnn", strategy="finetune", lr=0.1)
    assert clf.get_params()["lr"] == 0.1 and clf.get_params()["backbone"] == "tiny:cnn"
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    assert not hasattr(twin, "model_")
    assert clf.set_params(lr=0.2, strategy="lp_ft") is clf
    assert clf.resolved_config().lr == 0.2 and clf.resolved_config().strategy == "lp_ft"
    with pytest.raises(TypeError, match="learning_rate"):
        ImageClassifier("tiny:cnn", learning_rate=0.1).resolved_config()
