"""rank(): candidates scored from one cached frozen pass, the table, the CLI, and the
features it leaves for the fit after it. Tiny random backbones (plumbing); the real
ranking is measured in benchmarks/rank_transfer.py and a slow test below."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headstart import ImageClassifier, rank
from headstart import features as features_mod
from headstart.cli import main
from headstart.features import clear_memory_cache
from headstart.select import SCORES, Candidate, logme
from headstart.zoo import create_backbone

from conftest import FAST, make_arrays, write_folder

SCORE_NAMES = list(SCORES)


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def data3():
    return make_arrays(n=60, n_classes=3)


def counting_compute(monkeypatch):
    calls = []
    real = features_mod.compute_features

    def counted(*args, **kwargs):
        calls.append(kwargs.get("desc"))
        return real(*args, **kwargs)

    monkeypatch.setattr(features_mod, "compute_features", counted)
    import headstart.tasks.base as base

    monkeypatch.setattr(base, "compute_features", counted)
    return calls


def test_candidate_parse():
    assert Candidate.parse("packaged:efficientnet_lite0@2") == Candidate(
        "packaged:efficientnet_lite0", 2
    )
    assert Candidate.parse(" tiny:cnn ") == Candidate("tiny:cnn", 0)
    assert Candidate.parse("runs/a@b") == Candidate("runs/a@b", 0)  # not a cut
    assert Candidate("tiny:cnn", 1).label == "tiny:cnn@1"
    assert Candidate("tiny:cnn").label == "tiny:cnn"


def test_rank_scores_every_candidate_and_orders_best_first(data3):
    x, y = data3
    res = rank(x, ["tiny:cnn", "tiny:cnn@1", "scratch:tiny:cnn"], y=y, **FAST)
    assert [r.error for r in res.rows] == [None] * 3
    assert res.score == "nleep" and res.n_items == 60 and res.n_classes == 3
    assert not res.sampled
    values = [r.scores["nleep"] for r in res.rows]
    assert values == sorted(values, reverse=True)
    for r in res.rows:
        assert set(r.scores) == set(SCORE_NAMES)
        assert math.isnan(r.scores["leep"]) and math.isnan(r.scores["nce"])  # no source head
        assert all(
            math.isfinite(r.scores[k]) for k in ("logme", "nleep", "h_score", "knn", "linear")
        )
        assert 0.0 <= r.scores["knn"] <= 1.0 and 0.0 <= r.scores["linear"] <= 1.0
        assert r.seconds > 0
    dims = {r.candidate.label: r.feature_dim for r in res.rows}
    assert dims == {"tiny:cnn": 32, "tiny:cnn@1": 16, "scratch:tiny:cnn": 32}
    params = {r.candidate.label: r.params for r in res.rows}
    assert params["tiny:cnn@1"] < params["tiny:cnn"]


def test_rank_score_equals_the_score_of_the_backbones_features(data3):
    """The table's LogME is logme() of exactly the features fit's split would use."""
    x, y = data3
    res = rank(x, ["tiny:cnn"], y=y, scores=["logme"], **FAST)
    clf = ImageClassifier("tiny:cnn", strategy="feature_extract", **FAST).fit(x, y)
    est = ImageClassifier(**FAST)
    cfg = est.resolved_config()
    _, tr, va = est._split(x, y, None, cfg)
    feats = torch.cat([clf._features(tr), clf._features(va)]).double().numpy()
    labels = np.concatenate([tr.labels, va.labels])
    assert res.rows[0].scores["logme"] == pytest.approx(logme(feats, labels), rel=1e-9)


def test_order_by_another_score_and_a_subset_of_scores(data3):
    x, y = data3
    res = rank(
        x, ["tiny:cnn", "tiny:cnn@1"], y=y, scores=["knn", "h_score"], score="h_score", **FAST
    )
    assert res.score == "h_score"
    assert all(set(r.scores) == {"knn", "h_score"} for r in res.rows)
    assert res.rows[0].scores["h_score"] >= res.rows[1].scores["h_score"]
    with pytest.raises(ValueError, match="unknown score"):
        rank(x, ["tiny:cnn"], y=y, scores=["logme", "bogus"], **FAST)
    with pytest.raises(ValueError, match="not among"):
        rank(x, ["tiny:cnn"], y=y, scores=["knn"], score="logme", **FAST)


def test_your_own_score_ranks_beside_the_built_in_ones(data3):
    """rank(scores=[...]) takes named functions and Score objects: each gets the same float64
    features and labels the built-in scores get, and can order the rows."""
    from headstart.select import Score, linear_probe_accuracy, logme

    x, y = data3
    seen = {}

    def spread(features, labels, source_probs=None):
        """Mean feature standard deviation."""
        assert features.dtype == np.float64 and labels.dtype.kind == "i"
        seen[features.shape[1]] = (features, labels)
        return float(features.std(0).mean())

    def needs_head(features, labels, source_probs):
        return float(source_probs.max(1).mean())

    strict = Score("strict_probe", lambda f, y, p=None: linear_probe_accuracy(f, y, c=0.01))
    res = rank(
        x,
        ["tiny:cnn", "tiny:cnn@1"],
        y=y,
        scores=["logme", spread, strict, Score("head", needs_head, needs_source=True)],
        score="spread",
        **FAST,
    )
    assert res.score == "spread"
    assert [list(r.scores) for r in res.rows] == [["logme", "spread", "strict_probe", "head"]] * 2
    values = [r.scores["spread"] for r in res.rows]
    assert values == sorted(values, reverse=True)  # ordered by the score asked for
    for r in res.rows:  # the same features as the built-in score's
        f, labels = seen[r.feature_dim]
        assert r.scores["logme"] == pytest.approx(logme(f, labels), rel=1e-12)
        assert r.scores["strict_probe"] == pytest.approx(linear_probe_accuracy(f, labels, c=0.01))
        assert math.isnan(r.scores["head"])  # tiny:cnn has no source head
    assert "spread" in res.table() and "strict_probe" in res.to_dict()["rows"][0]["scores"]
    by_object = rank(
        x, ["tiny:cnn", "tiny:cnn@1"], y=y, scores=[spread, strict], score=strict, **FAST
    )  # the score itself names the order too
    assert by_object.score == "strict_probe"
    with pytest.raises(ValueError, match="needs a name"):
        rank(x, ["tiny:cnn"], y=y, scores=[lambda f, y, p: 0.0], **FAST)
    with pytest.raises(ValueError, match="two scores are named 'knn'"):
        rank(x, ["tiny:cnn"], y=y, scores=["knn", Score("knn", spread)], **FAST)


def test_bad_and_offline_candidates_are_rows_not_crashes(data3, no_network, empty_hf_cache):
    x, y = data3
    res = rank(
        x,
        ["nope:thing", "timm:resnet50.a1_in1k", "tiny:cnn", "tiny:cnn@9", "/no/such/run"],
        y=y,
        scores=["logme"],
        **FAST,
    )
    assert res.rows[0].candidate.label == "tiny:cnn" and res.rows[0].error is None
    errors = {r.candidate.label: r.error for r in res.rows[1:]}
    assert "unknown backbone" in errors["nope:thing"]
    assert "OfflineError" in errors["timm:resnet50.a1_in1k"]
    assert "packaged:efficientnet_lite0" in errors["timm:resnet50.a1_in1k"]  # the alternative
    assert "cut" in errors["tiny:cnn@9"]
    assert errors["/no/such/run"]
    # a backbone of another modality is a row that says which backbones fit, not a TypeError
    text = rank(x, ["tiny:cnn", "tiny:bert"], y=y, scores=["logme"], **FAST).rows[1]
    assert text.error == (
        "ZooError: tiny:bert is a text model; --task image needs an image "
        "backbone (`headstart models --modality image`)"
    )
    assert res.fit_params() == {"backbone": "tiny:cnn", "cut": 0}
    table = res.table()
    assert "error: OfflineError" in table and table.splitlines()[1].split()[1] == "tiny:cnn"
    # an unloadable model's cut points share its error: the table prints it once
    cuts = rank(x, ["tiny:cnn", "nope:thing@0", "nope:thing@1"], y=y, scores=["logme"], **FAST)
    lines = cuts.table().splitlines()
    assert "unknown backbone" in lines[2] and lines[3].endswith("error: as row 2")
    assert cuts.rows[2].error == cuts.rows[1].error  # --json keeps each row whole


@pytest.mark.parametrize("task", ["detect", "asr", "video"])
def test_rank_names_the_tasks_it_ranks(data3, task):
    x, y = data3  # not ObjectDetector's AttributeError, or a speech reader's complaint
    with pytest.raises(
        ValueError, match="rank scores classifier backbones, choose one of image, text, audio"
    ):
        rank(x, ["tiny:cnn"], y=y, task=task, **FAST)


def test_no_candidate_scored_raises_on_best(data3):
    x, y = data3
    res = rank(x, ["nope:a"], y=y, scores=["logme"], **FAST)
    with pytest.raises(ValueError, match="no candidate could be scored"):
        _ = res.best
    assert res.to_dict()["best"] is None


def test_sampling_is_stratified_and_bounded():
    x, y = make_arrays(n=90, n_classes=3)
    res = rank(x, ["tiny:cnn"], y=y, scores=["logme", "knn"], max_items=30, **FAST)
    assert res.sampled and res.n_items <= 30 and res.n_classes == 3
    full = rank(x, ["tiny:cnn"], y=y, scores=["logme"], max_items=1000, **FAST)
    assert not full.sampled and full.n_items == 90


def test_a_later_feature_extract_fit_reuses_the_ranked_features(tmp_path, data3, monkeypatch):
    x, y = data3
    cache = str(tmp_path / "cache")
    rank(x, ["tiny:cnn"], y=y, scores=["logme"], feature_cache=cache, **FAST)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train + validation
    clear_memory_cache()
    calls = counting_compute(monkeypatch)
    ImageClassifier("tiny:cnn", strategy="feature_extract", feature_cache=cache, **FAST).fit(x, y)
    assert calls == []  # nothing recomputed: rank's features served the fit


def test_rank_reads_both_parts_in_one_pass_and_caches_each_under_its_fit_key(
    tmp_path, data3, monkeypatch
):
    x, y = data3
    cache = tmp_path / "cache"
    calls = counting_compute(monkeypatch)
    rank(x, ["tiny:cnn"], y=y, scores=["logme"], feature_cache=str(cache), **FAST)
    assert len(calls) == 1  # one pass (one BatchNorm fold) for train and validation
    # each part's features are what a pass over that part alone gives, under fit's key
    est = ImageClassifier("tiny:cnn", **FAST)
    cfg = est.resolved_config()
    source = est._open_labeled(x, y, None, cfg)
    _, train, val = est._split(source, None, None, cfg)
    torch.manual_seed(cfg.seed)  # the random init rank's candidate gets
    base = create_backbone("tiny:cnn", pretrained=True)
    pre = est._input_spec(base, train, cfg)
    for part in (train, val):
        saved = load_file(str(cache / f"{est._feature_key(base, pre, part)}.safetensors"))
        alone = est._compute_features(base, base, pre, part, cfg)
        torch.testing.assert_close(saved["features"], alone, rtol=1e-5, atol=1e-6)
        assert len(alone) == len(part)


def test_rank_is_deterministic(data3):
    x, y = data3
    a = rank(x, ["tiny:cnn"], y=y, **FAST).rows[0].scores
    clear_memory_cache()
    b = rank(x, ["tiny:cnn"], y=y, **FAST).rows[0].scores
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12, nan_ok=True)


def test_run_directory_source_head_gives_leep_from_its_own_predictions(tmp_path, data3):
    """A model headstart trained is a candidate whose source head is its own head: the
    probabilities LEEP uses are the run's predict_proba."""
    from headstart.select import leep
    from headstart.zoo import create_backbone

    x, y = data3
    run = tmp_path / "run"
    parent = ImageClassifier("tiny:cnn", strategy="finetune", run_dir=run, **FAST).fit(x, y)
    backbone = create_backbone(str(run))
    head = backbone.source_head()
    assert head is not None
    assert sum(p.numel() for p in backbone.parameters()) == sum(
        p.numel() for p in parent.model_.backbone.parameters()
    )  # head not in the backbone
    x2, y2 = make_arrays(n=30, n_classes=3, seed=5)
    est = ImageClassifier(**FAST)
    cfg = est.resolved_config()
    src = est._open_labeled(x2, y2, None, cfg)
    feats = est._backbone_features(backbone, parent.preprocess_, src, cfg)
    with torch.inference_mode():
        probs = torch.softmax(head(feats), 1).numpy()
    np.testing.assert_allclose(probs, parent.predict_proba(x2), atol=1e-5)
    res = rank(x, [str(run), "tiny:cnn"], y=y, **FAST)
    row = next(r for r in res.rows if r.candidate.backbone == str(run))
    assert math.isfinite(row.scores["leep"]) and math.isfinite(row.scores["nce"])
    # the run was trained on these very labels: its head beats a uniform guess
    assert row.scores["leep"] > math.log(1 / 3)
    assert row.scores["leep"] == pytest.approx(
        leep(None, np.asarray(y), parent.predict_proba(x)), rel=1e-4
    )


