"""Calibrated probabilities: temperature scaling fitted on the validation part after
training, ECE / reliability bins against naive implementations, the temperature in the
saved weights (round trip, old runs without it, ONNX export), and the report's diagram.

Every fit here is the random-init ``tiny:cnn`` on generated images with a quarter of the
labels flipped, so the validation part has wrong items (a separable one fits no
temperature: see ``test_perfect_or_tiny_validation_fits_no_temperature``).
"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from headstart import ImageClassifier
from headstart.calibration import (
    MIN_ITEMS,
    T_BOUNDS,
    before_after,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    softmax,
    temperature_or_reason,
)
from headstart.features import clear_memory_cache
from headstart.heads import Head, HeadSpec, TransferModel

from conftest import CLASS_NAMES, FAST, make_arrays, write_folder


def noisy(n: int, seed: int, flip: float = 0.25):
    """3-class separable images with a share ``flip`` of the labels replaced at random."""
    images, labels = make_arrays(n=n, n_classes=3, seed=seed)
    rng = np.random.default_rng(seed + 100)
    swap = rng.random(n) < flip
    labels = labels.copy()
    labels[swap] = rng.choice(list(CLASS_NAMES), swap.sum())
    return images, labels


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    train = write_folder(root / "train", *noisy(105, seed=1))
    val = write_folder(root / "val", *noisy(45, seed=2))
    test = write_folder(root / "test", *noisy(60, seed=3))
    est = ImageClassifier(
        "tiny:cnn", strategy="feature_extract", run_dir=root / "run", **{**FAST, "head_epochs": 10}
    )
    est.fit(str(train), validation=str(val))
    return SimpleNamespace(
        est=est,
        run=root / "run",
        root=root,
        train=train,
        val=val,
        test=test,
        items=sorted(str(p) for p in test.rglob("*.png")),
    )


def logits_and_labels(n: int = 3000, k: int = 4, seed: int = 0, scale: float = 2.0):
    """Logits of a calibrated model (labels drawn from its own softmax)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    p = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


# ---------------------------------------------------------------------- pure functions
def test_temperature_scaling_lowers_nll_of_an_over_confident_model():
    z, y = logits_and_labels()
    over = 10 * z  # the same model, ten times too sure of itself
    t = fit_temperature(over, y)
    assert 8 < t < 12  # the true factor back, within the noise of 3000 items
    assert nll(over, y, t) < 0.5 * nll(over, y)
    assert np.array_equal((over / t).argmax(1), over.argmax(1))  # accuracy unchanged
    assert abs(fit_temperature(z, y) - 1) < 0.1  # a calibrated model is left about as is


def test_fit_temperature_matches_a_brute_force_grid():
    rng = np.random.default_rng(3)
    for trial in range(4):
        z = rng.normal(size=(300, 5)) * rng.uniform(0.3, 8)
        y = rng.integers(0, 5, 300)
        y[:150] = z[:150].argmax(1)  # half the items follow the logits
        grid = np.exp(np.linspace(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1]), 20001))
        losses = [nll(z, y, t) for t in grid]
        best = grid[int(np.argmin(losses))]
        t = fit_temperature(z, y)
        assert nll(z, y, t) <= min(losses) + 1e-9
        assert abs(math.log(t) - math.log(best)) < 1e-3, trial


def test_nll_and_softmax_against_plain_formulas():
    z, y = logits_and_labels(n=50, k=3, seed=1)
    p = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    np.testing.assert_allclose(softmax(z, 2.0), p, rtol=1e-12)
    assert nll(z, y, 2.0) == pytest.approx(-np.mean(np.log(p[np.arange(50), y])), rel=1e-12)


def naive_ece(y, proba, n_bins=15):
    total, n = 0.0, len(y)
    for i in range(n_bins):
        lo, hi = i / n_bins, (i + 1) / n_bins
        conf, right = [], []
        for row, label in zip(proba, y):
            c = max(row)
            if (lo < c <= hi) or (i == 0 and c == 0):
                conf.append(c)
                right.append(float(list(row).index(c) == label))
        if conf:
            total += len(conf) / n * abs(sum(right) / len(right) - sum(conf) / len(conf))
    return total


