"""The report of a classifier run (``run_dir/report.html``, written by ``fit --test``): the
verdict, held-out metrics, the confusion matrix and reliability diagram, what trained, and
the test items the model was surest of, right and wrong, each with its Grad-CAM map where
the model is a network on images. Plain data in, one self-contained HTML string out."""

from __future__ import annotations

import base64

from . import CSS, _e, _pct, _table
from .plots import confusion_svg, reliability_svg

GALLERY_CSS = """
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8rem}
.gallery figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:.4rem}
.gallery img{width:100%;image-rendering:pixelated}.gallery figcaption{font-size:13px}
.wrong figcaption b{color:#cf222e}
"""


def build_classifier_report(config: dict, gallery: dict | None = None) -> str:
    """``config``: the run's config.json; ``gallery``: ``{"right": [...], "wrong": [...],
    "note": str, "maps": bool}``, each entry ``{"item", "truth", "predicted",
    "probability", "png"}`` (see :func:`headstart.tasks.serving.image.report_gallery`)."""
    m, bb = config.get("metrics", {}), config["backbone"]
    fit, data = config.get("fit_config", {}), config.get("data") or {}
    test = m.get("test") or {}
    title = f"headstart {config.get('task', 'image')} classifier on {bb['id']}"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}{GALLERY_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=muted>Classes {', '.join(map(_e, config['classes']))}; strategy "
        f"{_e(fit.get('strategy', '?'))}; fit {m.get('fit_seconds', 0):.0f} s; source: "
        f"{_e(bb.get('meta', {}).get('source_data', '?'))}; training data "
        f"{_e(data.get('origin') or '?')} ({data.get('items', '?')} items).</p>",
    ]
    verdict = test.get("verdict") or (m.get("validation") or {}).get("verdict")
    if verdict:
        tone = {"transfer": "good", "baseline": "bad"}.get(verdict.get("winner", ""), "tie")
        parts.append(f"<p class='verdict {tone}'>{_e(verdict['line'])}</p>")
    if config.get("winner") == "baseline":
        parts.append(
            f"<p class='verdict tie'>This run predicts with its classic baseline "
            f"({_e(m.get('baseline_name', ''))}): the network was not better on validation.</p>"
        )
    rows = [
        [
            split,
            _pct(v.get("accuracy")),
            _pct(v.get("macro_f1")),
            "-" if v.get("auroc") is None else f"{v['auroc']:.3f}",
            "-" if v.get("ece") is None else f"{v['ece']:.3f}",
            v.get("n", "?"),
        ]
        for split in ("validation", "test")
        if (v := m.get(split))
    ]
    if rows:
        parts.append(
            "<h2>Held-out results</h2>"
            + _table(rows, ["data", "accuracy", "macro-F1", "AUROC", "ECE", "items"])
        )
    if m.get("selection"):
        parts.append(f"<p class=muted>{_e(m['selection'])}</p>")
    if test.get("confusion_matrix") or test.get("reliability"):
        parts.append("<div class=grid>")
        if test.get("confusion_matrix"):
            svg = confusion_svg(test["confusion_matrix"], config["classes"])
            parts.append(f"<figure>{svg}</figure>")
        if test.get("reliability"):
            parts.append("<figure>" + reliability_svg(test["reliability"]) + "</figure>")
        parts.append("</div>")
    if gallery:
        parts.append(_gallery_html(gallery))
    stages = config.get("stages") or []
    if stages:
        parts.append(
            "<h2>What trained</h2>"
            + _table(
                [
                    [
                        _e(s["stage"]),
                        f"{s['trainable_params']:,}",
                        f"{s['total_params']:,}",
                        _e(s.get("bn", "")),
                    ]
                    for s in stages
                ],
                ["stage", "trainable", "parameters", "BatchNorm"],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _gallery_html(gallery: dict) -> str:
    out = [
        "<h2>Surest right and wrong test items</h2>",
        f"<p class=muted>{_e(gallery.get('note', ''))}</p>",
    ]
    for key, heading in (("right", "Surest right"), ("wrong", "Surest wrong (the largest losses)")):
        entries = gallery.get(key) or []
        out.append(f"<h3>{heading}</h3>")
        if not entries:
            out.append("<p class=muted>none</p>")
            continue
        out.append(f"<div class='gallery {key}'>")
        for e in entries:
            b64 = base64.b64encode(e["png"]).decode()
            out.append(
                f"<figure><img alt='{_e(e['item'])}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>predicted <b>{_e(e['predicted'])}</b> "
                f"{100 * e['probability']:.1f}%, true {_e(e['truth'])}<br>"
                f"<span class=muted>{_e(e['item'])}</span></figcaption></figure>"
            )
        out.append("</div>")
    return "\n".join(out)
