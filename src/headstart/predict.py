"""Batch prediction over thousands of items, streamed to a CSV.

Inputs are listed without being opened (image files, folders searched recursively, CSVs
with a path column; for texts, table files and literal texts), then read, predicted and
written batch by batch, so memory stays flat whatever the count. A bad item (a corrupt
image, a missing file, an empty text) gets its row with the reason in ``error`` and the
rest go on. A CSV written to a file appears atomically when the run ends.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .artifacts import temp_sibling
from .data.images import DataError, existing_path
from .inference import Predictor

log = logging.getLogger(__name__)


def list_inputs(task: str, inputs: list, text_column: str = "text") -> list[tuple[str, object]]:
    """``(name, item)`` for every input, in order, as ``task`` lists them (files, folders
    searched recursively, CSVs with a path column; for texts, table files and literal
    texts); nothing is decoded yet."""
    from .tasks.registry import serving_for

    return serving_for(task).list_inputs(inputs, text_column)


def iter_predictions(
    predictor: Predictor, entries: list[tuple[str, object]], batch_size: int = 64
) -> Iterator:
    """:class:`~headstart.inference.Prediction` per entry, batch by batch."""
    for start in range(0, len(entries), batch_size):
        part = entries[start : start + batch_size]
        yield from predictor.predict(
            [item for _, item in part], names=[n for n, _ in part], batch_size=batch_size
        )


@contextmanager
def _csv_out(out: str | Path | None):
    """A csv writer on stdout, or on a temporary file renamed onto ``out`` only when the
    block finishes (an interrupted run leaves no half-written CSV)."""
    if out is None:
        yield csv.writer(sys.stdout)
        sys.stdout.flush()
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_sibling(out)
    stream = os.fdopen(fd, "w", newline="", encoding="utf-8")
    try:
        yield csv.writer(stream)
        stream.flush()
        os.fsync(stream.fileno())
        stream.close()
        os.replace(tmp, out)
    except BaseException:
        stream.close()
        Path(tmp).unlink(missing_ok=True)
        raise


def write_predictions(
    predictor: Predictor,
    inputs: list,
    out: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
    text_column: str = "text",
) -> dict:
    """Predict ``inputs`` and write ``item, prediction, probability, error, p_<class>...``
    to ``out`` (default: stdout). Returns counts: items, predicted, errors."""
    from tqdm.auto import tqdm

    entries = predictor.serving.list_inputs(inputs, text_column)
    header = ["item", "prediction", "probability", "error"] + [f"p_{c}" for c in predictor.classes]
    counts = {"items": len(entries), "predicted": 0, "errors": 0}
    with _csv_out(out) as writer:
        writer.writerow(header)
        bar = tqdm(total=len(entries), desc="predict", unit="item", disable=not progress)
        for r in iter_predictions(predictor, entries, batch_size):
            if r.error is not None:
                counts["errors"] += 1
                writer.writerow([r.item, "", "", r.error] + [""] * len(predictor.classes))
            else:
                counts["predicted"] += 1
                label = predictor.labels(r.probabilities)
                top = float(r.probabilities.max())
                writer.writerow(
                    [
                        r.item,
                        ";".join(label) if isinstance(label, list) else label,
                        f"{top:.4f}",
                        "",
                    ]
                    + [f"{p:.6f}" for p in r.probabilities]
                )
            bar.update(1)
        bar.close()
    if counts["errors"]:
        log.warning(
            "%d of %d items could not be predicted; their rows say why",
            counts["errors"],
            counts["items"],
        )
    return counts


def write_detections(
    detector,
    inputs: list,
    out: str | Path | None = None,
    min_score: float | None = None,
    progress: bool = True,
) -> dict:
    """Detect objects in ``inputs`` (image files, folders) and write one row per box,
    ``item, xmin, ymin, xmax, ymax, label, score, error``, to ``out`` (default: stdout).
    An image without boxes gets one row with empty box columns; an image that cannot be
    read gets its row with the reason in ``error``. Returns counts: images, boxes, errors."""
    from tqdm.auto import tqdm

    if min_score is None:  # the run's own cut: the best F1 on its validation images
        min_score = getattr(detector, "score_threshold_", 0.5)

    entries = [name for name, _ in detector.serving_class().list_inputs(inputs)]
    counts = {"images": len(entries), "boxes": 0, "errors": 0}
    with _csv_out(out) as writer:
        writer.writerow(["item", "xmin", "ymin", "xmax", "ymax", "label", "score", "error"])
        for name in tqdm(entries, desc="detect", unit="image", disable=not progress):
            try:
                det = detector.predict([name], score_threshold=min_score)[0]
            except DataError as exc:
                counts["errors"] += 1
                writer.writerow([name, "", "", "", "", "", "", str(exc)])
                continue
            if not len(det["boxes"]):
                writer.writerow([name, "", "", "", "", "", "", ""])
            for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
                writer.writerow(
                    [name, *(f"{float(v):.1f}" for v in box), label, f"{float(score):.4f}", ""]
                )
                counts["boxes"] += 1
    return counts


def write_transcripts(
    recognizer, inputs: list, out: str | Path | None = None, batch_size: int = 64
) -> dict:
    """Transcribe ``inputs`` (recordings, folders, CSVs with a path column) and write
    ``item, transcript, error`` rows to ``out`` (default: stdout); a recording that cannot
    be read gets its row with the reason. Returns counts: items, transcribed, errors."""
    from .data.audio import _check_file

    entries = [name for name, _ in recognizer.serving_class().list_inputs(inputs)]
    counts = {"items": len(entries), "transcribed": 0, "errors": 0}
    with _csv_out(out) as writer:
        writer.writerow(["item", "transcript", "error"])
        for start in range(0, len(entries), batch_size):
            part = entries[start : start + batch_size]
            problems = [
                _check_file(p) if existing_path(p) and Path(p).is_file() else "no such file"
                for p in part
            ]
            good = [p for p, why in zip(part, problems) if not why]
            texts = iter(recognizer.transcribe(good) if good else [])
            for p, why in zip(part, problems):
                if why:
                    counts["errors"] += 1
                    writer.writerow([p, "", f"{p}: {why}"])
                else:
                    counts["transcribed"] += 1
                    writer.writerow([p, next(texts), ""])
    return counts
