"""study: nested fractions, runs against scratch, gains and negative transfer, resume, the
CSV/JSON/HTML outputs, and the report in a real headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from headstart import study as study_mod
from headstart.cli import main
from headstart.study import SCRATCH, StudyResult, nested_fractions, run_study

from conftest import FAST, make_arrays, write_folder

SETTINGS = {k: v for k, v in FAST.items() if k != "seed"}
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def test_nested_fractions_are_nested_stratified_and_deterministic():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 3)
    subsets = nested_fractions(labels, (0.1, 0.5, 1.0), seed=3)
    assert list(subsets) == [0.1, 0.5, 1.0]
    small, half, full = (set(subsets[f].tolist()) for f in (0.1, 0.5, 1.0))
    assert small <= half <= full and len(full) == len(labels)
    assert np.bincount(labels[subsets[0.1]]).tolist() == [4, 2, 1]  # ceil, >= 1 per class
    assert np.bincount(labels[subsets[0.5]]).tolist() == [20, 10, 2]
    again = nested_fractions(labels, (1.0, 0.5, 0.1), seed=3)
    assert all((again[f] == subsets[f]).all() for f in subsets)
    with pytest.raises(ValueError, match="fractions"):
        nested_fractions(labels, (0.0, 1.0), seed=0)


def _run(run, strategy, fraction, acc, seed=0, n=100):
    return {
        "name": f"{strategy}-f{fraction:g}-s{seed}",
        "strategy": strategy,
        "fraction": fraction,
        "seed": seed,
        "n_train": int(n * fraction),
        "fit_seconds": 1.0 + run,
        "epochs": 3,
        "epochs_to_best": 2,
        "best": "x",
        "train_accuracy": min(1.0, acc + 0.1),
        "val_accuracy": acc,
        "gap": 0.1,
        "test": {
            "accuracy": acc,
            "macro_f1": acc,
            "auroc": None,
            "n": 5000,
            "per_class": {
                "a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 25},
                "b": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 25},
            },
            "confusion_matrix": [[25, 0], [0, 25]],
        },
        "history": [
            {
                "stage": "s",
                "global_epoch": e,
                "train_loss": 1.0,
                "val_loss": 1.0,
                "val_accuracy": acc,
            }
            for e in (1, 2, 3)
        ],
    }


def _result(table: dict) -> StudyResult:
    """``table``: {strategy: [acc at 0.1, acc at 0.5, acc at 1.0]}."""
    runs = [
        _run(i, s, f, a)
        for i, (s, accs) in enumerate(table.items())
        for f, a in zip((0.1, 0.5, 1.0), accs)
    ]
    return StudyResult(
        runs,
        "m",
        "image",
        ["a", "b"],
        settings={
            "fractions": [0.1, 0.5, 1.0],
            "seeds": [0],
            "n_pool": 100,
            "n_val": 10,
            "n_test": 50,
            "scratch": {},
        },
    )


def test_gains_data_to_match_and_negative_transfer():
    res = _result(
        {
            "lp_ft": [0.80, 0.90, 0.95],
            "feature_extract": [0.70, 0.85, 0.90],
            SCRATCH: [0.60, 0.85, 0.97],
        }
    )
    g = {x["fraction"]: x for x in res.gains()}
    assert g[0.1]["best_strategy"] == "lp_ft"
    assert g[0.1]["gain_points"] == pytest.approx(20.0)
    assert not g[0.1]["negative_transfer"] and g[1.0]["negative_transfer"]
    # scratch reaches 0.80 between 10 items (0.60) and 50 items (0.85): log-linear in n
    expected = float(np.exp(np.log(10) + (0.80 - 0.60) / 0.25 * (np.log(50) - np.log(10))))
    assert g[0.1]["scratch_items_to_match"] == pytest.approx(expected)
    assert g[0.5]["scratch_items_to_match"] == pytest.approx(
        float(np.exp(np.log(50) + (0.90 - 0.85) / 0.12 * (np.log(100) - np.log(50))))
    )
    assert g[1.0]["scratch_items_to_match"] == pytest.approx(  # scratch passes 0.95 earlier
        float(np.exp(np.log(50) + (0.95 - 0.85) / 0.12 * (np.log(100) - np.log(50))))
    )
    assert g[0.1]["beyond_seed_spread"] is None  # one seed: no spread to judge
    assert [g[f]["verdict"] for f in (0.1, 0.5, 1.0)] == [
        "transfer",
        "transfer",
        "negative transfer",
    ]
    never = _result({"lp_ft": [0.9, 0.95, 0.99], SCRATCH: [0.5, 0.6, 0.7]}).gains()
    assert never[0]["scratch_items_to_match"] is None


def test_a_difference_within_the_test_noise_is_a_tie():
    res = _result({"lp_ft": [0.800, 0.900, 0.950], SCRATCH: [0.802, 0.85, 0.90]})
    g = res.gains()[0]
    assert g["verdict"] == "tie" and not g["negative_transfer"]
    assert g["margin_points"] == pytest.approx(200 * np.sqrt(0.801 * 0.199 * 2 / 5000))
    from headstart.report import build_report

    assert "a tie" in build_report(res.report_data())


def test_the_classic_baseline_joins_the_verdict():
    from headstart.report.words import BASELINE, describe_gain

    res = _result(
        {"lp_ft": [0.80, 0.90, 0.95], SCRATCH: [0.50, 0.60, 0.70], BASELINE: [0.90, 0.91, 0.92]}
    )
    g = {x["fraction"]: x for x in res.gains()}
    assert res.strategies() == ["lp_ft"]
    # 10 items: the baseline beats transfer beyond the noise although scratch does not
    assert g[0.1]["verdict"] == "negative transfer" and g[0.1]["rival"] == BASELINE
    assert g[0.1]["baseline_gain_points"] == pytest.approx(-10.0)
    assert g[0.1]["transfer_items_to_match_baseline"] == pytest.approx(
        float(np.exp(np.log(10) + (0.90 - 0.80) / 0.10 * (np.log(50) - np.log(10))))
    )
    assert g[0.5]["verdict"] == "tie"  # 0.90 vs 0.91 on 5,000 items: within +-1.2
    assert g[1.0]["verdict"] == "transfer" and g[1.0]["baseline_items_to_match"] is None
    head, detail = describe_gain(g[0.1])
    assert head == "NEGATIVE TRANSFER: the classic baseline beat every transfer strategy"
    assert "transfer needs ~50 items to match the baseline" in detail
    head, detail = describe_gain(g[1.0])
    assert head == "transfer beat training from scratch and the classic baseline"
    assert "the baseline never matches transfer here" in detail
    from headstart.report import build_report

    page = build_report(res.report_data())
    assert "id=answer" in page and "transfer beat training from scratch and" in page


def test_report_flags_negative_transfer_and_is_self_contained():
    from headstart.report import build_report

    res = _result({"lp_ft": [0.80, 0.90, 0.95], SCRATCH: [0.60, 0.85, 0.97]})
    page = build_report(res.report_data())
    # the answer (at the most data) first, then the same fraction in the list
    assert "NEGATIVE TRANSFER" in page and page.count("verdict bad") == 2
    assert page.index("id=answer") < page.index("training items (0.1)")
    assert page.count("<svg") == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    x, y = make_arrays(n=90, n_classes=3)
    xt, yt = make_arrays(n=30, n_classes=3, seed=7)
    res = run_study(
        x,
        y,
        model="tiny:cnn",
        out=out,
        test=(xt, yt),
        fractions=(0.5, 1.0),
        strategies=("feature_extract", "finetune"),
        **SETTINGS,
    )
    return out, res


def test_study_runs_every_strategy_and_scratch_at_every_fraction(small_study):
    out, res = small_study
    names = sorted(r["name"] for r in res.runs)
    assert names == sorted(
        f"{s}-f{f:g}-s0"
        for s in ("feature_extract", "finetune", SCRATCH, "baseline")
        for f in (0.5, 1.0)
    )
    by = {r["name"]: r for r in res.runs}
    assert by["scratch-f1-s0"]["backbone"] == "scratch:tiny:cnn"
    assert by["baseline-f1-s0"]["backbone"].endswith("pixels")  # the chosen classic model
    assert by["baseline-f0.5-s0"]["n_train"] == by["feature_extract-f0.5-s0"]["n_train"]
    assert by["feature_extract-f0.5-s0"]["n_train"] < by["feature_extract-f1-s0"]["n_train"]
    for r in res.runs:
        assert 0 <= r["test"]["accuracy"] <= 1 and r["test"]["n"] == 30  # the given test set
        if r["strategy"] != "baseline":
            assert r["epochs"] == len(r["history"]) >= 1
        assert r["epochs_to_best"] is None or 1 <= r["epochs_to_best"] <= r["epochs"]
        assert r["gap"] == pytest.approx(r["train_accuracy"] - r["val_accuracy"])
    assert not (out / "work").exists()  # per-run folders are cleaned up


def test_study_writes_csv_json_and_report(small_study):
    out, res = small_study
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(res.runs) == 8
    assert {"name", "test_accuracy", "gap", "fit_seconds", "epochs_to_best"} <= set(rows[0])
    data = json.loads((out / "study.json").read_text())
    assert data["model"] == "tiny:cnn" and len(data["runs"]) == 8
    assert set(data["curves"]) == {"feature_extract", "finetune", SCRATCH, "baseline"}
    assert {"baseline_accuracy", "scratch_accuracy", "rival"} <= set(data["gains"][0])
    assert len(data["gains"]) == 2
    page = (out / "report.html").read_text()
    # learning, training and time curves, confusion matrix, the best run's reliability diagram
    assert page.startswith("<!doctype html>") and page.count("<svg") == 5
    assert "<h2>Calibration</h2>" in page and "Reliability diagram" in page


def test_killed_study_resumes_and_skips_finished_runs(tmp_path, monkeypatch):
    x, y = make_arrays(n=90, n_classes=3)
    kw = dict(
        model="tiny:cnn",
        out=tmp_path,
        fractions=(0.5, 1.0),
        strategies=("feature_extract",),
        **SETTINGS,
    )

    def stop_after_two(done, total, name):
        if done == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C after the second run

    with pytest.raises(KeyboardInterrupt):
        run_study(x, y, progress=stop_after_two, **kw)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"name": "feature_extract-f1-s0", "tor')  # killed mid-write
    calls = []
    real = study_mod._one_run
    monkeypatch.setattr(
        study_mod, "_one_run", lambda *a, **k: calls.append(a[1].name) or real(*a, **k)
    )
    res = run_study(x, y, **kw)
    assert calls == ["feature_extract-f1-s0", "scratch-f1-s0"]  # and the baseline, not a fit
    assert len(res.runs) == 6
    calls.clear()
    run_study(x, y, **kw)
    assert calls == []  # everything finished: nothing runs again
    calls.clear()
    run_study(x, y, **{**kw, "epochs": 3})  # another budget is another study
    assert len(calls) == 4


def test_unknown_strategy_and_multi_label_are_refused(tmp_path):
    x, y = make_arrays(n=30, n_classes=3)
    with pytest.raises(ValueError, match="unknown strategy"):
        run_study(x, y, model="tiny:cnn", out=tmp_path, strategies=("lora",), **SETTINGS)


def test_cli_study(tmp_path):
    folder = write_folder(tmp_path / "data", *make_arrays(n=60, n_classes=3))
    test = write_folder(tmp_path / "test", *make_arrays(n=15, n_classes=3, seed=4))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            [
                "-q",
                "study",
                str(folder),
                "--test",
                str(test),
                "--model",
                "tiny:cnn",
                "--out",
                str(tmp_path / "st"),
                "--fractions",
                "0.5,1",
                "--strategies",
                "feature_extract",
                "--epochs",
                "1",
                "--head-epochs",
                "2",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "study:" in text and "items:" in text and "report:" in text
    saved = json.loads((tmp_path / "st" / "study.json").read_text())
    assert saved["settings"]["n_test"] == 15
    assert saved["settings"]["fit"]["epochs"] == 1


def test_report_in_headless_chromium(small_study, tmp_path):
    """The report loads with no console message and no request but itself, and each plot
    renders: a non-blank screenshot of the size the page gives it."""
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is needed for the report test: apt-get install -y chromium "
            "(scripts/setup.sh installs it)"
        )
    from playwright.sync_api import sync_playwright

    out, _ = small_study
    url = (out / "report.html").resolve().as_uri()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        console, requests, errors = [], [], []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_load_state("load")
        page.screenshot(path=str(ARTIFACTS / "study_report.png"), full_page=True)
        figures = page.locator("figure svg")
        assert figures.count() == 5  # with the reliability diagram
        for i in range(figures.count()):
            box = figures.nth(i).bounding_box()
            assert box["width"] > 300 and box["height"] > 250, box
            shot = tmp_path / f"plot{i}.png"
            figures.nth(i).screenshot(path=str(shot))
            img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
            assert abs(img.shape[1] - box["width"]) <= 2 and abs(img.shape[0] - box["height"]) <= 2
            assert (img < 200).mean() > 0.01, f"plot {i} looks blank"
        browser.close()
    assert console == [] and errors == []
    assert requests == [url]


def test_study_checks_the_advice_at_every_fraction(small_study):
    out, res = small_study
    check = res.advice_check()
    assert [c["fraction"] for c in check] == [0.5, 1.0]
    for c in check:
        assert c["advised"] in ("feature_extract", "finetune", "lp_ft")
        assert c["best"] in ("feature_extract", "finetune")
        assert c["hit"] == (c["advised"] == c["best"])
        assert c["reasons"]
    page = (out / "report.html").read_text()
    assert "Advice, checked" in page and "won in" in page
    assert json.loads((out / "study.json").read_text())["advice"] == check


def test_study_enlarges_small_images_at_most_3x():
    """The study's budget: 28 px images go in at 96 px (fit alone would use 160), photos at
    the backbone's own size."""
    from headstart.config import FitConfig
    from headstart.data.images import from_arrays
    from headstart.study import _study_image_size

    cfg = FitConfig(backbone="packaged:efficientnet_lite0")
    small = from_arrays(np.zeros((4, 28, 28), np.uint8), ["a", "b", "a", "b"])
    large = from_arrays(np.zeros((4, 400, 300, 3), np.uint8), ["a", "b", "a", "b"])
    assert _study_image_size(cfg, small) == 96
    assert _study_image_size(cfg, large) == 224
