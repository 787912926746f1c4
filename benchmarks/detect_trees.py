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

    python benchmarks/detect_trees.py [--detectors fasterrcnn retinanet] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def run(detector: str, backbone: str, epochs: int, out: Path | None, seed: int) -> dict:
    from headstart.datasets import tree_crowns
    from headstart.tasks.detect import ObjectDetector

    scratch = backbone.startswith("scratch:")
    det = ObjectDetector(
        backbone,
        detector=detector,
        epochs=epochs,
        image_size=400,
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
        "detector": detector,
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

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", nargs="+", default=["fasterrcnn"])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the runs (and their reports) here")
    args = ap.parse_args()
    rows = []
    for detector in args.detectors:
        pair = {}
        for backbone in ("packaged:efficientnet_lite0", "scratch:packaged:efficientnet_lite0"):
            out = Path(args.out) / f"{detector}-{backbone.split(':')[0]}" if args.out else None
            r = run(detector, backbone, args.epochs, out, args.seed)
            print("RESULT", json.dumps(r), flush=True)
            pair[backbone.split(":")[0]] = r
            rows.append(r)
        t, s = pair["packaged"], pair["scratch"]
        ratio = t["test_map_50"] / s["test_map_50"] if s["test_map_50"] else float("inf")
        print(
            f"{detector}: test mAP@0.5 transfer {t['test_map_50']:.3f} vs scratch "
            f"{s['test_map_50']:.3f} (ratio {ratio:.2f}x); mAP@0.5:0.95 {t['test_map']:.3f} "
            f"vs {s['test_map']:.3f}; fit {t['fit_seconds']:.0f}s vs {s['fit_seconds']:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
