"""BatchNorm policy: running statistics stay frozen where the strategy says so.

tiny:cnn is built deterministically (seed 0), so a fresh ``create_backbone("tiny:cnn")``
holds the statistics every fit starts from.
"""

from __future__ import annotations

import pytest
import torch

from headstart import ImageClassifier
from headstart.zoo import create_backbone

from conftest import FAST

BN_LAYERS = ("stem.1", "block1.1", "block2.1")
STATS = ("running_mean", "running_var", "num_batches_tracked")


def bn_stats(backbone) -> dict[str, dict[str, torch.Tensor]]:
    modules = dict(backbone.named_modules())
    out = {}
    for name in BN_LAYERS:
        assert isinstance(modules[name], torch.nn.BatchNorm2d)
        out[name] = {s: getattr(modules[name], s).detach().clone() for s in STATS}
    return out


def fitted_stats(arrays, **kwargs):
    clf = ImageClassifier("tiny:cnn", **{**FAST, "val_fraction": 0.0, **kwargs}).fit(*arrays)
    return bn_stats(clf.model_.backbone)


def unchanged(before, after, layer) -> bool:
    return all(torch.equal(before[layer][s], after[layer][s]) for s in STATS)


def test_initial_statistics_are_deterministic():
    a, b = bn_stats(create_backbone("tiny:cnn")), bn_stats(create_backbone("tiny:cnn"))
    assert all(unchanged(a, b, layer) for layer in BN_LAYERS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "finetune", "bn": "frozen"},
        {"strategy": "lp_ft"},  # LP-FT keeps BN statistics by default
        {"strategy": "feature_extract"},
        {"strategy": "gradual", "bn": "frozen"},
    ],
    ids=["finetune-frozen", "lp_ft-default", "feature_extract", "gradual-frozen"],
)
def test_frozen_bn_statistics_do_not_move(arrays, kwargs):
    before = bn_stats(create_backbone("tiny:cnn"))
    after = fitted_stats(arrays, **kwargs)
    for layer in BN_LAYERS:
        assert unchanged(before, after, layer), layer


def test_frozen_bn_still_trains_the_affine_parameters(arrays):
    """bn="frozen" freezes statistics, not the layer: gamma/beta of trained groups move."""
    before = create_backbone("tiny:cnn").state_dict()
    clf = ImageClassifier(
        "tiny:cnn", strategy="finetune", bn="frozen", **{**FAST, "val_fraction": 0.0}
    ).fit(*arrays)
    after = clf.model_.backbone.state_dict()
    assert not torch.equal(before["block2.1.weight"], after["block2.1.weight"])
    assert not torch.equal(before["block2.0.weight"], after["block2.0.weight"])


@pytest.mark.parametrize("strategy", ["finetune", "gradual"])
def test_train_bn_updates_statistics(arrays, strategy):
    before = bn_stats(create_backbone("tiny:cnn"))
    after = fitted_stats(arrays, strategy=strategy, bn="train", head_epochs=1)
    for layer in BN_LAYERS:
        assert not torch.equal(before[layer]["running_mean"], after[layer]["running_mean"])
        assert not torch.equal(before[layer]["running_var"], after[layer]["running_var"])
        assert int(after[layer]["num_batches_tracked"]) > 0


def test_finetune_default_bn_is_train(arrays):
    before = bn_stats(create_backbone("tiny:cnn"))
    after = fitted_stats(arrays, strategy="finetune")
    assert not unchanged(before, after, "block2.1")


@pytest.mark.parametrize(
    "partial_groups,frozen_layers",
    [
        (1, ("stem.1", "block1.1")),
        (2, ("stem.1",)),
    ],
)
def test_frozen_groups_keep_statistics_with_bn_train(arrays, partial_groups, frozen_layers):
    before = bn_stats(create_backbone("tiny:cnn"))
    after = fitted_stats(arrays, strategy="partial", partial_groups=partial_groups, bn="train")
    for layer in BN_LAYERS:
        if layer in frozen_layers:
            assert unchanged(before, after, layer), layer
        else:
            assert not torch.equal(before[layer]["running_mean"], after[layer]["running_mean"]), (
                layer
            )
