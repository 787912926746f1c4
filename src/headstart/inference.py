"""Run a fitted model on raw items: one graph shared by `predict`, `serve` and `export`.

A fitted model becomes an *inference graph*: a module from plain arrays to probabilities
that holds everything of the preprocessing a graph can express.

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
import io
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
# A longer side more than this many times the shorter one is refused too: resizing the
# shorter side to the model's input would blow the longer one up (1 x 40M px).
MAX_ASPECT = 100


class ItemError(ValueError):
    """One item cannot be predicted; the message says why and what to do."""


class ItemTooLarge(ItemError):
    """An image over the pixel or aspect-ratio limits (refused before decoding)."""


# ---------------------------------------------------------------------- graphs
class ImageGraph(nn.Module):
    """``uint8 [N, S, S, 3]`` (RGB crops, as :meth:`Predictor.prepare` makes them) ->
    probabilities ``[N, classes]``."""

    def __init__(self, model: nn.Module, mean, std, multi_label: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)
        # (x/255 - mean) / std == (x - 255 mean) / (255 std): one subtract, one divide
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
                             * 255.0)
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
                             * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        logits = self.model((x - self.shift) / self.scale).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


class TextGraph(nn.Module):
    """``input_ids, attention_mask: int64 [D, C, L]`` -> probabilities ``[D, classes]``;
    a document's chunks are averaged (all-zero mask rows are padding chunks). With
    ``features``, also the averaged features ``[D, dim]`` (the head's input) as a second
    output: what a ``--blend-mode joint`` run's TF-IDF + features model reads."""

    def __init__(self, model: nn.Module, multi_label: bool = False, features: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)
        self.features = bool(features)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        docs, chunks, length = input_ids.shape
        valid = (attention_mask.sum(-1) > 0).to(torch.float32).unsqueeze(-1)  # [D, C, 1]
        # padding chunks attend to their first token, so no row of attention is empty
        first = torch.zeros_like(attention_mask)
        first[:, :, 0] = 1
        mask = torch.maximum(attention_mask, first)
        feats = self.model.backbone({"input_ids": input_ids.reshape(docs * chunks, length),
                                     "attention_mask": mask.reshape(docs * chunks, length)})
        feats = feats.reshape(docs, chunks, -1).float()
        pooled = (feats * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        logits = self.model.head(pooled).float()
        proba = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return (proba, pooled) if self.features else proba


class AudioGraph(nn.Module):
    """``waveform: float32 [N, samples]`` -> probabilities ``[N, classes]``."""

    def __init__(self, model: nn.Module, multi_label: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        logits = self.model(waveform.to(torch.float32)).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def inference_graph(estimator, merge_adapters: bool = False) -> nn.Module:
    """The fitted ``estimator``'s inference graph (eval mode, CPU copy when merging).

    ``merge_adapters`` folds LoRA adapters into a copy of the weights first (exports want
    plain layers; the estimator itself is left as it is)."""
    model = estimator.model_
    if merge_adapters and getattr(model.backbone, "lora", None):
        model = copy.deepcopy(model).cpu()
        model.backbone.merge_lora()
    multi = bool(getattr(estimator, "multi_label_", False))
    if estimator.task == "text":
        graph = TextGraph(model, multi, features=estimator._joint())
    elif estimator.task == "audio":
        graph = AudioGraph(model, multi)
    else:
        pre = estimator.preprocess_
        graph = ImageGraph(model, pre.mean, pre.std, multi)
    return graph.eval()


# ---------------------------------------------------------------------- preparing items
def open_image(item, max_pixels: int | None = MAX_PIXELS):
    """A path, bytes, a file object, an array or a PIL image -> RGB PIL image.

    Refuses images over ``max_pixels`` from the header alone (before decoding)."""
    from PIL import Image, UnidentifiedImageError

    from .data.images import load_image, to_rgb

    if isinstance(item, np.ndarray):
        return load_image(item)
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) == 0:
            raise ItemError("empty file: no image bytes were sent")
        item = io.BytesIO(bytes(item))
    name = str(item) if isinstance(item, (str, Path)) else "the upload"
    try:
        with Image.open(item) as img:
            w, h = img.size
            if max_pixels and w * h > max_pixels:
                raise ItemTooLarge(f"{name}: {w}x{h} pixels is larger than the limit of "
                                   f"{max_pixels:,}; downscale the image first")
            if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
                raise ItemTooLarge(f"{name}: {w}x{h} pixels; sides more than {MAX_ASPECT} "
                                   "times apart are not supported, crop the image first")
            img.load()
            return to_rgb(img)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, raised while opening
        raise ItemTooLarge(f"{name}: {exc}; downscale the image first") from exc
    except FileNotFoundError as exc:
        raise ItemError(f"{name}: no such file") from exc
    except UnidentifiedImageError as exc:
        raise ItemError(f"{name}: not an image PIL can read (JPEG, PNG, WebP, BMP, GIF, "
                        "TIFF, ...)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ItemError(f"{name}: cannot decode this image ({exc}); the file may be "
                        "truncated or corrupt") from exc


@dataclass
class Prediction:
    """One item's result: ``probabilities`` in class order, or ``error``."""

    item: str
    probabilities: np.ndarray | None = None
    error: str | None = None


class PreparedText(list):
    """A text's token windows (what the graph takes), keeping the text for a run that
    blends its TF-IDF baseline in."""

    def __init__(self, chunks, text: str):
        super().__init__(chunks)
        self.text = text


class Predictor:
    """A fitted estimator, ready for raw items: ``predict(items)`` -> one
    :class:`Prediction` per item, errors per item; ``engine`` runs the graph.

    >>> p = Predictor.from_run("runs/my-model")
    >>> [r.probabilities for r in p.predict(["a.jpg", "b.png"])]

    ``tta`` (images): average the probabilities over test-time views, each run through the
    graph (``flip``: the crop and its mirror image; ``flip+crops``: also four corner crops).
    """

    def __init__(self, estimator, engine=None, max_pixels: int | None = MAX_PIXELS,
                 tta: str | None = None):
        from .tasks.base import tta_views

        estimator._check_fitted()
        views = tta_views(estimator, tta)  # a clear error where the task has none
        self.views = len(views)  # 0: the evaluation crop alone
        self.estimator = estimator
        self.task = estimator.task
        self.classes = list(estimator.classes_)
        self.multi_label = bool(getattr(estimator, "multi_label_", False))
        self.max_pixels = max_pixels
        self.blend = self.task == "text" and estimator._blends()
        # a run that kept its classic baseline predicts with it: no graph, no engine
        self.baseline = estimator.baseline_ if estimator._kept_baseline() else None
        if self.baseline is not None and engine is not None:
            raise ValueError(f"this run kept its classic baseline ({self.baseline.name}), "
                             "which has no ONNX graph: use engine torch")
        self._graph = None
        self.engine = engine or (BaselineEngine(self.baseline) if self.baseline is not None
                                 else TorchEngine(self.graph))
        if self.task == "image":
            from .data.transforms import ImageTransform

            pre = estimator.preprocess_
            self._transforms = [ImageTransform(v.input_size, v, "none") for v in views or [pre]]
            self._transform = self._transforms[0]
        elif self.task != "audio":
            tok = estimator.model_.backbone.tokenizer
            self._pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)

    @classmethod
    def from_run(cls, run_dir: str | Path, engine: str = "torch", device: str = "cpu",
                 **kwargs) -> "Predictor":
        """``engine``: ``torch`` or ``onnx`` (the run's ``export/model.onnx``, written by
        ``headstart export``)."""
        from .tasks import load_estimator

        est = load_estimator(run_dir, device=device)
        if engine == "torch":
            return cls(est, **kwargs)
        if engine == "onnx":
            path = Path(run_dir) / "export" / "model.onnx"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no ONNX export; run `headstart export "
                                        f"{run_dir} --format onnx` first")
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
        if self.task == "image":
            out = []
            for item in items:
                try:
                    img = open_image(item, self.max_pixels)
                    if self.baseline is not None:  # the baseline's own vector of the image
                        out.append(self.baseline.featurizer_(img))
                        continue
                    crops = [np.asarray(t.eval_image(img), dtype=np.uint8)
                             for t in self._transforms]
                    out.append(np.stack(crops) if self.views else crops[0])
                except ItemError as exc:
                    out.append(exc)
            return out
        if self.task == "audio":
            return [self._prepare_audio(item) for item in items]
        return self._prepare_texts(items)

    def _prepare_audio(self, item):
        """A path, bytes (an uploaded file) or a waveform at the run's rate -> the run's
        clip, or the :class:`ItemError` that stops it."""
        import soundfile as sf

        from .data.audio import fit_length, read_audio
        from .data.images import DataError, existing_path

        pre = self.estimator.preprocess_
        try:
            if isinstance(item, (bytes, bytearray, memoryview)):
                if len(item) == 0:
                    raise ItemError("empty file: no audio bytes were sent")
                try:
                    data, rate = sf.read(io.BytesIO(bytes(item)), dtype="float32",
                                         always_2d=True)
                except Exception as exc:  # noqa: BLE001 - libsndfile's errors vary
                    raise ItemError(f"the upload is not audio libsndfile can read (WAV, FLAC, "
                                    f"OGG, MP3, ...): {exc}") from exc
                wave = read_audio(data, pre.sample_rate, rate, "the upload")
            elif isinstance(item, (str, Path)):
                if existing_path(item) is None or not Path(item).is_file():
                    raise ItemError(f"{item}: no such file")
                wave = read_audio(item, pre.sample_rate)
            else:
                wave = read_audio(item, pre.sample_rate, pre.sample_rate, "the waveform")
        except DataError as exc:
            return ItemError(str(exc))
        except ItemError as exc:
            return exc
        if self.baseline is not None:  # the whole recording, as the baseline was fitted
            return self.baseline.featurizer_(wave)
        return fit_length(wave, pre.samples, None)

    def _prepare_texts(self, items: list) -> list:
        from .data.text import encode_texts

        out: list = [None] * len(items)
        good, texts = [], []
        for i, item in enumerate(items):
            if isinstance(item, bytes):
                try:
                    item = item.decode("utf-8")
                except UnicodeDecodeError as exc:
                    out[i] = ItemError(f"not UTF-8 text ({exc}); send the text as UTF-8")
                    continue
            if not isinstance(item, str):
                out[i] = ItemError(f"expected a text (str), got {type(item).__name__}")
            elif not item.strip():
                out[i] = ItemError("empty text: there is nothing to classify")
            else:
                good.append(i)
                texts.append(item)
        if texts:
            encoded = encode_texts(self.estimator.model_.backbone.tokenizer, texts,
                                   self.estimator.preprocess_)
            for i, chunks, text in zip(good, encoded, texts):
                out[i] = PreparedText(chunks, text)
        return out

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        """Prepared items (no errors) -> the graph's named inputs."""
        if self.task == "image":  # test-time views: [N, V, S, S, 3] -> [N * V, S, S, 3]
            images = np.stack(prepared)
            return {"image": images.reshape(-1, *images.shape[-3:])}
        if self.task == "audio":
            return {"waveform": np.stack(prepared).astype(np.float32)}
        chunks = max(len(doc) for doc in prepared)
        length = max(len(c) for doc in prepared for c in doc)
        ids = np.full((len(prepared), chunks, length), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(prepared), chunks, length), dtype=np.int64)
        for d, doc in enumerate(prepared):
            for c, piece in enumerate(doc):
                ids[d, c, :len(piece)] = piece
                mask[d, c, :len(piece)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def run(self, prepared: list) -> np.ndarray:
        """Probabilities ``[len(prepared), classes]`` of prepared items."""
        if not prepared:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        if self.baseline is not None:
            return self.engine([p.text for p in prepared] if self.task == "text"
                               else np.stack(prepared))
        out = self.engine(self.collate(prepared))
        proba, feats = out if isinstance(out, tuple) else (out, None)
        if self.views:  # the mean over each item's test-time views
            proba = np.asarray(proba).reshape(len(prepared), self.views, -1).mean(1)
        if self.blend:  # the run's TF-IDF model, applied outside the graph
            texts = [p.text for p in prepared]
            if self.estimator._joint():
                if feats is None:
                    raise ValueError("this run blends TF-IDF with the encoder's features "
                                     "(--blend-mode joint) but the graph gives no features: "
                                     "export it again with this headstart")
                return self.estimator.joint_.predict_proba(texts, feats)
            from .tasks.text import blend_proba

            proba = blend_proba(proba, self.estimator.baseline_.predict_proba(texts))
        return proba

    # -------------------------------------------------------------- predicting
    def predict(self, items: list, names: list[str] | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """One :class:`Prediction` per item, in order."""
        names = names or [_item_name(item, i) for i, item in enumerate(items)]
        results: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
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
        # BatchNorm folded into the convolutions (a copy; 1.3-1.5x on CPU for EfficientNet),
        # checked against the graph on the first call
        self._folded = fold_batchnorm(self.graph)

    @torch.inference_mode()
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from .features import checked_fold

        args = [torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                for v in inputs.values()]
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
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray | tuple:
        outputs = self.session.run(None, inputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
