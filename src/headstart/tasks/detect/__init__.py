"""Object detection on any image backbone of the zoo: torchvision's Faster R-CNN (FPN),
RetinaNet and FCOS on the backbone's multi-scale feature maps, or a COCO-pretrained
torchvision detector by name (``torchvision:fasterrcnn_resnet50_fpn_v2``, online only).

Images larger than the tile size are cut into overlapping tiles for training and inference
(see :mod:`headstart.data.boxes`); detections of the tiles are merged back per image.

* :mod:`.network` - the detectors, the view of them the shared loop trains, tiled inference;
* :mod:`.data` - training tiles (augmented), validation images, decoding;
* :mod:`.metrics` - COCO mAP, per-class AP, precision / recall;
* :mod:`.trainer` - the shared loop with the detection loss and evaluation;
* :mod:`.estimator` - :class:`ObjectDetector`.

>>> det = ObjectDetector("packaged:efficientnet_lite0", detector="fasterrcnn", image_size=400)
>>> det.fit("trees/train")                  # COCO .json, VOC .xml folder, or YOLO folder
>>> det.evaluate("trees/test")["map_50"]
>>> det.predict(["a.png"])[0]["boxes"]
"""

from ...metrics import format_detection_metrics
from ...strategies import DETECT_STRATEGIES
from ...zoo.torchvision_detect import TORCHVISION_DETECTORS, build_torchvision_detector
from .data import TileDataset, load_rgb
from .estimator import DEFAULT_TILE, ObjectDetector
from .metrics import detection_metrics
from .network import MAX_DETECTIONS, PyramidBackbone, build_zoo_detector, fit_anchor_sizes
from .trainer import DetectionTrainer

__all__ = [
    "DEFAULT_TILE",
    "DETECT_STRATEGIES",
    "MAX_DETECTIONS",
    "TORCHVISION_DETECTORS",
    "DetectionTrainer",
    "ObjectDetector",
    "PyramidBackbone",
    "TileDataset",
    "build_torchvision_detector",
    "build_zoo_detector",
    "detection_metrics",
    "fit_anchor_sizes",
    "format_detection_metrics",
    "load_rgb",
]
