"""The core promise of the training loop: a run killed at any point and resumed ends with
exactly the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headstart import ImageClassifier
from headstart.train import Trainer

from conftest import make_arrays

SETTINGS = dict(
    head_epochs=2,
    epochs=3,
    batch_size=16,
    lr=1e-2,
    head_lr=1e-2,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=3,
)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different}"


def history_rows(run_dir: Path) -> list[dict]:
    import csv

    with open(Path(run_dir) / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data():
    return make_arrays(n=48, n_classes=2, seed=1)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """Uninterrupted runs, per strategy: run dir."""
    out = {}

    def get(strategy: str, **extra):
        key = (strategy, tuple(sorted(extra.items())))
        if key not in out:
            run_dir = tmp_path_factory.mktemp(f"ref_{strategy}")
            ImageClassifier(
                "tiny:cnn", strategy=strategy, run_dir=run_dir, **{**SETTINGS, **extra}
            ).fit(*data)
            out[key] = run_dir
        return out[key]

    return get


class Crash(Exception):
    pass


def crash_on_call(monkeypatch, owner, name, n: int):
    """Make ``owner.name`` raise Crash on its n-th call (earlier calls run normally)."""
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"simulated crash in {name} call {n}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


@pytest.mark.parametrize(
    "strategy,extra,crash_at",
    [
        ("lp_ft", {}, 2),  # second epoch of the linear probe (head-only, cached features)
        ("lp_ft", {}, 4),  # second epoch of the fine-tuning stage
        ("gradual", {"gradual_epochs": 2, "head_epochs": 1}, 5),  # mid-stage unfreeze_2
        ("gradual", {"gradual_epochs": 2, "head_epochs": 1}, 4),  # first epoch of unfreeze_2
    ],
    ids=["lp_ft-probe", "lp_ft-finetune", "gradual-mid-stage", "gradual-stage-start"],
)
def test_resume_after_epoch_crash_is_exact(
    data, reference, tmp_path, monkeypatch, strategy, extra, crash_at
):
    ref_dir = reference(strategy, **extra)
    run_dir = tmp_path / "run"
    settings = {**SETTINGS, **extra}
    crash_on_call(monkeypatch, Trainer, "_train_epoch", crash_at)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy=strategy, run_dir=run_dir, **settings).fit(*data)
    monkeypatch.undo()
    assert not (run_dir / "model.safetensors").exists()
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert len(state["loop"]["history"]) == crash_at - 1
    clf = ImageClassifier("tiny:cnn", strategy=strategy, run_dir=run_dir, **settings)
    clf.fit(*data, resume=True)
    assert_same_weights(weights(ref_dir), weights(run_dir))
    ref_hist, hist = history_rows(ref_dir), history_rows(run_dir)
    assert len(hist) == len(ref_hist)
    for a, b in zip(ref_hist, hist):
        assert (a["stage"], a["epoch"], a["train_loss"], a["val_loss"]) == (
            b["stage"],
            b["epoch"],
            b["train_loss"],
            b["val_loss"],
        )


def test_resume_after_crash_inside_an_epoch_is_exact(data, reference, tmp_path, monkeypatch):
    """A crash between optimizer steps: the first batch of fine-tuning epoch 2 applied."""
    ref_dir = reference("lp_ft")
    run_dir = tmp_path / "run"
    # 48 items -> 5 held out, 43 train -> 2 full batches of 16 per epoch (drop_last).
    # The training loss module runs once per batch: 2 probe epochs + 1 fine-tuning epoch
    # = 6 calls, then the crash on the 2nd batch of fine-tuning epoch 2.
    n_batches = 43 // SETTINGS["batch_size"]
    crash_at = 3 * n_batches + 2
    crash_on_call(monkeypatch, torch.nn.CrossEntropyLoss, "forward", crash_at)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(*data)
    monkeypatch.undo()
    rows = history_rows(run_dir)
    assert [r["stage"] for r in rows] == ["linear_probe", "linear_probe", "finetune"]
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(
        *data, resume=True
    )
    assert_same_weights(weights(ref_dir), weights(run_dir))


@pytest.mark.parametrize("crash_at", [3, 7], ids=["after-the-probe", "after-fine-tuning"])
def test_resume_after_a_crash_at_a_stage_end_is_exact(
    data, reference, tmp_path, monkeypatch, crash_at
):
    """A stage's end writes the weights it keeps (the choice among the probe, fine-tuning
    and the WiSE-FT mixes), then the checkpoint: a crash between the two settles the stage
    again, from the same weights, to the same result."""
    ref_dir = reference("lp_ft")
    run_dir = tmp_path / "run"
    # _save calls: 2 probe epochs, the probe's end (3), 3 fine-tuning epochs, its end (7)
    crash_on_call(monkeypatch, Trainer, "_save", crash_at)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(*data)
    monkeypatch.undo()
    assert (run_dir / "checkpoints" / "kept.safetensors").is_file()
    clf = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS)
    clf.fit(*data, resume=True)
    assert_same_weights(weights(ref_dir), weights(run_dir))
    ref = json.loads((ref_dir / "config.json").read_text())["metrics"]
    assert clf.metrics_["selection"] == ref["selection"] and clf.best_ == ref["best"]


def test_resume_with_other_settings_is_refused(data, reference, tmp_path, monkeypatch):
    ref_dir = reference("lp_ft")
    run_dir = tmp_path / "run"
    crash_on_call(monkeypatch, Trainer, "_train_epoch", 3)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(*data)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="checkpoint") as info:
        ImageClassifier(
            "tiny:cnn", strategy="lp_ft", run_dir=run_dir, **{**SETTINGS, "lr": 2e-2}
        ).fit(*data, resume=True)
    assert str(run_dir) in str(info.value)
    with pytest.raises(ValueError, match="checkpoint"):  # other data
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(
            *make_arrays(n=48, n_classes=2, seed=2), resume=True
        )
    # settings that change nothing a checkpoint holds may differ
    ImageClassifier(
        "tiny:cnn", strategy="lp_ft", run_dir=run_dir, **{**SETTINGS, "eval_batch_size": 7}
    ).fit(*data, resume=True)
    assert_same_weights(weights(ref_dir), weights(run_dir))


def files_of(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory: its bytes and modification time."""
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(Path(run_dir).rglob("*"))
        if p.is_file()
    }


