"""`headstart tune`: Optuna search over strategy and hyperparameters, on tiny:cnn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import FAST, make_arrays

SETTINGS = {k: v for k, v in FAST.items() if k != "seed"}


@pytest.fixture(scope="module")
def data():
    return make_arrays(60, n_classes=3)


def test_first_trial_is_the_default_and_the_best_is_refit(data, tmp_path):
    from headstart import ImageClassifier
    from headstart.tune import tune

    X, y = data
    result = tune(
        X,
        y,
        model="tiny:cnn",
        trials=5,
        out=tmp_path,
        strategies=("feature_extract", "partial", "finetune"),
        **SETTINGS,
    )
    assert [t["number"] for t in result.trials] == list(range(5))
    first = result.trials[0]
    assert first["default"] and not any(t["default"] for t in result.trials[1:])
    # the defaults of this call: FAST's learning rates; lp_ft is not searched, so the first
    # strategy stands in for it
    assert first["params"]["strategy"] == "feature_extract"
    assert first["params"]["head_lr"] == SETTINGS["head_lr"]
    assert {t["params"]["strategy"] for t in result.trials} <= {
        "feature_extract",
        "partial",
        "finetune",
    }
    for t in result.trials:
        assert ("lr" in t["params"]) == (t["params"]["strategy"] != "feature_extract")
        assert ("partial_groups" in t["params"]) == (t["params"]["strategy"] == "partial")
        if "partial_groups" in t["params"]:
            assert 1 <= t["params"]["partial_groups"] <= 3  # tiny:cnn has 3 groups
    done = [t for t in result.trials if t["state"] == "COMPLETE"]
    assert result.best["value"] == max(t["value"] for t in done)
    assert result.best["value"] >= result.default["value"]
    # the best trial, refit and saved, is a run like any other
    best = ImageClassifier.load(result.best_run)
    assert best.config_.strategy == result.best["params"]["strategy"]
    assert best.config_.head_lr == pytest.approx(result.best["params"]["head_lr"])
    # trial table: CSV, JSON and the HTML report
    rows = list(csv.DictReader(open(tmp_path / "tune.csv")))
    assert len(rows) == 5 and rows[0]["default"] == "True"
    saved = json.loads((tmp_path / "tune.json").read_text())
    assert saved["best"]["number"] == result.best["number"] and len(saved["trials"]) == 5
    report = (tmp_path / "report.html").read_text()
    assert report.count("<tr>") == 6 and "<svg" in report and "default settings" in report
    assert "http" not in report.split("</style>")[1].replace("http://www.w3.org", "")


def test_a_rerun_continues_the_same_study(data, tmp_path):
    from headstart.tune import tune

    X, y = data
    first = tune(
        X,
        y,
        model="tiny:cnn",
        trials=3,
        out=tmp_path,
        refit=False,
        strategies=("feature_extract",),
        **SETTINGS,
    )
    again = tune(
        X,
        y,
        model="tiny:cnn",
        trials=5,
        out=tmp_path,
        refit=False,
        strategies=("feature_extract",),
        **SETTINGS,
    )
    assert again.study_name == first.study_name
    assert len(again.trials) == 5
    assert again.trials[:3] == first.trials  # kept as they were, not rerun
    seen = [t["params"] for t in first.trials[1:]]
    assert all(t["params"] not in seen for t in again.trials[3:])  # new points, not repeats
    same = tune(
        X,
        y,
        model="tiny:cnn",
        trials=5,
        out=tmp_path,
        refit=False,
        strategies=("feature_extract",),
        num_workers=0,
        **{k: v for k, v in SETTINGS.items() if k != "num_workers"},
    )
    assert len(same.trials) == 5  # nothing left to do
    other = tune(
        X,
        y,
        model="tiny:cnn",
        trials=1,
        out=tmp_path,
        refit=False,
        strategies=("feature_extract",),
        **{**SETTINGS, "head_epochs": 3},
    )
    assert other.study_name != first.study_name  # another budget is another study


def test_a_killed_search_resumes_with_its_finished_trials(data, tmp_path, monkeypatch):
    """A trial that dies mid-way (the process killed) leaves the finished ones in the
    storage; the rerun runs only what is missing."""
    from headstart.tasks.base import TransferEstimator
    from headstart.tune import tune

    X, y = data
    real_fit = TransferEstimator.fit
    calls = {"n": 0}

    def dying_fit(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill) does to the third trial
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(TransferEstimator, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        tune(
            X,
            y,
            model="tiny:cnn",
            trials=4,
            out=tmp_path,
            refit=False,
            strategies=("feature_extract", "finetune"),
            **SETTINGS,
        )
    monkeypatch.setattr(TransferEstimator, "fit", real_fit)
    result = tune(
        X,
        y,
        model="tiny:cnn",
        trials=4,
        out=tmp_path,
        refit=False,
        strategies=("feature_extract", "finetune"),
        **SETTINGS,
    )
    states = [t["state"] for t in result.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4
    assert result.trials[0]["default"] and result.trials[0]["state"] == "COMPLETE"
    assert len(result.trials) == 5 and states[2] in ("FAIL", "RUNNING")


def test_pruning_compares_fine_tuning_epochs_across_strategies(data, tmp_path):
    """Every epoch that trains the backbone is reported, numbered from 1 in every strategy
    (an lp_ft trial's probe epochs are not steps), so the pruner compares the k-th
    fine-tuning epoch of lp_ft with the k-th of finetune; feature_extract reports none."""
    import optuna

    from headstart.tune import tune

    X, y = data
    result = tune(
        X,
        y,
        model="tiny:cnn",
        trials=4,
        out=tmp_path,
        refit=False,
        strategies=("lp_ft", "finetune", "feature_extract"),
        **SETTINGS,
    )
    storage = optuna.storages.RDBStorage(result.storage)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    seen = set()
    for t in study.trials:
        strategy = t.params["strategy"]
        seen.add(strategy)
        if strategy == "feature_extract":
            assert not t.intermediate_values
        elif t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == list(range(1, SETTINGS["epochs"] + 1))
    assert "lp_ft" in seen and len(seen) >= 2


def test_bad_arguments(data, tmp_path):
    from headstart.tune import tune

    X, y = data
    with pytest.raises(ValueError, match="strategies"):
        tune(X, y, model="tiny:cnn", strategies=("lora_xyz",), out=tmp_path)
    with pytest.raises(ValueError, match="trials"):
        tune(X, y, model="tiny:cnn", trials=0, out=tmp_path)
    with pytest.raises(ValueError, match="validation"):
        tune(
            X,
            y,
            model="tiny:cnn",
            trials=1,
            out=tmp_path,
            val_fraction=0.0,
            **{k: v for k, v in SETTINGS.items()},
        )


def test_cli_tune(data, tmp_path, capsys):
    from headstart.cli import main

    from conftest import write_folder

    X, y = data
    root = write_folder(tmp_path / "train", X, y)
    out = tmp_path / "tune"
    code = main(
        [
            "-q",
            "tune",
            str(root),
            "--model",
            "tiny:cnn",
            "--trials",
            "3",
            "--out",
            str(out),
            "--strategies",
            "feature_extract,finetune",
            "--epochs",
            "1",
            "--head-epochs",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--head-lr",
            "0.01",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "3 trials" in text and "best trial" in text and "default settings (trial 0)" in text
    assert (out / "best" / "config.json").is_file() and (out / "report.html").is_file()
    assert np.isfinite(json.loads((out / "tune.json").read_text())["best"]["value"])
