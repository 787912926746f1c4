"""Text classification on ``tiny:bert`` (2 layers, 32-d, character vocabulary): every
strategy, LoRA adapters, save / load, the TF-IDF baseline and blends, chained transfer,
multi-label, the supervised contrastive loss. Its data are two classes that a character
model separates at once: words of letters vs words of digits."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from headstart import TextClassifier
from headstart.data.images import DataError
from headstart.data.text import collate_text, encode_texts
from headstart.features import clear_memory_cache
from headstart.zoo import create_backbone

from conftest import make_multi_label_texts
from text_common import CLASSES, DIGIT_WORDS, LETTER_WORDS, STRATEGIES, TEXT_FAST, make_texts


# ====================================================================== 5. strategies
@pytest.fixture(scope="module")
def fitted(text_data, tmp_path_factory):
    """One tiny:bert fit per strategy, each saved in its own run directory (the encoder
    alone: no TF-IDF blend, which the text defaults add)."""
    (X, y), _ = text_data
    runs = {}
    for strategy in STRATEGIES:
        run_dir = tmp_path_factory.mktemp(f"text_{strategy}")
        clf = TextClassifier(
            "tiny:bert",
            strategy=strategy,
            partial_groups=1,
            lora_r=2,
            run_dir=run_dir,
            blend=False,
            **TEXT_FAST,
        )
        clf.fit(X, y)
        runs[strategy] = (clf, run_dir)
    return runs


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_fits_and_predicts_known_classes(fitted, text_data, strategy):
    clf, _ = fitted[strategy]
    _, (Xt, yt) = text_data
    pred = clf.predict(Xt)
    assert len(pred) == len(Xt) and set(pred) <= set(CLASSES)
    assert clf.classes_ == CLASSES
    assert clf.score(Xt, yt) >= 0.8
    proba = clf.predict_proba(Xt)
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert clf.predict("abc bad cafe") in (["letters"], ["digits"])  # one text as a str
    expected = {
        "feature_extract": ["linear_probe"],
        "finetune": ["finetune"],
        "partial": ["partial"],
        "lp_ft": ["linear_probe", "finetune"],
        "lora": ["linear_probe", "lora"],
        "gradual": ["linear_probe", "unfreeze_1", "unfreeze_2", "unfreeze_3"],
    }
    assert [s["stage"] for s in clf.stages_] == expected[strategy]


def test_partial_trains_the_last_block_and_the_head(fitted):
    clf, _ = fitted["partial"]
    bert = clf.model_.backbone.model
    last_block = sum(p.numel() for p in bert.encoder.layer[-1].parameters())
    head = sum(p.numel() for p in clf.model_.head.parameters())
    [summary] = clf.stages_
    assert summary["trainable_groups"] == ["layer.1"]
    assert summary["trainable_params"] == last_block + head
    assert summary["total_params"] == sum(p.numel() for p in clf.model_.parameters())


def test_finetune_trains_everything(fitted):
    clf, _ = fitted["finetune"]
    [summary] = clf.stages_
    assert (
        summary["trainable_params"]
        == summary["total_params"]
        == sum(p.numel() for p in clf.model_.parameters())
    )
    assert summary["trainable_groups"] == ["embeddings", "layer.0", "layer.1"]


def test_lora_trains_adapters_and_head_only(fitted):
    clf, _ = fitted["lora"]
    named = dict(clf.model_.named_parameters())
    lora = sum(p.numel() for n, p in named.items() if "lora_" in n)
    head = sum(p.numel() for p in clf.model_.head.parameters())
    total = sum(p.numel() for p in named.values())
    probe, stage = clf.stages_
    assert stage["stage"] == "lora" and stage["trainable_groups"] == ["lora adapters"]
    assert lora == 2 * 2 * (2 * 32 + 32 * 2)  # 2 blocks x (query, value) x (A + B), r=2
    assert stage["trainable_params"] == lora + head
    assert stage["total_params"] == total
    assert stage["trainable_params"] < 0.05 * total
    assert probe["trainable_params"] == head
    # the adapters did train (B starts at zero)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in named.items() if "lora_B" in n)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_save_and_load_give_identical_probabilities(fitted, text_data, strategy):
    from headstart.tasks import load_estimator

    clf, run_dir = fitted[strategy]
    _, (Xt, _) = text_data
    expected = clf.predict_proba(Xt)
    clear_memory_cache()  # the loaded model must compute its own features
    loaded = TextClassifier.load(run_dir)
    np.testing.assert_allclose(loaded.predict_proba(Xt), expected, atol=1e-6, rtol=0)
    assert loaded.classes_ == CLASSES and loaded.predict(Xt) == clf.predict(Xt)
    assert loaded.preprocess_ == clf.preprocess_
    clear_memory_cache()
    any_task = load_estimator(run_dir)
    assert type(any_task) is TextClassifier
    np.testing.assert_allclose(any_task.predict_proba(Xt), expected, atol=1e-6, rtol=0)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["task"] == "text" and config["classes"] == CLASSES
    assert config["preprocess"] == {
        "kind": "text",
        "max_length": 64,
        "truncation": "head",
        "max_chunks": 1,
    }
    assert (config["adapter"] is not None) == (strategy == "lora")


def test_lora_run_holds_a_peft_adapter(fitted):
    clf, run_dir = fitted["lora"]
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == ["query", "value"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    assert all("lora_A" in k or "lora_B" in k for k in tensors)
    assert len(tensors) == 8  # 2 blocks x (query, value) x (A, B)
    ours = {n: p for n, p in clf.model_.backbone.named_parameters() if "lora_" in n}
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in ours.values())
    head = load_file(str(adapter / "head.safetensors"))
    assert float(head.pop("temperature")) == float(clf.model_.head.temperature)  # calibration
    assert sum(t.numel() for t in head.values()) == 32 * 2 + 2


def test_loaded_lora_model_keeps_its_adapters(fitted):
    _, run_dir = fitted["lora"]
    loaded = TextClassifier.load(run_dir)
    assert loaded.model_.backbone.lora is not None
    assert any("lora_" in n for n, _ in loaded.model_.backbone.named_parameters())


def test_a_long_text_is_a_text_and_a_folder_is_refused(fitted, tmp_path):
    """A text longer than a file name can be (255 bytes) is predicted, not an OSError from
    checking whether it names a file; a folder is an error naming what a text model reads."""
    from headstart.predict import list_inputs

    clf, _ = fitted["feature_extract"]
    long = " ".join(["alpha"] * 120)  # 719 characters, no slash: one "file name"
    assert clf.predict(long) == clf.predict([long]) and len(clf.predict(long)) == 1
    assert clf.predict("a\x00b")  # a NUL byte: a text too
    assert list_inputs("text", [long])[0][1] == long
    assert list_inputs("text", [""]) == [("(empty text)", "")]  # not Path("") = the cwd
    for refused in (
        lambda: clf.predict(str(tmp_path)),
        lambda: list_inputs("text", [str(tmp_path)]),
    ):
        with pytest.raises(DataError, match="a folder; a text model reads texts"):
            refused()
    with pytest.raises(DataError, match="a folder; texts are read from a table file"):
        clf.evaluate(str(tmp_path))  # labeled data: not "no such file"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: unsupported table format '.txt'"):
        list_inputs("text", [str(tmp_path / "notes.txt")])


def test_features_are_cached_per_fit(fitted, text_data, monkeypatch):
    """A second predict on the same texts reads the feature cache, not the backbone."""
    clf, _ = fitted["feature_extract"]
    _, (Xt, _) = text_data
    first = clf.predict_proba(Xt)
    import headstart.tasks.base as base

    def fail(*a, **k):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(base, "compute_features", fail)
    np.testing.assert_array_equal(clf.predict_proba(Xt), first)


# ====================================================================== 6. baseline
def test_evaluate_reports_the_tfidf_baseline(fitted, text_data):
    clf, _ = fitted["feature_extract"]
    _, (Xt, yt) = text_data
    m = clf.evaluate(Xt, yt)
    assert m["n"] == 20
    base = m["baseline"]
    assert set(base) == {"accuracy", "macro_f1", "auroc", "n", "name"}
    assert base["n"] == 20 and base["accuracy"] == 1.0  # same word lists
    assert base["name"] == clf.metrics_["baseline_name"]
    assert m["verdict"]["n"] == 20 and m["verdict"]["winner"] in ("transfer", "tie", "baseline")
    assert clf.metrics_["baseline_name"].startswith("TF-IDF")
    assert "baseline" in clf.metrics_["validation"]


def test_no_baseline_when_switched_off(text_data):
    (X, y), (Xt, yt) = text_data
    clf = TextClassifier("tiny:bert", strategy="feature_extract", baseline=False, **TEXT_FAST).fit(
        X, y
    )
    assert "baseline" not in clf.evaluate(Xt, yt)


def test_tfidf_baseline_separates_trivial_classes():
    from headstart.baselines import TfidfBaseline

    (X, y), (Xt, yt) = make_texts(30, seed=2), make_texts(30, seed=3)
    index = {c: i for i, c in enumerate(CLASSES)}
    base = TfidfBaseline().fit(X, np.array([index[c] for c in y]))
    proba = base.predict_proba(Xt)
    assert proba.shape == (30, 2)
    assert [CLASSES[i] for i in proba.argmax(1)] == yt
    multi = TfidfBaseline().fit(X, np.eye(2)[[index[c] for c in y]])
    assert multi.predict_proba(Xt).shape == (30, 2)


# ---------------------------------------------------------------------- blend (--blend)
def _blend_fixture_texts():
    """Letters/digits texts whose test half mixes both kinds of words, so the encoder and
    TF-IDF disagree on some texts (the trivial data make both certain)."""
    (X, y), (Xt, yt) = make_texts(40, seed=0), make_texts(20, seed=1)
    Xt = [a + " " + b for a, b in zip(Xt, Xt[1:] + Xt[:1])]
    return (X, y), (Xt, yt)


def test_blend_predicts_the_mean_of_encoder_and_tfidf_probabilities(tmp_path):
    from headstart.inference import Predictor
    from headstart.metrics import classification_metrics

    (X, y), (Xt, yt) = _blend_fixture_texts()
    clf = TextClassifier(
        "tiny:bert",
        strategy="feature_extract",
        blend=True,
        blend_mode="mean",
        run_dir=tmp_path / "run",
        **TEXT_FAST,
    ).fit(X, y)
    own = clf._head_proba(clf._features(clf._open_unlabeled(Xt)))
    tfidf = clf.baseline_.predict_proba(Xt)
    assert np.abs(own - tfidf).max() > 0.05  # two different models
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba, (own + tfidf) / 2, atol=1e-7)
    assert [clf.classes_[i] for i in proba.argmax(1)] == clf.predict(Xt)

    m = clf.evaluate(Xt, yt)  # its own metrics are the blend's; the parts beside them
    labels = [clf.classes_.index(c) for c in yt]
    for key, p in ((None, proba), ("encoder", own), ("baseline", tfidf)):
        ref = classification_metrics(labels, p, clf.classes_)
        got = m if key is None else m[key]
        assert got["accuracy"] == pytest.approx(ref["accuracy"])
        assert got["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert "blend" not in m
    assert "_baseline_memo" not in clf.__dict__  # no test set kept alive after evaluate

    loaded = TextClassifier.load(tmp_path / "run")  # the setting and the baseline persist
    assert loaded.config_.blend
    np.testing.assert_allclose(loaded.predict_proba(Xt), proba, atol=1e-6)
    served = Predictor(loaded).predict(Xt, batch_size=7)
    np.testing.assert_allclose(np.stack([r.probabilities for r in served]), proba, atol=1e-5)
    # a run saved before --blend-mode existed (no key: the default is joint) blends by the mean
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["fit_config"]["blend_mode"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    older = TextClassifier.load(tmp_path / "run")
    assert older.config_.blend_mode == "mean" and not older._joint()
    np.testing.assert_allclose(older.predict_proba(Xt), proba, atol=1e-6)


def test_evaluate_reports_what_blending_would_give(fitted):
    from headstart.metrics import classification_metrics

    clf, _ = fitted["feature_extract"]  # fitted without --blend
    _, (Xt, yt) = _blend_fixture_texts()
    m = clf.evaluate(Xt, yt)
    own = clf.predict_proba(Xt)
    np.testing.assert_array_equal(own, clf._head_proba(clf._features(clf._open_unlabeled(Xt))))
    mean = (own + clf.baseline_.predict_proba(Xt)) / 2
    ref = classification_metrics([clf.classes_.index(c) for c in yt], mean, clf.classes_)
    assert m["blend"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert m["blend"]["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert "encoder" not in m


def test_joint_blend_is_one_logistic_regression_on_tfidf_and_encoder_features(tmp_path):
    """--blend-mode joint: the TF-IDF vector and the (unit, scaled) encoder features of the
    training texts side by side in one logistic regression; predicted, evaluated, saved,
    loaded and served alike."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from headstart.inference import Predictor
    from headstart.metrics import classification_metrics

    (X, y), (Xt, yt) = _blend_fixture_texts()
    clf = TextClassifier(
        "tiny:bert",
        strategy="feature_extract",
        blend=True,
        blend_mode="joint",
        run_dir=tmp_path / "run",
        **{**TEXT_FAST, "val_fraction": 0.0},
    ).fit(X, y)
    assert clf.joint_.n_features_ == clf.model_.head.in_features
    # the same model by hand: sklearn on [tfidf, 0.5 * f / |f|] of the training texts
    vec = clf.joint_.vectorizer_
    unit = lambda f: 0.5 * f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    feats = clf._features(clf._open_unlabeled(X)).numpy()
    ref = LogisticRegression(C=10.0, max_iter=2000, random_state=0).fit(
        sp.hstack([vec.transform(X), unit(feats)]).tocsr(), [clf.classes_.index(c) for c in y]
    )
    test_feats = clf._features(clf._open_unlabeled(Xt)).numpy()
    want = ref.predict_proba(sp.hstack([vec.transform(Xt), unit(test_feats)]).tocsr())
    proba = clf.predict_proba(Xt)
    np.testing.assert_allclose(proba, want, atol=1e-6)
    own = clf._head_proba(clf._features(clf._open_unlabeled(Xt)))
    tfidf = clf.baseline_.predict_proba(Xt)
    assert np.abs(proba - (own + tfidf) / 2).max() > 1e-3  # not the mean blend

    m = clf.evaluate(Xt, yt)  # own = joint; encoder, baseline and the mean blend beside
    labels = [clf.classes_.index(c) for c in yt]
    for key, p in (
        (None, proba),
        ("encoder", own),
        ("baseline", tfidf),
        ("blend", (own + tfidf) / 2),
    ):
        got = m if key is None else m[key]
        assert got["accuracy"] == pytest.approx(
            classification_metrics(labels, p, clf.classes_)["accuracy"]
        )
    assert clf.metrics_["blend_mode"] == "joint"
    lookups = []  # the encoder's features of a call serve its head and the joint model
    real = clf._features
    clf._features = lambda source: lookups.append(source) or real(source)
    np.testing.assert_allclose(clf.predict_proba(Xt), proba, atol=1e-7)
    assert clf.evaluate(Xt, yt)["accuracy"] == pytest.approx(m["accuracy"])
    assert len(lookups) == 2, "each of predict_proba and evaluate looks the features up once"
    del clf._features

    loaded = TextClassifier.load(tmp_path / "run")
    assert loaded._joint() and (tmp_path / "run" / "joint" / "tfidf.json").is_file()
    np.testing.assert_allclose(loaded.predict_proba(Xt), proba, atol=1e-6)
    served = Predictor(loaded).predict(Xt, batch_size=7)
    np.testing.assert_allclose(np.stack([r.probabilities for r in served]), proba, atol=1e-5)

    clf.set_params(blend_mode="mean", run_dir=None).fit(X, y)  # refit: no stale joint model
    assert "joint_" not in clf.__dict__
    np.testing.assert_allclose(clf.predict_proba(Xt), (own + tfidf) / 2, atol=1e-6)
    clf.set_params(baseline=False, blend=False).fit(X, y)  # nor a stale baseline
    assert "baseline_" not in clf.__dict__ and "baseline" not in clf.evaluate(Xt, yt)


