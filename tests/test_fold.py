"""Frozen passes fold BatchNorm into the convolution before it (features.fold_batchnorm).

The folded copy must give the original network's outputs, leave the original untouched,
skip layers whose weight is not used as it is, and never be used where module order is
not data flow (the first batch is checked against the original).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from headstart.features import compute_features, fold_batchnorm
from headstart.zoo import create_backbone


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Statistics and affine terms far from identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.25)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.3 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def _passes(module, x, batch=8):
    data = TensorDataset(x, torch.zeros(len(x)))
    return compute_features(module, data, batch, torch.device("cpu"), False, 0)


def test_tiny_cnn_folds_every_bn_and_keeps_its_outputs():
    backbone = create_backbone("tiny:cnn")
    _randomise_bn(backbone)
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    folded = fold_batchnorm(backbone)
    assert folded is not None
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert n_bn == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(6, 3, 32, 32)
    backbone.eval()
    with torch.inference_mode():
        want, got = backbone(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the original keeps its BatchNorms, weights and statistics
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == n_bn
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compute_features_uses_the_fold_and_restores_the_mode():
    backbone = create_backbone("tiny:cnn")
    _randomise_bn(backbone)
    backbone.train()
    x = torch.randn(20, 3, 32, 32)
    feats = _passes(backbone, x)
    assert backbone.training  # mode restored; statistics not updated by the pass
    backbone.eval()
    with torch.inference_mode():
        torch.testing.assert_close(feats, backbone(x), rtol=1e-5, atol=1e-5)


class _BnBeforeConv(nn.Module):
    """Registered conv, bn, but the BN normalises the INPUT of the next conv, not the
    output of the first: module order is not data flow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(self.bn(x)) ** 2).flatten(1)


def test_a_fold_that_changes_outputs_is_not_used(caplog):
    net = _BnBeforeConv()
    _randomise_bn(net)
    x = torch.randn(10, 3, 8, 8) * 3 + 1
    assert fold_batchnorm(net) is not None  # structurally it looks foldable
    with caplog.at_level(logging.WARNING, logger="headstart.features"):
        feats = _passes(net, x, batch=4)
    assert "changed its outputs" in caplog.text
    net.eval()
    with torch.inference_mode():
        torch.testing.assert_close(feats, net(x), rtol=1e-6, atol=1e-6)


def test_weight_standardised_convs_and_models_without_bn_are_left_alone():
    from timm.layers import StdConv2d

    ws = nn.Sequential(StdConv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert fold_batchnorm(ws) is None  # its forward rescales the weight: not foldable
    assert fold_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))) is None
    assert fold_batchnorm(create_backbone("tiny:bert")) is None
    # CREPE's BatchNorms follow a ReLU: it says so, and is not folded (nor warned about)
    assert fold_batchnorm(create_backbone("packaged:crepe-tiny", pretrained=False)) is None


def test_bn_act_of_timm_keeps_its_activation():
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 5, 3), BatchNormAct2d(5, act_layer=nn.ReLU6))
    _randomise_bn(net)
    net.eval()
    folded = fold_batchnorm(net)
    assert isinstance(folded[1], nn.Sequential) and isinstance(folded[1][0], nn.ReLU6)
    x = torch.randn(4, 3, 9, 9) * 4
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_packaged_lite0_folded_pass_matches_the_network():
    backbone = create_backbone("packaged:efficientnet_lite0")
    x = torch.rand(8, 3, 96, 96) * 2 - 1
    folded = fold_batchnorm(backbone)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    backbone.eval()
    with torch.inference_mode():
        want = backbone(x)
    torch.testing.assert_close(_passes(backbone, x, batch=4), want, rtol=1e-4, atol=1e-4)


class _Recorder(nn.Module):
    """Items through unchanged (pooled), noting the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.sizes.append(len(x))
        return x.mean((2, 3)) * self.w


def test_cpu_image_batches_run_in_chunks_of_about_the_pixel_budget(monkeypatch):
    from headstart import features

    net = _Recorder()
    monkeypatch.setattr(features, "CPU_CHUNK_PIXELS", 4 * 16 * 16)
    monkeypatch.setattr(features, "CPU_CHUNK_MIN", 1)
    x = torch.randn(10, 3, 16, 16)
    with torch.inference_mode():
        got = features.forward_in_chunks(net, x)
        assert net.sizes == [4, 4, 2]  # 4 images of 16x16 per call
        torch.testing.assert_close(got, net(x))
        net.sizes.clear()
        monkeypatch.setattr(features, "CPU_CHUNK_MIN", 3)
        features.forward_in_chunks(net, torch.randn(7, 3, 64, 64))  # the minimum holds
        assert net.sizes == [3, 3, 1]
        monkeypatch.setattr(features, "CPU_CHUNK_MIN", 1)
        net.sizes.clear()
        features.forward_in_chunks(net, torch.randn(3, 3, 16, 16))  # fits: one call
        features.forward_in_chunks(net, torch.randn(2, 3, 64, 64))  # over budget: 1 a call
        assert net.sizes == [3, 1, 1]
        net.sizes.clear()
        feats = _passes(net, torch.randn(10, 3, 16, 16), batch=8)  # what frozen passes run
    assert net.sizes == [4, 4, 2] and feats.shape == (10, 3)


def test_inputs_that_are_not_image_batches_go_through_whole(monkeypatch):
    from headstart import features

    monkeypatch.setattr(features, "CPU_CHUNK_PIXELS", 1)
    seen = []

    def net(x):
        seen.append(x if isinstance(x, dict) else x.shape)
        return x

    features.forward_in_chunks(net, torch.randn(6, 40))  # token ids, waveforms
    features.forward_in_chunks(net, {"input_ids": torch.ones(6, 4)})
    assert seen[0] == (6, 40) and isinstance(seen[1], dict)


@pytest.mark.slow
def test_packaged_lite0_in_chunks_gives_the_whole_batch_outputs():
    from headstart import features

    backbone = create_backbone("packaged:efficientnet_lite0").eval()
    folded = fold_batchnorm(backbone).to(memory_format=torch.channels_last)
    x = torch.randn(40, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    assert max(features.CPU_CHUNK_MIN, features.CPU_CHUNK_PIXELS // (96 * 96)) < 40  # chunks
    with torch.inference_mode():
        torch.testing.assert_close(
            features.forward_in_chunks(folded, x), folded(x), rtol=1e-4, atol=1e-5
        )
