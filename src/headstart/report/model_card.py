"""A model card (``model_card.md``) from a run's config: source model and data, intended
use, training data, metrics with their intervals, the operating point, and the limitations
a reader must know. Plain data in, Markdown out (a leaf, like the rest of ``report``)."""

from __future__ import annotations


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return str(v)


def _interval(block: dict) -> str:
    return f"{_fmt(block['value'])} [{_fmt(block['low'])}, {_fmt(block['high'])}]"


def _added_lines(added: dict | None) -> list[str]:
    """``--add-classes``: which classes the run added to which parent, and how."""
    if not added:
        return []
    return [
        f"- classes added to `{added['parent']}`: {', '.join(added['new_classes'])} (its "
        f"{len(added['old_classes'])} classes kept: LwF distillation "
        f"{added['distill']:g} at T = {added['distill_temperature']:g}, "
        f"{added['replayed']} stored exemplars replayed"
        + (
            f"; new classes' logits lowered by {added['offset']:g})"
            if added.get("offset") is not None
            else ")"
        )
    ]


def render_model_card(config: dict) -> str:
    """The card of a run whose ``config.json`` is ``config``."""
    meta = (config.get("backbone") or {}).get("meta") or {}
    fit = config.get("fit_config") or {}
    data = config.get("data") or {}
    metrics = config.get("metrics") or {}
    val = metrics.get("validation") or {}
    clinical = val.get("clinical")
    op = config.get("operating_point")
    classes = config.get("classes") or []
    lines = [
        f"# Model card: {config.get('task', '?')} classifier ({', '.join(map(str, classes))})",
        "",
        f"Written by headstart {(config.get('versions') or {}).get('headstart', '?')} on "
        f"{config.get('saved_at', '?')}. Every figure below comes from this run's "
        "`config.json`.",
        "",
        "## Source model",
        f"- backbone: `{fit.get('backbone') or (config.get('backbone') or {}).get('id')}`"
        f" ({meta.get('description') or meta.get('id', '')})",
        f"- pre-trained on: {meta.get('source_data', '?')} ({meta.get('source_task', '?')}; "
        f"domain: {meta.get('domain', '?')}); licence: {meta.get('licence', '?')}",
        f"- transfer: strategy `{fit.get('strategy')}`, input "
        f"{(config.get('preprocess') or {}).get('input_size', '?')} px"
        if config.get("task") == "image"
        else f"- transfer: strategy `{fit.get('strategy')}`",
        f"- what predicts: {config.get('winner', 'transfer')}",
        *_added_lines(config.get("add_classes")),
        "",
        "## Intended use",
        "Decision support and research on data like the training data below: sorting, "
        "triage or a second reading that a qualified person checks. It is not a "
        "diagnostic device, has no regulatory clearance, and must not decide alone.",
        "",
        "## Training data",
        f"- source: `{data.get('origin', '?')}`",
    ]
    if data.get("items") is not None:
        lines.append(
            f"- {data['items']} items: {data.get('train')} for training, "
            f"{data.get('validation') or 0} for validation"
        )
    if data.get("per_class"):
        lines.append("- per class: " + ", ".join(f"{c} {n}" for c, n in data["per_class"].items()))
    if data.get("groups"):
        lines.append(
            f"- {data['groups']} patients / studies (column `{data.get('group_column')}`); "
            "every split keeps one's images together"
        )
    if fit.get("window"):
        lines.append(f"- DICOM / NIfTI window: `{fit['window']}`")
    semi = metrics.get("semi")
    if semi:
        lines.append(
            f"- self-training on {semi.get('pool')} unlabelled items "
            f"(`{semi.get('pool_origin', '')}`): {semi.get('line', '')}"
        )
    lines += ["", "## Metrics (validation part)"]
    if val:
        lines.append(
            f"- accuracy {_fmt(val.get('accuracy'))}, macro-F1 {_fmt(val.get('macro_f1'))}, "
            f"AUROC {_fmt(val.get('auroc'))}, ECE {_fmt(val.get('ece'))} "
            f"(n = {val.get('n', '?')})"
        )
    else:
        lines.append("- none: the fit had no validation part")
    split = val.get("add_classes")
    if split:
        lines.append(
            f"- old classes: accuracy {_fmt(split.get('old_accuracy'))} (n = "
            f"{split.get('old_n')}); new classes: {_fmt(split.get('new_accuracy'))} "
            f"(n = {split.get('new_n')})"
        )
    if clinical:
        boot = clinical.get("bootstrap") or {}
        lines += [
            "",
            f"Clinical metrics, `{clinical.get('positive')}` = positive, threshold "
            f"{_fmt(clinical.get('threshold'))}; 95% bootstrap intervals over "
            f"{boot.get('resamples')} resamples of {boot.get('unit')}s:",
            "",
            "| metric | value [95% CI] |",
            "|---|---|",
        ]
        for name in ("sensitivity", "specificity", "ppv", "npv", "auroc", "auprc"):
            lines.append(f"| {name} | {_interval(clinical[name])} |")
        cm = clinical["confusion_matrix"]
        lines += [
            "",
            f"At the threshold: TP {cm[1][1]}, FN {cm[1][0]}, TN {cm[0][0]}, FP {cm[0][1]}.",
        ]
    lines += ["", "## Operating point"]
    if op:
        v = op.get("validation") or {}
        lines.append(
            f"- `{op['rule']}`: predict `{op['positive']}` when its probability is at least "
            f"{op['threshold']:.4f}; chosen on {op.get('n_validation')} validation items "
            f"(sensitivity {_fmt(v.get('sensitivity'))}, specificity "
            f"{_fmt(v.get('specificity'))} there). `predict` and `serve` apply it."
        )
    else:
        lines.append("- none set: the most probable class is predicted (`--operating-point`).")
    lines += ["", "## Limitations", *[f"- {x}" for x in limitations(config)], ""]
    return "\n".join(lines)


def limitations(config: dict) -> list[str]:
    """What the figures above do not show, from what the run knows about itself."""
    data = config.get("data") or {}
    metrics = config.get("metrics") or {}
    val = metrics.get("validation") or {}
    out = [
        "Not validated on external sites, scanners or populations: the validation part "
        "comes from the same source as the training data, so these figures are likely "
        "better than on new data.",
    ]
    if data.get("items") is not None and not data.get("groups"):
        out.append(
            "No patient / study id was given: if one patient has several images, they can "
            "fall on both sides of the split and inflate the validation figures "
            "(`--group-column`)."
        )
    n = val.get("n")
    if n is not None and n < 200:
        out.append(
            f"The validation part is small ({n} items): the intervals above are wide, "
            "and the operating point chosen on it may not hold elsewhere."
        )
    if not val:
        out.append("No validation part: nothing here measures how well the model works.")
    calib = metrics.get("calibration") or {}
    if calib.get("reason"):
        out.append(f"Probabilities are not calibrated ({calib['reason']}).")
    out.append(
        "Grad-CAM maps (`headstart predict --explain`) show where the network looked, not "
        "why; a map on the label, a ruler or the scanner's text means a shortcut."
    )
    return out
