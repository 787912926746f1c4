"""``suggest``: which unlabelled items to label next.

The choosing functions against naive references and on data whose answer is known (tight
clusters, confident vs unsure items); the service on tiny random models (plumbing: a cold
start, a run's uncertainty, the CSV that ``fit`` reads back, the errors); one slow test on
real weights and real images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from headstart.active import badge, choose, kcenter_greedy, suggest, uncertainty
from headstart.active.acquire import typiclust
from headstart.data.images import DataError

from conftest import FAST, TEXT_FIT, make_arrays, make_texts, write_csv, write_folder


def blobs(centres: list, per: int = 20, spread: float = 0.01, seed: int = 0) -> np.ndarray:
    """``per`` points around each centre (rows of a (k, d) array), centre by centre."""
    rng = np.random.default_rng(seed)
    c = np.asarray(centres, dtype=np.float64)
    return np.concatenate([ci + spread * rng.standard_normal((per, c.shape[1])) for ci in c])


def axes(dims: int = 8) -> np.ndarray:
    return np.eye(dims)


# ---------------------------------------------------------------------- uncertainty
def test_uncertainty_orders_items_by_margin_and_entropy():
    p = np.array(
        [
            [0.98, 0.01, 0.01],  # sure
            [0.50, 0.49, 0.01],  # torn between two classes: the smallest margin
            [0.34, 0.33, 0.33],  # torn between three: the largest entropy
        ]
    )
    margin, entropy = uncertainty(p, "margin"), uncertainty(p, "entropy")
    assert np.argsort(-margin).tolist() == [1, 2, 0]
    assert np.argsort(-entropy).tolist() == [2, 1, 0]
    assert margin[1] == pytest.approx(0.99) and entropy[2] == pytest.approx(1.0, abs=1e-4)
    picks = choose(np.random.default_rng(0).normal(size=(3, 4)), 2, proba=p, method="margin")
    assert picks.indices.tolist() == [1, 2] and picks.method == "margin"


# ---------------------------------------------------------------------- k-center
def naive_kcenter(f: np.ndarray, k: int, labeled: np.ndarray) -> list[int]:
    """Farthest-first by brute force: every distance recomputed for every pick."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    lab = labeled / np.linalg.norm(labeled, axis=1, keepdims=True)
    picked: list[int] = []
    for _ in range(k):
        best, best_d = -1, -1.0
        for i in range(len(f)):
            if i in picked:
                continue
            centres = [*lab, *f[picked]]
            d = min(1.0 - float(f[i] @ c) for c in centres)
            if d > best_d:
                best, best_d = i, d
        picked.append(best)
    return picked


def test_kcenter_matches_the_naive_farthest_first_traversal():
    rng = np.random.default_rng(3)
    f, labeled = rng.normal(size=(60, 5)), rng.normal(size=(4, 5))
    assert kcenter_greedy(f, 7, labeled).indices.tolist() == naive_kcenter(f, 7, labeled)


def test_kcenter_picks_one_item_of_each_far_apart_group():
    f = blobs(axes()[:4], per=15)  # 4 tight groups on orthogonal directions
    groups = np.repeat(np.arange(4), 15)
    picks = kcenter_greedy(f, 4)
    assert sorted(groups[picks.indices]) == [0, 1, 2, 3]
    # the groups already labelled are not picked again
    again = kcenter_greedy(f, 2, labeled=f[[0, 1, 15, 16]])  # two of groups 0 and 1
    assert sorted(groups[again.indices]) == [2, 3]
    assert (again.distance > 0.9).all()  # orthogonal: cosine distance about 1


def test_kcenter_cold_start_begins_with_a_typical_item_not_an_outlier():
    f = np.concatenate([blobs([[1.0, 0.1, 0.0]], per=30), [[-0.2, 0.0, 1.0]]])
    assert kcenter_greedy(f, 1).indices[0] != 30