def test_tfidf_with_features_asks_for_them_by_shape():
    from headstart.baselines import TfidfBaseline

    (X, y), _ = make_texts(20, seed=0), None
    labels = np.array([CLASSES.index(c) for c in y])
    feats = np.random.default_rng(0).normal(size=(20, 6))
    joint = TfidfBaseline().fit(X, labels, features=feats)
    assert joint.predict_proba(X[:3], feats[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match="pass them"):
        joint.predict_proba(X[:3])
    with pytest.raises(ValueError, match=r"expected \(3, 6\), one row per text"):
        joint.predict_proba(X[:3], feats[:3, :4])
    with pytest.raises(ValueError, match="TF-IDF alone"):
        TfidfBaseline().fit(X, labels).predict_proba(X[:3], feats[:3])


def test_blend_needs_the_baseline():
    with pytest.raises(ValueError, match="blend=True .*baseline=False"):
        TextClassifier("tiny:bert", blend=True, baseline=False, **TEXT_FAST).fit(*make_texts(10))


# ====================================================================== 7. chained transfer
def test_chained_transfer_to_new_classes(fitted, text_data, tmp_path):
    (X, y), (Xt, yt) = text_data
    _, parent = fitted["finetune"]
    rename = {"letters": "L", "digits": "D"}
    child_dir = tmp_path / "child"
    child = TextClassifier(
        str(parent), strategy="feature_extract", run_dir=child_dir, **TEXT_FAST
    ).fit(X, [rename[c] for c in y])
    assert child.classes_ == ["D", "L"]
    assert set(child.predict(Xt)) <= {"D", "L"}
    assert child.score(Xt, [rename[c] for c in yt]) >= 0.8
    meta = json.loads((child_dir / "config.json").read_text())["backbone"]["meta"]
    assert "tiny:bert" in meta["notes"]["lineage"]
    assert meta["id"] == str(parent)
    assert json.loads((child_dir / "config.json").read_text())["backbone"]["id"] == str(parent)
    # the child's backbone is the parent's fine-tuned one, not a fresh tiny:bert
    parent_clf, _ = fitted["finetune"]
    ours, theirs = child.model_.backbone.state_dict(), parent_clf.model_.backbone.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    fresh = create_backbone("tiny:bert").state_dict()
    assert not all(torch.equal(ours[k], fresh[k]) for k in ours)  # fine-tuning moved them
    clear_memory_cache()
    again = TextClassifier.load(child_dir)
    np.testing.assert_allclose(again.predict_proba(Xt), child.predict_proba(Xt), atol=1e-6)


def test_keep_head_starts_from_the_parents_head(fitted, text_data, caplog):
    (X, y), (Xt, _) = text_data
    parent, parent_dir = fitted["feature_extract"]
    expected = parent.predict_proba(Xt)
    assert np.abs(expected - 0.5).max() > 0.2  # the parent's head is far from uniform
    settings = {**TEXT_FAST, "head_epochs": 1, "head_lr": 1e-9, "weight_decay": 0.0, "blend": False}
    caplog.set_level(logging.INFO, logger="headstart.tasks.base")
    kept = TextClassifier(
        str(parent_dir), strategy="feature_extract", keep_head=True, **settings
    ).fit(X, y)
    assert "head initialised from" in caplog.text
    np.testing.assert_allclose(kept.predict_proba(Xt), expected, atol=1e-4)
    fresh = TextClassifier(str(parent_dir), strategy="feature_extract", **settings).fit(X, y)
    assert np.abs(fresh.predict_proba(Xt) - 0.5).max() < 0.01  # new head: starts at zero


def test_keep_head_with_other_classes_names_both_lists(fitted, text_data):
    (X, y), _ = text_data
    _, parent_dir = fitted["feature_extract"]
    clf = TextClassifier(str(parent_dir), strategy="feature_extract", keep_head=True, **TEXT_FAST)
    with pytest.raises(ValueError) as info:
        clf.fit(X, ["L" if c == "letters" else "D" for c in y])
    msg = str(info.value)
    assert "['digits', 'letters']" in msg and "['D', 'L']" in msg


def test_keep_head_needs_a_run_directory(text_data):
    (X, y), _ = text_data
    with pytest.raises(ValueError, match="run directory"):
        TextClassifier("tiny:bert", keep_head=True, **TEXT_FAST).fit(X, y)


def test_lora_run_as_backbone_has_its_adapters_merged(fitted, text_data, tok):
    (X, y), (Xt, yt) = text_data
    parent, parent_dir = fitted["lora"]
    child = TextClassifier(str(parent_dir), strategy="feature_extract", **TEXT_FAST).fit(X, y)
    backbone = child.model_.backbone
    assert backbone.lora is None
    assert not any("lora_" in n for n, _ in backbone.named_parameters())
    assert child.score(Xt, yt) >= 0.8
    batch = collate_text(
        [(d, torch.tensor(0)) for d in encode_texts(tok, Xt[:6], child.preprocess_)]
    )[0]
    plain = create_backbone("tiny:bert").eval()
    with torch.inference_mode():
        merged, adapted = backbone.eval()(batch), parent.model_.backbone.eval()(batch)
        assert not torch.allclose(plain(batch), adapted, atol=1e-4)  # adapters changed it
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
    config = json.loads((parent_dir / "config.json").read_text())
    assert child.model_.backbone.meta.notes["lineage"] == [config["backbone"]["id"]]


# ====================================================================== 8. multi-label
def multi_label_texts(n: int, seed: int):
    """Letter words ("letters"), digit words ("digits"), or both (both labels)."""
    return make_multi_label_texts(n, seed, 2, 4, LETTER_WORDS, DIGIT_WORDS)


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("text_multi") / "run"
    X, y = multi_label_texts(45, 0)
    clf = TextClassifier(
        "tiny:bert", strategy="feature_extract", run_dir=run, **{**TEXT_FAST, "head_epochs": 30}
    ).fit(X, y)
    return clf, run


def test_multi_label_fit_predict_evaluate(multi_label_run):
    clf, run = multi_label_run
    Xt, yt = multi_label_texts(15, 1)
    assert clf.multi_label_ and clf.classes_ == CLASSES
    pred = clf.predict(Xt)
    assert len(pred) == 15 and all(isinstance(p, list) and set(p) <= set(CLASSES) for p in pred)
    proba = clf.predict_proba(Xt)
    assert proba.shape == (15, 2) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(1), 1.0)  # sigmoids, not a softmax
    m = clf.evaluate(Xt, yt)
    assert m["multi_label"] is True and m["n"] == 15
    assert 0.0 <= m["micro_f1"] <= 1.0 and m["micro_f1"] > 0.5
    assert set(m["per_class"]) == set(CLASSES)
    assert "baseline" in m and m["baseline"]["n"] == 15
    config = json.loads((run / "config.json").read_text())
    assert config["multi_label"] is True
    assert [s["stage"] for s in config["stages"]] == ["linear_probe"]
    clear_memory_cache()
    loaded = TextClassifier.load(run)
    assert loaded.multi_label_ and loaded.predict(Xt) == pred


