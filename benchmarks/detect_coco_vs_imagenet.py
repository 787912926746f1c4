"""The COCO detector against the ImageNet-backbone detector on the tree crowns, in one process
(same machine, same load): Faster R-CNN on EfficientNet-Lite0 (ImageNet; 20 epochs, 400 px
tiles: the recorded reference's settings) and NanoDet-g (COCO; 8 epochs, 416 px tiles), each
fine-tuned with its default strategy and scored on the two held-out test images.

    PYTHONPATH=src python benchmarks/detect_coco_vs_imagenet.py
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from detect_trees import run  # noqa: E402

RUNS = (
    ("fasterrcnn", "packaged:efficientnet_lite0", 20, 400),
    ("fasterrcnn", "packaged:nanodet-coco", 8, 416),  # the detector arg does not apply to it
)

rows = []
for detector, backbone, epochs, size in RUNS:
    load0 = os.getloadavg()[0]
    r = run(detector, backbone, epochs, None, 0, image_size=size)
    r["load_start"], r["load_end"] = round(load0, 2), round(os.getloadavg()[0], 2)
    rows.append(r)
    print(json.dumps(r), flush=True)
ref, coco = rows
print(
    f"COCO NanoDet / ImageNet Faster R-CNN: test mAP@0.5 {coco['test_map_50']:.3f} / "
    f"{ref['test_map_50']:.3f}, mAP@0.5:0.95 {coco['test_map']:.3f} / {ref['test_map']:.3f}, "
    f"fit time {coco['fit_seconds'] / ref['fit_seconds']:.2f}x"
)
