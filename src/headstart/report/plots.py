"""The study's plots as inline SVG strings (matplotlib, Agg, text drawn as paths so the
file needs no font and fetches nothing)."""

from __future__ import annotations

import io
import re

import numpy as np

COLORS = {
    "feature_extract": "#0969da",
    "partial": "#8250df",
    "finetune": "#bf8700",
    "lp_ft": "#1a7f37",
    "scratch": "#cf222e",
    "baseline": "#57606a",
}


def _figure(width: float = 6.4, height: float = 4.0, **subplots):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "path"
    return plt, plt.subplots(figsize=(width, height), dpi=100, **subplots)


def _svg(plt, fig) -> str:
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE (an external DTD)
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def learning_curve_svg(curves: dict[str, list[dict]]) -> str:
    plt, (fig, ax) = _figure()
    for name, rows in curves.items():
        x = [r["n_train"] for r in rows]
        y = [100 * r["accuracy"] for r in rows]
        err = [100 * r["std"] for r in rows]
        ax.errorbar(
            x,
            y,
            yerr=err,
            marker="o",
            capsize=3,
            label=name,
            color=COLORS.get(name),
            linestyle="--" if name == "scratch" else ":" if name == "baseline" else "-",
        )
    ax.set_xscale("log")
    ticks = sorted({r["n_train"] for rows in curves.values() for r in rows})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training items")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(plt, fig)


def training_curves_svg(runs: list[dict]) -> str:
    plt, (fig, ax) = _figure(5.2, 3.6)
    for r in runs:
        h = [e for e in r["history"] if e.get("val_accuracy") is not None]
        ax.plot(
            [e["global_epoch"] for e in h],
            [100 * e["val_accuracy"] for e in h],
            marker=".",
            label=r["strategy"],
            color=COLORS.get(r["strategy"]),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    return _svg(plt, fig)


def time_svg(curves: dict[str, list[dict]]) -> str:
    plt, (fig, ax) = _figure(5.2, 3.6)
    names = list(curves)
    fractions = sorted({r["fraction"] for rows in curves.values() for r in rows})
    width = 0.8 / max(1, len(fractions))
    for j, f in enumerate(fractions):
        secs = [next((r["seconds"] for r in curves[n] if r["fraction"] == f), 0.0) for n in names]
        ax.bar(np.arange(len(names)) + j * width, secs, width, label=f"{f:g}")
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("fit seconds")
    ax.legend(title="fraction", fontsize=7)
    return _svg(plt, fig)


def confusion_svg(matrix: list[list[int]], classes: list[str]) -> str:
    m = np.asarray(matrix)
    side = max(3.6, 0.45 * len(classes) + 1.5)
    plt, (fig, ax) = _figure(side, side)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        top = m.max() if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] > top / 2 else "black",
                )
    return _svg(plt, fig)


def tune_svg(trials: list[dict], monitor: str) -> str:
    """Each finished trial's validation score by trial number (colour: strategy; hollow:
    pruned, at its last reported score), and the best so far."""
    plt, (fig, ax) = _figure(7.2, 3.8)
    best, xs, ys = -np.inf, [], []
    for strategy in sorted({t["params"].get("strategy", "?") for t in trials}):
        done = [
            t
            for t in trials
            if t["state"] == "COMPLETE" and t["params"].get("strategy") == strategy
        ]
        ax.scatter(
            [t["number"] for t in done],
            [t["value"] for t in done],
            s=28,
            color=COLORS.get(strategy, "#57606a"),
            label=strategy,
            zorder=3,
        )
    pruned = [t for t in trials if t["state"] == "PRUNED" and t.get("pruned_at") is not None]
    if pruned:
        ax.scatter(
            [t["number"] for t in pruned],
            [t["pruned_at"] for t in pruned],
            s=28,
            facecolors="none",
            edgecolors="#57606a",
            label="pruned",
            zorder=3,
        )
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, t["value"])
        if np.isfinite(best):
            xs.append(t["number"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="#1b1f24", linewidth=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {monitor}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _svg(plt, fig)


def detection_curves_svg(history: list[dict]) -> str:
    """Training loss (left axis) and validation mAP@0.5 (right axis) per epoch."""
    plt, (fig, ax) = _figure(6.0, 3.4)
    x = [r["global_epoch"] for r in history]
    ax.plot(
        x, [r["train_loss"] for r in history], marker=".", color="#57606a", label="training loss"
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    val = [(r["global_epoch"], r["val_map_50"]) for r in history if "val_map_50" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(
            [v[0] for v in val],
            [v[1] for v in val],
            marker="o",
            color="#1a7f37",
            label="validation mAP@0.5",
        )
        ax2.set_ylabel("validation mAP@0.5")
        ax2.set_ylim(0, 1)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    return _svg(plt, fig)


def reliability_svg(bins: list[dict], before: list[dict] | None = None) -> str:
    """A reliability diagram: accuracy against confidence per equal-width confidence bin
    (bars; the diagonal is perfect calibration), the uncalibrated bins (``before``) as
    outlines over them, and below, the share of items in each bin of ``bins``."""
    plt, (fig, (ax, share)) = _figure(
        5.2, 4.8, nrows=2, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )

    def draw(rows, **style):
        full = [b for b in rows if b["count"]]
        ax.bar(
            [b["lower"] for b in full],
            [b["accuracy"] for b in full],
            [b["upper"] - b["lower"] for b in full],
            align="edge",
            **style,
        )

    draw(bins, color="#0969da", alpha=0.6, label="calibrated" if before else "model")
    if before:  # outlines over the bars
        draw(
            before,
            facecolor="none",
            edgecolor="#cf222e",
            linewidth=1.4,
            zorder=3,
            label="before calibration",
        )
    ax.plot(
        [0, 1], [0, 1], linestyle="--", color="#57606a", linewidth=1, label="perfectly calibrated"
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    total = max(1, sum(b["count"] for b in bins))
    share.bar(
        [b["lower"] for b in bins],
        [b["count"] / total for b in bins],
        [b["upper"] - b["lower"] for b in bins],
        align="edge",
        color="#0969da",
        alpha=0.75,
    )
    share.set_xlim(0, 1)
    share.set_xlabel("confidence (top-class probability)")
    share.set_ylabel("share")
    return _svg(plt, fig)
