"""The classic baselines beside every classification task (issue 28): what they fit on,
how they are chosen, saved and served, the verdict, and ``--strategy auto``'s choice.

Plumbing runs on the random-init ``tiny:cnn``: its network learns little in two epochs,
so on data a nearest neighbour separates, ``auto`` keeps the baseline, which is what the
round trips below need.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart import AudioClassifier, ImageClassifier
from headstart.baselines import (
    AudioFeatures,
    ClassicBaseline,
    PixelFeatures,
    image_featurizers,
    items_to_match,
    load_baseline,
    paired_difference,
    verdict,
)

from conftest import FAST, make_arrays


def _pattern_images(n_per_class: int = 12, side: int = 16, seed: int = 0):
    """Grey images whose class is a bright row band at one of three heights (noise
    around it): pixels separate them, a random network barely does."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, (side, side)).astype(np.uint8)
            img[2 + 5 * c : 4 + 5 * c] = 230
            images.append(np.repeat(img[..., None], 3, axis=2))
            labels.append(f"band{c}")
    return np.stack(images), np.array(labels)


def _vectors(featurizer, images):
    from PIL import Image

    return np.stack([featurizer(Image.fromarray(im)) for im in images])


# ---------------------------------------------------------------------- the models
def test_featurizers_shapes_and_choices():
    from PIL import Image

    img = Image.fromarray(np.zeros((28, 28, 3), np.uint8))
    assert PixelFeatures(16, colour=False)(img).shape == (256,)
    assert PixelFeatures(16, colour=True)(img).shape == (768,)
    assert PixelFeatures(16, colour=False, hog=True)(img).ndim == 1
    small = image_featurizers(8, colour=False)
    assert [f.hog for f in small] == [False]  # HOG needs 16 px and more
    big = image_featurizers(224, colour=True)
    assert big[0].side == 32 and [f.hog for f in big] == [False, True]
    wave = np.sin(np.linspace(0, 2000, 8000)).astype(np.float32)
    assert AudioFeatures(rate=16000)(wave).shape == (2 * (40 + 40 + 13),)
    assert AudioFeatures(rate=16000)(wave[:100]).shape == (186,)  # shorter than a window