def test_ece_and_reliability_bins_against_a_naive_loop():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.full(4, 0.7), size=500)
    y = rng.integers(0, 4, 500)
    # confidences right on a bin edge (9/15 = 0.6, 1.0) belong to the bin below the edge
    proba[:3] = [[0.6, 0.4, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.2, 0.6, 0.2, 0.0]]
    assert expected_calibration_error(y, proba) == pytest.approx(naive_ece(y, proba), abs=1e-12)
    bins = reliability(y, proba)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 500
    assert bins[8]["upper"] == pytest.approx(0.6) and bins[14]["upper"] == 1.0
    for b in bins:
        inside = [i for i in range(500) if b["lower"] < proba[i].max() <= b["upper"]]
        assert b["count"] == len(inside)
        if inside:
            assert b["confidence"] == pytest.approx(proba[inside].max(1).mean())
            assert b["accuracy"] == pytest.approx(np.mean(proba[inside].argmax(1) == y[inside]))
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    # a textbook case: always 90 % sure, right half the time
    sure = np.tile([0.9, 0.1], (10, 1))
    assert expected_calibration_error(np.arange(10) % 2, sure) == pytest.approx(0.4)


def test_perfect_or_tiny_validation_fits_no_temperature():
    z, y = logits_and_labels(n=40, k=3)
    t, why = temperature_or_reason(z[: MIN_ITEMS - 1], y[: MIN_ITEMS - 1])
    assert t == 1.0 and "fewer than" in why
    t, why = temperature_or_reason(z, z.argmax(1))  # every item right: NLL falls to T -> 0
    assert t == 1.0 and "predicted right" in why
    t, why = temperature_or_reason(z, y)
    assert why is None and t != 1.0


def test_before_after_reports_both_sides():
    z, y = logits_and_labels(n=400, seed=4)
    c = before_after(10 * z, y, 10.0)
    assert c["nll_after"] < c["nll_before"] and c["ece_after"] < c["ece_before"]
    assert c["n"] == 400 and len(c["reliability_before"]) == len(c["reliability_after"]) == 15


# ---------------------------------------------------------------------- the head
def test_temperature_is_a_buffer_that_divides_the_logits_and_nothing_trains():
    head = Head(8, 3, HeadSpec(hidden=(4,)))
    assert "temperature" not in dict(head.named_parameters())
    assert float(head.temperature) == 1.0
    torch.nn.init.normal_(head.layers[-1].weight)
    x = torch.randn(5, 8)
    head.temperature.fill_(4.0)
    torch.testing.assert_close(head(x), head.logits(x) / 4.0)
    head.reset_parameters()
    assert float(head.temperature) == 1.0


def test_fit_calibrates_on_validation_and_records_it(run):
    est = run.est
    c = est.metrics_["calibration"]
    t = float(est.model_.head.temperature)
    assert c["fitted_on"] == "validation" and c["n"] == 45
    assert t == pytest.approx(c["temperature"], rel=1e-6) and t != 1.0
    assert c["nll_after"] < c["nll_before"]
    v = est.metrics_["validation"]
    assert v["log_loss"] == pytest.approx(c["nll_after"], rel=1e-4)
    assert v["ece"] == pytest.approx(c["ece_after"], abs=1e-4)
    assert v["calibration"]["nll_before"] == pytest.approx(c["nll_before"], rel=1e-4)
    assert len(v["reliability"]) == 15
    # the trainer saw T = 1: the stage counts are the head's parameters only
    assert est.stages_[0]["trainable_params"] == 32 * 3 + 3


