"""A self-contained HTML report of a study: inline SVG plots (matplotlib, text as paths),
inline CSS, no script, no external fetch. Opens from disk, mails as one file."""

from __future__ import annotations

import html
import math

from .plots import (
    confusion_svg,
    learning_curve_svg,
    reliability_svg,
    time_svg,
    training_curves_svg,
    tune_svg,
)
from .words import BASELINE, describe_gain

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1b1f24}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:13px;margin:.5rem 0}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.verdict{padding:.6rem .9rem;border-radius:6px;margin:.6rem 0}
.good{background:#dafbe1}.bad{background:#ffebe9;border:1px solid #cf222e}
.tie{background:#fff8c5}
.muted{color:#57606a}figure{margin:.5rem 0}figure svg{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
table.why td:last-child{text-align:left}
"""


def _e(v) -> str:
    return html.escape(str(v))


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _table(rows: list[list], head: list[str], left: int = 1, cls: str = "") -> str:
    heads = "".join(
        f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(head)
    )
    out = [f"<table class='{cls}'><tr>" + heads + "</tr>"]
    for r in rows:
        out.append(
            "<tr>"
            + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
            + "</tr>"
        )
    return "\n".join(out) + "</table>"


def build_report(study: dict) -> str:
    """A study's report as one HTML string, from
    :meth:`headstart.study.StudyResult.report_data` (plain data)."""
    s = study["settings"]
    gains = study["gains"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>headstart study: {_e(study['model'])}</title><style>{CSS}</style></head>"
        f"<body><h1>Did transfer pay off? {_e(study['model'])}</h1>"
        f"<p class=muted>{len(study['classes'])} classes; training pool "
        f"{s.get('n_pool')} items (fractions {', '.join(f'{f:g}' for f in s['fractions'])}"
        f"), validation {s.get('n_val')}, test {s.get('n_test')}; seeds "
        f"{', '.join(map(str, s['seeds']))}; {len(study['runs'])} runs.</p>"
    ]
    parts.append("<h2>Verdict</h2>")
    if gains:  # the answer first: at the most data, does transfer pay?
        g = gains[-1]
        head, detail = describe_gain(g)
        cls = {"negative transfer": "bad", "transfer": "good"}.get(g["verdict"], "tie")
        parts.append(
            f"<p class='verdict {cls}' id=answer><b>Answer, with {g['n_train']} "
            f"training items:</b> {_e(head)}. {_e(detail)}.</p>"
        )
    for g in gains:
        cls = {"negative transfer": "bad", "transfer": "good"}.get(g["verdict"], "tie")
        head, detail = describe_gain(g)
        noise = (
            " (one seed: run more seeds to tell it from noise)"
            if g["beyond_seed_spread"] is None
            else (
                " (beyond the seeds' spread)"
                if g["beyond_seed_spread"]
                else " (within the seeds' spread)"
            )
        )
        parts.append(
            f"<div class='verdict {cls}'><b>{g['n_train']} training items "
            f"({g['fraction']:g}):</b> {_e(head)}{noise}: {_e(detail)}.</div>"
        )
    if not gains:
        parts.append("<p>No scratch or classic baseline in this study: no verdict.</p>")
    names = sorted(
        {r.get("backbone", "") for r in study["runs"] if r["strategy"] == BASELINE} - {""}
    )
    if names:
        parts.append(
            f"<p class=muted>Classic baseline (chosen by 5-fold cross-validation on "
            f"each run's training items): {_e('; '.join(names))}.</p>"
        )

    curves = {k: v for k, v in study["curves"].items() if v}
    parts.append(
        "<h2>Learning curves</h2><figure>"
        + learning_curve_svg(curves)
        + "<figcaption class=muted>Test accuracy against training items (log scale); "
        "bars: spread over seeds.</figcaption></figure>"
    )
    top = max(s["fractions"])
    parts.append(
        "<div class=grid><div><h2>Training curves</h2><figure>"
        + training_curves_svg(
            [r for r in study["runs"] if r["fraction"] == top and r["seed"] == min(s["seeds"])]
        )
        + f"<figcaption class=muted>Validation accuracy per epoch at fraction {top:g}."
        "</figcaption></figure></div><div><h2>Time per strategy</h2><figure>"
        + time_svg(curves)
        + "<figcaption class=muted>Mean fit seconds at each "
        "fraction.</figcaption></figure></div></div>"
    )
    best = study["best_run"]
    parts.append(
        f"<h2>Best model: {_e(best['name'])} ({_pct(best['test']['accuracy'])})</h2>"
        "<div class=grid><figure>"
        + confusion_svg(best["test"]["confusion_matrix"], study["classes"])
        + "<figcaption class=muted>Confusion matrix on the test set (rows: true)."
        "</figcaption></figure><div>"
    )
    per = best["test"]["per_class"]
    parts.append(
        _table(
            [
                [
                    _e(c),
                    f"{v['precision']:.3f}",
                    f"{v['recall']:.3f}",
                    f"{v['f1']:.3f}",
                    v["support"],
                ]
                for c, v in per.items()
            ],
            ["class", "precision", "recall", "F1", "support"],
        )
        + "</div></div>"
    )
    parts.append(_calibration_section(best["test"]))
    check = study["advice"]
    if check:
        hits = sum(c["hit"] for c in check)
        parts.append(
            f"<h2>Advice, checked</h2><p>headstart advise picked the strategy that "
            f"won in {hits} of {len(check)} fractions.</p>"
            + _table(
                [
                    [
                        f"{c['fraction']:g}",
                        _e(c["advised"]),
                        _e(c["best"]),
                        "yes" if c["hit"] else "no",
                        "-" if c["points_lost"] is None else f"{c['points_lost']:.1f}",
                        "<br>".join(_e(r) for r in c["reasons"]),
                    ]
                    for c in check
                ],
                ["fraction", "advised", "won", "right", "points lost", "why"],
                left=0,
                cls="why",
            )
        )
    parts.append(
        "<h2>Every run</h2>"
        + _table(
            [
                [
                    _e(r["name"]),
                    _e(r["strategy"]),
                    f"{r['fraction']:g}",
                    r["n_train"],
                    r["seed"],
                    _pct(r["test_accuracy"]),
                    f"{r['test_macro_f1']:.3f}",
                    _pct(r["train_accuracy"]),
                    _pct(r["val_accuracy"]),
                    f"{100 * r['gap']:+.1f}",
                    r["epochs_to_best"] or "-",
                    r["epochs"],
                    f"{r['fit_seconds']:.1f}",
                ]
                for r in study["table_rows"]
            ],
            [
                "run",
                "strategy",
                "fraction",
                "items",
                "seed",
                "test acc",
                "test F1",
                "train acc",
                "val acc",
                "gap (pts)",
                "best epoch",
                "epochs",
                "seconds",
            ],
            left=2,
        )
    )
    parts.append(
        "<p class=muted>gap: accuracy on the run's own training items minus on the "
        "validation set (overfitting). Scratch baseline: "
        f"{_e(s.get('scratch'))}. Also in results.csv and study.json.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _calibration_section(m: dict) -> str:
    """A reliability diagram of test metrics ``m`` (``reliability`` bins; ``calibration``:
    the network's bins before and after temperature scaling), or nothing without bins."""
    cal = m.get("calibration") or {}
    fitted = bool(cal) and not cal.get("reason")
    bins = cal.get("reliability_after") if fitted else m.get("reliability")
    if not bins:
        return ""
    if fitted:
        words = (
            f"Temperature scaling (T = {cal['temperature']:.3f}, fitted on the validation "
            f"part): on the test set NLL {cal['nll_before']:.4f} &rarr; "
            f"{cal['nll_after']:.4f}, ECE {cal['ece_before']:.4f} &rarr; "
            f"{cal['ece_after']:.4f}."
        )
    else:
        why = f" ({_e(cal['reason'])})" if cal.get("reason") else ""
        words = (
            "Not calibrated"
            + why
            + (f": ECE {m['ece']:.4f}" if m.get("ece") is not None else "")
            + "."
        )
    return (
        "<h2>Calibration</h2><div class=grid><figure>"
        + reliability_svg(bins, cal.get("reliability_before") if fitted else None)
        + "<figcaption class=muted>Reliability diagram on the test set: accuracy of the items "
        f"in each of {len(bins)} confidence bins (on the diagonal, a probability means what "
        "it says); below, the share of items per bin.</figcaption></figure>"
        f"<p>{words}</p></div>"
    )


def build_tune_report(result) -> str:
    """The report of a :class:`~headstart.tune.TuneResult`: what the search bought over the
    default settings, every trial's score, and the table of trials."""
    s = result.settings
    best, default = result.best, result.default
    head = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>headstart tune</title><style>{CSS}</style></head><body>"
        f"<h1>Hyperparameter search: {_e(s.get('fit', {}).get('backbone', ''))}</h1>"
        f"<p class=muted>Optuna study {_e(result.study_name)} ({_e(result.storage)}); "
        f"{len(result.trials)} trials, {s.get('n_train')} training and {s.get('n_val')} "
        f"validation items; strategies {', '.join(map(_e, s.get('strategies', [])))}; "
        f"{result.seconds:.0f} s this call.</p>"
    )
    parts = [head, "<h2>Verdict</h2>"]
    if default is not None and default["value"] is not None:
        gain = best["value"] - default["value"]
        cls = "good" if gain > 0 else "tie"
        parts.append(
            f"<div class='verdict {cls}'>Best trial {best['number']} "
            f"({_e(best['params'].get('strategy'))}): validation {result.monitor} "
            f"{best['value']:.4f} against {default['value']:.4f} for the default "
            f"settings (trial {default['number']}), {gain:+.4f}.</div>"
        )
    else:
        parts.append(
            f"<div class='verdict tie'>Best trial {best['number']}: validation "
            f"{result.monitor} {best['value']:.4f} (the default trial did not "
            "finish).</div>"
        )
    if result.best_run:
        parts.append(f"<p>Refit and saved: <code>{_e(result.best_run)}</code></p>")
    parts.append(
        "<h2>Trials</h2><figure>"
        + tune_svg(result.trials, result.monitor)
        + "<figcaption class=muted>Validation score per trial; hollow: pruned at its "
        "last reported epoch.</figcaption></figure>"
    )
    keys = sorted({k for t in result.trials for k in t["params"]})

    def fmt(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else _e(v)

    parts.append(
        _table(
            [
                [
                    t["number"],
                    _e(t["state"].lower()) + (" (default)" if t["default"] else ""),
                    "-" if t["value"] is None else f"{t['value']:.4f}",
                    "-" if t["seconds"] is None else f"{t['seconds']:.1f}",
                    *[fmt(t["params"][k]) if k in t["params"] else "-" for k in keys],
                ]
                for t in result.trials
            ],
            ["trial", "state", f"val {result.monitor}", "seconds", *keys],
            left=2,
        )
    )
    parts.append("<p class=muted>Also in tune.csv and tune.json.</p></body></html>")
    return "\n".join(parts)


def build_detection_report(
    config: dict, pictures: list[tuple[str, bytes]], compare: dict | None = None
) -> str:
    """The report of a detection run (its config.json): settings, held-out metrics with
    per-class AP, the training curves, and images with predicted (blue) and true (red)
    boxes, embedded as JPEG so the file stands alone. ``compare``: optional label ->
    test metrics of other runs (the same detector from scratch) shown beside it."""
    import base64

    from .plots import detection_curves_svg

    m, det, fit = config.get("metrics", {}), config["detector"], config["fit_config"]
    bb = config["backbone"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>headstart detector: {_e(bb['id'])}</title><style>{CSS}</style></head>"
        f"<body><h1>Detector: {_e(det['arch'])} on {_e(bb['id'])}</h1>"
        f"<p class=muted>Classes {', '.join(map(_e, config['classes']))}; "
        f"{m.get('train_tiles', '?')} training tiles of {det['tile_size']} px "
        f"(overlap {det['tile_overlap']:g}) holding {m.get('train_boxes', '?')} boxes; "
        f"strategy {_e(fit['strategy'])}, {fit['epochs']} epochs, batch "
        f"{fit['batch_size']}; fit {m.get('fit_seconds', 0):.0f} s. Source: "
        f"{_e(bb['meta'].get('source_data', '?'))}.</p>"
    ]
    rows = []
    for name in ("validation", "test"):
        if name in m:
            v = m[name]
            rows.append(
                [
                    name,
                    f"{v['map_50']:.3f}",
                    f"{v['map']:.3f}",
                    f"{v['map_75']:.3f}",
                    f"{v['precision']:.3f}",
                    f"{v['recall']:.3f}",
                    v["images"],
                    v["boxes"],
                ]
            )
    for label, v in (compare or {}).items():
        rows.append(
            [
                _e(label),
                f"{v['map_50']:.3f}",
                f"{v['map']:.3f}",
                f"{v['map_75']:.3f}",
                f"{v['precision']:.3f}",
                f"{v['recall']:.3f}",
                v["images"],
                v["boxes"],
            ]
        )
    if rows:
        parts.append(
            "<h2>Held-out results</h2>"
            + _table(
                rows,
                [
                    "data",
                    "mAP@0.5",
                    "mAP@0.5:0.95",
                    "mAP@0.75",
                    "precision",
                    "recall",
                    "images",
                    "boxes",
                ],
            )
        )
        final = m.get("test") or m.get("validation")
        parts.append(
            "<p class=muted>COCO mAP (torchmetrics, pycocotools; up to 1000 boxes "
            "an image); precision and recall of the boxes scoring &ge; "
            f"{final['score_threshold']:g}, matched at IoU 0.5.</p>"
        )
        parts.append(
            _table(
                [
                    [
                        _e(c),
                        f"{v.get('ap_50', float('nan')):.3f}",
                        f"{v['ap']:.3f}",
                        f"{v['precision']:.3f}",
                        f"{v['recall']:.3f}",
                        v["support"],
                        v["predicted"],
                    ]
                    for c, v in final["per_class"].items()
                ],
                [
                    "class",
                    "AP@0.5",
                    "AP@0.5:0.95",
                    "precision",
                    "recall",
                    "true boxes",
                    "predicted boxes",
                ],
            )
        )
    if config.get("history"):
        parts.append(
            "<h2>Training</h2><figure>" + detection_curves_svg(config["history"]) + "</figure>"
        )
        parts.append(
            _table(
                [
                    [
                        _e(s["stage"]),
                        s["epochs"],
                        f"{s['trainable_params']:,}",
                        f"{s['total_params']:,}",
                        _e(s["bn"]),
                        _e(", ".join(s["trainable_groups"]) or "none"),
                    ]
                    for s in config.get("stages", [])
                ],
                [
                    "stage",
                    "epochs",
                    "trainable",
                    "parameters",
                    "BatchNorm",
                    "backbone groups trained",
                ],
            )
        )
    if pictures:
        parts.append(
            "<h2>Predictions</h2><p class=muted>Blue: predicted boxes (score "
            f"&ge; {det.get('score_threshold', 0.5):g}, the best F1 on validation); red: the "
            "true boxes.</p>"
        )
        for title, data in pictures:
            b64 = base64.b64encode(data).decode()
            parts.append(
                f"<figure><img style='max-width:100%' alt='{_e(title)}' "
                f"src='data:image/jpeg;base64,{b64}'><figcaption class=muted>"
                f"{_e(title)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


__all__ = ["build_detection_report", "build_report", "build_tune_report"]
