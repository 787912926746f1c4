"""Slow: exports of runs on the REAL packaged weights (ImageNet Lite0, MiniLM) predict the
same as the fitted PyTorch models on real Fashion-MNIST images and real emails."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    from headstart import ImageClassifier
    from headstart.datasets import (
        DatasetMissing,
        export_image_folder,
        fashion_mnist,
        per_class_subset,
    )

    try:
        x, y, classes = fashion_mnist("test")
    except DatasetMissing as exc:
        pytest.fail(str(exc))
    root = tmp_path_factory.mktemp("fm-export")
    train = per_class_subset(y, 12, seed=0)
    test = np.setdiff1d(per_class_subset(y, 16, seed=1), train)[:60]
    export_image_folder(x[train], y[train], classes, root / "train")
    export_image_folder(x[test], y[test], classes, root / "test")
    run = root / "run"
    ImageClassifier(
        "packaged:efficientnet_lite0",
        strategy="lp_ft",
        epochs=1,
        head_epochs=5,
        image_size=96,
        num_workers=0,
        device="cpu",
        val_fraction=0.2,
        run_dir=run,
    ).fit(root / "train")
    return run, root / "test"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_lite0_export_matches_the_fitted_model(lite0_run, fmt):
    from headstart.export import export_model

    run, _ = lite0_run
    result = export_model(run, fmt)  # checked on the run's own training folder
    assert result.max_abs_diff < 1e-4 and result.checked_items == 32
    assert result.batch_sizes == [32, 1]
    sidecar = json.loads(open(result.sidecar).read())
    assert sidecar["inputs"][0]["shape"] == ["batch", 96, 96, 3]
    assert sidecar["parity"]["max_abs_diff"] == result.max_abs_diff


def test_lite0_onnx_engine_predicts_the_test_folder_like_torch(lite0_run):
    from headstart.export import export_model
    from headstart.inference import Predictor
    from headstart.predict import iter_predictions, list_inputs

    run, test = lite0_run
    if not (run / "export" / "model.onnx").is_file():
        export_model(run, "onnx")
    torch_p = Predictor.from_run(run)
    onnx_p = Predictor.from_run(run, engine="onnx")
    entries = list_inputs("image", [str(test)])
    a = np.stack([r.probabilities for r in iter_predictions(torch_p, entries)])
    b = np.stack([r.probabilities for r in iter_predictions(onnx_p, entries)])
    assert len(a) == len(entries) >= 50
    assert np.abs(a - b).max() < 1e-4
    assert (a.argmax(1) == b.argmax(1)).all()
    expected = torch_p.estimator.predict_proba([p for _, p in entries])
    assert np.abs(a - expected).max() < 1e-4


def test_minilm_onnx_export_matches_on_real_emails(tmp_path):
    from headstart import TextClassifier
    from headstart.datasets import DatasetMissing, spam_assassin
    from headstart.export import export_model

    try:
        texts, labels, _ = spam_assassin()
    except DatasetMissing as exc:
        pytest.fail(str(exc))
    labels = np.asarray(labels)
    rng = np.random.default_rng(0)
    pick = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), 12, replace=False) for c in np.unique(labels)]
    )
    train, check = pick[::2], pick[1::2]
    run = tmp_path / "spam"
    TextClassifier(
        "packaged:minilm-l6",
        strategy="feature_extract",
        max_length=128,
        truncation="chunks",
        max_chunks=3,
        num_workers=0,
        device="cpu",
        val_fraction=0.25,
        head_epochs=20,
        baseline=False,
        run_dir=run,
    ).fit([texts[i] for i in train], labels[train].tolist())
    emails = [texts[i] for i in check]
    result = export_model(run, "onnx", check=emails)
    assert result.max_abs_diff < 1e-4 and result.checked_items == len(emails)
    assert (run / "export" / "tokenizer" / "tokenizer.json").is_file()
    meta = json.loads((run / "export" / "model.onnx.json").read_text())
    assert meta["preprocess"]["max_chunks"] == 3 and meta["task"] == "text"
