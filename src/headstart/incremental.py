"""Class-incremental transfer (``fit --backbone RUN_DIR --add-classes``): extend a fitted
classifier with new classes without forgetting the old ones.

The new model's classes are the run's (same order, the same head rows at init) and then the
new data's new classes (new rows, zero at init). Its loss on each training item is the
cross-entropy over all classes plus LwF (Li & Hoiem 2016): the KL divergence of the old
classes' softened outputs from the old model's own on the same item, recorded once before
training (on the un-augmented item, as LwF records them). The training items are the new
data plus the exemplars the run stored (a few items per class, ``exemplars/`` in its run
directory: replay, as iCaRL), which the fit's imbalance plan draws class-balanced (a few
exemplars against many new items is an imbalance it already corrects: balanced replay, the
guard against new-class logits biased up); then ``balance_new`` lowers the new classes'
logits by the one offset that minimises the validation part's class-balanced cross-entropy
(BiC, Wu et al. 2019, with one parameter instead of two). ``align_new`` scales the new rows' weights
to the old rows' mean norm after training (weight aligning, Zhao et al. 2020): measured on
Fashion-MNIST it hurt (docs/results.md), so it is off by default. ``evaluate`` then reports
old- and new-class accuracy apart.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .artifacts import atomic_write_json
from .train import Trainer
from .zoo.local import is_run_dir, read_run_config

log = logging.getLogger(__name__)

EXEMPLARS_DIR = "exemplars"
EXEMPLARS_INDEX = "exemplars.json"
_NO_PLACE = -1  # the item index of a validation item: it has no distillation target


# ---------------------------------------------------------------- exemplars (the replay store)
def pick_exemplars(labels, per_class: int, seed: int) -> np.ndarray:
    """Indices of up to ``per_class`` items of each class, drawn at random (seeded), in
    class order. Random choice: as good as herding for a few items per class on frozen or
    lightly tuned features (Chaudhry et al. 2019), and it needs no extra pass."""
    labels = np.asarray(labels, dtype=object) if isinstance(labels, list) else np.asarray(labels)
    if per_class <= 0 or labels.ndim != 1 or labels.dtype.kind not in "iu":
        return np.zeros(0, dtype=np.int64)  # multi-label rows, transcripts: no classes
    rng = np.random.default_rng(seed)
    picked = [
        np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in np.unique(labels)
    ]
    return np.concatenate(picked).astype(np.int64) if picked else np.zeros(0, dtype=np.int64)


def write_exemplars(est, source, run_dir: Path) -> dict | None:
    """Store ``source`` (the picked items) in ``run_dir/exemplars`` through the task's
    ``_write_exemplar_items`` hook; the index file is written last, atomically. None (and
    nothing written) for a task that stores none (audio) or no items."""
    final = Path(run_dir) / EXEMPLARS_DIR
    if source is None or not len(source):
        shutil.rmtree(final, ignore_errors=True)  # an earlier run's, in the same directory
        return None
    # written beside, then swapped in: the items may be read from the folder replaced
    folder = final.with_name(EXEMPLARS_DIR + ".tmp")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    items = est._write_exemplar_items(source, folder)
    if items is None:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        return None
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    index = {
        "task": est.task,
        "classes": list(source.classes),
        "per_class": {
            c: int((np.asarray(source.labels) == i).sum()) for i, c in enumerate(source.classes)
        },
        "items": items,
        "bytes": size,
    }
    atomic_write_json(folder / EXEMPLARS_INDEX, index)
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    log.info("exemplars: %d items stored in %s (%.1f kB)", len(source), final, size / 1e3)
    return {"items": len(source), "bytes": size, "per_class": max(index["per_class"].values())}


def read_exemplars(est, run_dir: Path, classes: list[str]):
    """The exemplars ``run_dir`` stored, as a labelled source over ``classes`` (the run's
    classes first); None where it stored none."""
    index_file = Path(run_dir) / EXEMPLARS_DIR / EXEMPLARS_INDEX
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{index_file}: unreadable exemplar index ({exc})") from exc
    return est._read_exemplar_items(index["items"], index_file.parent, classes)


# ---------------------------------------------------------------- the extension of a fit
@dataclass
class Extension:
    """What an ``--add-classes`` fit adds to its parent run, saved in the new run's
    config.json (``add_classes``) and read by ``evaluate``."""

    parent: str
    old_classes: list[str]
    new_classes: list[str]
    shared: list[str]  # new-data classes that are old classes: their items train those rows
    replayed: int = 0  # exemplars of the parent run joined to the training data
    distill: float = 1.0
    distill_temperature: float = 2.0
    align: float | None = None  # the factor weight aligning scaled the new rows by
    offset: float | None = None  # what balance_new took off the new classes' logits
    feature_replayed: int = 0  # synthetic feature vectors of the old classes (feature_replay)
    feature_replay_skipped: str | None = None  # why the parent's statistics did not serve

    def to_dict(self) -> dict:
        return asdict(self)


def _similar(a: str, b: str) -> bool:
    def key(s):
        return "".join(ch for ch in s.lower() if ch.isalnum())

    return a != b and key(a) == key(b)


def extend_data(est, X, y, validation, cfg):
    """``(extension, (all items, training part, validation part))`` of an ``--add-classes``
    fit: the parent run checked, the new classes found, the data read over old + new
    classes, the parent's exemplars joined before the split (so validation sees old
    classes too). Clear errors: no run backbone, a run of another task, nothing new, a
    class name that differs from an old one only in case or punctuation."""
    parent = cfg.backbone
    if not is_run_dir(parent):
        raise ValueError(
            f"add_classes extends a classifier headstart trained: --backbone must be its run "
            f"directory (config.json + model.safetensors), not {parent!r}"
        )
    config = read_run_config(parent)
    if config.get("task") != est.task:
        raise ValueError(
            f"add_classes: {parent} is a {config.get('task')!r} model; --task {est.task} "
            "needs a run of the same task"
        )
    if config.get("multi_label"):
        raise ValueError(f"add_classes: {parent} is multi-label; only single-label runs extend")
    old = [str(c) for c in config["classes"]]
    found = [str(c) for c in est._data_classes(X, y, cfg)]
    for c in found:
        near = [o for o in old if _similar(c, o)]
        if near:
            raise ValueError(
                f"add_classes: the new data's class {c!r} differs from {parent}'s class "
                f"{near[0]!r} only in case or punctuation; rename it to {near[0]!r} (the same "
                "class) or to a distinct name (a new class)"
            )
    new = [c for c in found if c not in old]
    shared = [c for c in found if c in old]
    if not new:
        raise ValueError(
            f"add_classes: every class of the new data ({', '.join(found)}) is already one "
            f"of {parent}'s classes; nothing to add (drop --add-classes to fine-tune on it)"
        )
    if shared:
        log.info(
            "add_classes: the new data's classes %s are %s's own: their items train those "
            "classes (rename them if they are other classes)",
            ", ".join(shared),
            parent,
        )
    classes = old + new
    source = est._open_labeled(X, y, classes, cfg)
    ext = Extension(parent, old, new, shared, 0, cfg.distill, cfg.distill_temperature)
    stored = read_exemplars(est, Path(parent), classes) if cfg.replay else None
    if cfg.replay and stored is None:
        log.warning(
            "add_classes: %s stored no exemplars (fit with --exemplars N to store them); "
            "training on the new data with distillation alone",
            parent,
        )
    if stored is not None and len(stored):
        ext.replayed = len(stored)
        source = est._join_sources(source, stored)
    log.info(
        "add_classes: %d old classes + %d new (%s); %d new items, %d exemplars replayed",
        len(old),
        len(new),
        ", ".join(new),
        len(source) - ext.replayed,
        ext.replayed,
    )
    return ext, est._split(source, None, validation, cfg)


def init_head(head: nn.Module, old_head: nn.Module | None, n_old: int, parent: str) -> None:
    """The new head starts as the old one: every layer copied, the old rows of the last
    layer too; the new rows stay as the head's init (zero: new classes start at logit 0)."""
    if old_head is None:
        raise ValueError(f"add_classes: {parent} has no classifier head to extend")
    new_state, old_state = head.state_dict(), old_head.state_dict()
    last = _last_linear_names(head)
    for k, v in old_state.items():
        if k == "temperature":
            continue  # the parent's calibration: the new head trains at T = 1
        if k not in new_state or (new_state[k].shape != v.shape and k not in last):
            raise ValueError(
                f"add_classes: {parent}'s head has another shape ({k}: {tuple(v.shape)}); "
                "use the same --head-hidden as the run"
            )
        new_state[k] = new_state[k].clone()
        new_state[k][: v.shape[0]] = v
    head.load_state_dict(new_state)
    log.info("add_classes: head rows of the %d old classes copied from %s", n_old, parent)


