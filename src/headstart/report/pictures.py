"""Pictures of detections for people: an image with its predicted boxes (blue) and, where
known, the true ones (red); plain arrays in, a PIL image or encoded bytes out."""

from __future__ import annotations

import io

import numpy as np

PREDICTED = (40, 170, 255)
TRUE = (255, 64, 64)


def draw_boxes(
    pixels: np.ndarray,
    boxes,
    labels: list[str],
    scores,
    truths=None,
    origin: tuple[int, int] = (0, 0),
    show_labels: bool = True,
    max_side: int = 1400,
):
    """``pixels`` (HxWx3 uint8) with ``boxes`` (xyxy, in the pixels of the image
    ``pixels`` was cut from at ``origin``) outlined, ``label score`` beside each when
    ``show_labels``, and the true boxes ``truths`` in red; scaled down to ``max_side``."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(pixels))
    draw = ImageDraw.Draw(image)
    ox, oy = origin
    for b in truths if truths is not None else ():
        draw.rectangle([b[0] - ox, b[1] - oy, b[2] - ox, b[3] - oy], outline=TRUE, width=2)
    for b, s, lab in zip(boxes, scores, labels):
        draw.rectangle([b[0] - ox, b[1] - oy, b[2] - ox, b[3] - oy], outline=PREDICTED, width=2)
        if show_labels:
            draw.text((b[0] - ox + 2, b[1] - oy + 1), f"{lab} {s:.2f}", fill=PREDICTED)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    return image


def encode(image, fmt: str = "PNG", quality: int = 85) -> bytes:
    """A PIL image as PNG or JPEG bytes (what a report embeds, or a file holds)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()
