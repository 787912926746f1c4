"""Samplers of the training loop: the order of every epoch, from (seed, stage, epoch) only,
so a resumed run sees the same batches; shards of it for data-parallel processes; batches of
similar length (text) with less padding."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def epoch_order(
    n: int, generator: torch.Generator, weights: torch.Tensor | None = None
) -> list[int]:
    """The items of one epoch: a permutation of ``range(n)``; with per-item ``weights``
    (``imbalance="sample"``), ``n`` draws with replacement in proportion to them. Every
    process draws the same order from the same seed, then takes its share."""
    if weights is None:
        return torch.randperm(n, generator=generator).tolist()
    if len(weights) != n:
        raise ValueError(f"{len(weights)} sampling weights for {n} training items")
    return torch.multinomial(weights.double(), n, replacement=True, generator=generator).tolist()


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from a seeded generator (or weighted draws: see
    ``epoch_order``); shards by process rank."""

    def __init__(
        self, n: int, seed: int, rank: int = 0, world: int = 1, weights: torch.Tensor | None = None
    ):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.weights = weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = epoch_order(self.n, g, self.weights)
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]  # pad so every rank gets as many
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches for one process of a data-parallel run in which every item is seen exactly
    once per epoch: a seeded permutation is cut into global batches of ``batch_size *
    world`` items, each split across the processes (sizes differ by at most one); a last
    global batch too small to give every process two items joins the one before it. Every
    process gets the same number of batches, so none waits for a step that never comes."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        weights: torch.Tensor | None = None,
    ):
        if n < 2 * world:
            raise ValueError(
                f"{n} training items cannot be shared by {world} processes "
                "(each needs at least two); use fewer processes"
            )
        self.n, self.batch_size, self.seed = n, int(batch_size), seed
        self.rank, self.world, self.weights = rank, world, weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _bounds(self) -> list[tuple[int, int]]:
        size = self.batch_size * self.world
        starts = list(range(0, self.n, size))
        bounds = [(a, min(a + size, self.n)) for a in starts]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2 * self.world:
            bounds[-2:] = [(bounds[-2][0], self.n)]
        return bounds

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = epoch_order(self.n, g, self.weights)
        for a, b in self._bounds():
            yield order[a:b][self.rank :: self.world]

    def __len__(self) -> int:
        return len(self._bounds())


class BucketBatchSampler(Sampler[list[int]]):
    """Length bucketing for training: shuffle, sort within pools of ``pool`` batches by
    length, cut batches, shuffle the batches. Similar lengths share a batch (little
    padding) while the order stays random; seeded per epoch, sharded by rank."""

    def __init__(
        self,
        lengths,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
        pool: int = 50,
        weights: torch.Tensor | None = None,
    ):
        self.lengths = [int(v) for v in lengths]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.drop_last, self.pool, self.weights = drop_last, pool, weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self.world > 1:
            return self._sharded_batches()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = epoch_order(len(self.lengths), g, self.weights)
        size = self.batch_size * self.pool
        batches = []
        for j in range(0, len(order), size):
            pool = sorted(order[j : j + size], key=lambda i: self.lengths[i])
            batches += [pool[k : k + self.batch_size] for k in range(0, len(pool), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size] or batches[:1]
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
        per_rank = math.ceil(len(batches) / self.world)
        batches += batches[: per_rank * self.world - len(batches)]
        return batches[self.rank :: self.world]

    def _sharded_batches(self) -> list[list[int]]:
        """Data-parallel: global batches of ``batch_size * world`` items of similar length,
        each split across the processes (like :class:`ShardedBatchSampler`): every item
        once per epoch, the same number of steps everywhere, no padding or dropping."""
        n, world = len(self.lengths), self.world
        if n < 2 * world:
            raise ValueError(
                f"{n} training items cannot be shared by {world} processes "
                "(each needs at least two); use fewer processes"
            )
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = epoch_order(n, g, self.weights)
        size = self.batch_size * world
        pooled = size * self.pool
        batches: list[list[int]] = []
        for j in range(0, n, pooled):
            pool = sorted(order[j : j + pooled], key=lambda i: self.lengths[i])
            for k in range(0, len(pool), size):
                piece = pool[k : k + size]
                if len(piece) < 2 * world and batches:  # too few to give each process two
                    batches[-1] += piece
                else:
                    batches.append(piece)
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i][self.rank :: world] for i in perm]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
