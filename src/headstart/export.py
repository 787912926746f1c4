"""Export a fitted model to ONNX or TorchScript, and prove the export predicts the same.

What is exported is the run's inference graph (:mod:`headstart.inference`): for images,
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


def export_model(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None,
                 check=None, n_check: int = 32, tolerance: float = 1e-4,
                 opset: int = OPSET) -> ExportResult:
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
    if est.task in ("detect", "asr"):
        what = {"detect": "detectors", "asr": "speech recognisers"}[est.task]
        raise ExportError(f"{run_dir}: exporting {what} is not supported yet; predict "
                          f"with `headstart predict {run_dir} INPUTS`")
    if est._kept_baseline():
        raise ExportError(
            f"{run_dir}: this run kept its classic baseline ({est.baseline_.name}) over the "
            "network (--strategy auto; see `winner` in its config.json). Its model is the "
            "training vectors in baseline/, refitted by scikit-learn on load, which has no "
            "ONNX graph here; predict and serve run it (`headstart predict "
            f"{run_dir} INPUTS`), or fit with --strategy lp_ft to export the network")
    predictor = Predictor(est)
    items, checked_on = _check_items(est, check, n_check)
    prepared = predictor.prepare_many(items)
    bad = [(items[i], p) for i, p in enumerate(prepared) if isinstance(p, Exception)]
    if bad:
        raise ExportError(f"check item {bad[0][0]!r}: {bad[0][1]}")
    # the graph is the network: a text run's TF-IDF blend (if any) is applied outside it;
    # a --blend-mode joint run's graph also gives the features its TF-IDF model reads, so
    # what it predicts from them is checked too
    source = est._open_unlabeled(_as_source(est, items))
    backbone_feats = est._features(source)
    reference = est._head_proba(backbone_feats)
    joint = est.task == "text" and est._joint()
    if joint:  # what the run predicts, from the same features
        joint_reference = est._output_proba(source, reference, backbone_feats)

    def difference(got, rows: list[int]) -> float:
        """Largest probability difference of the file's outputs for the items ``rows``."""
        proba, feats = got if isinstance(got, tuple) else (got, None)
        diff = np.abs(proba - reference[rows]).max()
        if joint:
            texts = [source.texts[i] for i in rows]
            diff = max(diff, np.abs(est.joint_.predict_proba(texts, feats)
                                    - joint_reference[rows]).max())
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
            _to_onnx(graph, example, tmp, opset, meta)
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
            raise ExportError(f"{format} export does not match the fitted model: largest "
                              f"probability difference {diff:.3g} >= tolerance {tolerance:g} "
                              f"on {len(prepared)} items of {checked_on}")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    notes = []
    if est.task == "text":
        est.model_.backbone.tokenizer.save_pretrained(str(out.parent / "tokenizer"))
        notes.append("tokenizer saved in tokenizer/")
        if joint:
            notes.append("this run predicts with one logistic regression on TF-IDF and the "
                         "encoder's features (--blend-mode joint): the file gives the "
                         "encoder's probabilities and, as its second output, those features; "
                         "`headstart predict/serve --engine onnx` feed them with the texts to "
                         "RUN/joint/, as should any other runtime")
        elif est._blends():
            notes.append("this run blends its TF-IDF baseline in (--blend): the file is the "
                         "encoder alone; `headstart predict/serve --engine onnx` average its "
                         "probabilities with the baseline's (RUN/baseline/), as should any "
                         "other runtime")
    result = ExportResult(
        path=str(out), format=format, max_abs_diff=diff, tolerance=tolerance,
        checked_items=len(prepared), checked_on=checked_on, batch_sizes=sizes,
        seconds=time.perf_counter() - t0, size_bytes=out.stat().st_size,
        sidecar=str(out.with_name(out.name + ".json")), notes=notes)
    atomic_write_json(result.sidecar, {**meta, "file": out.name, "parity": result.to_dict()})
    log.info("exported %s (%s, %.1f MB): max |diff| %.2e on %d items of %s", out, format,
             result.size_bytes / 1e6, diff, len(prepared), checked_on)
    return result


# ---------------------------------------------------------------------- check items
def _check_items(est, check, n: int) -> tuple[list, str]:
    """Real items for the parity check, and where they came from."""
    source = check if check is not None else getattr(est, "data_origin_", None)
    if source is None or (isinstance(source, (str, Path)) and not Path(source).exists()):
        if source is None or source in ("array", "texts", "DataFrame"):
            where = "the run was fitted on in-memory data"
        else:
            where = f"the run's training data {source} is gone"
        raise ExportError(f"the parity check needs real items and {where}: pass check=... "
                          "(--check PATH), a folder or CSV of images, or a table of texts")
    if est.task == "text":
        from .data.text import open_text_source

        texts = source if isinstance(source, list) else open_text_source(
            source, text_column=est.config_.text_column, labeled=False).texts
        items = list(texts)
    elif est.task == "audio":
        from .data.audio import open_audio_inputs

        items = list(open_audio_inputs(source).items)
    else:
        from .data.images import open_inputs

        items = list(open_inputs(source).items)
    if not items:
        raise ExportError(f"{source}: no items to check the export on")
    idx = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    return [items[i] for i in idx], str(source if not isinstance(source, list) else "texts")


