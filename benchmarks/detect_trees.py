"""Transfer against scratch for object detection, on the DeepForest tree crowns.

Data (real, offline; see ``headstart.datasets.TREE_CROWNS``): training tiles (400 px,
overlap 0.25) of one large Yellowstone scene (2299x2472 px, 574 crowns), its bottom 20%
band held out for validation (no pixel in both); test = two held-out images: another
Yellowstone scene (279 crowns) and a Florida (OSBS) plot of another forest type (61).

Each detector architecture is trained twice with the same budget (epochs, tiles, batch,
augmentation, seed, early stopping on the validation band):

* transfer: ``packaged:efficientnet_lite0`` (ImageNet weights), default detect strategy
  (the last 5 of 8 backbone groups train, BatchNorm frozen);
* scratch:  ``scratch:packaged:efficientnet_lite0`` (same network, random init), every
  layer trains, BatchNorm trains.

Printed: test mAP@0.5 / mAP@0.5:0.95 / precision / recall for each, the ratio transfer /
scratch (same process, same machine), and the fit time.

``--backbones`` picks other sources: ``packaged:nanodet-coco`` is a whole COCO detector
(NanoDet-g: its neck and head are fine-tuned, ``--detectors`` does not apply to it);
``--reference MAP50 SECONDS`` prints ratios against a run recorded elsewhere (another day,
maybe another load: the ratio of times is then only indicative; ``uptime`` is printed).

    python benchmarks/detect_trees.py [--detectors fasterrcnn retinanet] [--epochs 20]
    python benchmarks/detect_trees.py --backbones packaged:nanodet-coco --image-size 416 \
        --epochs 10 --reference 0.324 487
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run(
    detector: str, backbone: str, epochs: int, out: Path | None, seed: int, image_size: int = 400
) -> dict:
    from headstart.datasets import tree_crowns
    from headstart.tasks.detect import ObjectDetector

    scratch = backbone.startswith("scratch:")
    det = ObjectDetector(
        backbone,
        detector=detector,
        epochs=epochs,
        image_size=image_size,
        augment="strong",
        seed=seed,
        **({"strategy": "finetune"} if scratch else {}),
        run_dir=out,
    )
    t0 = time.perf_counter()
    det.fit(tree_crowns("train"))
    fit_s = time.perf_counter() - t0
    test = tree_crowns("test")
    m = det.evaluate(test)
    per_image = {}
    for s in test.samples:
        from headstart.data.boxes import BoxSource

        one = det.evaluate(BoxSource([s], test.classes, s.path))
        per_image[Path(s.path).stem] = round(one["map_50"], 4)
    if out is not None:
        det.metrics_["test"] = m
        det.save(out)
        det.write_report(out, test)
    return {
        "detector": det.run_config()["detector"]["arch"],
        "backbone": backbone,
        "strategy": det.config_.strategy,
        "epochs_run": len(det.history_),
        "best": det.best_,
        "fit_seconds": round(fit_s, 1),
        "val_map_50": round(det.metrics_["validation"]["map_50"], 4),
        "test_map_50": round(m["map_50"], 4),
        "test_map": round(m["map"], 4),
        "precision": round(m["precision"], 4),
        "recall": round(m["recall"], 4),
        "test_map_50_per_image": per_image,
    }


def main() -> None:
    import logging
    import os

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+", default=["fasterrcnn"])
    ap.add_argument(
        "--backbones",
        nargs="+",
        default=["packaged:efficientnet_lite0", "scratch:packaged:efficientnet_lite0"],
        help="sources to fine-tune with the same budget; ratios are against the first",
    )
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=400, help="the training tile side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--reference",
        nargs=2,
        type=float,
        metavar=("MAP50", "SECONDS"),
        help="test mAP@0.5 and fit seconds of a reference run recorded elsewhere",
    )
    ap.add_argument("--out", default=None, help="keep the runs (and their reports) here")
    args = ap.parse_args()
    print("load before:", os.getloadavg(), flush=True)
    for detector in args.detectors:
        rows = []
        for backbone in args.backbones:
            name = backbone.replace(":", "-")
            out = Path(args.out) / f"{detector}-{name}" if args.out else None
            r = run(detector, backbone, args.epochs, out, args.seed, args.image_size)
            r["load_after"] = [round(v, 2) for v in os.getloadavg()]
            print("RESULT", json.dumps(r), flush=True)
            rows.append(r)
        first = rows[0]
        for r in rows[1:]:
            ratio = first["test_map_50"] / r["test_map_50"] if r["test_map_50"] else float("inf")
            print(
                f"{detector}: test mAP@0.5 {first['backbone']} {first['test_map_50']:.3f} vs "
                f"{r['backbone']} {r['test_map_50']:.3f} (ratio {ratio:.2f}x); mAP@0.5:0.95 "
                f"{first['test_map']:.3f} vs {r['test_map']:.3f}; fit "
                f"{first['fit_seconds']:.0f}s vs {r['fit_seconds']:.0f}s",
                flush=True,
            )
        if args.reference:
            ref_map, ref_s = args.reference
            for r in rows:
                print(
                    f"{r['backbone']} vs the reference: test mAP@0.5 {r['test_map_50']:.3f} vs "
                    f"{ref_map:.3f} ({r['test_map_50'] / ref_map:.2f}x), fit "
                    f"{r['fit_seconds']:.0f}s vs {ref_s:.0f}s ({r['fit_seconds'] / ref_s:.2f}x)",
                    flush=True,
                )
        if any(r["backbone"] == "packaged:nanodet-coco" for r in rows):
            break  # a detector source ignores --detectors: one round is enough


if __name__ == "__main__":
    main()
