"""CPU inference time per image of a detection run, against the raw torchvision call.

For each held-out tree-crown image (1249x1035 and 400x400 px):

* raw: the run's torchvision model called once on the whole image as a tensor already in
  memory (``model([x])``, eval, inference_mode): no decoding, no tiling, no merging;
* headstart: ``ObjectDetector.predict([path])``: decode the file, cut overlapping tiles of
  the run's tile size, one batched model call, merge the tiles' boxes;
* headstart, overlap 0: the same with non-overlapping tiles (fewer pixels to process).

Medians of ``--repeats`` timings after a warm-up, and the ratio headstart / raw measured in
the same process. The ratio is the price of tiling (overlap re-processes pixels) plus
decoding; it buys boxes on images of any size at the scale the model was trained on.

    python benchmarks/detect_speed.py RUN [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_time  # noqa: E402


def main() -> None:
    from headstart.datasets import tree_crowns
    from headstart.tasks.detect import ObjectDetector, load_rgb

    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    det = ObjectDetector.load(args.run)
    model = det.model_.eval()
    print(
        f"run {args.run}: {det.config_.detector} on {det.config_.backbone}, tiles "
        f"{det.tile_size}px overlap {det.config_.tile_overlap}; torch threads "
        f"{torch.get_num_threads()}"
    )
    for s in tree_crowns("test").samples:
        x = torch.from_numpy(np.array(load_rgb(s.path))).permute(2, 0, 1).float() / 255

        def raw(x=x):
            with torch.inference_mode():
                model([x])

        overlap = det.config_.tile_overlap
        t_raw = median_time(raw, args.repeats)
        t_hs = median_time(lambda s=s: det.predict([s.path]), args.repeats)
        det.config_.tile_overlap = 0.0
        t_hs0 = median_time(lambda s=s: det.predict([s.path]), args.repeats)
        det.config_.tile_overlap = overlap
        print(
            f"{s.width}x{s.height} {s.path.split('/')[-1]}: raw call {t_raw * 1000:.0f} ms, "
            f"headstart predict {t_hs * 1000:.0f} ms (ratio {t_hs / t_raw:.2f}x), "
            f"overlap 0: {t_hs0 * 1000:.0f} ms ({t_hs0 / t_raw:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
