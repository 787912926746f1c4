"""Image classification, served: decoding, the centre crop (and test-time views) outside the
graph; ``uint8 [N, S, S, 3]`` crops -> scale, normalise, network, softmax inside it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...data.images import grey_rgb, uint8_rgb
from ...inference import MAX_PIXELS, ItemError, ItemTooLarge
from .base import Feed, TaskServing

# A longer side more than this many times the shorter one is refused: resizing the
# shorter side to the model's input would blow the longer one up (1 x 40M px).
MAX_ASPECT = 100


class ImageGraph(nn.Module):
    """``uint8 [N, S, S, 3]`` (RGB crops, as :class:`ImageFeed` makes them) ->
    probabilities ``[N, classes]``."""

    shift: torch.Tensor  # buffers: 255 mean, 255 std
    scale: torch.Tensor

    def __init__(self, model: nn.Module, mean, std, multi_label: bool = False):
        super().__init__()
        self.model = model
        self.multi_label = bool(multi_label)
        # (x/255 - mean) / std == (x - 255 mean) / (255 std): one subtract, one divide
        self.register_buffer(
            "shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        )
        self.register_buffer(
            "scale", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        logits = self.model((x - self.shift) / self.scale).float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)


def open_image(item, max_pixels: int | None = MAX_PIXELS, window: str | None = None):
    """A path, bytes, a file object, an array or a PIL image -> RGB PIL image; a DICOM /
    NIfTI file (or DICOM bytes) -> its windowed grey image (``window``: as the run read its
    training data), float PIL mode ``F``.

    Refuses images over ``max_pixels`` from the header alone (before decoding)."""
    from PIL import Image, UnidentifiedImageError

    from ...data.images import load_image, to_rgb
    from ...data.medical import MedicalError, is_dicom_bytes, is_medical, load_medical

    if is_medical(item) or (
        isinstance(item, (bytes, bytearray, memoryview)) and is_dicom_bytes(bytes(item))
    ):
        try:
            return load_medical(item, window)
        except MedicalError as exc:
            raise ItemError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise ItemError(f"{item}: no such file") from exc
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
                raise ItemTooLarge(_too_many_pixels(name, w, h, max_pixels))
            if min(w, h) < 1 or max(w, h) > MAX_ASPECT * min(w, h):
                raise ItemTooLarge(
                    f"{name}: {w}x{h} pixels; sides more than {MAX_ASPECT} "
                    "times apart are not supported, crop the image first"
                )
            img.load()
            return to_rgb(img)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, raised while opening
        size = header_size(item)
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses past twice its warning limit
        limit = min(max_pixels or bomb, bomb)
        if size is None:
            raise ItemTooLarge(
                f"{name}: the image header says it has more pixels than the "
                f"limit of {limit:,}; downscale it"
            ) from exc
        raise ItemTooLarge(_too_many_pixels(name, *size, limit)) from exc
    except FileNotFoundError as exc:
        raise ItemError(f"{name}: no such file") from exc
    except UnidentifiedImageError as exc:
        raise ItemError(
            f"{name}: not an image PIL can read (JPEG, PNG, WebP, BMP, GIF, TIFF, ...)"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ItemError(
            f"{name}: cannot decode this image ({exc}); the file may be truncated or corrupt"
        ) from exc


def _too_many_pixels(name: str, w: int, h: int, limit: int) -> str:
    return (
        f"{name}: the image header says {w}x{h} pixels, more than the limit of "
        f"{limit:,}; downscale it"
    )


def header_size(item) -> tuple[int, int] | None:
    """An image's ``(width, height)`` from its header alone, for one that PIL's
    ``Image.open`` refuses as a decompression bomb (it checks the size after reading the
    header, and says only the pixel count). Each registered format plugin that accepts the
    file's first bytes parses the header, as ``Image.open`` does; nothing is decoded."""
    from PIL import Image

    Image.init()
    try:
        if isinstance(item, (str, Path)):
            with open(item, "rb") as f:
                data = f.read(1 << 20)  # headers sit at the start (TIFF: near it)
        else:
            item.seek(0)
            data = item.read()
    except OSError:
        return None
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept and not accept(data[:16]):
                continue
            with factory(io.BytesIO(data), "") as img:
                return img.size
        except Exception:  # noqa: BLE001 - not this format (or a broken header): the next
            continue
    return None


