"""A model headstart trained (a run directory) as the source of the next transfer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .base import Backbone, ZooError, preprocess_from_dict

RUN_CONFIG = "config.json"
RUN_WEIGHTS = "model.safetensors"


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / RUN_CONFIG).is_file() and (p / RUN_WEIGHTS).is_file()


def read_run_config(path: str | Path) -> dict:
    p = Path(path) / RUN_CONFIG
    try:
        config = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ZooError(f"{p}: not a readable headstart run config ({exc})") from exc
    if config.get("format") != "headstart-run":
        raise ZooError(f"{p}: not written by headstart (no 'format': 'headstart-run')")
    return config


def create_local_backbone(
    path: str | Path, cut: int, rebuild: Callable[[dict, Path], Backbone]
) -> Backbone:
    """Rebuild the run's backbone architecture offline (``rebuild``: the zoo's
    ``rebuild_backbone``, passed in so this module needs no import of the registry) and
    load its fine-tuned weights."""
    from safetensors.torch import load_file

    path = Path(path)
    if not is_run_dir(path):
        raise ZooError(
            f"{path}: not a headstart run directory (expected {RUN_CONFIG} and {RUN_WEIGHTS} "
            "written by `headstart fit` or ImageClassifier.save)"
        )
    if cut:
        raise ZooError(f"{path}: cutting layers of a fine-tuned run is not supported; use cut=0")
    config = read_run_config(path)
    arch = config["backbone"]["architecture"]
    backbone = rebuild(arch, path)
    if config.get("adapter"):
        backbone.add_lora(config["adapter"])
    state = load_file(str(path / RUN_WEIGHTS))
    own = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    result = backbone.load_state_dict(own, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ZooError(
            f"{path}: weights do not match its architecture {arch}: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if config.get("adapter"):
        backbone.merge_lora()  # the next transfer starts from the adapted weights
    if config.get("task", "image") in ("image", "text", "audio"):  # a classifier's head
        backbone.set_source_head(_run_head(config, state))
    parent = config["backbone"]["meta"]
    backbone.arch_id = arch["id"]
    backbone.id = str(path)
    backbone.preprocess = preprocess_from_dict(config["preprocess"])
    backbone.meta = replace(
        backbone.meta,
        id=str(path),
        source_data=f"{config.get('task', 'image')} task with classes {config['classes']}",
        source_task=f"fine-tuned by headstart from {parent['id']} ({parent['source_data']})",
        offline=True,
        description=f"headstart run {path.name}",
        notes={
            "lineage": [*parent.get("notes", {}).get("lineage", []), parent["id"]],
            "metrics": config.get("metrics", {}),
        },
    )
    return backbone


def _run_head(config: dict, state: dict):
    """The run's own classifier: the source head of the next transfer (LEEP, NCE)."""
    from ..heads import Head, HeadSpec

    spec = config["head"]
    head = Head(
        spec["in_features"],
        len(config["classes"]),
        HeadSpec(tuple(spec["hidden"]), spec["dropout"]),
    )
    head.load_state_dict(
        {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    )
    return head
