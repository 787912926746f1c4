"""Export a fitted model to ONNX or TorchScript, and prove the export predicts the same.

What is exported is the run's inference graph (:mod:`headstart.inference`; each task's
object in :mod:`headstart.tasks.serving` says what its graph takes): for images,
``uint8 [N, S, S, 3]`` centre crops in, probabilities out (scaling and the weights' own
normalisation are inside the graph); for texts, token ids and mask ``[docs, chunks,
tokens]`` in, probabilities out (chunk pooling inside the graph); for audio, mono waveforms
``float32 [N, samples]`` at the run's rate and clip length in (the spectral front end is
inside the graph). The batch (and for texts the chunk and token) dimensions are dynamic.
LoRA adapters are merged first.

Every export checks itself before it is kept: the exported model and the fitted PyTorch
estimator (``predict_proba``, its own preprocessing) predict the same real items (by
default items of the run's training data), and the largest absolute difference of the
probabilities must stay below ``tolerance`` (1e-4). A failing export is not written.

Beside the model, ``<model file>.json`` states the classes, the inputs and the exact
preprocessing that happens outside the graph, so the model runs with onnxruntime and
numpy alone; the same JSON is in the ONNX file's metadata (key ``headstart``). Text
exports also save the tokenizer (``tokenizer/``, loadable by ``tokenizers`` or
``transformers``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_write_json, temp_sibling
from .inference import OnnxEngine, Predictor, inference_graph

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
OPSET = 18
MAX_BATCH = 65_536


class ExportError(RuntimeError):
    """The export failed or did not predict the same as the fitted model."""


@dataclass
class ExportResult:
    path: str
    format: str
    max_abs_diff: float
    tolerance: float
    checked_items: int
    checked_on: str
    batch_sizes: list[int]
    seconds: float
    size_bytes: int
    sidecar: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def export_model(
    run_dir: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    check=None,
    n_check: int = 32,
    tolerance: float = 1e-4,
    opset: int = OPSET,
) -> ExportResult:
    """Export the run in ``run_dir``; ``out`` defaults to ``RUN/export/<model file>``.

    ``check``: the items the parity check predicts (a folder, CSV or list of image paths;
    a table file or list of texts). Default: up to ``n_check`` items of the run's
    training data when it is still where the run read it.
    """
    from .tasks import load_estimator

    if format not in FORMATS:
        raise ValueError(f"format={format!r}: choose one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    est = load_estimator(run_dir)
    serving = est.serving_class()
    refusal = serving.refusal("exporting", run_dir)
    if refusal:
        raise ExportError(refusal)
    own = serving.export_run(est, run_dir, format, out, check, n_check, tolerance, opset)
    if own is not None:  # a task whose graph is not a classifier's (a control policy)
        return ExportResult(**own)
    if est._kept_baseline():
        raise ExportError(
            f"{run_dir}: this run kept its classic baseline ({est.baseline_.name}) over the "
            "network (--strategy auto; see `winner` in its config.json). Its model is the "
            "training vectors in baseline/, refitted by scikit-learn on load, which has no "
            "ONNX graph here; predict and serve run it (`headstart predict "
            f"{run_dir} INPUTS`), or fit with --strategy lp_ft to export the network"
        )
    predictor = Predictor(est)
    items, checked_on = _check_items(est, serving, check, n_check)
    prepared = predictor.prepare_many(items)
    bad = [(items[i], p) for i, p in enumerate(prepared) if isinstance(p, Exception)]
    if bad:
        raise ExportError(f"check item {bad[0][0]!r}: {bad[0][1]}")
    # the graph is the network: a text run's TF-IDF blend (if any) is applied outside it;
    # a --blend-mode joint run's graph also gives the features its TF-IDF model reads, so
    # what it predicts from them is checked too
    source = est._open_unlabeled(serving.check_source(items))
    backbone_feats = est._features(source)
    reference = est._head_proba(backbone_feats)
    features_difference = serving.features_check(est, source, reference, backbone_feats)

    def difference(got, rows: list[int]) -> float:
        """Largest probability difference of the file's outputs for the items ``rows``."""
        proba, feats = got if isinstance(got, tuple) else (got, None)
        diff = np.abs(proba - reference[rows]).max()
        if features_difference is not None:
            diff = max(diff, features_difference(feats, rows))
        return float(diff)

    graph = inference_graph(est, merge_adapters=True)

    out = Path(out) if out else run_dir / "export" / FILENAMES[format]
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = export_metadata(predictor, format)
    fd, tmp_name = temp_sibling(out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example = predictor.collate(_example_items(prepared))
        if format == "onnx":
            _to_onnx(graph, example, tmp, opset, meta, serving)
            run = OnnxEngine(tmp)
        else:
            _to_torchscript(graph, example, tmp)
            run = _torchscript_runner(tmp)
        # dynamic batch: the whole set at once, then one item alone (or three at once)
        diffs = [difference(run(predictor.collate(prepared)), list(range(len(prepared))))]
        if len(prepared) > 1:
            sizes = [len(prepared), 1]
            diffs.append(difference(run(predictor.collate(prepared[:1])), [0]))
        else:
            sizes = [1, 3]
            diffs.append(difference(run(predictor.collate(prepared * 3)), [0, 0, 0]))
        diff = float(max(diffs))
        if not np.isfinite(diff) or diff >= tolerance:
            raise ExportError(
                f"{format} export does not match the fitted model: largest "
                f"probability difference {diff:.3g} >= tolerance {tolerance:g} "
                f"on {len(prepared)} items of {checked_on}"
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    notes = serving.save_beside(est, out.parent)
    result = ExportResult(
        path=str(out),
        format=format,
        max_abs_diff=diff,
        tolerance=tolerance,
        checked_items=len(prepared),
        checked_on=checked_on,
        batch_sizes=sizes,
        seconds=time.perf_counter() - t0,
        size_bytes=out.stat().st_size,
        sidecar=str(out.with_name(out.name + ".json")),
        notes=notes,
    )
    atomic_write_json(result.sidecar, {**meta, "file": out.name, "parity": result.to_dict()})
    log.info(
        "exported %s (%s, %.1f MB): max |diff| %.2e on %d items of %s",
        out,
        format,
        result.size_bytes / 1e6,
        diff,
        len(prepared),
        checked_on,
    )
    return result


# ---------------------------------------------------------------------- check items
def _check_items(est, serving, check, n: int) -> tuple[list, str]:
    """Real items for the parity check, and where they came from."""
    source = check if check is not None else getattr(est, "data_origin_", None)
    if source is None or (isinstance(source, (str, Path)) and not Path(source).exists()):
        if source is None or source in ("array", "texts", "DataFrame"):
            where = "the run was fitted on in-memory data"
        else:
            where = f"the run's training data {source} is gone"
        raise ExportError(
            f"the parity check needs real items and {where}: pass check=... "
            "(--check PATH), a folder or CSV of images, or a table of texts"
        )
    items = serving.check_items(est, source)
    if not items:
        raise ExportError(f"{source}: no items to check the export on")
    idx = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    return [items[i] for i in idx], str(source if not isinstance(source, list) else "texts")


def _example_items(prepared: list) -> list:
    """Two items for tracing (a batch of 2 keeps the batch dimension symbolic)."""
    return (prepared * 2)[:2]


# ---------------------------------------------------------------------- ONNX
def _to_onnx(graph, example: dict, path: Path, opset: int, meta: dict, serving) -> None:
    import onnx

    dynamic = serving.dynamic_shapes(torch.export.Dim("batch", min=1, max=MAX_BATCH))
    names = list(dynamic)
    args = tuple(torch.from_numpy(example[k]) for k in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=names,
            output_names=["probabilities", "features"][
                : 2 if getattr(graph, "features", False) else 1
            ],
            dynamic_shapes=dynamic,
            opset_version=opset,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = "headstart", json.dumps(meta)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


# ---------------------------------------------------------------------- TorchScript
def _to_torchscript(graph, example: dict, path: Path) -> None:
    args = tuple(torch.from_numpy(v) for v in example.values())
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, args, check_trace=False, strict=False)
        traced.save(
            str(path),
            _extra_files={
                "headstart.json": json.dumps(
                    {"note": "see model.torchscript.pt.json beside this file"}
                )
            },
        )


def _torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(inputs: dict) -> np.ndarray | tuple:
        with torch.no_grad():
            out = module(*[torch.from_numpy(v) for v in inputs.values()])
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()

    return run


# ---------------------------------------------------------------------- metadata
def export_metadata(predictor: Predictor, format: str) -> dict:
    """Everything a user needs to run the file without headstart."""
    from importlib.metadata import version

    est = predictor.estimator
    inputs, recipe = predictor.serving.export_inputs(predictor)
    return {
        "format": "headstart-export",
        "export_format": format,
        "task": est.task,
        "classes": list(est.classes_),
        "multi_label": predictor.multi_label,
        "output": {
            "name": "probabilities",
            "dtype": "float32",
            "shape": ["batch", "classes"],
            "activation": "sigmoid" if predictor.multi_label else "softmax",
        },
        "inputs": inputs,
        **predictor.serving.export_outputs(est),
        "preprocess": recipe,
        "backbone": est.config_.backbone,
        "validation_accuracy": (getattr(est, "metrics_", {}).get("validation") or {}).get(
            "accuracy"
        ),
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime") if _installed(p)},
    }


def _installed(package: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(package)
        return True
    except PackageNotFoundError:
        return False