class ImageFeed(Feed):
    """Decoding and the evaluation's resize and centre crop (one crop per test-time view),
    the exact steps ``fit`` and ``evaluate`` use; what no graph can do the way training did
    it (PIL's antialiased resize of the shorter side to ``S / crop_pct``)."""

    def __init__(self, estimator, views: list, max_pixels: int | None, baseline=None):
        from ...data.transforms import ImageTransform

        super().__init__(estimator, baseline)
        self.views = len(views)  # 0: the evaluation crop alone
        self.max_pixels = max_pixels
        pre = estimator.preprocess_
        self.transforms = [ImageTransform(v.input_size, v, "none") for v in views or [pre]]
        self.window = estimator.config_.pixel_window()

    def prepare_many(self, items: list) -> list:
        out = []
        for item in items:
            try:
                img = open_image(item, self.max_pixels, self.window)
                if img.mode == "F" and self.baseline is not None:
                    img = grey_rgb(img)
                if self.baseline is not None:  # the baseline's own vector of the image
                    out.append(self.baseline.featurizer_(img))
                    continue
                # the graph takes uint8 crops: a float DICOM crop is rounded here, after
                # the resize (training rounds nowhere; the difference is < 0.5 grey level)
                crops = [uint8_rgb(t.eval_image(img)) for t in self.transforms]
                out.append(np.stack(crops) if self.views else crops[0])
            except ItemError as exc:
                out.append(exc)
        return out

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        images = np.stack(prepared)  # test-time views: [N, V, S, S, 3] -> [N * V, S, S, 3]
        return {"image": images.reshape(-1, *images.shape[-3:])}


class ImageServing(TaskServing):
    task = "image"
    what = "image classifiers"
    input_names = ("image",)
    form_field = "'file' (the image)"

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        from ...data.images import open_source

        return open_source(
            data,
            classes=classes,
            skip_bad=cfg.skip_bad,
            path_column=path_column,
            label_column=cfg.label_column,
            group_column=cfg.group_column,
            window=cfg.pixel_window(),
        )

    def open_inputs(self, data):
        from ...data.images import open_inputs

        return open_inputs(data)

    def entries(self, entry, i: int, text_column: str) -> list[tuple[str, object]]:
        """As every task lists them, but a multi-frame DICOM file or a NIfTI volume gives
        one entry per slice (``path#frame=K``)."""
        from ...data.medical import MedicalError, expand_slices, is_medical

        out: list[tuple[str, object]] = []
        for name, item in super().entries(entry, i, text_column):
            if isinstance(item, str) and is_medical(item) and Path(item).is_file():
                try:
                    out += [(s, s) for s in expand_slices([item])[0]]
                    continue
                except MedicalError:
                    pass  # the unreadable file gets its own error row when read
            out.append((name, item))
        return out

    def explain(self, run_dir, inputs: list, out_dir) -> str:
        from ...explain import explain_items
        from ..registry import load_estimator

        estimator = load_estimator(run_dir)
        if estimator._kept_baseline():
            raise ValueError(
                f"{run_dir} kept its classic baseline ({estimator.baseline_.name}), which "
                "has no network to draw Grad-CAM maps from"
            )
        entries = self.list_inputs(inputs)
        explain_items(estimator, [i for _, i in entries], out_dir, [n for n, _ in entries])
        return f"wrote {len(entries)} Grad-CAM overlays and index.csv to {out_dir}"

    def after_fit(self, estimator, run_dir, test) -> list[str]:
        """With a test set: ``run_dir/report.html``, the surest right and wrong test items
        with their Grad-CAM maps beside the run's metrics."""
        if test is None:
            return []
        from ...artifacts import atomic_write_bytes
        from ...report.classifier import build_classifier_report

        gallery = report_gallery(estimator, test)
        path = Path(run_dir) / "report.html"
        atomic_write_bytes(path, build_classifier_report(estimator.run_config(), gallery).encode())
        return [f"report: {path}"]

    def explains(self, config: dict) -> bool:
        return config.get("winner") != "baseline"  # a kept classic baseline has no map

    def explain_png(self, estimator, item, max_pixels: int | None) -> bytes:
        """The evaluation crop of an upload beside its predicted class's Grad-CAM map."""
        from ...explain import explained_panels, png_bytes

        img = open_image(item, max_pixels, estimator.config_.pixel_window())
        pixels = uint8_rgb(img)  # a windowed DICOM upload: grey levels rounded, as served
        return png_bytes(explained_panels(estimator, [pixels])[0])

    def graph(self, estimator, model, multi_label: bool) -> ImageGraph:
        pre = estimator.preprocess_
        return ImageGraph(model, pre.mean, pre.std, multi_label)

    def feed(self, estimator, views: list, max_pixels: int | None, baseline=None) -> ImageFeed:
        return ImageFeed(estimator, views, max_pixels, baseline)

    def export_inputs(self, predictor) -> tuple[list[dict], dict]:
        pre = predictor.estimator.preprocess_
        scale = int(pre.input_size / pre.crop_pct)
        inputs = [
            {
                "name": "image",
                "dtype": "uint8",
                "shape": ["batch", pre.input_size, pre.input_size, 3],
            }
        ]
        recipe = {
            "steps": [
                "decode to 8-bit RGB (grey and palette converted, transparency on white)",
                f"resize so the shorter side is {scale} px ({pre.interpolation}, antialiased, "
                "as PIL's Image.resize)",
                f"centre-crop {pre.input_size} x {pre.input_size}",
                "stack as uint8 [batch, height, width, 3] (channels last)",
            ],
            "inside_graph": f"x / 255, minus mean {list(pre.mean)}, over std {list(pre.std)}, NCHW",
            **pre.to_dict(),
        }
        return inputs, recipe

    def input_summary(self, estimator) -> str:
        return f"{estimator.preprocess_.input_size}px"

    def bn_note(self, stage: dict) -> str:
        return f", BN {stage['bn']}"