def test_multi_label_model_evaluated_on_single_label_rows(multi_label_run, tmp_path):
    clf, _ = multi_label_run
    Xt, yt = make_texts(12, seed=5)  # each row has exactly one of the two labels
    as_lists = clf.evaluate(Xt, [[c] for c in yt])
    assert as_lists["multi_label"] is True
    csv = tmp_path / "one_label_each.csv"
    pd.DataFrame({"text": Xt, "label": yt}).to_csv(csv, index=False)
    for m in (clf.evaluate(Xt, yt), clf.evaluate(csv)):
        assert m.get("multi_label") is True
        assert m["accuracy"] == as_lists["accuracy"]
        assert m["micro_f1"] == as_lists["micro_f1"]


# ---------------------------------------------------------------------- baseline on disk
@pytest.mark.parametrize("with_features", [False, True])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_tfidf_baseline_saved_and_loaded_predicts_the_same(tmp_path, kind, with_features):
    from headstart.baselines import TfidfBaseline

    rng = np.random.default_rng(0)
    words = LETTER_WORDS + DIGIT_WORDS
    texts = [" ".join(rng.choice(words, 5)) for _ in range(60)]
    if kind == "binary":
        y = rng.integers(0, 2, 60)
    elif kind == "multiclass":
        y = rng.integers(0, 3, 60)
    else:
        y = rng.integers(0, 2, (60, 3))
    feats = rng.normal(size=(60, 5)) + y.reshape(60, -1)[:, :1] if with_features else None
    base = TfidfBaseline().fit(texts[:40], y[:40], features=feats[:40] if with_features else None)
    base.save(tmp_path / "b")
    assert not list((tmp_path / "b").glob("*.pkl"))
    loaded = TfidfBaseline.load(tmp_path / "b")
    rest = feats[40:] if with_features else None
    np.testing.assert_allclose(
        loaded.predict_proba(texts[40:], rest), base.predict_proba(texts[40:], rest), atol=1e-6
    )
    # the same model as scikit-learn's own prediction
    design = base._design(base.vectorizer_.transform(texts[40:]), rest, 20)
    want = base.clf_.predict_proba(design)
    np.testing.assert_allclose(
        base.predict_proba(texts[40:], rest)[:, : want.shape[1]], want, atol=1e-6
    )  # float32 TF-IDF rows


