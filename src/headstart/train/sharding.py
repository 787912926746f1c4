"""FSDP for the loop: a sharded copy of the model trains while the whole model stays in host
memory for checkpoints, the best epoch and the result. A mixin of the Trainer."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..heads import TransferModel
from ..zoo.base import LayerGroup

log = logging.getLogger(__name__)


class FsdpSharding:
    """The Trainer's sharding half; the attributes are the Trainer's."""

    model: Any
    groups: list[LayerGroup]
    accelerator: Any
    device: torch.device
    _mesh: Any
    _live: tuple[TransferModel, list[LayerGroup]] | None
    fsdp: bool

    # ---------------------------------------------------------------- FSDP
    def _shard(self, params: list[dict]) -> tuple[nn.Module, list[dict]]:
        """FSDP2 (``torch.distributed.fsdp.fully_shard``): a copy of the model in which each
        layer group, the head and the rest (the root) are sharded across the processes, and
        the stage's AdamW param groups mapped onto the copy's sharded parameters. The whole
        model stays in host memory (for checkpoints, the best epoch and the result)."""
        import copy

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if self._mesh is None:
            self._mesh = init_device_mesh(self.device.type, (self.accelerator.num_processes,))
        self.model.to("cpu")
        live, groups = copy.deepcopy((self.model, self.groups))  # groups point into the copy
        live.to(memory_format=torch.contiguous_format)  # FSDP shards contiguous weights only
        for group in groups:
            if any(True for _ in group.parameters()):
                fully_shard(
                    group.modules if len(group.modules) > 1 else group.modules[0], mesh=self._mesh
                )
        fully_shard(live.head, mesh=self._mesh)
        fully_shard(live, mesh=self._mesh)  # the rest: stems, norms, poolers not in a group
        live.to(self.device)
        names = {id(p): n for n, p in self.model.named_parameters()}
        sharded = dict(live.named_parameters())
        mapped = [{**g, "params": [sharded[names[id(p)]] for p in g["params"]]} for g in params]
        self._live = (live, groups)
        shards = sum(p.to_local().numel() for p in sharded.values())
        log.info(
            "FSDP: this process holds %s of %s parameters (%d processes)",
            f"{shards:,}",
            f"{sum(p.numel() for p in sharded.values()):,}",
            self.accelerator.num_processes,
        )
        return live, mapped

    def _gather_full(self, live: nn.Module) -> None:
        """FSDP, after an epoch: every process takes the first process's buffers (BN
        statistics, as DDP does) so validation agrees everywhere, and the full weights are
        gathered, one tensor at a time, into the unsharded model."""
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        full = {}
        for name, t in live.state_dict().items():
            if isinstance(t, DTensor):
                t = t.full_tensor()
            else:
                dist.broadcast(t, src=0)
            full[name] = t.detach().to("cpu")
        self.model.load_state_dict(full)

    def _full_optimizer_state(self, optimizer) -> dict:
        """``optimizer.state_dict()`` with every sharded moment gathered whole (FSDP)."""
        from torch.distributed.tensor import DTensor

        sd = optimizer.state_dict()
        if not self.fsdp:
            return sd
        state = {
            pid: {
                k: (v.full_tensor().cpu() if isinstance(v, DTensor) else v)
                for k, v in entries.items()
            }
            for pid, entries in sd["state"].items()
        }
        return {"state": state, "param_groups": sd["param_groups"]}

    def _shard_optimizer_state(self, optimizer, full: dict) -> dict:
        """Resume under FSDP: cut the checkpoint's whole moments like their parameters."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = {}
        for pid, entries in full["state"].items():
            p = params[int(pid)]
            state[pid] = {
                k: (
                    distribute_tensor(v.to(self.device), p.device_mesh, p.placements)
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape
                    else v
                )
                for k, v in entries.items()
            }
        return {"state": state, "param_groups": full["param_groups"]}
