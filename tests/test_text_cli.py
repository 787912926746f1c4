"""The command line with ``--task text``: fit, evaluate, predict, the joint blend's wording,
and a missing text column."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from headstart.cli import main

from text_common import CLASSES, make_texts

# ====================================================================== 10. CLI
CLI_FLAGS = [
    "--task",
    "text",
    "--backbone",
    "tiny:bert",
    "--num-workers",
    "0",
    "--device",
    "cpu",
    "--head-lr",
    "0.05",
    "--early-stopping",
    "0",
    "--val-fraction",
    "0.2",
]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_cli")
    for name, (n, seed) in {"train": (40, 0), "test": (12, 1)}.items():
        texts, labels = make_texts(n, seed)
        pd.DataFrame({"text": texts, "label": labels}).to_csv(root / f"{name}.csv", index=False)
    return root


def test_cli_fit_evaluate_predict_text(cli_run, capsys):
    root = cli_run
    run = root / "run"
    code = main(
        [
            "-q",
            "fit",
            str(root / "train.csv"),
            *CLI_FLAGS,
            "--strategy",
            "feature_extract",
            "--head-epochs",
            "3",
            "--out",
            str(run),
            "--test",
            str(root / "test.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tiny:bert, strategy feature_extract, 4x64 tokens (chunks)" in out
    baseline_lines = [line for line in out.splitlines() if "baseline TF-IDF" in line]
    assert len(baseline_lines) == 2  # validation and test
    assert "accuracy" in baseline_lines[-1] and "(n=12)" in baseline_lines[-1]
    assert sum("blend (mean of encoder and baseline" in line for line in out.splitlines()) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "text" and config["fit_config"]["head_epochs"] == 3
    assert config["metrics"]["test"]["n"] == 12 and "baseline" in config["metrics"]["test"]

    assert main(["-q", "evaluate", str(run), str(root / "test.csv")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "(n=12)" in out and "confusion matrix" in out
    assert "baseline TF-IDF" in out and "blend (mean of encoder and baseline" in out
    assert main(["-q", "evaluate", str(run), str(root / "test.csv"), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["n"] == 12 and as_json["blend"]["n"] == 12

    to_predict = root / "texts.csv"
    pd.DataFrame({"text": ["abc cafe", "123 456 789"]}).to_csv(to_predict, index=False)
    assert main(["-q", "predict", str(run), "some text", str(to_predict)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "item,prediction,probability,error," + ",".join(
        f"p_{c}" for c in sorted(CLASSES)
    )
    rows = [line.split(",") for line in lines[1:]]
    # input order: the literal text first, then the table's rows
    assert [r[0] for r in rows] == ["some text", f"{to_predict}:row 2", f"{to_predict}:row 3"]
    assert all(r[1] in CLASSES and 0.5 <= float(r[2]) <= 1.0 and r[3] == "" for r in rows)
    probs = [[float(v) for v in r[4:]] for r in rows]
    assert all(
        abs(sum(p) - 1) < 1e-4 and abs(max(p) - float(r[2])) < 1e-4 for p, r in zip(probs, rows)
    )


def test_cli_joint_blend_says_what_its_metrics_are(cli_run, tmp_path, capsys):
    root = cli_run
    run = tmp_path / "joint"
    code = main(
        [
            "-q",
            "fit",
            str(root / "train.csv"),
            *CLI_FLAGS,
            "--strategy",
            "feature_extract",
            "--head-epochs",
            "3",
            "--blend",  # joint: the default
            "--out",
            str(run),
            "--test",
            str(root / "test.csv"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    joint_line = "(the above is one logistic regression on TF-IDF + encoder features) encoder"
    assert sum(joint_line in line for line in out.splitlines()) == 2  # validation, test
    assert (
        sum("probabilities, --blend --blend-mode mean)" in line for line in out.splitlines()) == 2
    )
    assert main(["-q", "evaluate", str(run), str(root / "test.csv")]) == 0
    assert joint_line in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                str(root / "train.csv"),
                *CLI_FLAGS,
                "--blend-mode",
                "stacked",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
    assert exit_.value.code == 2 and "'mean', 'joint'" in capsys.readouterr().err


def test_cli_missing_text_column_exits_2(cli_run, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("message,label\nhello,a\nbye,b\n")
    code = main(["fit", str(bad), *CLI_FLAGS, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "'text'" in err and "message, label" in err and "--text-column" in err
    assert "Traceback" not in err
    code = main(
        [
            "-q",
            "fit",
            str(bad),
            *CLI_FLAGS,
            "--text-column",
            "message",
            "--strategy",
            "feature_extract",
            "--head-epochs",
            "1",
            "--val-fraction",
            "0",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0, capsys.readouterr().err
