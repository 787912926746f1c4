"""Which weights a fit keeps across stages (headstart.choose), the warm-up floor, WiSE-FT."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from headstart import ImageClassifier
from headstart.choose import Candidate, choose, interpolate, noise_margin
from headstart.train import make_scheduler, warmup_length

from conftest import make_arrays

FAST = dict(
    head_epochs=15,
    epochs=3,
    batch_size=16,
    head_lr=3e-2,
    early_stopping=0,
    num_workers=0,
    device="cpu",
    seed=0,
    augment="none",
    calibrate=False,
)


def test_noise_margin_is_one_standard_error_and_at_least_one_item():
    assert noise_margin(0.9, 10, "accuracy") == pytest.approx(0.1)  # 1/n > sqrt(.09/10)
    assert noise_margin(0.9, 1000, "accuracy") == pytest.approx(math.sqrt(0.09 / 1000))
    assert noise_margin(1.0, 20, "accuracy") == pytest.approx(1 / 20)
    assert noise_margin(0.5, 100, "macro_f1") == pytest.approx(0.05)
    assert noise_margin(-0.3, 100, "loss") == 0.0 and noise_margin(0.9, 0, "accuracy") == 0.0


def test_within_noise_the_lower_loss_wins_beyond_it_the_better_score():
    probe = Candidate("linear_probe epoch 20", 0.9, 0.40, order=1)
    one_behind = Candidate("finetune epoch 3", 0.8, 0.30, order=3)
    two_behind = Candidate("finetune epoch 3", 0.7, 0.20, order=3)
    win, why = choose([probe, one_behind], n=10, monitor="accuracy")
    assert win is one_behind and "within the noise of 10 validation items" in why
    win, why = choose([probe, two_behind], n=10, monitor="accuracy")
    assert (
        win is probe
        and "by more than the noise" in why
        and why.startswith("kept linear_probe epoch 20")
    )
    # 1,000 items: 0.9 against 0.88 is beyond one standard error (0.0095)
    win, _ = choose([Candidate("a", 0.9, 0.5), Candidate("b", 0.88, 0.1)], 1000, "accuracy")
    assert win.where == "a"
    # exact ties go to the later candidate; monitor=loss compares losses alone
    same = [Candidate("early", 0.9, 0.3, 1), Candidate("late", 0.9, 0.3, 3)]
    assert choose(same, 50, "accuracy")[0].where == "late"
    by_loss = [Candidate("a", -0.2, 0.2), Candidate("b", -0.25, 0.25)]
    assert choose(by_loss, 50, "loss")[0].where == "a"


def test_choose_agrees_with_a_brute_force_reading_of_the_rule():
    """Oracle: for random candidate sets, the winner is the lowest-loss candidate among
    those whose score lies within the margin of the best (checked by a plain loop)."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(5, 300))
        cands = [
            Candidate(
                f"c{i}", float(rng.integers(0, n + 1) / n), float(rng.uniform(0.05, 2)), order=i
            )
            for i in range(int(rng.integers(1, 6)))
        ]
        best = max(c.score for c in cands)
        margin = max(1 / n, math.sqrt(best * (1 - best) / n))
        expected = None
        for c in cands:
            if c.score < best - margin - 1e-12:
                continue
            if (
                expected is None
                or c.loss < expected.loss
                or (c.loss == expected.loss and c.order > expected.order)
            ):
                expected = c
        assert choose(cands, n, "accuracy")[0] is expected


def test_warmup_has_a_floor_in_steps_capped_at_half_the_stage():
    assert warmup_length(6, 0.1, 20) == 3  # a few-shot stage: half of it, not 1 step
    assert warmup_length(100, 0.1, 20) == 20
    assert warmup_length(1000, 0.1, 20) == 100  # the fraction, once it is longer
    assert warmup_length(6, 0.1, 0) == 1  # the old rule
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=1.0)
    sched = make_scheduler(opt, "cosine", 6, 0.1, 20)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0]) and lrs[5] < lrs[4] < 1.0


