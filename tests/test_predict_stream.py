"""predict: the streamed CSV of `headstart predict` (one row per item, bad items reported
in their own row, atomic output with normal permissions), image folders, files and CSVs
with a path column, text tables and literal texts, and the ONNX engine.

The runs are random-init ``tiny:cnn`` / ``tiny:bert`` fits of a few seconds.
"""

from __future__ import annotations

import csv
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from headstart import ImageClassifier, TextClassifier
from headstart.cli import main
from headstart.export import export_model
from headstart.inference import Predictor
from headstart.predict import write_predictions

from conftest import FAST, TEXT_FIT, make_arrays, make_texts, write_folder

HEADER = ["item", "prediction", "probability", "error"]


def read_rows(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def probabilities(row: dict, classes: list[str]) -> np.ndarray:
    return np.array([float(row[f"p_{c}"]) for c in classes])


def check_good_rows(rows: list[dict], est, items: list) -> None:
    """Rows of predicted items equal the estimator's own predictions of ``items``."""
    assert all(r["error"] == "" for r in rows)
    assert [r["prediction"] for r in rows] == est.predict(items)
    proba = np.stack([probabilities(r, est.classes_) for r in rows])
    np.testing.assert_allclose(proba, est.predict_proba(items), atol=2e-6, rtol=0)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose([float(r["probability"]) for r in rows], proba.max(1), atol=1e-4)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_image")
    train = write_folder(root / "train", *make_arrays(n=40, seed=0))
    est = ImageClassifier("tiny:cnn", strategy="finetune", run_dir=root / "run", **FAST)
    est.fit(str(train))
    test = write_folder(root / "test", *make_arrays(n=12, seed=1))
    return SimpleNamespace(
        run=root / "run", est=est, test=test, files=sorted(str(p) for p in test.rglob("*.png"))
    )


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_text")
    texts, labels = make_texts(40, seed=0)
    est = TextClassifier("tiny:bert", strategy="finetune", run_dir=root / "run", **TEXT_FIT)
    est.fit(texts, labels)
    return SimpleNamespace(run=root / "run", est=est)


# ---------------------------------------------------------------------- images
def test_folder_missing_file_and_corrupt_image(image_run, tmp_path, capsys):
    missing = tmp_path / "missing.png"
    corrupt = tmp_path / "x.png"
    corrupt.write_bytes(os.urandom(64) + b"not a png at all")
    too_long = tmp_path / ("n" * 300 + ".png")  # a name no filesystem holds: a row, no OSError
    out = tmp_path / "preds.csv"
    code = main(
        [
            "-q",
            "predict",
            str(image_run.run),
            str(image_run.test),
            str(missing),
            str(corrupt),
            str(too_long),
            "--out",
            str(out),
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    assert "wrote 12 predictions" in capsys.readouterr().err
    header, rows = read_rows(out)
    assert header == HEADER + ["p_a", "p_b"]
    assert len(rows) == 12 + 3
    assert [r["item"] for r in rows] == image_run.files + [
        str(missing),
        str(corrupt),
        str(too_long),
    ]
    check_good_rows(rows[:12], image_run.est, image_run.files)
    for row, path in zip(rows[12:], (missing, corrupt, too_long)):
        assert row["prediction"] == "" and row["probability"] == ""
        assert str(path) in row["error"]
        assert row["p_a"] == row["p_b"] == ""
    assert "no such file" in rows[12]["error"]
    assert "not an image" in rows[13]["error"]


def test_csv_with_path_column_resolves_against_its_folder(image_run, tmp_path, monkeypatch):
    listing = tmp_path / "lists"
    (listing / "img").mkdir(parents=True)
    for name in ("one.png", "two.png"):
        shutil.copy(image_run.files[0 if name == "one.png" else -1], listing / "img" / name)
    table = listing / "inputs.csv"
    table.write_text(
        f"path,note\nimg/one.png,x\n,empty\n{image_run.files[5]},abs\n"
        "img/gone.png,y\nimg/two.png,z\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not resolve against the cwd
    out = tmp_path / "preds.csv"
    assert main(["-q", "predict", str(image_run.run), str(table), "--out", str(out)]) == 0
    _, rows = read_rows(out)
    one, two = str(listing / "img" / "one.png"), str(listing / "img" / "two.png")
    assert [r["item"] for r in rows] == [
        one,
        f"{table}:row 3",
        image_run.files[5],
        str(listing / "img" / "gone.png"),
        two,
    ]
    good = [rows[0], rows[2], rows[4]]
    check_good_rows(good, image_run.est, [one, image_run.files[5], two])
    for bad in (rows[1], rows[3]):
        assert bad["prediction"] == "" and bad["error"] != ""
    assert "gone.png" in rows[3]["error"]


def test_csv_without_path_column_is_a_clean_error(image_run, tmp_path, capsys):
    table = tmp_path / "inputs.csv"
    table.write_text("file\na.png\n")
    out = tmp_path / "preds.csv"
    assert main(["-q", "predict", str(image_run.run), str(table), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'path'" in err and "file" in err and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------------- texts
def test_text_table_and_literal_texts(text_run, tmp_path, umask_022):
    table = tmp_path / "texts.csv"
    pd.DataFrame(
        {"id": [1, 2, 3, 4], "text": ["abc cafe dead", "", "123 456 789 2024", "   "]}
    ).to_csv(table, index=False)
    out_dir = tmp_path / "out"
    out = out_dir / "preds.csv"
    literal = ["face bead fade aged ebb gag " * 3, "42 777"]
    code = main(
        ["-q", "predict", str(text_run.run), literal[0], str(table), literal[1], "--out", str(out)]
    )
    assert code == 0
    header, rows = read_rows(out)
    assert header == HEADER + ["p_digits", "p_letters"]
    assert len(rows) == 6
    assert [r["item"] for r in rows[1:5]] == [f"{table}:row {i}" for i in (2, 3, 4, 5)]
    assert rows[0]["item"].endswith("...") and len(rows[0]["item"]) == 60
    assert rows[5]["item"] == "42 777"
    good, bad = [rows[i] for i in (0, 1, 3, 5)], [rows[2], rows[4]]
    check_good_rows(
        good, text_run.est, [literal[0], "abc cafe dead", "123 456 789 2024", literal[1]]
    )
    for row in bad:
        assert row["prediction"] == "" and "empty text" in row["error"]
    assert sorted(os.listdir(out_dir)) == ["preds.csv"]  # no temporary file left
    mode = out.stat().st_mode
    assert mode & 0o044 != 0, oct(mode)  # readable by group and others, as open() makes it
    assert mode & 0o777 == 0o644


@pytest.mark.parametrize("kind", ["jsonl-null", "jsonl-no-field", "parquet-null"])
def test_table_row_without_a_text_is_an_error_row(kind, text_run, tmp_path):
    if kind.startswith("jsonl"):
        table = tmp_path / "texts.jsonl"
        middle = '{"text": null}' if kind == "jsonl-null" else '{"title": "no text"}'
        table.write_text(f'{{"text": "abc bad"}}\n{middle}\n{{"text": "999 808"}}\n')
    else:
        table = tmp_path / "texts.parquet"
        pd.DataFrame({"text": ["abc bad", None, "999 808"]}).to_parquet(table)
    out = tmp_path / "preds.csv"
    assert main(["-q", "predict", str(text_run.run), str(table), "--out", str(out)]) == 0
    _, rows = read_rows(out)
    assert [r["item"] for r in rows] == [f"{table}:row {i}" for i in (1, 2, 3)]
    check_good_rows([rows[0], rows[2]], text_run.est, ["abc bad", "999 808"])
    assert rows[1]["prediction"] == "" and "empty text" in rows[1]["error"]


def test_blank_line_of_a_one_column_csv_is_an_error_row(text_run, tmp_path):
    table = tmp_path / "texts.csv"
    table.write_text("text\nabc cafe\n\n123 456\n")  # a spreadsheet's empty cell, saved
    out = tmp_path / "preds.csv"
    assert main(["-q", "predict", str(text_run.run), str(table), "--out", str(out)]) == 0
    _, rows = read_rows(out)
    assert [r["item"] for r in rows] == [f"{table}:row {i}" for i in (2, 3, 4)]
    assert "empty text" in rows[1]["error"]


# ---------------------------------------------------------------------- atomic output
class FailingEngine:
    """Runs the first batch, then fails (a crash in the middle of a long run)."""

    name = "failing"

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def __call__(self, inputs):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("engine died")
        return self.engine(inputs)


def test_a_failed_run_leaves_the_previous_csv_and_no_temp_file(image_run, tmp_path):
    out = tmp_path / "preds.csv"
    out.write_text("previous results\n")
    predictor = Predictor(image_run.est)
    predictor.engine = FailingEngine(predictor.engine)
    with pytest.raises(RuntimeError, match="engine died"):
        write_predictions(predictor, [str(image_run.test)], out, batch_size=4, progress=False)
    assert predictor.engine.calls == 2
    assert out.read_text() == "previous results\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


# ---------------------------------------------------------------------- ONNX engine
@pytest.mark.parametrize("task", ["image", "text"])
def test_onnx_engine_predicts_as_the_torch_engine(task, image_run, text_run, tmp_path):
    run = image_run if task == "image" else text_run
    if task == "image":
        inputs = [str(image_run.test)]
    else:
        table = tmp_path / "texts.csv"
        texts, _ = make_texts(14, seed=3)
        pd.DataFrame({"text": texts + [""]}).to_csv(table, index=False)
        inputs = [str(table)]
    export_model(run.run, "onnx", check=None if task == "image" else make_texts(8, 4)[0])
    outs = {}
    for engine in ("torch", "onnx"):
        outs[engine] = tmp_path / f"{engine}.csv"
        assert (
            main(
                [
                    "-q",
                    "predict",
                    str(run.run),
                    *inputs,
                    "--engine",
                    engine,
                    "--out",
                    str(outs[engine]),
                ]
            )
            == 0
        )
    _, torch_rows = read_rows(outs["torch"])
    _, onnx_rows = read_rows(outs["onnx"])
    assert len(torch_rows) == len(onnx_rows) == (12 if task == "image" else 15)
    for key in ("item", "prediction", "error"):
        assert [r[key] for r in onnx_rows] == [r[key] for r in torch_rows]
    good = [i for i, r in enumerate(torch_rows) if not r["error"]]
    assert len(good) == (12 if task == "image" else 14)
    np.testing.assert_allclose(
        [probabilities(onnx_rows[i], run.est.classes_) for i in good],
        [probabilities(torch_rows[i], run.est.classes_) for i in good],
        atol=1e-5,
    )


def test_onnx_engine_without_an_export_says_how_to_make_one(image_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(image_run.run, run, ignore=shutil.ignore_patterns("export"))
    code = main(["-q", "predict", str(run), image_run.files[0], "--engine", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "headstart export" in err and "Traceback" not in err
