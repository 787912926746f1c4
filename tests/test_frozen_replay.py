"""``freeze_groups``: lp_ft's fine-tuning stage leaves the first layer groups frozen, and a
text encoder's frozen blocks are computed once (replayed), not at every step. The replay
must change the speed only: the same fit with and without it gives the same model."""

from __future__ import annotations

import logging

import pytest
import torch

from headstart import TextClassifier
from headstart.config import FitConfig
from headstart.data.text import ReplayedText, collate_text, replay_frozen
from headstart.strategies import ALL, build_strategy
from headstart.zoo import create_backbone

from text_common import TEXT_FAST, make_texts


def test_lp_ft_leaves_the_first_groups_frozen():
    assert build_strategy(FitConfig(strategy="lp_ft"), 7).stages[1].train_groups == ALL
    ft = build_strategy(FitConfig(strategy="lp_ft", freeze_groups=4), 7).stages[1]
    assert ft.trainable_indices(7) == [4, 5, 6]
    # more frozen than there are groups: the last one still trains
    ft = build_strategy(FitConfig(strategy="lp_ft", freeze_groups=9), 3).stages[1]
    assert ft.trainable_indices(3) == [2]
    # finetune means every group, whatever freeze_groups says
    [only] = build_strategy(FitConfig(strategy="finetune", freeze_groups=4), 7).stages
    assert only.train_groups == ALL
    with pytest.raises(ValueError, match="freeze_groups must be >= 0"):
        FitConfig(freeze_groups=-1)


def test_every_group_fine_tunes_by_default():
    """--freeze-groups 4 halves a MiniLM step but lost 2.45 points on one SpamAssassin
    8/class draw (docs/results.md): the default trains every group."""
    assert TextClassifier().resolved_config().freeze_groups == 0


def _batch(backbone, texts):
    tok = backbone.tokenizer
    docs = [[tok(t, add_special_tokens=True)["input_ids"][:16]] for t in texts]
    x, _ = collate_text([(d, torch.tensor(0)) for d in docs], int(tok.pad_token_id or 0))
    return x


def test_a_forward_from_replayed_states_equals_the_whole_forward():
    backbone = create_backbone("tiny:bert").eval()
    x = _batch(backbone, ["abc bad cafe", "123 456", "dead beef 42 face 999 edge"])
    states = backbone.prefix_states(x, 1)
    assert states.shape == (*x["input_ids"].shape, backbone.feature_dim)
    with torch.no_grad():
        whole = backbone(x)
        replayed = backbone({**x, "prefix_states": states, "prefix_depth": torch.tensor(1)})
    torch.testing.assert_close(replayed, whole, atol=1e-5, rtol=1e-4)
    # the encoder has all its blocks back afterwards
    assert len(backbone.model.encoder.layer) == 2
    assert type(backbone.model.embeddings).__name__ == "BertEmbeddings"


def test_replayed_items_carry_each_chunks_states_and_refuse_what_they_cannot():
    from headstart.data.text import TextDataset, TextSource
    from headstart.zoo.base import TextPreprocess

    backbone = create_backbone("tiny:bert")
    texts, _ = make_texts(6)
    source = TextSource(texts, torch.tensor([0, 1] * 3).numpy(), ["a", "b"], "t")
    pre = TextPreprocess(max_length=8, truncation="chunks", max_chunks=3)
    dataset = TextDataset(source, backbone.tokenizer, pre)
    replayed = replay_frozen(backbone, dataset, 2, 0, batch_size=4)
    assert isinstance(replayed, ReplayedText) and replayed.depth == 1
    chunks, label = replayed[0]
    ids, _ = dataset[0]
    assert [c for c, _ in chunks] == ids and int(label) == int(dataset[0][1])
    assert [len(s) for _, s in chunks] == [len(c) for c in ids]
    # only the embeddings frozen: nothing to replay; not a plain text dataset: none either
    assert replay_frozen(backbone, dataset, 1, 0, batch_size=4) is None
    assert replay_frozen(backbone, list(dataset), 2, 0, batch_size=4) is None
    # a model keeping its embeddings under another name: declined, not a failed fit
    model = backbone.model
    model.embed_in = model.embeddings
    del model.embeddings
    assert backbone.replay_depth(2) == 0
    assert replay_frozen(backbone, dataset, 2, 0, batch_size=4) is None


def _fit(monkeypatch, replay: bool):
    X, y = make_texts(40)
    if not replay:
        monkeypatch.setattr(TextClassifier, "_replay_frozen", lambda self, *a: None)
    settings = {**TEXT_FAST, "truncation": "chunks", "max_length": 12, "max_chunks": 3}
    clf = TextClassifier(
        "tiny:bert", strategy="lp_ft", freeze_groups=2, blend=False, baseline=False, **settings
    )
    return clf.fit(X, y), X


def test_a_fit_with_replayed_blocks_trains_like_one_without(monkeypatch, caplog):
    """tiny:bert has no dropout: the frozen block gives the same states replayed or run."""
    with caplog.at_level(logging.INFO, logger="headstart.train.loop"):
        replayed, X = _fit(monkeypatch, replay=True)
    assert "frozen layer groups' outputs are computed once" in caplog.text
    assert replayed.stages_[1]["trainable_groups"] == ["layer.1"]
    with monkeypatch.context() as m:
        plain, _ = _fit(m, replay=False)
    assert len(replayed.history_) == len(plain.history_)
    for a, b in zip(replayed.history_, plain.history_):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
    torch.testing.assert_close(
        torch.as_tensor(replayed.predict_proba(X)),
        torch.as_tensor(plain.predict_proba(X)),
        atol=1e-4,
        rtol=1e-3,
    )


def test_early_stopping_waits_for_the_warm_up(monkeypatch):
    """One step an epoch, a 20-step stage warming up over 8, a validation score that never
    improves: the stage runs its warm-up and then 2 epochs of patience, not 3 epochs
    (SpamAssassin 8/class stopped at step 6 of 60, its rate at 6/20 of the peak)."""
    from headstart.train.loop import Trainer

    flat = {"val_loss": 0.7, "val_accuracy": 0.5, "val_macro_f1": 0.5}
    monkeypatch.setattr(Trainer, "evaluate_loader", lambda self, module, loader: dict(flat))
    X, y = make_texts(12)
    settings = {**TEXT_FAST, "batch_size": 16, "val_fraction": 0.25, "early_stopping": 2}
    clf = TextClassifier(
        "tiny:bert", strategy="finetune", blend=False, baseline=False, **{**settings, "epochs": 20}
    )
    clf.set_params(warmup_steps=8)
    clf.fit(X, y)
    assert [r["epoch"] for r in clf.history_] == list(range(1, 11))
