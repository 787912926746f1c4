"""``--ema``: the weight average of a stage that trains backbone layers (train/ema.py)."""

from __future__ import annotations

import pytest
import torch
from test_choose import FAST

from headstart import ImageClassifier
from headstart.train.ema import WeightEma

from conftest import make_arrays


def test_the_average_warms_up_its_decay_and_skips_frozen_parameters():
    net = torch.nn.Linear(2, 1)
    net.bias.requires_grad_(False)
    ema = WeightEma(net, 0.999)
    assert set(ema.shadow) == {"weight"}
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()  # decay min(0.999, 2 / 11): the shadow moves 9/11 of the way
    assert torch.allclose(ema.state()["weight"], w0 + 9 / 11)
    for _ in range(9000):  # (1 + n) / (10 + n) reaches 0.999 at n = 8991
        ema.update()
    assert ema.current_decay() == pytest.approx(0.999)
    assert torch.allclose(ema.state()["weight"], net.weight, atol=1e-5)
    with pytest.raises(ValueError, match="other parameters"):
        WeightEma(net, 0.9, shadow={"bias": torch.zeros(1)})


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match="ema is a decay"):
        ImageClassifier("tiny:cnn", ema=1.0).resolved_config()


@pytest.fixture(scope="module")
def data():
    return make_arrays(n=60, size=16, n_classes=3, seed=2)


def test_the_average_is_a_candidate_and_does_not_change_training(data, tmp_path):
    """The averaged weights compete at the stage's end (the selection names them); the
    epochs themselves train exactly as without ``--ema``; the kept file is the result."""
    from safetensors.torch import load_file

    x, y = data
    settings = dict(FAST, lr=1e-2, wise_ft=False)
    off = ImageClassifier("tiny:cnn", strategy="lp_ft", **settings).fit(x, y)
    on = ImageClassifier(
        "tiny:cnn", strategy="lp_ft", ema=0.9, run_dir=tmp_path / "run", **settings
    ).fit(x, y)
    assert [r["train_loss"] for r in on.history_] == [r["train_loss"] for r in off.history_]
    assert "ema 0.9 of finetune" in on.metrics_["selection"]
    kept = load_file(str(tmp_path / "run" / "checkpoints" / "kept.safetensors"))
    model = on.model_.state_dict()
    assert kept and all(torch.equal(v, model[k]) for k, v in kept.items())
    # one stage that trains the backbone: its best epoch against its average
    single = ImageClassifier("tiny:cnn", strategy="finetune", ema=0.9, **settings).fit(x, y)
    assert "ema 0.9 of finetune" in single.metrics_["selection"]


def test_a_resumed_fit_averages_exactly_as_an_uninterrupted_one(data, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_resume import Crash, assert_same_weights, crash_on_call

    from headstart.train import Trainer

    x, y = data
    settings = dict(FAST, lr=1e-2, ema=0.8, wise_ft=False)
    whole = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "a", **settings)
    whole.fit(x, y)
    crash_on_call(monkeypatch, Trainer, "_train_epoch", FAST["head_epochs"] + 2)
    with pytest.raises(Crash):
        ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "b", **settings).fit(x, y)
    monkeypatch.undo()
    resumed = ImageClassifier("tiny:cnn", strategy="lp_ft", run_dir=tmp_path / "b", **settings)
    resumed.fit(x, y, resume=True)
    assert resumed.metrics_["selection"] == whole.metrics_["selection"]
    assert_same_weights(
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
