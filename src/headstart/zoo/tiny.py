"""Tiny random-init backbones: fast plumbing tests only, they prove nothing about transfer."""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, LayerGroup, PreprocessConfig, SourceMeta


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(Backbone):
    """stem (3->8) -> block1 (8->16) -> block2 (16->32) -> global average pool.

    Parameter counts are easy to compute by hand: a 3x3 conv without bias has
    9*cin*cout weights and its BatchNorm 2*cout; so stem 9*3*8+16 = 232,
    block1 9*8*16+32 = 1184, block2 9*16*32+64 = 4672 (6088 in all).
    ``cut=1`` drops block2 (features 16-d), ``cut=2`` drops block1 too (8-d).
    """

    widths = (8, 16, 32)

    def __init__(self, meta: SourceMeta, cut: int = 0, seed: int = 0):
        super().__init__()
        self.id = meta.id
        self.meta = meta
        self.cut = int(cut)
        if not 0 <= self.cut <= 2:
            from .base import ZooError

            raise ZooError(f"{self.id}: cut must be 0, 1 or 2 (it has 3 layer groups)")
        self.preprocess = PreprocessConfig(
            input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0
        )
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(seed)
            names = ["stem", "block1", "block2"][: 3 - self.cut]
            cin = 3
            for name, cout, stride in zip(names, self.widths, (1, 2, 2)):
                setattr(self, name, _conv_bn(cin, cout, stride))
                cin = cout
        self._names = names
        self.feature_dim = cin
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._names:
            x = getattr(self, name)(x)
        return self.pool(x).flatten(1)

    def pyramid_spec(self) -> list[tuple[int, int]]:
        return [(w, s) for w, s, _ in zip(self.widths, (1, 2, 4), self._names)]

    def pyramid(self, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        out = []
        for i, name in enumerate(self._names[: max(indices) + 1]):
            x = getattr(self, name)(x)
            if i in indices:
                out.append(x)
        return out

    def groups(self) -> list[LayerGroup]:
        return [LayerGroup(name, [getattr(self, name)]) for name in self._names]


TINY_META = SourceMeta(
    id="tiny:cnn",
    modality="image",
    source_data="none (random init)",
    source_task="none: for plumbing tests only, never evidence of transfer",
    domain="none",
    licence="Apache-2.0 (headstart)",
    params=6088,
    input="3x32x32, mean=std=0.5",
    offline=True,
    description="3-layer random CNN for fast tests",
)
