"""The command line, in-process (``headstart.cli.main``) and once as a real subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from headstart.cli import main

from conftest import make_arrays, write_folder

FIT_FLAGS = ["--backbone", "tiny:cnn", "--num-workers", "0", "--device", "cpu",
             "--batch-size", "16", "--lr", "0.01", "--head-lr", "0.01", "--early-stopping", "0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train = write_folder(root / "train", *make_arrays(n=40, seed=0))
    test = write_folder(root / "test", *make_arrays(n=12, seed=1))
    return root, train, test


@pytest.fixture(scope="module")
def fitted_run(folders):
    """`headstart fit ... --test` once; (run dir, stdout, exit code)."""
    root, train, test = folders
    out = root / "run"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["-q", "fit", str(train), *FIT_FLAGS, "--strategy", "finetune",
                     "--epochs", "2", "--out", str(out), "--test", str(test)])
    return out, stdout.getvalue(), code


def test_models_offline_json(capsys):
    assert main(["models", "--offline", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    ids = [e["id"] for e in entries]
    assert "packaged:efficientnet_lite0" in ids and "packaged:efficientnet_lite2" in ids
    assert "tiny:cnn" in ids
    assert all(e["offline"] for e in entries)
    assert all(e["source_data"] and e["licence"] for e in entries)


def test_models_table_lists_hub_models_too(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "timm:efficientnet_b0.ra_in1k" in out and "packaged:efficientnet_lite0" in out


def test_models_as_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "headstart", "models", "--offline"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "packaged:efficientnet_lite0" in proc.stdout
    assert "packaged:efficientnet_lite2" in proc.stdout
    assert "timm:resnet50" not in proc.stdout  # needs the network: not offline


def test_fit_prints_metrics_and_writes_the_run(fitted_run):
    out, stdout, code = fitted_run
    assert code == 0
    assert "validation" in stdout and "test" in stdout
    assert stdout.count("accuracy") >= 2
    assert "stage finetune: trainable 6,154 / 6,154 params (100.00%), BN train" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["fit_config"]["backbone"] == "tiny:cnn"
    assert config["fit_config"]["strategy"] == "finetune"
    assert config["fit_config"]["epochs"] == 2
    assert config["metrics"]["test"]["n"] == 12
    assert (out / "model.safetensors").is_file()


def test_yaml_config_and_flag_override(folders, tmp_path, capsys):
    _, train, _ = folders
    cfg = tmp_path / "fit.yaml"
    cfg.write_text("strategy: feature_extract\nhead-epochs: 3\nhead_hidden: [8]\n"
                   "lr: 0.5\nweight_decay: 0.01\nskip_bad: true\n")
    out = tmp_path / "run"
    code = main(["-q", "fit", str(train), "--config", str(cfg), "--backbone", "tiny:cnn",
                 "--num-workers", "0", "--device", "cpu", "--lr", "0.002",
                 "--no-skip-bad", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    fit_config = json.loads((out / "config.json").read_text())["fit_config"]
    assert fit_config["strategy"] == "feature_extract"  # from YAML
    assert fit_config["head_epochs"] == 3  # YAML key with a dash
    assert fit_config["head_hidden"] == [8]
    assert fit_config["weight_decay"] == 0.01
    assert fit_config["lr"] == 0.002  # the flag overrides the YAML value
    assert fit_config["skip_bad"] is False
    assert fit_config["batch_size"] == 32  # untouched default


def test_unknown_yaml_key(folders, tmp_path, capsys):
    _, train, _ = folders
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: 0.01\nlearning_rat: 0.1\n")
    code = main(["fit", str(train), "--config", str(cfg), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "learning_rat" in err and str(cfg) in err
    assert "Traceback" not in err


def test_bad_flag_value_exits_2(folders, capsys):
    _, train, _ = folders
    with pytest.raises(SystemExit) as info:
        main(["fit", str(train), "--strategy", "everything"])
    assert info.value.code == 2
    assert "everything" in capsys.readouterr().err


def test_evaluate_prints_accuracy_and_confusion_matrix(fitted_run, folders, capsys):
    out, _, _ = fitted_run
    _, _, test = folders
    assert main(["-q", "evaluate", str(out), str(test)]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "confusion matrix" in text
    rows = text.split("confusion matrix")[1].strip().splitlines()[1:]
    counts = [[int(v) for v in row.split()[1:]] for row in rows]
    assert [row.split()[0] for row in rows] == ["a", "b"]
    assert sum(map(sum, counts)) == 12
    assert main(["-q", "evaluate", str(out), str(test), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 12 and len(metrics["confusion_matrix"]) == 2


def test_predict_writes_one_row_per_image(fitted_run, folders, tmp_path, capsys):
    out, _, _ = fitted_run
    _, _, test = folders
    preds = tmp_path / "preds.csv"
    single = test / "a" / "000.png"
    assert main(["-q", "predict", str(out), str(test), str(single), "--out", str(preds)]) == 0
    with open(preds, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 + 1
    assert all(r["prediction"] in ("a", "b") for r in rows)
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["error"] == "" for r in rows)
    assert all(abs(float(r["p_a"]) + float(r["p_b"]) - 1) < 1e-4 for r in rows)
    assert rows[-1]["item"] == str(single)
    assert len({r["item"] for r in rows[:-1]}) == 12
    assert main(["-q", "predict", str(out), str(single)]) == 0  # to stdout
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "item,prediction,probability,error,p_a,p_b" and len(lines) == 2


def test_bad_data_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_images"
    code = main(["fit", str(missing), "--backbone", "tiny:cnn", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err and "Traceback" not in err
    empty = tmp_path / "data"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    code = main(["fit", str(empty), "--backbone", "tiny:cnn", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and str(empty / "a") in err and "Traceback" not in err


def test_unknown_backbone(folders, tmp_path, capsys):
    _, train, _ = folders
    code = main(["fit", str(train), "--backbone", "nowhere:model", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere:model" in err and "tiny:cnn" in err


def test_evaluate_of_a_missing_run(tmp_path, folders, capsys):
    _, _, test = folders
    assert main(["evaluate", str(tmp_path / "nope"), str(test)]) == 2
    assert "nope" in capsys.readouterr().err


def test_resume_with_other_settings_is_a_clean_cli_error(folders, tmp_path, capsys):
    _, train, _ = folders
    out = tmp_path / "run"
    flags = [str(train), *FIT_FLAGS, "--strategy", "finetune", "--epochs", "1",
             "--out", str(out)]
    assert main(["-q", "fit", *flags]) == 0
    capsys.readouterr()
    code = main(["-q", "fit", *flags, "--resume", "--weight-decay", "0.3"])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint" in err and "Traceback" not in err


def test_a_commands_log_quieting_ends_with_it(tmp_path, capsys):
    """study and tune quiet the library's per-epoch loggers for their many fits; that must
    not outlive the command (a later fit in the same process logged nothing)."""
    import logging

    train_log = logging.getLogger("headstart.train")
    before = train_log.level
    code = main(["study", str(tmp_path / "missing"), "--model", "tiny:cnn",
                 "--out", str(tmp_path / "study")])
    assert code == 2 and "error" in capsys.readouterr().err
    assert train_log.level == before