def test_loaded_text_run_reports_its_baseline(fitted, text_data):
    clf, run_dir = fitted["feature_extract"]
    _, (Xt, yt) = text_data
    loaded = TextClassifier.load(run_dir)
    assert loaded.evaluate(Xt, yt)["baseline"] == clf.evaluate(Xt, yt)["baseline"]


# ---------------------------------------------------------------------- contrastive loss
def test_supervised_contrastive_loss_matches_a_naive_loop():
    from headstart.heads import supervised_contrastive_loss

    torch.manual_seed(0)
    feats = torch.randn(7, 5)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 have no positive
    t = 0.1
    z = torch.nn.functional.normalize(feats, dim=-1)
    losses = []
    for i in range(7):
        pos = [j for j in range(7) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(torch.exp(z[i] @ z[k] / t) for k in range(7) if k != i)
        losses.append(-sum(torch.log(torch.exp(z[i] @ z[j] / t) / denom) for j in pos) / len(pos))
    expected = torch.stack(losses).mean()
    assert torch.allclose(supervised_contrastive_loss(feats, labels, t), expected, atol=1e-5)
    assert float(supervised_contrastive_loss(feats, torch.arange(7))) == 0.0


def test_contrastive_fine_tuning_runs_and_changes_the_result(text_data):
    (X, y), _ = text_data
    plain = TextClassifier("tiny:bert", strategy="finetune", **TEXT_FAST).fit(X, y)
    con = TextClassifier("tiny:bert", strategy="finetune", **{**TEXT_FAST, "contrastive": 1.0}).fit(
        X, y
    )
    assert not np.allclose(plain.predict_proba(X[:5]), con.predict_proba(X[:5]))
    assert con.config_.contrastive == 1.0


def test_text_defaults_blend_tfidf_in_unless_the_baseline_is_off():
    """The text default predicts with the TF-IDF baseline and the encoder's features in one
    logistic regression; --no-baseline drops that default instead of refusing it."""
    import argparse

    from headstart.cli.flags import fit_config_from_args

    assert TextClassifier().resolved_config().blend
    assert not TextClassifier(baseline=False).resolved_config().blend
    with pytest.raises(ValueError, match="drop --no-baseline, or --blend"):
        TextClassifier(baseline=False, blend=True).resolved_config()
    args = argparse.Namespace(task="text", config=None, baseline=False)
    assert not fit_config_from_args(args).blend
    assert fit_config_from_args(argparse.Namespace(task="text", config=None)).blend
    assert not fit_config_from_args(argparse.Namespace(task="image", config=None)).blend
