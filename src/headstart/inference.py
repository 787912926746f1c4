"""Run a fitted model on raw items: one graph shared by `predict`, `serve` and `export`.

A fitted model becomes an *inference graph*: a module from plain arrays to probabilities
that holds everything of the preprocessing a graph can express. What the graph takes, and
what happens outside it, is the task's (its task object, :mod:`headstart.tasks.serving`):

* images: ``uint8 [N, S, S, 3]`` crops -> scale to 0-1, normalise with the weights' own
  mean/std, backbone, head, softmax (sigmoid when multi-label). What no graph can do the
  way training did it (decoding, PIL's antialiased resize of the shorter side to
  ``S / crop_pct``, the centre crop) happens in :meth:`Predictor.prepare`, the exact
  steps ``fit`` and ``evaluate`` use.
* audio: ``float32 [N, samples]`` mono waveforms at the run's rate, cropped or padded to
  its clip -> backbone (its spectral front end is part of it), head, softmax. Decoding,
  mix-down and resampling happen in :meth:`Predictor.prepare`, as in training.
* texts: token ids ``int64 [D, C, L]`` and their attention mask (documents x chunks x
  tokens; a chunk whose mask is all zero is padding) -> encoder, pooling, the mean over
  a document's chunks, head, softmax. Tokenisation (the run's own tokenizer and
  truncation policy) happens in :meth:`Predictor.prepare`.

A :class:`Predictor` prepares items one by one, so a bad item becomes an error for that
item and never stops the others; it then runs the graph in batches on an *engine*: the
PyTorch graph itself, or an ONNX Runtime session of its export (same inputs, same
outputs).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# Largest image (width x height) a Predictor decodes; bigger ones are refused from the
# header alone, before any pixel is decoded. 40 MP covers every camera photo.
MAX_PIXELS = 40_000_000


class ItemError(ValueError):
    """One item cannot be predicted; the message says why and what to do."""


class ItemTooLarge(ItemError):
    """An image over the pixel or aspect-ratio limits (refused before decoding)."""


# ---------------------------------------------------------------------- the graph
def inference_graph(estimator, merge_adapters: bool = False) -> nn.Module:
    """The fitted ``estimator``'s inference graph (eval mode, CPU copy when merging), as its
    task object builds it.

    ``merge_adapters`` folds LoRA adapters into a copy of the weights first (exports want
    plain layers; the estimator itself is left as it is)."""
    model = estimator.model_
    if merge_adapters and getattr(model.backbone, "lora", None):
        model = copy.deepcopy(model).cpu()
        model.backbone.merge_lora()
    multi = bool(getattr(estimator, "multi_label_", False))
    return estimator.serving_class().graph(estimator, model, multi).eval()


@dataclass
class Prediction:
    """One item's result: ``probabilities`` in class order, or ``error``."""

    item: str
    probabilities: np.ndarray | None = None
    error: str | None = None


