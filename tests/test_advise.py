"""advise: the rules on numbers, the probe on data, the CLI, and the study's check."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest

from headstart.advise import advise, advise_from_facts
from headstart.cli import main

from conftest import make_arrays, write_folder


def test_few_items_per_class_means_frozen_features():
    a = advise_from_facts(40, 10, 4, 4, probe_linear=0.5)
    assert a.strategy == "feature_extract"
    assert "4.0 items per class" in a.reasons[0]
    assert "min_steps" not in a.settings


def test_separable_frozen_features_mean_feature_extract():
    a = advise_from_facts(2000, 10, 200, 200, probe_linear=0.97)
    assert a.strategy == "feature_extract" and "97.0%" in a.reasons[0]


def test_middle_ground_is_lp_ft_with_enough_steps():
    a = advise_from_facts(200, 10, 20, 20, probe_linear=0.8)
    assert a.strategy == "lp_ft"
    assert a.settings == {"min_steps": 100}  # 6 steps per epoch x 12 epochs < 100
    big = advise_from_facts(5000, 10, 500, 500, probe_linear=0.8)
    assert big.strategy == "lp_ft" and "min_steps" not in big.settings


def test_much_data_and_poor_features_mean_finetune():
    a = advise_from_facts(10000, 10, 1000, 1000, probe_linear=0.6)
    assert a.strategy == "finetune"


def test_imbalance_switches_the_monitor_to_macro_f1():
    a = advise_from_facts(300, 3, 20, 200, probe_linear=0.8)
    assert a.settings["monitor"] == "macro_f1"
    assert any("10.0x" in r for r in a.reasons)
    assert "monitor" not in advise_from_facts(300, 3, 90, 110, probe_linear=0.8).settings


def test_advise_measures_the_facts_and_the_probe():
    x, y = make_arrays(n=60, n_classes=3)
    a = advise(x, y, model="tiny:cnn", num_workers=0, device="cpu")
    assert a.facts["n_items"] == 60 and a.facts["n_classes"] == 3
    assert a.facts["smallest_class"] == a.facts["largest_class"] == 20
    assert 0.0 <= a.facts["probe_linear"] <= 1.0 and 0.0 <= a.facts["probe_knn"] <= 1.0
    assert a.strategy in ("feature_extract", "lp_ft", "finetune")
    assert a.reasons and "strategy: " in a.text()


def test_advise_of_an_unloadable_model_is_a_clear_error():
    x, y = make_arrays(n=30, n_classes=3)
    with pytest.raises(ValueError, match="could not be probed"):
        advise(x, y, model="nope:model", num_workers=0, device="cpu")


def test_cli_advise(tmp_path):
    folder = write_folder(tmp_path / "data", *make_arrays(n=60, n_classes=3))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(
            [
                "-q",
                "advise",
                str(folder),
                "--model",
                "tiny:cnn",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "strategy:" in text and "because:" in text and "headstart fit" in text
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        code = main(
            [
                "-q",
                "advise",
                str(folder),
                "--model",
                "tiny:cnn",
                "--json",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
    data = json.loads(out.getvalue())
    assert code == 0 and data["strategy"] and data["reasons"] and data["facts"]["n_items"] == 60


def test_cli_advise_and_study_default_to_the_tasks_backbone_as_fit_does(tmp_path, monkeypatch):
    """`headstart advise DATA` without --model (it was required, unlike fit's --backbone):
    the task's default backbone, named in the output and the suggested fit command."""
    from headstart import ImageClassifier

    monkeypatch.setitem(ImageClassifier.defaults, "backbone", "tiny:cnn")  # no real weights
    folder = write_folder(tmp_path / "data", *make_arrays(n=60, n_classes=3))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["-q", "advise", str(folder), "--num-workers", "0", "--device", "cpu"])
    assert code == 0, err.getvalue()
    assert out.getvalue().startswith("tiny:cnn on ") and "--backbone tiny:cnn" in out.getvalue()
    assert "classic baseline on the same items: " in out.getvalue()
    assert (
        advise(*make_arrays(n=30, n_classes=3), num_workers=0, device="cpu").facts["n_items"] == 30
    )
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        code = main(
            [
                "-q",
                "study",
                str(folder),
                "--fractions",
                "1",
                "--strategies",
                "feature_extract",
                "--no-scratch",
                "--epochs",
                "1",
                "--head-epochs",
                "1",
                "--num-workers",
                "0",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "st"),
            ]
        )
    assert code == 0 and "(tiny:cnn, 2 runs)" in out.getvalue()  # feature_extract + baseline
    assert json.loads((tmp_path / "st" / "study.json").read_text())["model"] == "tiny:cnn"


def test_advice_says_when_a_classic_model_is_as_good():
    """The rule on numbers alone: a baseline within the probe's noise suggests auto."""
    from headstart.advise import advise_from_facts

    weak = advise_from_facts(200, 10, 20, 20, 0.80, 0.78, ("k-NN on pixels", 0.81))
    assert weak.facts["transfer_pays"] is False and weak.settings["strategy"] == "auto"
    assert any("transfer may not pay" in r for r in weak.reasons)
    strong = advise_from_facts(200, 10, 20, 20, 0.95, 0.90, ("k-NN on pixels", 0.60))
    assert strong.facts["transfer_pays"] is True and "strategy" not in strong.settings
    assert any("already beat it" in r for r in strong.reasons)


def test_advise_fits_the_baseline_on_the_probed_items(monkeypatch):
    from headstart.tasks import baselined

    seen = []
    real = baselined.baseline_cv
    monkeypatch.setattr(
        baselined,
        "baseline_cv",
        lambda cls, cfg, items: seen.append(len(items)) or real(cls, cfg, items),
    )
    a = advise(*make_arrays(n=30, n_classes=3), model="tiny:cnn", num_workers=0, device="cpu")
    assert seen == [30] == [a.facts["probe_items"]]
    assert 0 <= a.facts["baseline_cv"] <= 1 and a.facts["baseline"].endswith("pixels")
