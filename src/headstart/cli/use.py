"""``evaluate``, ``predict``, ``export``, ``serve``: use a trained run."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("headstart")


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on labeled data")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument(
        "data",
        help="labeled data: image class folders or CSV; text table; "
        "annotated boxes (COCO/VOC/YOLO) for a detector",
    )
    p.add_argument("--fix-boxes", choices=["error", "clip", "drop"], default="error")
    p.add_argument(
        "--tta",
        choices=["none", "flip", "flip+crops"],
        default="none",
        help="test-time augmentation (image models): average "
        "the probabilities over views of each image: flip (the evaluation crop and "
        "its mirror image) | flip+crops (also its four corner crops); each view "
        "costs one more pass",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("predict", help="predict classes for images or texts, streamed to a CSV")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders (searched recursively), or a "
        "CSV with a path column; text: table files (the run's text column) or texts "
        "in quotes",
    )
    p.add_argument("--out", default=None, help="write predictions to this CSV (default: stdout)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: run RUN/export/model.onnx with ONNX Runtime",
    )
    p.add_argument(
        "--tta",
        choices=["none", "flip", "flip+crops"],
        default="none",
        help="test-time augmentation (image models): average "
        "the probabilities over views of each image: flip (the evaluation crop and "
        "its mirror image) | flip+crops (also its four corner crops); each view "
        "costs one more pass",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="detect: the lowest score of a box written (default: the run's, the score "
        "of the best F1 on its validation images; 0.5 for a run without one)",
    )
    p.add_argument(
        "--explain",
        default=None,
        metavar="DIR",
        help="image models: also write a Grad-CAM heat map of each input's predicted "
        "class into DIR (the evaluation crop beside the map over it; DIR/index.csv "
        "lists them)",
    )
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("export", help="export a run to ONNX or TorchScript, checked for parity")
    p.add_argument("run", help="run directory written by `headstart fit`")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument(
        "--out",
        default=None,
        help="model file (default: RUN/export/model.onnx or model.torchscript.pt)",
    )
    p.add_argument(
        "--check",
        default=None,
        help="real items for the parity check (image "
        "folder/CSV, text table; default: the run's training data)",
    )
    p.add_argument("--n-check", type=int, default=32, help="items the parity check predicts")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed output difference (probabilities; a control policy's actions)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("serve", help="serve runs over HTTP: API, OpenAPI docs and a web page")
    p.add_argument(
        "runs",
        nargs="+",
        help="run directories, or NAME=RUN to name them; the first is the default model",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    p.add_argument("--max-upload-mb", type=float, default=10.0)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--max-batch", type=int, default=32, help="items per model call")
    p.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests"
    )
    p.add_argument("--preload", action="store_true", help="load every model at start")
    p.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer <key>' on every route but /health, "
        "the page and the docs; the key is FILE's first line (default: the "
        "HEADSTART_API_KEY environment variable, if set; else no key)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN (e.g. https://app.example.com) call the API "
        "from a browser; repeat for more (default: CORS off)",
    )
    p.set_defaults(handler=cmd_serve)


def cmd_evaluate(args) -> int:
    from ..tasks import load_estimator
    from ..tasks.base import tta_views

    est = load_estimator(args.run)
    tta_views(est, args.tta)  # a clear error where the model has no test-time views
    serving = est.serving_class()
    m = serving.evaluate(est, args.data, tta=args.tta, fix=args.fix_boxes)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    for line in serving.evaluation_lines(est, m):
        print(line)
    semi = (getattr(est, "metrics_", None) or {}).get("semi")
    if semi:  # how the run was trained, from its config.json
        print(f"  trained with an unlabelled pool: {semi['line']}")
    return 0


def cmd_predict(args) -> int:
    from ..tasks import run_task

    line = (
        run_task(args.run)
        .serving_class()
        .predict_to_csv(
            args.run,
            args.inputs,
            args.out,
            engine=args.engine,
            tta=args.tta,
            batch_size=args.batch_size,
            min_score=args.min_score,
            progress=not args.quiet,
        )
    )
    if args.out:
        print(line, file=sys.stderr)
    if args.explain:
        serving = run_task(args.run).serving_class()
        print(serving.explain(args.run, args.inputs, args.explain), file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..export import export_model

    result = export_model(
        args.run,
        args.format,
        out=args.out,
        check=args.check,
        n_check=args.n_check,
        tolerance=args.tolerance,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"exported {result.path} ({result.format}, {result.size_bytes / 1e6:.1f} MB) in "
        f"{result.seconds:.1f}s\nparity: max |output difference| "
        f"{result.max_abs_diff:.2e} (limit {result.tolerance:g}) on {result.checked_items} "
        f"items of {result.checked_on}, batch sizes {result.batch_sizes}\n"
        f"inputs, classes and preprocessing: {result.sidecar}"
    )
    return 0


def cmd_serve(args) -> int:
    from ..serve import ServeSettings, serve

    runs: dict[str, str] = {}
    for entry in args.runs:
        name, sep, run = entry.partition("=")
        if not sep:
            name, run = Path(entry).resolve().name, entry
        if name in runs:
            raise ValueError(f"two models are named {name!r}; name them: NAME=RUN")
        runs[name] = run
    settings = ServeSettings(
        engine=args.engine,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        api_key=read_api_key(args),
        cors_origins=tuple(args.cors_origin),
    )
    print(
        f"serving {', '.join(runs)} on http://{args.host}:{args.port}/ (API docs: /docs"
        f"{'; API key required' if settings.api_key else ''})",
        file=sys.stderr,
    )
    serve(runs, host=args.host, port=args.port, settings=settings, preload=args.preload)
    return 0


def read_api_key(args) -> str | None:
    """The key of ``--api-key-file`` (its first line), else ``HEADSTART_API_KEY``."""
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the API key file ({exc.strerror})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"{path}: the API key file is empty; write the key on its first line")
        return key
    return os.environ.get("HEADSTART_API_KEY", "").strip() or None