def test_interpolate_mixes_floating_tensors_and_keeps_counters():
    a = {"w": torch.zeros(3), "n": torch.tensor(2)}
    b = {"w": torch.ones(3) * 4, "n": torch.tensor(7)}
    mix = interpolate(a, b, 0.25)
    assert torch.allclose(mix["w"], torch.ones(3)) and int(mix["n"]) == 7


@pytest.fixture(scope="module")
def data():
    return make_arrays(n=60, size=16, n_classes=3, seed=2)


def test_a_fine_tune_stage_that_ends_worse_than_its_probe_keeps_the_probe(data, tmp_path):
    """A learning rate that wrecks the network: the probe's best epoch is what the fit
    returns, and the summary says so; with keep=last_stage (the old rule) the wrecked
    fine-tuned weights were returned."""
    x, y = data
    wreck = dict(FAST, lr=3.0, wise_ft=False)
    probe = ImageClassifier("tiny:cnn", strategy="feature_extract", **FAST).fit(x, y)
    clf = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "run", **wreck).fit(x, y)
    assert clf.best_.startswith("linear_probe epoch")
    assert clf.metrics_["selection"].startswith("kept linear_probe epoch")
    assert "finetune epoch" in clf.metrics_["selection"]
    ft_rows = [r for r in clf.history_ if r["stage"] == "finetune"]
    assert max(r["val_accuracy"] for r in ft_rows) < clf.metrics_["validation"]["accuracy"]
    # the returned network is the probe's: pretrained (here: seeded) backbone, probe head
    assert np.allclose(clf.predict_proba(x), probe.predict_proba(x), atol=1e-5)
    old = ImageClassifier("tiny:cnn", strategy="lp_ft", keep="last_stage", **wreck).fit(x, y)
    assert old.best_.startswith("finetune epoch")
    assert old.score(x, y) < clf.score(x, y)


def test_wise_ft_mixes_are_candidates_and_the_kept_file_is_the_result(data, tmp_path):
    from safetensors.torch import load_file

    x, y = data
    clf = ImageClassifier(
        "tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "run", **dict(FAST, lr=1e-2)
    ).fit(x, y)
    selection = clf.metrics_["selection"]
    for alpha in ("0.25", "0.5", "0.75"):
        assert f"wise-ft {alpha} accuracy" in selection
    kept = load_file(str(tmp_path / "run" / "checkpoints" / "kept.safetensors"))
    model = clf.model_.state_dict()
    assert kept and all(torch.equal(v, model[k]) for k, v in kept.items())
    off = ImageClassifier("tiny:cnn", strategy="lp_ft", wise_ft=False, **dict(FAST, lr=1e-2)).fit(
        x, y
    )
    assert "wise-ft" not in off.metrics_["selection"]


def test_a_later_stage_starts_from_the_earlier_stages_best_epoch(data):
    """lp_ft's fine-tuning starts from the probe's best epoch, not its last one: with a
    learning rate of ~0 the fine-tuned network predicts what the probe's best epoch does."""
    x, y = data
    probe = ImageClassifier("tiny:cnn", strategy="feature_extract", **FAST).fit(x, y)
    still = ImageClassifier(
        "tiny:cnn", strategy="lp_ft", keep="last_stage", wise_ft=False, **dict(FAST, lr=1e-12)
    ).fit(x, y)
    assert still.best_.startswith("finetune epoch")
    assert np.allclose(still.predict_proba(x), probe.predict_proba(x), atol=1e-4)