def _as_source(est, items: list):
    if est.task == "text":
        return list(items)
    if est.task == "audio":
        from .data.audio import open_audio_inputs

        return open_audio_inputs(items)
    from .data.images import open_inputs

    return open_inputs(items)


def _example_items(prepared: list) -> list:
    """Two items for tracing (a batch of 2 keeps the batch dimension symbolic)."""
    return (prepared * 2)[:2]


# ---------------------------------------------------------------------- ONNX
def _to_onnx(graph, example: dict, path: Path, opset: int, meta: dict) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if "image" in example or "waveform" in example:
        names = ["image" if "image" in example else "waveform"]
        dynamic = {names[0]: {0: batch}}
    else:
        chunks = torch.export.Dim("chunks", min=1, max=1024)
        tokens = torch.export.Dim("tokens", min=2, max=8192)
        axes = {0: batch, 1: chunks, 2: tokens}
        dynamic = {"input_ids": axes, "attention_mask": axes}
        names = ["input_ids", "attention_mask"]
    args = tuple(torch.from_numpy(example[k]) for k in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, args, dynamo=True, external_data=False,
                                    verbose=False, input_names=names,
                                    output_names=["probabilities", "features"][
                                        :2 if getattr(graph, "features", False) else 1],
                                    dynamic_shapes=dynamic, opset_version=opset)
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
        traced.save(str(path), _extra_files={"headstart.json": json.dumps(
            {"note": "see model.torchscript.pt.json beside this file"})})


def _torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(inputs: dict) -> np.ndarray:
        with torch.no_grad():
            out = module(*[torch.from_numpy(v) for v in inputs.values()])
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()

    return run


# ---------------------------------------------------------------------- metadata
def export_metadata(predictor: Predictor, format: str) -> dict:
    """Everything a user needs to run the file without headstart."""
    from importlib.metadata import version

    est = predictor.estimator
    pre = est.preprocess_
    if est.task == "image":
        scale = int(pre.input_size / pre.crop_pct)
        inputs = [{"name": "image", "dtype": "uint8", "shape": ["batch", pre.input_size,
                                                               pre.input_size, 3]}]
        recipe = {
            "steps": [
                "decode to 8-bit RGB (grey and palette converted, transparency on white)",
                f"resize so the shorter side is {scale} px ({pre.interpolation}, antialiased, "
                "as PIL's Image.resize)",
                f"centre-crop {pre.input_size} x {pre.input_size}",
                "stack as uint8 [batch, height, width, 3] (channels last)",
            ],
            "inside_graph": f"x / 255, minus mean {list(pre.mean)}, over std {list(pre.std)}, "
                            "NCHW",
            **pre.to_dict(),
        }
    elif est.task == "audio":
        inputs = [{"name": "waveform", "dtype": "float32", "shape": ["batch", pre.samples]}]
        recipe = {
            "steps": [
                "decode the recording (WAV, FLAC, OGG, ...) to float samples in [-1, 1]",
                "average the channels to mono",
                f"resample to {pre.sample_rate} Hz (polyphase filter, scipy's resample_poly)",
                f"centre-crop or zero-pad (centred) to {pre.samples} samples "
                f"({pre.clip_seconds:g} s)",
                "stack as float32 [batch, samples]",
            ],
            "inside_graph": "the backbone's spectral front end (STFT, mel filter bank, log), "
                            "the network, the head",
            **pre.to_dict(),
        }
    else:
        from .data.text import special_tokens

        tok = est.model_.backbone.tokenizer
        prefix, suffix = special_tokens(tok)
        inputs = [{"name": n, "dtype": "int64", "shape": ["docs", "chunks", "tokens"]}
                  for n in ("input_ids", "attention_mask")]
        recipe = {
            "steps": [
                "tokenise the text without special tokens (tokenizer/ beside the model)",
                f"truncation {pre.truncation!r}: keep up to {pre.max_chunks} chunk(s) of "
                f"{pre.max_length - len(prefix) - len(suffix)} tokens",
                f"wrap each chunk as {prefix} + ids + {suffix}",
                f"pad with id {predictor._pad_id} to [docs, chunks, tokens]; attention_mask "
                "1 on real tokens, an all-zero row marks a padding chunk",
            ],
            "inside_graph": "encoder, pooling, mean over a document's chunks, head",
            **pre.to_dict(),
        }
    return {
        "format": "headstart-export",
        "export_format": format,
        "task": est.task,
        "classes": list(est.classes_),
        "multi_label": predictor.multi_label,
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", "classes"],
                   "activation": "sigmoid" if predictor.multi_label else "softmax"},
        "inputs": inputs,
        **({"features_output": {
            "name": "features", "dtype": "float32", "shape": ["batch", "dim"],
            "use": "with the text, the input of the run's joint TF-IDF + features logistic "
                   "regression (RUN/joint/: vocabulary, idf, weights; the features enter L2-"
                   "normalised, times feature_weight, after the TF-IDF columns)"}}
           if est.task == "text" and est._joint() else {}),
        "preprocess": recipe,
        "backbone": est.config_.backbone,
        "validation_accuracy": (getattr(est, "metrics_", {}).get("validation") or {}).get(
            "accuracy"),
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime")
                     if _installed(p)},
    }


def _installed(package: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(package)
        return True
    except PackageNotFoundError:
        return False