def test_cross_validation_picks_the_best_candidate_and_refits_exactly(tmp_path):
    images, labels = _pattern_images()
    y = np.unique(labels, return_inverse=True)[1]
    fs = image_featurizers(16, colour=False)
    base = ClassicBaseline(fs, seed=0).fit([_vectors(f, images) for f in fs], y, 3)
    assert base.cv_folds_ == 5
    assert len(base.cv_) == len(fs) * 8  # 3 logreg + 3 k-NN + 2 SVM per feature set
    assert base.choice_["cv"] == max(r["cv"] for r in base.cv_)
    assert base.choice_["cv"] >= 0.95
    test_images, test_labels = _pattern_images(seed=1)
    X = _vectors(base.featurizer_, test_images)
    proba = base.predict_proba(X)
    assert proba.shape == (36, 3) and np.allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == np.unique(test_labels, return_inverse=True)[1]).mean() >= 0.95
    base.save(tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.pkl"))  # safetensors + JSON only
    again = load_baseline(tmp_path / "b")
    assert again.name == base.name
    np.testing.assert_array_equal(again.predict_proba(X), proba)


@pytest.mark.parametrize("model", ["logreg", "knn", "svm"])
def test_each_model_round_trips(model, tmp_path):
    images, labels = _pattern_images(6)
    y = np.unique(labels, return_inverse=True)[1]
    f = PixelFeatures(16, colour=False)
    base = ClassicBaseline([f]).fit([_vectors(f, images)], y, 3)
    base.choice_ = {
        **base.choice_,
        "model": model,
        "params": {"logreg": {"C": 0.1}, "knn": {"k": 3}, "svm": {"C": 1.0}}[model],
    }
    base._refit()
    X = _vectors(f, _pattern_images(4, seed=2)[0])
    base.save(tmp_path / model)
    np.testing.assert_array_equal(
        ClassicBaseline.load(tmp_path / model).predict_proba(X), base.predict_proba(X)
    )


def test_one_item_per_class_falls_back_to_the_nearest_neighbour():
    images, labels = _pattern_images(1)
    f = PixelFeatures(16, colour=False)
    base = ClassicBaseline([f]).fit([_vectors(f, images)], np.arange(3), 3)
    assert base.cv_folds_ == 0 and base.choice_["model"] == "knn"
    assert base.predict_proba(_vectors(f, images)).argmax(1).tolist() == [0, 1, 2]


def test_folds_smaller_than_k_skip_those_nearest_neighbour_candidates():
    """9 items, the smallest class 2: 2 folds of 4-5 training items, fewer than k = 5 (a
    first batch labelled from `headstart suggest` had fit stop in scikit-learn here)."""
    images, labels = _pattern_images(3)
    keep = list(range(9))
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    f = PixelFeatures(16, colour=False)
    base = ClassicBaseline([f]).fit([_vectors(f, images[keep])], y, 3)
    assert base.cv_folds_ == 2
    tried = [(r["model"], r["params"]) for r in base.cv_]
    assert ("knn", {"k": 1}) in tried and ("knn", {"k": 5}) not in tried


# ---------------------------------------------------------------------- the verdict
def test_paired_difference_and_verdict_lines():
    right = np.array([1] * 90 + [0] * 10)
    worse = np.array([1] * 60 + [0] * 40)
    d = paired_difference(right, worse)
    assert d["n"] == 100 and d["diff_points"] == pytest.approx(30.0)
    assert d["low_points"] > 0
    y = np.zeros(100, dtype=int)
    good = np.stack([right, 1 - right], 1).astype(float)
    bad = np.stack([worse, 1 - worse], 1).astype(float)
    v = verdict(y, good, bad, "src", "k-NN")
    assert v["winner"] == "transfer" and v["line"].startswith("transfer from src beats")
    v = verdict(y, bad, good, "src", "k-NN")
    assert v["winner"] == "baseline" and "transfer does not pay" in v["line"]
    v = verdict(y, good, good, "src", "k-NN")
    assert v["winner"] == "tie" and v["line"].startswith("a simple model is as good: k-NN")


def test_items_to_match_interpolates_in_log_items():
    curve = [(10, 0.5), (100, 0.7), (1000, 0.9)]
    assert items_to_match(curve, 0.5) == 10
    assert items_to_match(curve, 0.8) == pytest.approx(316.2, rel=1e-3)
    assert items_to_match(curve, 0.95) is None


# ---------------------------------------------------------------------- in the estimator
@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    """A tiny:cnn ``--strategy auto`` fit on band images: the baseline wins."""
    root = tmp_path_factory.mktemp("bl")
    images, labels = _pattern_images(12)
    clf = ImageClassifier(
        "tiny:cnn",
        strategy="auto",
        run_dir=root / "run",
        **{**FAST, "epochs": 1, "head_epochs": 1, "lr": 1e-5, "head_lr": 1e-5},
    ).fit(images, labels)
    return clf, root / "run"


def test_baseline_sees_only_the_training_part(baseline_run):
    clf, _ = baseline_run
    images, labels = _pattern_images(12)
    from headstart.data.images import open_source
    from headstart.data.splits import stratified_split

    src = open_source(images, labels)
    tr, va = stratified_split(src.labels, clf.config_.val_fraction, clf.config_.seed)
    base = clf.baseline_
    assert len(base.y_) == len(tr)  # fitted, and cross-validated, on the training part
    expected = _vectors(base.featurizer_, images[tr])
    np.testing.assert_array_equal(base.X_, expected)
    held_out = _vectors(base.featurizer_, images[va])
    assert not any((base.X_ == row).all(1).any() for row in held_out)


def test_auto_keeps_the_baseline_and_says_why(baseline_run):
    clf, run = baseline_run
    w = clf.metrics_["winner"]
    assert clf.winner_ == w["kept"] == "baseline"
    assert w["baseline"]["score"] > w["transfer"]["score"]
    assert w["why"].startswith("kept the classic baseline")
    assert clf.strategy_.name == "lp_ft"  # what auto trained
    config = json.loads((run / "config.json").read_text())
    assert config["winner"] == "baseline" and config["fit_config"]["strategy"] == "auto"
    m = clf.metrics_["validation"]
    assert m["accuracy"] == m["baseline"]["accuracy"]  # the kept model's metrics on top
    assert "transfer" in m and "verdict" in m and "calibration" not in m


def test_baseline_run_round_trips_through_load_predict_and_the_predictor(baseline_run):
    from headstart.inference import Predictor
    from headstart.tasks import load_estimator

    clf, run = baseline_run
    test_images, test_labels = _pattern_images(4, seed=3)
    expected = clf.predict_proba(list(test_images))
    np.testing.assert_array_equal(
        expected, clf._baseline_proba(clf._open_unlabeled(list(test_images)))
    )
    loaded = load_estimator(run)
    assert loaded.winner_ == "baseline"
    np.testing.assert_array_equal(loaded.predict_proba(list(test_images)), expected)
    assert loaded.predict(list(test_images)) == list(test_labels)
    m = loaded.evaluate(list(test_images), test_labels)
    assert m["accuracy"] == 1.0 and m["verdict"]["n"] == 12
    predictor = Predictor.from_run(run)
    results = predictor.predict(list(test_images) + ["/no/such.png"])
    np.testing.assert_allclose(
        np.stack([r.probabilities for r in results[:-1]]), expected, atol=1e-6
    )
    assert results[-1].error  # a bad item is its own error, as for the network
    with pytest.raises(ValueError, match="classic baseline"):
        Predictor.from_run(run, tta="flip")


def test_baseline_run_is_served_and_export_refuses_with_the_reason(baseline_run, tmp_path):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from headstart.export import ExportError, export_model
    from headstart.serve import ServeSettings, create_app

    clf, run = baseline_run
    img = _pattern_images(1, seed=4)[0][2]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    with TestClient(create_app({"bl": run}, ServeSettings())) as client:
        r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["prediction"] == "band2"
        [proba] = clf.predict_proba([img])
        assert r.json()["predictions"][0]["probability"] == pytest.approx(proba.max(), abs=1e-6)
    with pytest.raises(ExportError, match="kept its classic baseline"):
        export_model(run, out=tmp_path / "onnx")


def test_cli_evaluate_prints_the_verdict_first(baseline_run, tmp_path, capsys):
    from headstart.cli import main

    from conftest import write_folder

    _, run = baseline_run
    folder = write_folder(tmp_path / "test", *_pattern_images(3, seed=5))
    assert main(["evaluate", str(run), str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("verdict: a simple model is")
    assert any(
        line.strip().startswith("(the above is the kept classic baseline) the network")
        for line in out
    )


def test_a_network_that_wins_keeps_the_network_and_its_export(tmp_path):
    images, labels = make_arrays(n=48, size=16, n_classes=3)
    clf = ImageClassifier("tiny:cnn", strategy="auto", **FAST).fit(images, labels)
    assert clf.metrics_["winner"]["kept"] in ("transfer", "baseline")
    if clf.winner_ == "transfer":
        assert "transfer" not in clf.metrics_["validation"]
    assert clf.metrics_["baseline_name"].endswith("pixels")
    assert clf.metrics_["baseline_fit"]["candidates"]


def test_no_baseline_when_switched_off():
    images, labels = make_arrays(n=24, size=16, n_classes=2)
    clf = ImageClassifier("tiny:cnn", strategy="feature_extract", baseline=False, **FAST).fit(
        images, labels
    )
    assert not hasattr(clf, "baseline_")
    m = clf.evaluate(images, labels)
    assert "baseline" not in m and "verdict" not in m


def test_audio_gets_a_log_mel_baseline(tmp_path):
    rate = 8000
    rng = np.random.default_rng(0)
    waves, labels = [], []
    for i in range(24):
        hz = (300, 1200)[i % 2]
        t = np.arange(int(0.5 * rate)) / rate
        waves.append(
            (0.3 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))).astype(
                np.float32
            )
        )
        labels.append(("low", "high")[i % 2])
    clf = AudioClassifier(
        "scratch:audio:cnn",
        strategy="feature_extract",
        array_rate=rate,
        run_dir=tmp_path / "run",
        **{**FAST, "batch_size": 8},
    ).fit(waves, labels)
    assert "log-mel" in clf.metrics_["baseline_name"]
    m = clf.evaluate(waves, labels)
    assert m["baseline"]["accuracy"] == 1.0
    again = AudioClassifier.load(tmp_path / "run")
    np.testing.assert_array_equal(
        again._baseline_proba(again._open_labeled(waves, labels, again.classes_, again.config_)),
        clf._baseline_proba(clf._open_labeled(waves, labels, clf.classes_, clf.config_)),
    )


def test_cli_fit_prints_the_verdict_and_what_auto_kept(tmp_path, capsys):
    from headstart.cli import main

    from conftest import write_folder

    train = write_folder(tmp_path / "train", *_pattern_images(12))
    test = write_folder(tmp_path / "test", *_pattern_images(3, seed=6))
    assert (
        main(
            [
                "-q",
                "fit",
                str(train),
                "--test",
                str(test),
                "--backbone",
                "tiny:cnn",
                "--epochs",
                "1",
                "--head-epochs",
                "1",
                "--lr",
                "1e-5",
                "--head-lr",
                "1e-5",
                "--num-workers",
                "0",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert (
        "strategy auto" in lines[0] and "kept the classic baseline; the network's best" in lines[0]
    )
    assert lines[1].startswith("  verdict (test): a simple model is")
    assert lines[2].startswith("  strategy auto: kept the classic baseline")
