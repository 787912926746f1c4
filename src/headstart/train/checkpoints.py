"""What a fit keeps on disk and in memory: the resumable checkpoint after every epoch (only
what training can change, with a checksum of the frozen weights), the candidate weights of
``headstart.choose`` (start, best, kept), and history.csv. A mixin of the Trainer."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import (
    atomic_save_tensors,
    atomic_write_bytes,
    optimizer_to_flat,
    save_checkpoint,
    state_dict_tensors,
)

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """A resume was asked with settings or data other than the checkpoint's."""


@dataclass
class LoopState:
    stage: int = 0
    epoch: int = 0  # next epoch to run within the stage
    bad_epochs: int = 0
    best: list | None = None  # this stage's best: [score, -loss] compared lexicographically
    best_where: str = ""
    kept: dict | None = None  # the candidate (choose.Candidate) the finished stages keep
    selection: str = ""  # why it is kept, for the fit summary
    val_items: int = 0
    epoch_caps: dict = field(default_factory=dict)  # stage index -> epochs (time_budget)
    history: list[dict] = field(default_factory=list)
    stage_summaries: list[dict] = field(default_factory=list)


class CheckpointStore:
    """The Trainer's storage half; the attributes are the Trainer's."""

    model: Any
    run_dir: Path | None
    accelerator: Any
    fingerprint: str
    _stored: dict[str, dict[str, torch.Tensor]]
    _trained: set[str]
    _fixed_sums: dict[str, tuple[float, float]]
    _names: set[str] | None
    _full_optimizer_state: Callable[[Any], dict]  # FsdpSharding's (gathers FSDP's shards)

    def _store(self, weights: dict[str, torch.Tensor], name: str, where: str) -> None:
        """Keep a weight set: ``best`` (this stage's best epoch), ``start`` (what the stage
        started from: the earlier stages' choice) or ``kept`` (what the finished stages
        keep), on disk in a run directory, else in memory."""
        if self.run_dir is not None:
            if self.accelerator.is_main_process:
                atomic_save_tensors(
                    self.run_dir / "checkpoints" / f"{name}.safetensors",
                    weights,
                    metadata={"where": where},
                )
        else:
            self._stored[name] = weights

    def _stored_weights(self, name: str) -> dict[str, torch.Tensor] | None:
        path = self.run_dir / "checkpoints" / f"{name}.safetensors" if self.run_dir else None
        if path is not None:
            if self.accelerator.num_processes > 1:
                self.accelerator.wait_for_everyone()  # the first process wrote it
            if path.is_file():
                from safetensors.torch import load_file

                return load_file(str(path))
            return None
        return self._stored.get(name)

    def _weights(self, name: str) -> dict[str, torch.Tensor]:
        """Stored weights the loop's state says exist (``_stored_weights`` where they may
        not)."""
        weights = self._stored_weights(name)
        if weights is None:
            raise RuntimeError(
                f"the {name!r} weights of this fit are missing from {self.run_dir or 'memory'}"
            )
        return weights

    # ------------------------------------------------- what a checkpoint holds of the model
    def _param_names(self) -> set[str]:
        if self._names is None:
            self._names = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        return self._names

    def _changeable_tensors(self) -> dict[str, torch.Tensor]:
        """The model's tensors that training can have changed: every buffer (BatchNorm
        statistics) and each parameter some stage so far has trained. A frozen parameter is
        the built model's (pretrained weights, or a seeded init) and is checked, not saved."""
        fixed = self._param_names() - self._trained
        return state_dict_tensors(self.model, skip=fixed)

    def _fixed_checksum(self) -> dict:
        """Float64 sum and sum of squares of the parameters no stage has trained (cached: they
        never change), so a resume can tell that its freshly built model holds the same ones."""
        names = sorted(self._param_names() - self._trained)
        new = [k for k in names if k not in self._fixed_sums]
        if new:
            params = dict(self.model.named_parameters(remove_duplicate=False))
            for k in new:
                t = params[k].detach()
                self._fixed_sums[k] = (
                    float(t.sum(dtype=torch.float64)),
                    float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2,
                )
        return {
            "tensors": len(names),
            "sum": sum(self._fixed_sums[k][0] for k in names),
            "sumsq": sum(self._fixed_sums[k][1] for k in names),
        }

    def _check_fixed(self, saved: dict | None, where) -> None:
        if saved is None:  # a checkpoint that holds every tensor
            return
        now = self._fixed_checksum()
        same = now["tensors"] == saved["tensors"] and all(
            math.isclose(now[k], saved[k], rel_tol=1e-7, abs_tol=1e-6) for k in ("sum", "sumsq")
        )
        if not same:
            raise CheckpointMismatch(
                f"{where}: the checkpoint holds only the weights training changed, and the "
                f"{saved['tensors']} frozen ones of this model differ from those it was trained "
                "with (other pretrained weights, or a random init with another seed); resume "
                "with the same backbone and seed, or start a new run directory"
            )

    def _load_weights(self, weights: dict[str, torch.Tensor], where) -> None:
        """Load saved tensors; the ones a checkpoint leaves out must be frozen parameters."""
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        bad = sorted(
            set(missing) & (set(self.model.state_dict()) - self._param_names() | self._trained)
        )
        if unexpected or bad:
            raise CheckpointMismatch(
                f"{where}: its tensors do not fit this model (missing {bad[:3]}, unexpected "
                f"{sorted(unexpected)[:3]}); resume with the same config, or start a new run "
                "directory"
            )

    def _checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last" if self.run_dir else None

    def _save(self, state: LoopState, optimizer, scheduler) -> None:
        ckpt = self._checkpoint_dir()
        if ckpt is None:
            return
        # under FSDP every process takes part in gathering the optimizer's shards
        opt_sd = self._full_optimizer_state(optimizer) if optimizer is not None else None
        if not self.accelerator.is_main_process:
            return
        tensors = {f"model.{k}": v for k, v in self._changeable_tensors().items()}
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "fingerprint": self.fingerprint,
            "loop": asdict(state),
            "fixed": self._fixed_checksum(),
        }
        if opt_sd is not None:
            opt_tensors, opt_meta = optimizer_to_flat(opt_sd)
            tensors.update(opt_tensors)
            meta["optimizer"] = opt_meta
            meta["scheduler"] = scheduler.state_dict()
            ema = getattr(self, "_ema", None)  # --ema: the stage's weight average so far
            if ema is not None:
                tensors.update({f"ema.{k}": v for k, v in ema.state().items()})
                meta["ema_updates"] = ema.updates
        save_checkpoint(ckpt, tensors, meta)
        self._write_history(state.history)

    def _write_history(self, history: list[dict]) -> None:
        if not history or self.run_dir is None:
            return
        columns = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(self.run_dir / "history.csv", buf.getvalue().encode())
