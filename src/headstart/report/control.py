"""The reports of ``--task control``: a fit's (``run_dir/report.html``: the learning curve
against the source as it is, the changes made to the environment, what trained, and frames
of the source and the adapted policy in the target) and a control study's (every
strategy's curve against scratch's, the questions answered in env steps). Plain data in,
one self-contained HTML string out."""

from __future__ import annotations

import base64

from . import CSS, _e, _table
from .plots import COLORS, _figure, _svg

FILM_CSS = """
.film{display:flex;gap:.3rem;flex-wrap:wrap;margin:.3rem 0 1rem}
.film figure{margin:0;text-align:center;font-size:12px;color:#57606a}
.film img{width:150px;height:150px;border:1px solid #d0d7de;border-radius:4px}
"""


def control_curves_svg(curves: dict[str, list[dict]], zero_shot: float | None = None) -> str:
    """Mean return against env steps, one line per run (a band of +- its spread), and the
    source's zero-shot return as a dotted line."""
    plt, (fig, ax) = _figure(6.4, 3.8)
    for name, rows in curves.items():
        x = [r["steps"] for r in rows]
        y = [r["mean_return"] for r in rows]
        sd = [r.get("std_return", 0.0) for r in rows]
        color = COLORS.get(name.split(" ")[0])
        ax.plot(x, y, marker="o", ms=3, label=name, color=color,
                linestyle="--" if name.startswith("scratch") else "-")  # fmt: skip
        ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                        alpha=0.12, color=color)  # fmt: skip
    if zero_shot is not None:
        ax.axhline(zero_shot, color="#57606a", linestyle=":", label="source as it is (zero-shot)")
    ax.set_xlabel("environment steps in the target")
    ax.set_ylabel("return (held-out episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(plt, fig)


def film_html(title: str, film: dict) -> str:
    """A row of frames of one episode (``frames.episode_frames``), or why there are none."""
    if film.get("error"):
        return f"<h3>{_e(title)}</h3><p class=muted>No frames: {_e(film['error'])}</p>"
    from PIL import Image

    from .pictures import encode

    cells = []
    for step, pixels in film["frames"]:
        png = base64.b64encode(encode(Image.fromarray(pixels))).decode()
        cells.append(
            f"<figure><img alt='step {step}' src='data:image/png;base64,{png}'>"
            f"<figcaption>step {step}</figcaption></figure>"
        )
    head = (
        f"{_e(title)}: return {film['return']:.1f} over {film['length']} steps "
        f"(held-out seed {film['seed']}, {_e(film.get('env', ''))})"
    )
    return f"<h3>{head}</h3><div class=film>{''.join(cells)}</div>"


def _page(title: str, body: list[str]) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}{FILM_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>" + "\n".join(body) + "</body></html>"
    )


def build_control_report(config: dict, films: dict[str, dict]) -> str:
    """A control run's report from its config.json and ``films`` (title -> episode)."""
    m, fit = config.get("metrics", {}), config.get("fit_config", {})
    source = m.get("source") or {}
    env = config.get("data", {}).get("origin", "?")
    title = f"headstart control policy on {env}"
    zero = (m.get("zero_shot") or {}).get("mean_return")
    final = m.get("validation") or {}
    body = [
        f"<p class=muted>{_e(config['policy']['algo'].upper())}, strategy "
        f"{_e(config.get('strategy', '?'))}, {m.get('steps', 0)} env steps, fit "
        f"{m.get('fit_seconds', 0):.0f} s; source: "
        f"{_e(source.get('run', 'none (from scratch)'))}"
        + (f" (trained in {_e(_env_label(source['env']))})" if source.get("env") else "")
        + ".</p>"
    ]
    if final:
        line = (
            f"Held-out return {final['mean_return']:.1f} +- {final['std_return']:.1f} "
            f"over {final['episodes']} episodes"
        )
        tone = "tie"
        if zero is not None:
            gain = final["mean_return"] - zero
            tone = "good" if gain > 0 else "bad"
            line += f"; the source as it is: {zero:.1f} ({gain:+.1f})"
            if gain <= 0:
                line += ": training did not beat the source as it is"
        body.append(f"<p class='verdict {tone}'>{_e(line)}.</p>")
    body.append("<h2>Learning curve</h2>")
    name = "scratch" if config.get("strategy") == "scratch" else str(config.get("strategy"))
    body.append(f"<figure>{control_curves_svg({name: m.get('curve', [])}, zero)}</figure>")
    changes = m.get("env_changes") or []
    if changes:
        body.append("<h2>What differs in the target</h2>")
        rows = [[_e(c["name"]), f"{c['before']}", f"{c['after']}"] for c in changes]
        body.append(_table(rows, ["change", "before", "after"]))
    stages = config.get("stages") or []
    if stages:
        body.append("<h2>What trained</h2>")
        rows = [
            [
                _e(s["stage"]),
                s["steps"],
                _e(", ".join(s["frozen"]) or "nothing"),
                f"{s['trainable_params']:,} / {s['total_params']:,}",
                f"{s['lr']:g}",
            ]
            for s in stages
        ]
        body.append(_table(rows, ["stage", "steps", "frozen", "trainable params", "lr"]))
    if films:
        body.append("<h2>In the target environment</h2>")
        body.extend(film_html(t, f) for t, f in films.items())
    body.append(f"<p class=muted>Settings: lr {fit.get('lr')}, seed {fit.get('seed')}.</p>")
    return _page(title, body)