def _last_linear_names(head: nn.Module) -> set[str]:
    name = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)][-1]
    return {f"{name}.weight", f"{name}.bias"}


def _last_linear(head: nn.Module) -> nn.Linear:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1]


@torch.no_grad()
def old_logits(old_head: nn.Module | None, feats: torch.Tensor) -> torch.Tensor:
    """The old model's logits (before its temperature) on backbone features: the
    distillation targets."""
    if old_head is None:
        raise ValueError("add_classes: the --backbone run has no classifier head to distil")
    old_head.eval()
    head = old_head.to(feats.device)
    fn = getattr(head, "logits", head)
    return torch.cat([fn(chunk).float() for chunk in feats.split(4096)]).cpu()


@torch.no_grad()
def align_new_rows(head: nn.Module, n_old: int) -> float:
    """Weight aligning: the new rows' weights (and biases) times mean old-row norm / mean
    new-row norm; returns the factor (1 where there is nothing to scale)."""
    layer = _last_linear(head)
    norms = layer.weight.float().norm(dim=1)
    old, new = norms[:n_old].mean(), norms[n_old:].mean()
    if not (new > 0):
        return 1.0
    gamma = float(old / new)
    layer.weight[n_old:] *= gamma
    if layer.bias is not None:
        layer.bias[n_old:] *= gamma
    return gamma


