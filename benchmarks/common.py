"""Shared helpers of the benchmarks: timing medians and the real data they use."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` items (from ``--set``) as a dict; values are parsed as JSON where they
    are JSON (``4``, ``0.5``, ``true``), else kept as strings (``head_tail``)."""
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def read_rows(*paths) -> list[dict]:
    """The rows of JSON-lines result files, in order; blank and ``#`` comment lines are
    skipped, a file not there yet has none."""
    return [
        json.loads(line)
        for p in paths
        if Path(p).is_file()
        for line in Path(p).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def append_row(path, row: dict) -> None:
    """Print ``row`` and append it to the JSON-lines file ``path`` (a rerun skips it)."""
    print(json.dumps(row), flush=True)
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fashion_mnist_pngs(n: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    """``n`` Fashion-MNIST test images (balanced) written as PNGs in a class-folder tree."""
    from headstart.datasets import export_image_folder, fashion_mnist, per_class_subset

    x, y, classes = fashion_mnist("test")
    idx = per_class_subset(y, n // len(classes), seed)
    out = Path(tempfile.mkdtemp(prefix="headstart-bench-"))
    export_image_folder(x[idx], y[idx], classes, out)
    return out, idx


def report(name: str, figures: dict, ratio_name: str, ratio: float, goal: str) -> None:
    print(f"== {name}")
    for k, v in figures.items():
        print(f"  {k}: {v}")
    print(f"  {ratio_name}: {ratio:.3f}  (goal {goal})")


def accent_corpus(out: Path, source: str, target: str, task: str = "commands") -> Path:
    """``out/corpus-<source>-<target>``, built with espeak-ng unless it is already there;
    prints its splits."""
    import json

    from headstart.data.speech import build_accent_corpus

    corpus = Path(out) / f"corpus-{source}-{target}"
    if not (corpus / "corpus.json").is_file():
        t0 = time.perf_counter()
        build_accent_corpus(corpus, source=source, target=target, task=task)
        print(f"corpus built in {time.perf_counter() - t0:.0f}s: {corpus}")
    print(json.dumps(json.loads((corpus / "corpus.json").read_text())["splits"]))
    return corpus