def test_calibration_lowers_nll_of_a_deliberately_over_confident_model(run):
    est = ImageClassifier.load(run.run)
    head = est.model_.head
    t = float(head.temperature)
    with torch.no_grad():  # logits ten times the calibrated ones, no temperature
        head.layers[-1].weight.mul_(10 / t)
        head.layers[-1].bias.mul_(10 / t)
        head.temperature.fill_(1.0)
    before = est.evaluate(str(run.test))
    predicted = est.predict(run.items)
    val = est._open_labeled(str(run.val), None, est.classes_, est.config_)
    est._calibrate(val, est.config_)
    c = est.metrics_["calibration"]
    assert 5 < c["temperature"] < 20 and c["nll_after"] < c["nll_before"]
    after = est.evaluate(str(run.test))
    assert after["log_loss"] < before["log_loss"]  # on held-out items too
    assert after["ece"] < before["ece"]
    assert after["accuracy"] == before["accuracy"] and est.predict(run.items) == predicted
    assert after["calibration"]["nll_before"] == pytest.approx(before["log_loss"], rel=1e-4)


def test_no_calibrate_keeps_temperature_one():
    x, y = noisy(60, seed=5)
    est = ImageClassifier(
        "tiny:cnn", strategy="feature_extract", calibrate=False, **{**FAST, "val_fraction": 0.3}
    ).fit(x, y)
    assert float(est.model_.head.temperature) == 1.0
    assert est.metrics_["calibration"] == {"temperature": 1.0, "reason": "calibrate=False"}
    assert est.metrics_["validation"]["calibration"]["reason"] == "calibrate=False"
    nothing = ImageClassifier(
        "tiny:cnn", strategy="feature_extract", **{**FAST, "val_fraction": 0.0}
    ).fit(x, y)
    assert nothing.metrics_["calibration"]["reason"] == "no validation part"


def test_cli_flag_no_calibrate():
    from headstart.cli import build_parser, fit_config_from_args

    parse = build_parser().parse_args
    assert fit_config_from_args(parse(["fit", "DATA"])).calibrate is True
    assert fit_config_from_args(parse(["fit", "DATA", "--no-calibrate"])).calibrate is False


# ---------------------------------------------------------------------- artifacts
def test_save_load_keeps_the_temperature(run):
    expected = run.est.predict_proba(run.items)
    saved = load_file(str(run.run / "model.safetensors"))
    assert float(saved["head.temperature"]) == float(run.est.model_.head.temperature)
    clear_memory_cache()  # the loaded model computes its own features
    loaded = ImageClassifier.load(run.run)
    assert float(loaded.model_.head.temperature) == float(run.est.model_.head.temperature)
    np.testing.assert_array_equal(loaded.predict_proba(run.items), expected)
    config = json.loads((run.run / "config.json").read_text())
    assert config["metrics"]["calibration"]["temperature"] == pytest.approx(
        float(loaded.model_.head.temperature), rel=1e-6
    )


def test_run_saved_before_temperature_existed_loads_uncalibrated(run, tmp_path):
    from headstart.zoo import create_backbone

    old = tmp_path / "old"
    shutil.copytree(run.run, old)
    state = load_file(str(old / "model.safetensors"))
    del state["head.temperature"]
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((old / "config.json").read_text())
    del config["metrics"]["calibration"]
    (old / "config.json").write_text(json.dumps(config))
    est = ImageClassifier.load(old)  # strict load_state_dict: T = 1 for the missing key
    assert float(est.model_.head.temperature) == 1.0
    feats = run.est._features(run.est._open_unlabeled(run.items))
    t = float(run.est.model_.head.temperature)
    raw = torch.softmax(run.est._head_logits(feats) * t, 1).numpy()
    np.testing.assert_allclose(est.predict_proba(run.items), raw, atol=1e-5)
    m = est.evaluate(str(run.test))
    assert m["calibration"]["temperature"] == 1.0
    assert m["calibration"]["reason"] == "the run has no fitted temperature"
    assert create_backbone(str(old)).feature_dim == 32  # still a source of the next transfer
    # a checkpoint written before the buffer existed still resumes (no missing key)
    model = TransferModel(torch.nn.Linear(2, 32), Head(32, 3))
    weights = {k: v for k, v in model.state_dict().items() if k != "head.temperature"}
    assert model.load_state_dict(weights, strict=False).missing_keys == []