# ---------------------------------------------------------------------- BADGE
def naive_badge(f: np.ndarray, p: np.ndarray, k: int, seed: int) -> list[int]:
    """BADGE with the gradient embeddings built explicitly (classes x dims each)."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    r = p.copy()
    r[np.arange(len(p)), p.argmax(1)] -= 1.0
    g = np.einsum("nc,nd->ncd", r, f).reshape(len(f), -1)
    rng = np.random.default_rng(seed)
    picked = [int(np.argmax((g * g).sum(1)))]
    for _ in range(k - 1):
        d2 = np.min([((g - g[j]) ** 2).sum(1) for j in picked], axis=0)
        d2[picked] = 0.0
        picked.append(int(rng.choice(len(g), p=d2 / d2.sum())))
    return picked


def test_badge_matches_explicit_gradient_embeddings():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(80, 6))
    p = rng.dirichlet(np.ones(4), size=80)
    assert badge(f, p, 8, seed=5).indices.tolist() == naive_badge(f, p, 8, seed=5)


def test_badge_prefers_unsure_items_and_spreads_them():
    f = blobs(axes()[:4], per=10)
    groups = np.repeat(np.arange(4), 10)
    p = np.tile([[0.97, 0.01, 0.01, 0.01]], (40, 1))
    unsure = np.flatnonzero(np.arange(40) % 10 < 3)  # 3 items of each group are unsure
    p[unsure] = [0.4, 0.35, 0.15, 0.1]
    # k-means++ draws: over seeds, most picks are unsure (3 in 10 items are) and they
    # cover more groups than 4 random picks do (2.7 on average)
    picks = [badge(f, p, 4, seed=s).indices for s in range(30)]
    assert np.mean([np.isin(i, unsure).mean() for i in picks]) > 0.6
    assert np.mean([len(set(groups[i])) for i in picks]) > 3.0
    assert badge(f, p, 1).indices[0] in unsure  # the first pick: the longest embedding


# ---------------------------------------------------------------------- TypiClust
def test_typiclust_picks_the_dense_middle_of_the_largest_groups():
    rng = np.random.default_rng(0)
    big = axes()[0] + 0.05 * rng.standard_normal((40, 8))
    mid = axes()[1] + 0.05 * rng.standard_normal((25, 8))
    small = axes()[2] + 0.05 * rng.standard_normal((5, 8))
    f = np.concatenate([big, mid, small])
    groups = np.repeat([0, 1, 2], [40, 25, 5])
    picks = typiclust(f, 2, seed=0)
    assert sorted(groups[picks.indices]) == [0, 1]  # one of each large group, none of the small
    first = picks.indices[np.argmin(picks.indices)]
    centre = big.mean(0) / np.linalg.norm(big.mean(0))
    cos = (big / np.linalg.norm(big, axis=1, keepdims=True)) @ centre
    assert cos[first] >= np.quantile(cos, 0.75)  # a typical item, near the group's middle


# ---------------------------------------------------------------------- choose's errors
def test_choose_refuses_what_it_cannot_do():
    f = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="pool is empty"):
        choose(f[:0], 1)
    with pytest.raises(ValueError, match="budget 6: choose between 1 and the 5 items"):
        choose(f, 6)
    with pytest.raises(ValueError, match="method=margin: needs a model's probabilities"):
        choose(f, 2, method="margin")
    with pytest.raises(ValueError, match="method='nope'"):
        choose(f, 2, method="nope")


# ---------------------------------------------------------------------- the service
def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fill_labels(path: Path, label_of) -> None:
    """Fill in the label column of a suggestions CSV, as a person would."""
    rows = read_rows(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": label_of(row)})


@pytest.fixture
def pool(tmp_path):
    """36 images in class folders a/b/c (the folder name is the answer a labeller gives)."""
    return write_folder(tmp_path / "pool", *make_arrays(n=36, n_classes=3, seed=1))


def test_cold_start_writes_a_sheet_that_fit_reads_back(pool, tmp_path):
    from headstart import ImageClassifier

    out = tmp_path / "sheets" / "to_label.csv"
    result = suggest("tiny:cnn", pool, 12, feature_cache=str(tmp_path / "cache"))
    assert result.task == "image" and result.method == "typiclust"
    assert len(result.rows) == 12 and len(set(result.indices)) == 12
    result.to_csv(out)
    rows = read_rows(out)
    assert list(rows[0])[:2] == ["path", "label"] and all(r["label"] == "" for r in rows)
    assert all(r["reason"] and not Path(r["path"]).is_absolute() for r in rows)
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    with pytest.raises(DataError, match="line 2: empty 'path' or 'label'"):
        ImageClassifier("tiny:cnn", **FAST).fit(out)  # not filled in yet: a clear error
    fill_labels(out, lambda row: Path(row["path"]).parent.name)
    clf = ImageClassifier("tiny:cnn", **{**FAST, "val_fraction": 0.25}).fit(out)
    assert clf.classes_ == sorted({Path(r["path"]).parent.name for r in rows})
    assert clf.data_summary_["items"] == 12


def test_a_run_ranks_by_its_own_uncertainty_and_skips_its_training_items(tmp_path):
    from headstart import ImageClassifier

    train = write_folder(tmp_path / "train", *make_arrays(n=24, n_classes=3, seed=2))
    run = tmp_path / "run"
    ImageClassifier("tiny:cnn", run_dir=run, **{**FAST, "val_fraction": 0.25}).fit(str(train))
    extra = write_folder(tmp_path / "extra", *make_arrays(n=12, n_classes=3, seed=3))
    pool_csv = tmp_path / "pool.csv"  # the pool names the training images and 12 new ones
    files = sorted(str(p) for d in (train, extra) for p in Path(d).rglob("*.png"))
    pool_csv.write_text("path\n" + "\n".join(files) + "\n")
    result = suggest(str(run), pool_csv, 5, method="margin")
    assert result.excluded == 24 and result.labeled_size == 24 and result.pool_size == 36
    assert all(str(extra) in str(r.item) for r in result.rows)
    u = [r.uncertainty for r in result.rows]
    assert u == sorted(u, reverse=True) and all(r.predicted in "abc" for r in result.rows)
    assert result.rows[0].reason.startswith("unsure: ")
    with pytest.raises(ValueError, match="image_size would not apply"):
        suggest(str(run), extra, 4, image_size=64)
    # BADGE, its distances measured against the training items
    b = suggest(str(run), extra, 4, method="badge")
    assert b.method == "badge" and b.labeled_size == 24
    assert all(r.distance is not None and r.confidence is not None for r in b.rows)
    # the default: 24 labels for 3 classes are few (< 20 per class): typical items first
    auto = suggest(str(run), extra, 4)
    assert auto.method == "typiclust" and "typical of a group of" in auto.rows[0].reason
    assert "the run guesses" in auto.rows[0].reason and "unsure" not in auto.rows[0].reason


def test_a_run_whose_training_files_are_gone_still_suggests(tmp_path, caplog):
    from headstart import ImageClassifier

    train = write_csv(tmp_path / "train", *make_arrays(n=24, n_classes=3, seed=2))
    run = tmp_path / "run"
    ImageClassifier("tiny:cnn", run_dir=run, **{**FAST, "val_fraction": 0.25}).fit(train)
    (train.parent / "img" / "003.png").write_bytes(b"not an image any more")
    pool = write_folder(tmp_path / "pool", *make_arrays(n=9, n_classes=3, seed=3))
    with caplog.at_level("WARNING", logger="headstart.active"):
        result = suggest(str(run), pool, 3)
    assert result.labeled_size == 0 and len(result.rows) == 3
    assert "training data" in caplog.text and "cannot be read" in caplog.text


def test_auto_chooses_typical_items_while_labels_are_few_then_badge():
    from headstart.active.acquire import resolve_method

    assert resolve_method("auto", has_proba=False) == "typiclust"  # cold start
    assert resolve_method("auto", True, labeled_count=199, n_classes=10) == "typiclust"
    assert resolve_method("auto", True, labeled_count=200, n_classes=10) == "badge"
    f = np.random.default_rng(0).normal(size=(30, 4))
    p = np.random.default_rng(1).dirichlet(np.ones(2), size=30)
    assert choose(f, 3, p, labeled_count=40).method == "badge"
    assert choose(f, 3, p, labeled=f[:5]).method == "typiclust"


def test_text_cold_start_round_trip(tmp_path):
    from headstart import TextClassifier

    texts, labels = make_texts(30, seed=4)
    answer = dict(zip(texts, labels))
    pool_csv = tmp_path / "emails.csv"
    with open(pool_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([[t] for t in texts])
    out = tmp_path / "to_label.csv"
    suggest("tiny:bert", pool_csv, 12, feature_cache=str(tmp_path / "cache")).to_csv(out)
    rows = read_rows(out)
    assert list(rows[0])[:2] == ["text", "label"] and {r["text"] for r in rows} <= set(texts)
    fill_labels(out, lambda row: answer[row["text"]])
    clf = TextClassifier("tiny:bert", **{**TEXT_FIT, "val_fraction": 0.25}).fit(out)
    assert clf.classes_ == ["digits", "letters"]


def test_audio_cold_start(tmp_path):
    from test_audio import write_tones

    pool_dir = write_tones(tmp_path / "clips", per_class=4)
    result = suggest("scratch:audio:cnn", pool_dir, 3, task="audio")
    assert result.task == "audio" and len(result.rows) == 3
    out = result.to_csv(tmp_path / "to_label.csv")
    assert all((out.parent / r["path"]).is_file() for r in read_rows(out))


def test_errors_name_the_file_and_the_fix(pool, tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder; the pool items are "):
        suggest("tiny:cnn", tmp_path / "nowhere", 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        suggest("tiny:cnn", tmp_path / "empty", 3)
    with pytest.raises(ValueError, match=r"budget 99: the pool .*pool has 36 items.*--budget"):
        suggest("tiny:cnn", pool, 99)
    with pytest.raises(ValueError, match="method=badge: needs a model's probabilities"):
        suggest("tiny:cnn", pool, 3, method="badge")
    with pytest.raises(ValueError, match="every pool item is labelled already"):
        suggest("tiny:cnn", pool, 3, labeled=pool)
    with pytest.raises(ValueError, match="a folder but not a headstart run"):
        suggest(str(tmp_path), pool, 3)
    with pytest.raises(ValueError, match="runs/gone: no such run directory"):
        suggest("runs/gone", pool, 3)
    result = suggest("tiny:cnn", make_arrays(n=10)[0], 2)  # in memory: no path to write
    with pytest.raises(ValueError, match="in memory and has no file"):
        result.to_csv(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="name a .csv file"):
        suggest("tiny:cnn", pool, 2).to_csv(tmp_path / "x.txt")


def test_cli_suggest(pool, tmp_path, capsys):
    from headstart.cli import main

    out = tmp_path / "to_label.csv"
    cache = str(tmp_path / "cache")
    argv = ["suggest", "tiny:cnn", "--pool", str(pool), "--budget", "4", "--out", str(out)]
    assert main([*argv, "--feature-cache", cache]) == 0
    captured = capsys.readouterr()
    assert "4 of 36 pool items suggested by typiclust" in captured.out
    assert f"headstart fit {out}" in captured.err and len(read_rows(out)) == 4
    assert main(["suggest", "tiny:cnn", "--pool", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["suggest", "--help"])
    text = capsys.readouterr().out
    for flag in ("--pool", "--budget", "--labeled", "--method", "--out", "RUN_OR_MODEL"):
        assert flag in text


@pytest.mark.slow
def test_real_cold_start_covers_more_classes_than_chance(tmp_path):
    """EfficientNet-Lite0 (ImageNet) features of 300 Fashion-MNIST images: a cold start of
    10 picks covers at least 7 of the 10 classes (a random 10 covers 6.5 on average)."""
    from headstart.datasets import fashion_mnist, per_class_subset

    x, y, _ = fashion_mnist("test")
    idx = per_class_subset(y, 30, seed=0)
    result = suggest("packaged:efficientnet_lite0", x[idx], 10, feature_cache=None)
    assert len(set(y[idx][result.indices])) >= 7