def test_resume_of_a_finished_run_changes_nothing(data, reference, tmp_path, caplog):
    """Like a study's finished runs: the saved model is loaded, no file is written (the
    fit_seconds and saved_at of config.json were overwritten), and the estimator is the
    finished one, ready to predict."""
    import shutil

    ref_dir = reference("lp_ft")
    run_dir = tmp_path / "copy"
    shutil.copytree(ref_dir, run_dir)
    before = files_of(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    clf = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS)
    with caplog.at_level(logging.INFO, logger="headstart"):
        assert clf.fit(*data, resume=True) is clf
    assert "run already finished; nothing to do" in caplog.text
    assert files_of(run_dir) == before  # config.json byte-identical, weights untouched
    assert_same_weights(weights(ref_dir), weights(run_dir))
    assert len(clf.history_) == SETTINGS["head_epochs"] + SETTINGS["epochs"]
    assert clf.metrics_ == saved["metrics"] and clf.fit_seconds_ == saved["metrics"]["fit_seconds"]
    assert clf.stages_ == saved["stages"] and clf.best_ == saved["metrics"]["best"]
    assert clf.strategy_.to_dict() == saved["strategy"] and clf.is_main_process_
    loaded = ImageClassifier.load(ref_dir)
    images = data[0][:6]
    assert clf.predict(images) == loaded.predict(images)
    assert clf.evaluate(*data) == loaded.evaluate(*data)
    model = {k: v for k, v in clf.model_.state_dict().items()}
    assert_same_weights(weights(ref_dir), model)


