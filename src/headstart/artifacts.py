"""Atomic writes of weights (safetensors, never pickle) and JSON, and resumable checkpoints.

A checkpoint is a directory with ``state.safetensors`` (model, optimizer tensors, RNG) and
``state.json`` (everything else). It is written to a temporary sibling and renamed into
place, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 less the umask); mkstemp's
    temporary files are 0o600, which would make every result readable by its owner only."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_sibling(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path`` (to be renamed onto it), with normal mode."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, default_file_mode())
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_sibling(path)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def state_dict_tensors(module: torch.nn.Module, skip=()) -> dict[str, torch.Tensor]:
    """A module's state dict with shared storage broken (safetensors refuses aliases),
    without the keys in ``skip``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k not in skip}


def optimizer_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and JSON (no pickle needed)."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a checkpoint directory atomically (temp dir, then rename over the old one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        atomic_save_tensors(tmp / "state.safetensors", tensors)
        atomic_write_json(tmp / "state.json", meta)
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The checkpoint in ``directory``, or the one a crash left mid-swap; None if none."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(f".{directory.name}.old")):
        if (candidate / "state.json").is_file() and (candidate / "state.safetensors").is_file():
            meta = json.loads((candidate / "state.json").read_text())
            return load_file(str(candidate / "state.safetensors")), meta
    return None