def test_source_head_is_not_saved_with_a_fitted_run(tmp_path, data3):
    from safetensors.torch import load_file

    x, y = data3
    parent = tmp_path / "parent"
    ImageClassifier("tiny:cnn", strategy="finetune", run_dir=parent, **FAST).fit(x, y)
    child = tmp_path / "child"
    ImageClassifier(str(parent), strategy="finetune", run_dir=child, **FAST).fit(x, y)
    names = load_file(str(child / "model.safetensors")).keys()
    assert not any("source" in n for n in names)
    assert {n.split(".")[0] for n in names} == {"backbone", "head"}


def test_multi_label_data_is_refused_clearly():
    texts = [f"word{i % 3} thing{i % 2} sample {i}" for i in range(24)]
    labels = [["x", "y"] if i % 2 else ["x"] for i in range(24)]
    with pytest.raises(ValueError, match="single-label"):
        rank(
            texts,
            ["tiny:bert"],
            y=labels,
            task="text",
            scores=["logme"],
            baseline=False,
            num_workers=0,
            device="cpu",
        )


def test_text_candidates_rank_on_token_features():
    from text_common import make_texts

    texts, labels = make_texts(40)
    res = rank(
        texts,
        ["tiny:bert", "tiny:bert@1"],
        y=labels,
        task="text",
        scores=["logme", "knn", "leep"],
        truncation="head",
        num_workers=0,
        device="cpu",
    )
    assert [r.error for r in res.rows] == [None, None]
    from headstart.zoo import create_backbone

    dims = {r.candidate.label: r.feature_dim for r in res.rows}
    assert dims == {
        "tiny:bert": create_backbone("tiny:bert").feature_dim,
        "tiny:bert@1": create_backbone("tiny:bert", cut=1).feature_dim,
    }
    assert all(math.isnan(r.scores["leep"]) for r in res.rows)  # an encoder has no source head


