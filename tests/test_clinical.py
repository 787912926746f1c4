"""Clinical evaluation (issue 34): operating points chosen on validation, bootstrap
intervals checked against scipy's, and the threshold carried into predict / serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart.clinical import (
    auprc,
    auroc,
    bootstrap_interval,
    choose_threshold,
    clinical_metrics,
    point_metrics,
)

from conftest import FAST, make_arrays


def _scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.35
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, score


def test_auroc_and_auprc_equal_sklearns_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    for _ in range(10):
        y = rng.random(80) < 0.3
        s = np.round(rng.random(80), 1)  # many ties
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_item_bootstrap_matches_scipy_percentile_interval():
    from scipy.stats import bootstrap

    y, score = _scores()
    for stat in (auroc, lambda yy, ss: point_metrics(yy, ss >= 0.5)["sensitivity"]):
        ours = bootstrap_interval(stat, y, score, n_boot=4000, seed=0)
        ref = bootstrap(
            (y, score),
            stat,
            paired=True,
            vectorized=False,
            n_resamples=4000,
            method="percentile",
            random_state=1,
        ).confidence_interval
        assert ours[0] == pytest.approx(ref.low, abs=0.015)
        assert ours[1] == pytest.approx(ref.high, abs=0.015)
        assert ours[0] < stat(y, score) < ours[1]
    # clinical_metrics' vectorised resamples (count weights) give the same intervals
    c = clinical_metrics(y, score, 0.5, n_boot=4000)
    for name, stat in (("auroc", auroc), ("sensitivity", None)):
        fn = stat or (lambda yy, ss: point_metrics(yy, ss >= 0.5)["sensitivity"])
        ref = bootstrap(
            (y, score), fn, paired=True, vectorized=False, n_resamples=4000,
            method="percentile", random_state=1,
        ).confidence_interval  # fmt: skip
        assert c[name]["low"] == pytest.approx(ref.low, abs=0.015)
        assert c[name]["high"] == pytest.approx(ref.high, abs=0.015)


def test_weighted_resamples_equal_the_resampled_items_exactly():
    """A resample with repeats is the items weighted by how often each was drawn: the
    vectorised statistics equal point_metrics / auroc / auprc on the drawn items."""
    from headstart.clinical import POINT_METRICS, _weighted_stats

    rng = np.random.default_rng(7)
    for _ in range(20):
        y = rng.random(50) < 0.4
        s = np.round(rng.random(50), 1)  # ties
        order = np.argsort(s, kind="mergesort")
        y, s = y[order], s[order]
        idx = rng.integers(0, 50, 50)
        w = np.bincount(idx, minlength=50)[None].astype(float)
        pm = point_metrics(y[idx], s[idx] >= 0.5)
        ref = [pm[k] for k in POINT_METRICS] + [auroc(y[idx], s[idx]), auprc(y[idx], s[idx])]
        np.testing.assert_allclose(_weighted_stats(y, s, 0.5, w)[0], ref, atol=1e-12)


def test_patient_bootstrap_matches_scipy_over_patients_and_is_wider():
    """Resampling patients = scipy's bootstrap over the patient ids (each drawn id brings
    all its images). With a patient effect the patient-level interval is wider than the
    item-level one, which treats correlated images as independent."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(40), 6)
    effect = rng.normal(0, 0.25, 40)[patients]  # images of one patient look alike
    y = np.repeat(rng.random(40) < 0.4, 6)
    score = np.clip(0.4 + 0.2 * y + effect + rng.normal(0, 0.05, len(y)), 0, 1)
    members = [np.flatnonzero(patients == p) for p in range(40)]

    def by_patient(ids):
        idx = np.concatenate([members[int(p)] for p in ids])
        return auroc(y[idx], score[idx])

    ref = bootstrap(
        (np.arange(40),),
        by_patient,
        vectorized=False,
        n_resamples=3000,
        method="percentile",
        random_state=3,
    ).confidence_interval
    ours = bootstrap_interval(auroc, y, score, groups=patients, n_boot=3000, seed=0)
    assert ours[0] == pytest.approx(ref.low, abs=0.02)
    assert ours[1] == pytest.approx(ref.high, abs=0.02)
    items = bootstrap_interval(auroc, y, score, n_boot=3000, seed=0)
    assert (ours[1] - ours[0]) > 1.3 * (items[1] - items[0])
    c = clinical_metrics(y, score, 0.5, groups=patients, n_boot=3000)
    assert c["auroc"]["low"] == pytest.approx(ref.low, abs=0.02)
    assert c["auroc"]["high"] == pytest.approx(ref.high, abs=0.02)
    assert c["bootstrap"]["unit"] == "patient" and c["bootstrap"]["groups"] == 40


