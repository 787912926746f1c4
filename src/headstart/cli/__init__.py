"""``headstart`` command line: one module per command family (training, evidence, labels,
use, catalog), the flags they share in :mod:`.flags`.

``fit`` flags are generated from :class:`headstart.config.FitConfig` (``--head-lr`` sets
``head_lr``); a YAML file given with ``--config`` uses the same names, and flags given on
the command line override it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import catalog, evidence, labels, training, use
from .flags import LIBRARY_LOGS, fit_config_from_args

__all__ = ["build_parser", "fit_config_from_args", "main"]


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headstart",
        description="Transfer learning: pre-trained model in, measured fine-tuned model out.",
    )
    parser.add_argument("--version", action="version", version=f"headstart {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in (training, evidence, labels, use, catalog):
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "filelock", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:  # the app, not the library, quiets transformers' loading bars
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from ..data.images import DataError
    from ..zoo.base import ZooError

    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGS}
    try:
        return args.handler(args) or 0
    except (DataError, ZooError, ValueError, FileNotFoundError) as exc:
        print(f"headstart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from ..export import ExportError

        if not isinstance(exc, ExportError):
            raise
        print(f"headstart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:  # a command's quieting ends with it (main() may run again in one process)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
