"""The command line, in-process (``headstart.cli.main``) and once as a real subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from headstart.cli import main

from conftest import make_arrays, write_folder

FIT_FLAGS = [
    "--backbone",
    "tiny:cnn",
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
    "--early-stopping",
    "0",
]


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
        code = main(
            [
                "-q",
                "fit",
                str(train),
                *FIT_FLAGS,
                "--strategy",
                "finetune",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--test",
                str(test),
            ]
        )
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
    proc = subprocess.run(
        [sys.executable, "-m", "headstart", "models", "--offline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    cfg.write_text(
        "strategy: feature_extract\nhead-epochs: 3\nhead_hidden: [8]\n"
        "lr: 0.5\nweight_decay: 0.01\nskip_bad: true\n"
    )
    out = tmp_path / "run"
    code = main(
        [
            "-q",
            "fit",
            str(train),
            "--config",
            str(cfg),
            "--backbone",
            "tiny:cnn",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--lr",
            "0.002",
            "--no-skip-bad",
            "--out",
            str(out),
        ]
    )
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
    flags = [str(train), *FIT_FLAGS, "--strategy", "finetune", "--epochs", "1", "--out", str(out)]
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
    code = main(
        [
            "study",
            str(tmp_path / "missing"),
            "--model",
            "tiny:cnn",
            "--out",
            str(tmp_path / "study"),
        ]
    )
    assert code == 2 and "error" in capsys.readouterr().err
    assert train_log.level == before


# ---------------------------------------------------------------- per-task defaults in --help
def _help_defaults(command: str, monkeypatch, capsys) -> dict[str, tuple[str, dict[str, str]]]:
    """``{field: (general default, {task: its default})}`` as `headstart COMMAND --help`
    shows them at the end of each settings flag's help."""
    import re

    monkeypatch.setenv("COLUMNS", "100000")  # one line per flag (or flag, then its help)
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    entries: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"^  --", line):
            entries.append(line.strip())
        elif entries and line.startswith("   ") and line.strip():
            entries[-1] += " " + line.strip()
    shown = {}
    for entry in entries:
        m = re.search(r"\(default: ([^()]*)\)$", entry)
        if not m:
            continue
        general, _, rest = m.group(1).partition("; ")
        per_task = dict(part.split(": ", 1) for part in rest.split(", ")) if rest else {}
        shown[entry.split()[0].rstrip(",").removeprefix("--").replace("-", "_")] = (
            general,
            per_task,
        )
    return shown


def _parse_shown(text: str, name: str):
    """A default as --help writes it, as the FitConfig value."""
    import typing

    from headstart.config import FitConfig

    kind = typing.get_type_hints(FitConfig)[name]
    if text == "None":
        return None
    if typing.get_origin(kind) is tuple:
        return () if text == "empty" else tuple(int(x) for x in text.split())
    if kind is bool:
        return {"True": True, "False": False}[text]
    inner = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
    return "" if text == '""' else inner(text)


def test_fit_help_shows_text_defaults_for_task_text(monkeypatch, capsys):
    shown = _help_defaults("fit", monkeypatch, capsys)
    assert shown["epochs"][0] == "12" and shown["epochs"][1]["text"] == "8"
    assert shown["truncation"] == ("head", {"text": "chunks"})
    assert shown["batch_size"][1]["text"] == "16"
    assert _parse_shown(shown["lr"][1]["text"], "lr") == 1e-4
    assert "image" not in shown["epochs"][1]  # image takes the general defaults


@pytest.mark.parametrize("task", ["image", "text", "audio", "asr", "detect"])
def test_fit_help_defaults_are_the_ones_each_task_uses(task, monkeypatch, capsys):
    """What `fit --help` shows for --task TASK is what the estimator resolves with no
    settings given, and what `fit --task TASK` with no flags trains with."""
    from headstart.cli import build_parser, fit_config_from_args
    from headstart.config import FitConfig
    from headstart.tasks import ESTIMATORS

    shown = _help_defaults("fit", monkeypatch, capsys)
    assert set(shown) >= set(FitConfig.field_names())
    resolved = ESTIMATORS[task]().resolved_config()
    from_cli = fit_config_from_args(build_parser().parse_args(["fit", "DATA", "--task", task]))
    assert from_cli == resolved
    for name in FitConfig.field_names():
        general, per_task = shown[name]
        assert _parse_shown(per_task.get(task, general), name) == getattr(resolved, name), (
            f"--{name.replace('_', '-')} for --task {task}"
        )


def test_pretrain_help_shows_the_defaults_pretrain_uses(monkeypatch, capsys):
    shown = _help_defaults("pretrain", monkeypatch, capsys)
    assert shown["strategy"] == ("finetune", {})
    assert shown["lr"] == ("0.003", {})
    assert shown["lr_decay"] == ("1.0", {})
    assert shown["bn"] == ("train", {})
    assert "detect" not in shown["epochs"][1]  # pretrain has no --task detect


def test_fit_resume_says_when_there_is_nothing_to_resume(folders, tmp_path, caplog, capsys):
    """`fit --resume` into a run directory without a checkpoint says so on stderr (a real
    process: the CLI's own logging), then `fit --resume` of the finished run changes no
    file and reports the saved run."""
    import logging

    _, train, _ = folders
    out = tmp_path / "run"
    flags = [
        "fit",
        str(train),
        *FIT_FLAGS,
        "--strategy",
        "feature_extract",
        "--head-epochs",
        "2",
        "--out",
        str(out),
        "--resume",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "headstart", "-q", *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"no checkpoint in {out / 'checkpoints' / 'last'}; starting a new fit" in proc.stderr
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    saved = json.loads((out / "config.json").read_text())
    with caplog.at_level(logging.INFO, logger="headstart"):
        assert main(flags) == 0
    assert "run already finished; nothing to do" in caplog.text
    assert "no checkpoint" not in caplog.text
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files
    stdout = capsys.readouterr().out
    assert f"fit {saved['metrics']['fit_seconds']:.0f}s" in stdout and "validation" in stdout