def test_each_stage_logs_an_estimate_of_its_remaining_time(data, caplog, monkeypatch):
    """After its first batches and after its first epoch, a stage says how long it has
    left (here the clock is slowed: every perf_counter call is 20 s later)."""
    import logging
    import time as real_time

    from headstart import train

    ticks = iter(range(10**6))
    monkeypatch.setattr(time, "perf_counter", lambda: 20.0 * next(ticks))
    x, y = data
    with caplog.at_level(logging.INFO, logger="headstart.train"):
        ImageClassifier("tiny:cnn", strategy="lp_ft", **FAST).fit(x, y)
    said = [r.getMessage() for r in caplog.records if "left (" in r.getMessage()]
    assert any(m.startswith("stage finetune: about ") and "steps at" in m for m in said)
    assert any(m.startswith("stage finetune: about ") and "validation included" in m for m in said)
    assert train.format_duration(75) == "1 min 15 s" and train.format_duration(9) == "9 s"
    assert train.format_duration(3725) == "1 h 02 min"
    assert real_time.perf_counter() > 0


def test_parse_duration():
    from headstart.config import FitConfig, parse_duration

    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("10m") == 600 and parse_duration("1.5h") == 5400
    for bad in ("ten minutes", "0", "-5m", ""):
        with pytest.raises(ValueError, match="time budget"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="10m"):
        FitConfig(time_budget="soon")


def test_budget_epochs_share_what_is_left_by_planned_epochs(caplog):
    """Stage s's epochs under a budget: what is left, shared with the later stages that train
    backbone layers by their planned epochs, over the first epoch's time (at least 1)."""
    import logging
    from types import SimpleNamespace

    from headstart.strategies import Stage, Strategy
    from headstart.train import Trainer

    stages = (
        Stage("linear_probe", 0, 60, 0, 1e-2, 1, "frozen"),
        Stage("a", 1, 10, 1e-3, 1e-3, 1, "frozen"),
        Stage("b", 2, 30, 1e-3, 1e-3, 1, "frozen"),
    )
    now = time.perf_counter()
    fake = SimpleNamespace(
        budget=100.0,
        _seconds_before=20.0,
        _started=now - 20.0,
        strategy=Strategy("x", stages),
        _on_features=lambda stage: stage.head_only,  # the loop's rule with cached features
    )
    with caplog.at_level(logging.INFO, logger="headstart.train"):
        # 60 s left, a's share 10/40 = 15 s, 2 s per epoch: 1 + 7 = 8 epochs of 10
        assert Trainer._budget_epochs(fake, 1, stages[1], 2.0) == 8
        assert Trainer._budget_epochs(fake, 2, stages[2], 2.0) == 30  # all 60 s: 30 fit
        assert Trainer._budget_epochs(fake, 1, stages[1], 500.0) == 1  # at least one
    assert "stage a runs 8 of its 10 epochs" in caplog.text


def test_a_time_budget_cuts_the_fine_tuning_epochs_and_says_so(data, monkeypatch, tmp_path):
    """The stage runs the epochs the budget allows, its LR schedule compressed to end at 0,
    the fit records what it chose, and a resume after a crash keeps that choice (it is in
    the checkpoint: the resumed process would measure other times)."""
    from safetensors.torch import load_file
    from test_resume import Crash, assert_same_weights, crash_on_call

    from headstart.train import Trainer

    x, y = data
    settings = dict(FAST, epochs=8, time_budget="1h")
    monkeypatch.setattr(Trainer, "_budget_epochs", lambda self, s, stage, seconds: 3)
    clf = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "a", **settings).fit(
        x, y
    )
    ran = [r for r in clf.history_ if r["stage"] == "finetune"]
    assert len(ran) == 3 and clf.metrics_["time_budget"] == {
        "budget": "1h",
        "epochs": {"finetune": 3},
    }
    assert ran[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the compressed schedule ends
    crash_on_call(monkeypatch, Trainer, "_train_epoch", FAST["head_epochs"] + 3)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "b", **settings).fit(x, y)
    monkeypatch.undo()  # the resumed process would choose all 8 epochs: the checkpoint says 3
    ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "b", **settings).fit(
        x, y, resume=True
    )
    assert_same_weights(
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