class Predictor:
    """A fitted estimator, ready for raw items: ``predict(items)`` -> one
    :class:`Prediction` per item, errors per item; ``engine`` runs the graph.

    >>> p = Predictor.from_run("runs/my-model")
    >>> [r.probabilities for r in p.predict(["a.jpg", "b.png"])]

    ``tta`` (images): average the probabilities over test-time views, each run through the
    graph (``flip``: the crop and its mirror image; ``flip+crops``: also four corner crops).
    """

    def __init__(
        self, estimator, engine=None, max_pixels: int | None = MAX_PIXELS, tta: str | None = None
    ):
        from .tasks.base import tta_views

        estimator._check_fitted()
        views = tta_views(estimator, tta)  # a clear error where the task has none
        self.views = len(views)  # 0: the evaluation crop alone
        self.estimator = estimator
        self.task = estimator.task
        self.serving = estimator.serving_class()
        self.classes = list(estimator.classes_)
        self.multi_label = bool(getattr(estimator, "multi_label_", False))
        self.max_pixels = max_pixels
        # a run that kept its classic baseline predicts with it: no graph, no engine
        self.baseline = estimator.baseline_ if estimator._kept_baseline() else None
        if self.baseline is not None and engine is not None:
            raise ValueError(
                f"this run kept its classic baseline ({self.baseline.name}), "
                "which has no ONNX graph: use engine torch"
            )
        # reading items and turning the graph's output into the run's: the task's
        self.feed = self.serving.feed(estimator, views, max_pixels, self.baseline)
        self._graph: nn.Module | None = None
        self.engine = engine or (
            BaselineEngine(self.baseline) if self.baseline is not None else TorchEngine(self.graph)
        )

    @classmethod
    def from_run(
        cls, run_dir: str | Path, engine: str = "torch", device: str = "cpu", **kwargs
    ) -> Predictor:
        """``engine``: ``torch`` or ``onnx`` (the run's ``export/model.onnx``, written by
        ``headstart export``)."""
        from .tasks.registry import load_estimator

        est = load_estimator(run_dir, device=device)
        if engine == "torch":
            return cls(est, **kwargs)
        if engine == "onnx":
            path = Path(run_dir) / "export" / "model.onnx"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: no ONNX export; run `headstart export {run_dir} --format onnx` first"
                )
            return cls(est, engine=OnnxEngine(path), **kwargs)
        raise ValueError(f"engine={engine!r}: choose torch or onnx")

    @property
    def graph(self) -> nn.Module:
        if self._graph is None:
            self._graph = inference_graph(self.estimator)
        return self._graph

    # -------------------------------------------------------------- preparing
    def prepare(self, item):
        """One raw item -> what the graph takes for it (raises :class:`ItemError`)."""
        out = self.prepare_many([item])[0]
        if isinstance(out, Exception):
            raise out
        return out

    def prepare_many(self, items: list) -> list:
        """Each item prepared, or the :class:`ItemError` that stops it (not raised)."""
        return self.feed.prepare_many(items)

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        """Prepared items (no errors) -> the graph's named inputs."""
        return self.feed.collate(prepared)

    def run(self, prepared: list) -> np.ndarray:
        """Probabilities ``[len(prepared), classes]`` of prepared items."""
        if not prepared:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.baseline is not None:
            proba = self.engine(self.feed.baseline_inputs(prepared))
            assert isinstance(proba, np.ndarray)  # a BaselineEngine: probabilities only
            return proba
        out = self.engine(self.collate(prepared))
        proba, feats = out if isinstance(out, tuple) else (out, None)
        if self.views:  # the mean over each item's test-time views
            proba = np.asarray(proba).reshape(len(prepared), self.views, -1).mean(1)
        return self.feed.finish(proba, feats, prepared)

    # -------------------------------------------------------------- predicting
    def predict(
        self, items: list, names: list[str] | None = None, batch_size: int = 32
    ) -> list[Prediction]:
        """One :class:`Prediction` per item, in order."""
        names = names or [_item_name(item, i) for i, item in enumerate(items)]
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            part = items[start : start + batch_size]
            prepared = self.prepare_many(part)
            ok = [j for j, p in enumerate(prepared) if not isinstance(p, Exception)]
            proba = self.run([prepared[j] for j in ok])
            rows = dict(zip(ok, proba))
            for j, p in enumerate(prepared):
                name = names[start + j]
                if isinstance(p, Exception):
                    results.append(Prediction(name, error=str(p)))
                else:
                    results.append(Prediction(name, probabilities=rows[j]))
        return results

    def labels(self, proba: np.ndarray) -> str | list[str]:
        """The predicted class (multi-label: the classes at >= 0.5)."""
        if self.multi_label:
            return [c for c, p in zip(self.classes, proba) if p >= 0.5]
        # the run's operating point (a threshold chosen on validation), else the argmax
        if getattr(self.estimator, "operating_point_", None):
            return self.classes[int(self.estimator._thresholded(np.asarray(proba)[None])[0])]
        return self.classes[int(np.argmax(proba))]


def _item_name(item, i: int) -> str:
    if isinstance(item, (str, Path)):
        text = str(item)
        return text if len(text) <= 200 else text[:197] + "..."
    return f"item[{i}]"


# ---------------------------------------------------------------------- engines
class BaselineEngine:
    """A run's kept classic baseline (scikit-learn): its inputs are the baseline's own
    vectors of the items (texts for TF-IDF), as :meth:`Predictor.prepare` makes them."""

    name = "scikit-learn"

    def __init__(self, baseline):
        self.baseline = baseline

    def __call__(self, inputs) -> np.ndarray:
        return self.baseline.predict_proba(inputs).astype(np.float32)


class TorchEngine:
    """The PyTorch graph: named numpy inputs -> numpy probabilities."""

    name = "torch"

    def __init__(self, graph: nn.Module):
        from .features import fold_batchnorm

        self.graph = graph.eval()
        self.device = next(graph.parameters()).device
        # BatchNorm folded into the convolutions (a copy, faster on the CPU:
        # benchmarks/bench_features.py), checked against the graph on the first call
        self._folded = fold_batchnorm(self.graph)

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray | tuple:
        from .features import checked_fold

        args = [torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for v in inputs.values()]
        if self._folded is not None:
            self.graph, self._folded = checked_fold(self._folded, self.graph, *args), None
        out = self.graph(*args)
        if isinstance(out, tuple):  # probabilities, then features (--blend-mode joint)
            return tuple(o.cpu().numpy() for o in out)
        return out.cpu().numpy()


class OnnxEngine:
    """An ONNX Runtime session of an exported graph, same inputs and outputs."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray | tuple:
        outputs = self.session.run(None, inputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