def _env_label(env: dict) -> str:
    changes = ",".join(f"{k}={v:g}" for k, v in (env.get("changes") or {}).items())
    return f"{env['id']}[{changes}]" if changes else env["id"]


def build_control_study_report(study: dict, films: dict[str, dict]) -> str:
    """A control study's report from its record (``tasks.control.study``) and ``films``."""
    title = f"headstart control study: {study['source']} -> {study['env']}"
    verdict = study["verdict"]
    tone = "good" if verdict.startswith("Transfer pays") else "tie"
    tone = "bad" if study["negative_transfer"] else tone
    body = [
        f"<p class=muted>Transfer strategies ran {study['steps']} env steps each, scratch "
        f"{study['scratch_steps']}; seeds {', '.join(map(str, study['seeds']))}; every run "
        f"evaluated on the same held-out episodes; {study['seconds']:.0f} s.</p>",
        f"<p class='verdict {tone}'>{_e(verdict)}</p>",
        *([f"<p class='verdict bad'>{_e(study['warning'])}</p>"] if study.get("warning") else []),
        "<h2>Return against env steps (mean over seeds)</h2>",
    ]
    curves = {r["strategy"]: r["curve"] for r in study["strategies"]}
    curves["scratch"] = study["scratch_curve"]
    body.append(f"<figure>{control_curves_svg(curves, study['zero_shot'])}</figure>")
    rows = []
    for r in study["strategies"]:
        reach = r["steps_to_scratch_final"]
        needs = r["scratch_steps_to_match"]
        rows.append(
            [
                _e(r["strategy"]),
                f"{r['final_return']:.1f}",
                f"{r['scratch_at_same_steps']:.1f}",
                f"{r['versus_scratch']:+.1f} (+-{r['margin']:.1f})",
                "-" if reach is None else f"{reach} ({r['steps_ratio']:.2f})",
                f"> {study['scratch_steps']}" if needs is None else str(needs),
                "yes" if r["beats_zero_shot"] else "no",
                "<b>yes</b>" if r["negative_transfer"] else "no",
            ]
        )
    body.append(
        _table(
            rows,
            [
                "strategy",
                f"return at {study['steps']}",
                "scratch at the same steps",
                "difference (noise)",
                "steps to scratch's final (share)",
                "steps scratch needs to match",
                "beats zero-shot",
                "negative transfer",
            ],
        )
    )
    jump = study.get("jumpstart") or {}
    body.append(
        f"<p class=muted>Jumpstart (the source as it is against an untrained policy on the "
        f"same episodes): {jump.get('value', 0):+.1f} (noise +-{jump.get('margin', 0):.1f}). "
        f"The source as it is: {study['zero_shot']:.1f}; scratch's final "
        f"return ({study['scratch_steps']} steps): {study['scratch_final']:.1f}.</p>"
    )
    body.extend(f"<p>{_e(r['line'])}.</p>" for r in study["strategies"])
    if films:
        body.append("<h2>In the target environment</h2>")
        body.extend(film_html(t, f) for t, f in films.items())
    return _page(title, body)