def test_resume_of_a_finished_run_with_other_settings_is_refused(data, reference, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(reference("lp_ft"), run_dir)
    with pytest.raises(ValueError, match="checkpoint"):
        ImageClassifier(
            "tiny:cnn", strategy="lp_ft", run_dir=run_dir, **{**SETTINGS, "lr": 2e-2}
        ).fit(*data, resume=True)


def test_resume_of_a_run_that_crashed_while_saving_completes_it(
    data, reference, tmp_path, monkeypatch
):
    """Every stage done, but config.json is missing (killed while saving) or another fit's:
    the fit completes (loads the last checkpoint, saves) instead of loading a stale model."""
    import shutil

    ref_dir = reference("lp_ft")
    run_dir = tmp_path / "copy"
    shutil.copytree(ref_dir, run_dir)
    (run_dir / "config.json").unlink()
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(
        *data, resume=True
    )
    assert (
        json.loads((run_dir / "config.json").read_text())["fingerprint"]
        == json.loads((ref_dir / "config.json").read_text())["fingerprint"]
    )
    assert_same_weights(weights(ref_dir), weights(run_dir))
    config = json.loads((run_dir / "config.json").read_text())
    config["fingerprint"] = "another fit"
    (run_dir / "config.json").write_text(json.dumps(config))
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, **SETTINGS).fit(
        *data, resume=True
    )
    assert json.loads((run_dir / "config.json").read_text())["fingerprint"] != "another fit"


def test_resume_without_a_checkpoint_says_so(data, tmp_path, caplog):
    run_dir = tmp_path / "new"
    settings = {**SETTINGS, "head_epochs": 1}
    with caplog.at_level(logging.WARNING, logger="headstart"):
        ImageClassifier("tiny:cnn", strategy="feature_extract", run_dir=run_dir, **settings).fit(
            *data, resume=True
        )
    expected = f"no checkpoint in {run_dir / 'checkpoints' / 'last'}; starting a new fit"
    assert [r.levelno for r in caplog.records if expected in r.getMessage()] == [logging.WARNING]
    assert (run_dir / "model.safetensors").is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart"):  # nowhere to resume from
        ImageClassifier("tiny:cnn", strategy="feature_extract", **settings).fit(*data, resume=True)
    assert "no checkpoint" in caplog.text and "run_dir" in caplog.text


def test_checkpoints_are_safetensors_and_json_only(reference):
    run_dir = reference("lp_ft")
    files = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
    # best: this stage's best epoch; start: what it started from; kept: what the stages so
    # far keep (headstart.choose)
    assert {p.name for p in files} == {
        "best.safetensors",
        "start.safetensors",
        "kept.safetensors",
        "state.safetensors",
        "state.json",
    }
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["loop"]["stage"] == 2  # both stages finished
    tensors = load_file(str(run_dir / "checkpoints" / "last" / "state.safetensors"))
    assert "rng.torch" in tensors and any(k.startswith("model.") for k in tensors)


def test_checkpoints_hold_only_what_training_changed(data, reference):
    """A frozen parameter is the built model's: the linear probe's best epoch and checkpoint
    hold the head and the buffers, not the backbone's weights; fine-tuning's hold everything
    it trained. Writing the whole model at every head epoch made a MiniLM probe 6x slower."""
    run_dir = reference("feature_extract")
    model = weights(run_dir)
    backbone_params = {
        n
        for n in model
        if n.startswith("backbone.")
        and not n.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    best = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    assert backbone_params and not backbone_params & set(best)
    assert {n for n in model if n.startswith("head.")} <= set(best)
    for name, tensor in best.items():  # the saved tensors are the final model's
        assert torch.equal(tensor, model[name]), name
    meta = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert meta["fixed"]["tensors"] == len(backbone_params)
    lp_ft = reference("lp_ft")  # the fine-tuning stage trained every group
    assert set(load_file(str(lp_ft / "checkpoints" / "best.safetensors"))) == set(weights(lp_ft))


def test_resume_over_other_frozen_weights_is_refused(data, tmp_path, monkeypatch):
    """The backbone is an earlier run; it is refitted with other weights before the resume:
    the checkpoint's frozen weights would be wrong, so the resume says so."""
    source = tmp_path / "source"
    ImageClassifier(
        "tiny:cnn", strategy="finetune", run_dir=source, **{**SETTINGS, "epochs": 1}
    ).fit(*data)
    run_dir = tmp_path / "run"
    settings = {**SETTINGS, "head_epochs": 3}
    crash_on_call(monkeypatch, Trainer, "_train_epoch", 2)
    with pytest.raises(Crash):
        ImageClassifier(str(source), strategy="feature_extract", run_dir=run_dir, **settings).fit(
            *data
        )
    monkeypatch.undo()
    ImageClassifier(
        "tiny:cnn", strategy="finetune", run_dir=source, **{**SETTINGS, "epochs": 1, "seed": 4}
    ).fit(*data)
    with pytest.raises(ValueError, match="frozen ones of this model differ") as info:
        ImageClassifier(str(source), strategy="feature_extract", run_dir=run_dir, **settings).fit(
            *data, resume=True
        )
    assert str(run_dir / "checkpoints" / "last") in str(info.value)


# ---------------------------------------------------------------- a real kill -9
SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from headstart import ImageClassifier

    run_dir, resume = sys.argv[1], sys.argv[2] == "1"
    rng = np.random.default_rng(5)
    n, size = 64, 24
    images = rng.integers(0, 80, size=(n, size, size, 3)).astype(np.uint8)
    labels = np.arange(n) % 2
    for i, c in enumerate(labels):
        images[i, :, :, c] += 170
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=run_dir, head_epochs=2, epochs=14,
                    batch_size=8, lr=5e-3, head_lr=1e-2, early_stopping=0, num_workers=0,
                    device="cpu", seed=11).fit(images, labels.astype(str), resume=resume)