def test_operating_points_meet_the_asked_value_on_validation():
    y, score = _scores(seed=4)
    for target in (0.8, 0.9, 0.95, 0.99):
        op = choose_threshold(y, score, f"sensitivity={target}")
        assert op["validation"]["sensitivity"] >= target
        # the highest such threshold: a hair above it misses the target
        assert point_metrics(y, score >= np.nextafter(op["threshold"], 2))["sensitivity"] < target
        op = choose_threshold(y, score, f"specificity={target}")
        assert op["validation"]["specificity"] >= target
        below = point_metrics(y, score >= np.nextafter(op["threshold"], -1))
        assert (
            below["specificity"] < target or below["sensitivity"] == op["validation"]["sensitivity"]
        )
    youden = choose_threshold(y, score, "youden")
    j = youden["validation"]["sensitivity"] + youden["validation"]["specificity"]
    best = max(
        point_metrics(y, score >= t)["sensitivity"] + point_metrics(y, score >= t)["specificity"]
        for t in np.unique(score)
    )
    assert j == pytest.approx(best)
    with pytest.raises(ValueError, match="sensitivity=0.95"):
        choose_threshold(y, score, "sens=0.9")


def test_clinical_metrics_block():
    y, score = _scores(seed=5)
    c = clinical_metrics(y, score, 0.5, n_boot=500)
    pm = point_metrics(y, score >= 0.5)
    assert c["confusion_matrix"] == [[pm["tn"], pm["fp"]], [pm["fn"], pm["tp"]]]
    for name in ("sensitivity", "specificity", "ppv", "npv", "auroc", "auprc"):
        v = c[name]
        assert v["low"] <= v["value"] <= v["high"], name
    assert c["bootstrap"]["unit"] == "item"


def test_fit_saves_the_operating_point_and_predict_and_serving_apply_it(tmp_path):
    from headstart import FitConfig, ImageClassifier
    from headstart.inference import Predictor

    with pytest.raises(ValueError, match="operating_point"):
        FitConfig(operating_point="sensitivity=95")
    images, labels = make_arrays(80, seed=3)
    run = tmp_path / "run"
    clf = ImageClassifier(
        "tiny:cnn",
        run_dir=run,
        operating_point="sensitivity=0.9",
        val_fraction=0.3,
        baseline=False,
        **FAST,
    )
    clf.fit(images, labels)
    op = clf.operating_point_
    assert op["positive"] == "b" and op["validation"]["sensitivity"] >= 0.9
    val = clf.metrics_["validation"]["clinical"]
    assert val["sensitivity"]["value"] >= 0.9 and val["threshold"] == op["threshold"]
    saved = json.loads((run / "config.json").read_text())["operating_point"]
    assert saved["threshold"] == op["threshold"]
    loaded = ImageClassifier.load(run)
    proba = loaded.predict_proba(images[:20])
    expected = np.where(proba[:, 1] >= op["threshold"], "b", "a")
    assert list(loaded.predict(images[:20])) == list(expected)
    predictor = Predictor(loaded)
    got = [predictor.labels(r.probabilities) for r in predictor.predict(list(images[:20]))]
    served = np.array([r.probabilities[1] for r in predictor.predict(list(images[:20]))])
    assert got == list(np.where(served >= op["threshold"], "b", "a"))
    # three classes need a positive class for one-vs-rest
    three, names = make_arrays(60, n_classes=3, seed=1)
    with pytest.raises(ValueError, match="positive-class"):
        ImageClassifier("tiny:cnn", operating_point="youden", baseline=False, **FAST).fit(
            three, names
        )
    ovr = ImageClassifier(
        "tiny:cnn",
        operating_point="youden",
        positive_class="c",
        val_fraction=0.3,
        baseline=False,
        **FAST,
    ).fit(three, names)
    assert ovr.evaluate(three, names)["clinical"]["positive"] == "c"