# the report's gallery reads at most this many test items (a sample, said so): Grad-CAM
# needs the items' probabilities, and a second pass over 10,000 test images costs minutes
GALLERY_SAMPLE = 1000


def report_gallery(estimator, test, k: int = 6, seed: int = 0) -> dict | None:
    """The ``k`` test items the run was surest of, right and wrong, each as its evaluation
    crop beside its Grad-CAM map (crops alone where the run kept its classic baseline,
    which has no network to map); None for a multi-label run."""
    from ...explain import confident_right_and_wrong, explained_panels, png_bytes

    if getattr(estimator, "multi_label_", False):
        return None
    n = len(test)
    rows = np.arange(n)
    if n > GALLERY_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(n, GALLERY_SAMPLE, replace=False))
    sample = test.subset(rows)
    proba = estimator.predict_proba(sample)
    predicted = np.asarray(estimator._thresholded(proba))
    picked = confident_right_and_wrong(np.asarray(sample.labels), proba, predicted, k)
    maps = not estimator._kept_baseline()
    order = picked["right"] + picked["wrong"]
    if maps:
        panels = explained_panels(
            estimator, sample.subset(order), [int(predicted[i]) for i in order]
        )
    else:
        panels = [_crop(estimator, sample.items[i]) for i in order]
    entries = [
        {
            "item": sample.name(i),
            "truth": estimator.classes_[int(sample.labels[i])],
            "predicted": estimator.classes_[int(predicted[i])],
            "probability": float(proba[i, predicted[i]]),
            "png": png_bytes(panel),
        }
        for i, panel in zip(order, panels)
    ]
    how = (
        "Each: the evaluation crop, then its Grad-CAM map for the predicted class (red: the "
        "regions that raised that class's score)."
        if maps
        else "The run kept its classic baseline, which has no network map: crops alone."
    )
    of = f"{n:,} test items"
    if n > len(rows):
        of = f"{len(rows):,} test items sampled at random from {n:,}"
    return {
        "right": entries[: len(picked["right"])],
        "wrong": entries[len(picked["right"]) :],
        "maps": maps,
        "note": f"Of {of}. {how}",
    }


def _crop(estimator, item) -> np.ndarray:
    from ...data.images import load_pixels
    from ...data.transforms import ImageTransform

    pre = estimator.preprocess_
    img = load_pixels(item, estimator.config_.pixel_window())
    return uint8_rgb(ImageTransform(pre.input_size, pre, "none").eval_image(img))