def test_chained_transfer_trains_the_kept_head_at_temperature_one(run):
    x, y = noisy(48, seed=6)
    child = ImageClassifier(
        str(run.run), strategy="feature_extract", keep_head=True, calibrate=False, **FAST
    ).fit(x, y)
    assert float(run.est.model_.head.temperature) != 1.0
    assert float(child.model_.head.temperature) == 1.0


def test_onnx_export_carries_the_temperature(run):
    import onnxruntime as ort

    from headstart.export import export_model
    from headstart.inference import Predictor

    est = ImageClassifier.load(run.run)
    assert float(est.model_.head.temperature) != 1.0
    result = export_model(run.run, "onnx", out=run.root / "model.onnx", check=str(run.test))
    assert result.max_abs_diff <= result.tolerance
    predictor = Predictor(est)
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    got = session.run(None, predictor.collate(predictor.prepare_many(run.items)))[0]
    expected = est.predict_proba(run.items)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    feats = est._features(est._open_unlabeled(run.items))
    with torch.inference_mode():
        uncalibrated = torch.softmax(est.model_.head.logits(feats), 1).numpy()
    assert np.abs(got - uncalibrated).max() > 0.05  # the graph divides by T


# ---------------------------------------------------------------------- report
def test_report_draws_a_reliability_diagram(run):
    from headstart.report import _calibration_section
    from headstart.report.plots import reliability_svg

    m = run.est.evaluate(str(run.test))
    html = _calibration_section(m)
    assert "<h2>Calibration</h2>" in html and html.count("<svg") == 1
    assert f"T = {m['calibration']['temperature']:.3f}" in html
    uncalibrated = _calibration_section(
        {**m, "calibration": {"temperature": 1.0, "reason": "calibrate=False"}}
    )
    assert "Not calibrated (calibrate=False)" in uncalibrated and "<svg" in uncalibrated
    assert _calibration_section({"accuracy": 1.0}) == ""
    assert reliability_svg(m["reliability"]).startswith("<svg")


def test_blended_text_run_blends_the_calibrated_encoder(tmp_path):
    """--blend mean averages the TF-IDF baseline with the encoder's calibrated
    probabilities, and the predictor (the run's graph + the blend) agrees."""
    from headstart import TextClassifier
    from headstart.inference import Predictor
    from headstart.tasks.text import blend_proba

    from conftest import TEXT_FIT, make_texts

    texts, labels = make_texts(80, seed=0)
    rng = np.random.default_rng(1)
    labels = [
        ("digits" if lab == "letters" else "letters") if rng.random() < 0.25 else lab
        for lab in labels
    ]
    est = TextClassifier(
        "tiny:bert",
        strategy="feature_extract",
        run_dir=tmp_path / "run",
        **{**TEXT_FIT, "val_fraction": 0.3, "baseline": True, "blend": True, "blend_mode": "mean"},
    ).fit(texts, labels)
    t = float(est.model_.head.temperature)
    assert t != 1.0 and est.metrics_["calibration"]["temperature"] == pytest.approx(t, rel=1e-6)
    items, _ = make_texts(12, seed=5)
    source = est._open_unlabeled(items)
    own = est._head_proba(est._features(source))
    np.testing.assert_allclose(
        est.predict_proba(items), blend_proba(own, est.baseline_.predict_proba(items)), atol=1e-6
    )
    predictor = Predictor.from_run(tmp_path / "run", engine="torch")
    got = np.stack([r.probabilities for r in predictor.predict(items, batch_size=5)])
    np.testing.assert_allclose(got, est.predict_proba(items), atol=1e-4, rtol=0)