def balancing_offset(logits: np.ndarray, labels, n_old: int, step: float = 0.05, top: float = 5.0):
    """The offset taken off the new classes' logits that minimises the class-balanced
    cross-entropy (the mean over classes of each class's mean NLL) on ``labels``, as BiC
    fits its correction; ties: the smallest. Returns ``(offset, NLL at 0, at the offset)``.
    A smooth criterion: on a few dozen validation items, balanced accuracy jumped between
    offsets from one draw to the next."""
    labels = np.asarray(labels)
    present = [c for c in range(logits.shape[1]) if (labels == c).any()]
    base = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    best, at_zero = (np.inf, 0.0), np.inf
    for b in np.arange(0.0, top + 1e-9, step):
        shifted = base.clone()
        shifted[:, n_old:] -= b
        logp = torch.log_softmax(shifted, 1).numpy()
        nll = float(np.mean([-logp[labels == c, c].mean() for c in present]))
        if b == 0:
            at_zero = nll
        if nll < best[0] - 1e-9:
            best = (nll, float(b))
    return best[1], at_zero, best[0]


@torch.no_grad()
def lower_new_rows(head: nn.Module, n_old: int, offset: float) -> None:
    """Take ``offset`` off the new classes' logits (their last layer's bias)."""
    layer = _last_linear(head)
    if layer.bias is not None:
        layer.bias[n_old:] -= offset


class IndexedItems(Dataset):
    """A training set whose labels carry each item's position: ``(x, [label, index])``,
    so the loss finds the item's distillation target under any shuffling or augmentation."""

    def __init__(self, base: Dataset):
        self.base = base
        self.lengths = getattr(base, "lengths", None)  # text: length bucketing reads them

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, torch.tensor([int(y), i])

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # the wrapped set's extras (collate state)
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def indexed_labels(labels) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return torch.stack([labels, torch.arange(len(labels))], 1)


class DistillTrainer(Trainer):
    """The loop with the LwF term: cross-entropy over all classes + ``distill`` x T^2 x
    KL(old model's softened outputs || the new model's on the old classes)."""

    def __init__(self, *args, targets: torch.Tensor, ext: Extension, **kwargs):
        super().__init__(*args, **kwargs)
        self.targets = targets.float().to(self.device)
        self.ext = ext

    def item_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, 0] if y.ndim == 2 and not y.dtype.is_floating_point else y

    def loss(self, logits: Any, y: torch.Tensor):
        if not (y.ndim == 2 and not y.dtype.is_floating_point):
            return super().loss(logits, y)  # validation items: plain labels
        ce = super().loss(logits, y[:, 0])
        if not self.ext.distill:
            return ce
        t = self.ext.distill_temperature
        target = self.targets[y[:, 1]]
        n_old = target.shape[1]
        kd = nn.functional.kl_div(
            nn.functional.log_softmax(logits[:, :n_old].float() / t, dim=1),
            nn.functional.log_softmax(target / t, dim=1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        return {"cross_entropy": ce, "distill": self.ext.distill * kd}


def split_metrics(labels, proba, n_old: int, classes: list[str]) -> dict:
    """Accuracy on the items of the old classes and of the new ones (each predicted among
    all classes), and how often an old item is called a new class (the new-class bias)."""
    labels, pred = np.asarray(labels), np.asarray(proba).argmax(1)
    out: dict = {"old_classes": classes[:n_old], "new_classes": classes[n_old:]}
    for name, mask in (("old", labels < n_old), ("new", labels >= n_old)):
        n = int(mask.sum())
        out[f"{name}_n"] = n
        out[f"{name}_accuracy"] = float((pred[mask] == labels[mask]).mean()) if n else None
    old = labels < n_old
    out["old_called_new"] = float((pred[old] >= n_old).mean()) if old.any() else None
    return out


def format_split(m: dict) -> str:
    """One line of an ``add_classes`` split: old / new accuracy."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    return (
        f"old classes ({len(m['old_classes'])}): accuracy {pct(m['old_accuracy'])} on "
        f"{m['old_n']} items ({pct(m['old_called_new'])} called a new class); new classes "
        f"({len(m['new_classes'])}): {pct(m['new_accuracy'])} on {m['new_n']}"
    )