""")


def _start(script: Path, run_dir: Path, resume: bool) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.Popen(
        [sys.executable, str(script), str(run_dir), "1" if resume else "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]


def _rows(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "history.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ref_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    reference = _start(script, ref_dir, resume=False)  # runs alongside the victim
    victim = _start(script, victim_dir, resume=False)
    try:
        deadline = time.monotonic() + 120
        # kill once a checkpoint exists and the fine-tuning stage has logged an epoch
        while not (
            (victim_dir / "checkpoints" / "last" / "state.json").is_file()
            and _rows(victim_dir) >= 3
        ):
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        assert victim.poll() is None, "the run ended before it could be killed"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not (victim_dir / "model.safetensors").exists(), "killed after it finished"
    rows_at_kill = _rows(victim_dir)
    assert rows_at_kill < 16
    resumed = _start(script, victim_dir, resume=True)
    _finish(resumed)
    _finish(reference)
    assert_same_weights(weights(ref_dir), weights(victim_dir))
    assert _rows(victim_dir) == _rows(ref_dir) == 16
    files = [p for p in (victim_dir / "checkpoints").rglob("*") if p.is_file()]
    assert all(p.suffix in (".safetensors", ".json") for p in files), files


@pytest.mark.parametrize("task", ["text", "audio"])
def test_text_and_audio_fits_resume_exactly(task, tmp_path, monkeypatch):
    """The same promise for the other tasks' data paths: a text fit (tokenised chunks,
    length-bucketed batches, the contrastive term) and an audio fit (random shifts, gain,
    noise and SpecAugment masks per epoch), crashed in the 2nd fine-tuning epoch and
    resumed, end with the weights of the uninterrupted fit."""
    if task == "text":
        import pandas as pd

        from headstart import TextClassifier as Estimator

        from conftest import TEXT_FIT, make_texts

        texts, labels = make_texts(40, seed=5)
        data = tmp_path / "train.csv"
        pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
        settings = {**TEXT_FIT, "epochs": 3, "head_epochs": 2, "contrastive": 1.0}
        backbone = "tiny:bert"
    else:
        from test_audio import FAST as AUDIO_FAST
        from test_audio import write_tones

        from headstart import AudioClassifier as Estimator

        data = write_tones(tmp_path / "tones", per_class=6)
        settings = {**AUDIO_FAST, "epochs": 3, "head_epochs": 2, "augment": "strong"}
        backbone = "scratch:audio:cnn"
    ref, run = tmp_path / "ref", tmp_path / "run"
    Estimator(backbone, strategy="lp_ft", run_dir=ref, **settings).fit(str(data))
    crash_on_call(monkeypatch, Trainer, "_train_epoch", 4)  # probe 1-2, fine-tune 1, crash
    with pytest.raises(Crash):
        Estimator(backbone, strategy="lp_ft", run_dir=run, **settings).fit(str(data))
    monkeypatch.undo()
    Estimator(backbone, strategy="lp_ft", run_dir=run, **settings).fit(str(data), resume=True)
    assert_same_weights(weights(ref), weights(run))
    assert [r["train_loss"] for r in history_rows(ref)] == [
        r["train_loss"] for r in history_rows(run)
    ]