def test_a_score_that_cannot_be_computed_is_nan_not_a_crash(caplog):
    x, y = make_arrays(n=60, n_classes=3)
    y = list(y)
    y[0] = "lonely"  # a class of one item: no cross-validation fold can hold it
    res = rank(
        x,
        ["tiny:cnn"],
        y=y,
        scores=["logme", "knn"],
        val_fraction=0.0,
        **{k: v for k, v in FAST.items()},
    )
    row = res.rows[0]
    assert row.error is None and math.isfinite(row.scores["logme"])
    assert math.isnan(row.scores["knn"])
    assert "knn not computed" in caplog.text


def test_unknown_task():
    with pytest.raises(ValueError, match="task="):
        rank([], ["tiny:cnn"], task="sonar")


# ------------------------------------------------------------------------------ CLI
def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


RANK_FLAGS = ["--num-workers", "0", "--device", "cpu"]


def test_cli_rank_table_json_and_write_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "hcache"))
    folder = write_folder(tmp_path / "data", *make_arrays(n=60, n_classes=3))
    code, out, err = _cli(
        ["-q", "rank", str(folder), "--models", "tiny:cnn,nope:x", "--layers", "0,1", *RANK_FLAGS]
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("ranked 4 candidates on all 60 items, 3 classes, by nleep")
    assert "logme" in lines[1] and "nleep" in lines[1] and "leep" in lines[1] and "dim" in lines[1]
    # nope:x at both cut points: its error once, then "as row N"
    assert sum("error: ZooError" in line for line in lines) == 1
    assert sum("error: as row 3" in line for line in lines) == 1
    assert "headstart fit" in out and "--feature-cache" in out
    assert list((tmp_path / "hcache" / "features").glob("*.safetensors"))  # default disk cache

    code, out, _ = _cli(
        [
            "-q",
            "rank",
            str(folder),
            "--models",
            "tiny:cnn@1,tiny:cnn",
            "--scores",
            "knn,linear",
            "--score",
            "linear",
            "--json",
            *RANK_FLAGS,
        ]
    )
    assert code == 0
    data = json.loads(out)
    assert data["score"] == "linear" and len(data["rows"]) == 2
    assert data["best"]["backbone"] == "tiny:cnn"
    assert set(data["rows"][0]["scores"]) == {"knn", "linear"}

    cfg = tmp_path / "best.yaml"
    code, out, _ = _cli(
        [
            "-q",
            "rank",
            str(folder),
            "--models",
            "tiny:cnn@1",
            "--image-size",
            "32",
            "--write-config",
            str(cfg),
            *RANK_FLAGS,
        ]
    )
    assert code == 0 and f"--config {cfg}" in out
    import yaml

    written = yaml.safe_load(cfg.read_text())
    assert written["backbone"] == "tiny:cnn" and written["cut"] == 1
    assert written["image_size"] == 32 and written["feature_cache"]
    code, out, err = _cli(
        [
            "-q",
            "fit",
            str(folder),
            "--config",
            str(cfg),
            "--strategy",
            "feature_extract",
            "--out",
            str(tmp_path / "run"),
            *RANK_FLAGS,
        ]
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["backbone"]["architecture"]["cut"] == 1
    assert saved["preprocess"]["input_size"] == 32


def test_cli_rank_all_failed_exits_2(tmp_path):
    folder = write_folder(tmp_path / "data", *make_arrays(n=30, n_classes=3))
    code, out, err = _cli(
        [
            "-q",
            "rank",
            str(folder),
            "--models",
            "nope:a",
            "--feature-cache",
            str(tmp_path / "c"),
            *RANK_FLAGS,
        ]
    )
    assert code == 2 and "no candidate could be scored" in err
    code, _, err = _cli(
        [
            "-q",
            "rank",
            str(folder),
            "--models",
            "tiny:cnn",
            "--scores",
            "zzz",
            "--feature-cache",
            str(tmp_path / "c"),
            *RANK_FLAGS,
        ]
    )
    assert code == 2 and "unknown score" in err
    code, _, err = _cli(
        ["-q", "rank", str(folder), "--models", "tiny:cnn", "--max-items", "0", *RANK_FLAGS]
    )
    assert code == 2 and "max_items must be >= 1" in err  # not the default 300 instead
    code, out, _ = _cli(
        [
            "-q",
            "rank",
            str(folder),
            "--models",
            "nope:a",
            "--feature-cache",
            str(tmp_path / "c"),
            *RANK_FLAGS,
        ]
    )
    assert out.startswith("ranked 1 candidate on all 30 items")  # not "1 candidates"


def test_one_class_is_refused_naming_the_data_by_rank_and_fit(tmp_path):
    """Texts of one class: not sklearn's "needs samples of at least 2 classes" from a score
    (rank) or from the TF-IDF baseline after training (fit), but the readers' error before
    any pass, naming the data and the class, as for images."""
    x, _ = make_arrays(n=20)
    message = r"found only 1 class \(a\); a classifier needs items of at least two classes"
    with pytest.raises(ValueError, match=message):
        rank(x, ["tiny:cnn"], y=["a"] * 20, **FAST)
    with pytest.raises(ValueError, match=message):
        ImageClassifier("tiny:cnn", **FAST).fit(x, ["a"] * 20)
    texts = tmp_path / "one.csv"
    texts.write_text("text,label\n" + "".join(f"text number {i},a\n" for i in range(12)))
    for command in (
        ["rank", str(texts), "--models", "tiny:bert"],
        ["fit", str(texts), "--backbone", "tiny:bert", "--out", str(tmp_path / "r")],
    ):
        code, _, err = _cli(["-q", *command, "--task", "text", *RANK_FLAGS])
        assert code == 2 and f"{texts}: found only 1 class (a); a classifier" in err, err


# ------------------------------------------------------------------ real weights (slow)
@pytest.mark.slow
def test_real_source_head_is_the_imagenet_classifier():
    """The packaged Lite0's source head + its features = the full ImageNet model."""
    from skimage import data

    from headstart.data import ImageTransform
    from headstart.zoo import create_backbone
    from headstart.zoo.packaged import load_packaged_imagenet

    backbone = create_backbone("packaged:efficientnet_lite0").eval()
    full = load_packaged_imagenet("efficientnet_lite0").eval()
    from PIL import Image

    x = ImageTransform(224, backbone.preprocess)(Image.fromarray(data.coffee()))[None]
    with torch.inference_mode():
        ours = backbone.source_head()(backbone(x))
        theirs = full(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert int(ours.argmax()) == 967  # espresso
    assert create_backbone("packaged:efficientnet_lite0", cut=1).source_head() is None


@pytest.mark.slow
def test_real_rank_puts_imagenet_weights_above_random_init():
    from headstart.datasets import fashion_mnist, per_class_subset

    x, y, classes = fashion_mnist("train")
    idx = per_class_subset(y, 20, 0)
    res = rank(
        x[idx],
        [
            "scratch:packaged:efficientnet_lite0",
            "packaged:efficientnet_lite0",
            "packaged:efficientnet_lite0@2",
        ],
        y=[classes[i] for i in y[idx]],
        image_size=64,
        num_workers=0,
    )
    labels = [r.candidate.label for r in res.rows]
    assert labels[-1] == "scratch:packaged:efficientnet_lite0"
    by = {r.candidate.label: r.scores for r in res.rows}
    lite0 = by["packaged:efficientnet_lite0"]
    assert math.isfinite(lite0["leep"]) and math.isnan(by["packaged:efficientnet_lite0@2"]["leep"])
    for name in ("logme", "nleep", "leep", "nce", "knn", "linear"):
        assert lite0[name] > by["scratch:packaged:efficientnet_lite0"][name], name


@pytest.mark.slow
def test_cut_points_of_one_backbone_share_one_pass(tmp_path, monkeypatch):
    """Lite0 at cuts 0, 1 and 2: one forward pass over both data parts, features
    identical to ranking each cut alone, cached under the keys each cut's own fit uses."""
    from headstart.datasets import fashion_mnist, per_class_subset

    x, y, classes = fashion_mnist("train")
    idx = per_class_subset(y, 10, 0)
    labels = [classes[i] for i in y[idx]]
    settings = dict(image_size=32, num_workers=0, scores=["logme", "knn"])
    calls = counting_compute(monkeypatch)
    cache = str(tmp_path / "cache")
    together = rank(
        x[idx],
        [
            "packaged:efficientnet_lite0@0",
            "packaged:efficientnet_lite0@1",
            "packaged:efficientnet_lite0@2",
        ],
        y=labels,
        feature_cache=cache,
        **settings,
    )
    assert len(calls) == 1  # train and validation parts together, for three cuts
    assert [r.error for r in together.rows] == [None] * 3
    by = {r.candidate.cut: r for r in together.rows}
    assert [by[c].feature_dim for c in (0, 1, 2)] == [1280, 320, 112]
    clear_memory_cache()
    for cut in (0, 2):
        alone = rank(x[idx], [f"packaged:efficientnet_lite0@{cut}"], y=labels, **settings)
        assert alone.rows[0].scores == pytest.approx(by[cut].scores, rel=1e-6)
    clear_memory_cache()
    calls.clear()
    ImageClassifier(
        "packaged:efficientnet_lite0",
        cut=1,
        strategy="feature_extract",
        image_size=32,
        num_workers=0,
        feature_cache=cache,
        head_epochs=2,
    ).fit(x[idx], labels)
    assert calls == []  # the cut-1 fit found rank's shared-pass features under its keys


def test_sample_keeps_every_class_with_at_least_five_items():
    from headstart.select.rank import _sample

    labels = np.array([0] * 80 + [1] * 80 + [2] * 10 + [3] * 3)
    idx = _sample(labels, 20, seed=0)
    counts = np.bincount(labels[idx], minlength=4)
    assert counts.tolist() == [9, 9, 5, 3]  # proportional, but >= 5 (all 3 of class 3)
    assert len(set(idx.tolist())) == len(idx)
    assert (idx == _sample(labels, 20, seed=0)).all()


def test_scratch_of_a_run_directory_has_random_weights(tmp_path, data3):
    """scratch:<run dir> is the run's architecture with fresh weights, not its weights."""
    from headstart.zoo import create_backbone

    x, y = data3
    run = tmp_path / "run"
    ImageClassifier("tiny:cnn", strategy="finetune", run_dir=run, **FAST).fit(x, y)
    trained = create_backbone(str(run)).state_dict()
    torch.manual_seed(123)
    fresh = create_backbone(f"scratch:{run}")
    assert fresh.id == f"scratch:{run}" and "random" in fresh.meta.source_data
    assert fresh.state_dict().keys() == trained.keys()
    assert any(
        not torch.equal(fresh.state_dict()[k], trained[k])
        for k in trained
        if trained[k].is_floating_point() and trained[k].numel() > 1
    )


def test_data_too_small_for_a_validation_split_is_ranked_whole():
    x, y = make_arrays(n=12, n_classes=3)  # 10% would hold out 1 item for 3 classes
    res = rank(x, ["tiny:cnn"], y=y, scores=["logme"], **FAST)
    assert res.rows[0].error is None and res.n_items == 12


def test_benchmark_summary_averages_each_target_over_its_own_seeds(tmp_path, capsys, monkeypatch):
    """benchmarks/rank_transfer.py --summary (the issue's evidence): targets may run
    different numbers of seeds; each is averaged over the seeds all its candidates have,
    and tau, the random-init checks and the speed ratio follow from the records."""
    import importlib
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    sys.modules.pop("rank_transfer", None)
    rt = importlib.import_module("rank_transfer")
    cands = ["a", "b", rt.RANDOM]
    records = []
    for target, accs in {
        "t1": {"a": [0.9, 0.92], "b": [0.8, 0.7], rt.RANDOM: [0.5, 0.6]},
        "t2": {"a": [0.6, 0.99], "b": [0.7], rt.RANDOM: [0.4]},
    }.items():
        scores = (
            {"a": 3.0, "b": 2.0, rt.RANDOM: 1.0}
            if target == "t1"
            else {"a": 1.5, "b": 2.0, rt.RANDOM: 1.0}
        )
        records.append(
            {
                "target": target,
                "kind": "rank",
                "max_items": 300,
                "seconds": 2.0,
                "n_items": 300,
                "rows": [{"label": c, "error": None, "scores": {"s": scores[c]}} for c in cands],
            }
        )
        for c in cands:
            for seed, acc in enumerate(accs[c]):
                records.append(
                    {
                        "target": target,
                        "kind": "fit",
                        "candidate": c,
                        "seed": seed,
                        "fit_seconds": 100.0,
                        "accuracy": acc,
                    }
                )
    (tmp_path / "results.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    rt.summary(tmp_path)
    out = capsys.readouterr().out
    assert "(t1 2, t2 1)" in out  # t2's second seed of "a" alone is left out
    # t1: a (0.91) > b (0.75) > random (0.55), scored in that order: tau 1, random last
    assert "s: tau +1.00 over 3, top pick -0.0 pts (random last)" in out
    # t2 over seed 0 only: b (0.7) > a (0.6) > random, scored b > a > random: tau 1 too
    assert out.count("s: tau +1.00 over 3") == 2
    assert "ratio 150.0x" in out  # 3 fits of 100 s against 2 s of ranking
    assert "random last 2/2, below every better one 2/2; speed ratio 150.0x" in out
    assert "t1: seed-vs-seed Kendall tau" in out and "t2: seed-vs-seed" not in out
    # resampling t1's two seeds never swaps a candidate pair (a > b > random in every draw),
    # and t2 has one seed: the interval is the point; one fine-tuning run agrees with the other
    assert "s        tau +1.000 [+1.00, +1.00]; P(>= 0.6) 1.00" in out
    assert "one fine-tuning run against the mean of the others: +1.000" in out


def test_resampled_taus_cover_the_orders_other_seeds_give(monkeypatch):
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("rank_transfer", None)
    rt = importlib.import_module("rank_transfer")
    # c is clearly last; a and b swap with the seeds: seed 0 says a > b, seed 1 b > a
    per = [np.array([0.75, 0.5]), np.array([0.5, 0.75]), np.array([0.125, 0.125])]  # exact
    taus = rt._resampled_taus([3.0, 2.0, 1.0], per, np.random.default_rng(0), draws=400)
    # draws of (0, 0) -> tau 1; (1, 1) -> 1/3; mixed draws -> a 0.625 = b 0.625, a tie
    assert set(np.round(taus, 6)) <= {1.0, round(1 / 3, 6), round(2 / np.sqrt(6), 6)}
    assert 0.15 < np.mean(taus == 1.0) < 0.35  # (0, 0) is one draw in four
