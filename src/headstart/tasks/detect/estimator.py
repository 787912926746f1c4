"""``ObjectDetector``: object detection on any image backbone of the zoo, scikit-learn
style, trained by the shared loop (:class:`~.trainer.DetectionTrainer`).

It is a :class:`~headstart.tasks.base.TransferEstimator`: the same ``__init__`` (arguments
stored, nothing else), ``get_params`` / ``set_params`` (``sklearn.base.clone`` works), the
same settings, run directory, checkpoints (``checkpoints/``), resume, data-parallel fits
(torchrun / accelerate launch) and stage log of trainable / total parameters. It replaces
the classification entry points (``fit``, ``predict``, ``evaluate``, ``run_config``,
``save``, ``load``): the classification-only steps of the base class (the feature cache,
temperature calibration, the classic baseline, test-time views) are reached only from
those, so a detector never runs them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...artifacts import (
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    state_dict_tensors,
)
from ...config import TASK_DEFAULTS, FitConfig
from ...data.boxes import BoxSource, read_boxes, spatial_split, tile_source
from ...data.images import DataError
from ...strategies import DETECT_STRATEGIES, build_detection_strategy
from ...zoo import create_backbone, rebuild_backbone, source_task
from ...zoo.base import PreprocessConfig, ZooError
from ...zoo.local import RUN_CONFIG, RUN_WEIGHTS, read_run_config
from ..base import FORMAT_VERSION, TransferEstimator, fit_fingerprint, refuse_pool, tta_views
from ..serving import DetectionServing
from .data import ImageSet, TileDataset, collate, list_images, load_rgb
from .metrics import best_f1_threshold, detection_metrics
from .nanodet import SourceDetector
from .network import (
    DetectionModel,
    body_groups,
    build_zoo_detector,
    detect_region,
    fit_anchor_sizes,
    no_resize_transform,
    pyramid_maps,
)
from .trainer import DetectionTrainer

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
# zero-shot: an image up to this side is one window, resized whole to the source's input
ZERO_SHOT_TILE = 4096


class ObjectDetector(TransferEstimator):
    """Fine-tune a detector on a pre-trained backbone for new object classes.

    Takes the :class:`~headstart.config.FitConfig` settings (``backbone``, ``strategy``,
    ``detector``, ``image_size`` = the tile side, ``epochs``, ``lr``, ``head_lr``, ...).
    Strategies (:func:`~headstart.strategies.build_detection_strategy`):
    ``feature_extract`` (backbone frozen; the pyramid and heads train), ``partial`` (the
    last ``partial_groups`` backbone groups train too), ``finetune`` (everything),
    ``lp_ft`` (``head_epochs`` epochs with the backbone frozen, then ``epochs`` of
    everything). BatchNorm is frozen by default on pre-trained weights (detection batches
    are small) and trains on a from-scratch backbone.

    >>> det = ObjectDetector("packaged:efficientnet_lite0", detector="fasterrcnn",
    ...                      image_size=400)
    >>> det.fit("trees/train")            # COCO .json, VOC .xml folder, or YOLO folder
    >>> det.evaluate("trees/test")["map_50"]
    >>> det.predict(["a.png"])[0]["boxes"]
    """

    task = "detect"
    modality = "image"
    defaults = TASK_DEFAULTS["detect"]  # over FitConfig's
    model_: Any  # a torchvision detector (untyped), not a TransferModel
    serving_class = DetectionServing

    # ------------------------------------------------------------ settings
    def resolved_config(self) -> FitConfig:
        cfg = super().resolved_config()
        if cfg.strategy not in DETECT_STRATEGIES:
            raise ValueError(
                f"strategy={cfg.strategy!r} is not available for detection; "
                f"choose one of {', '.join(DETECT_STRATEGIES)}"
            )
        return cfg

    def _check_augment(self, cfg: FitConfig) -> None:
        if cfg.augment not in ("none", "light", "strong") or cfg.mix != "none" or cfg.contrastive:
            raise ValueError(
                f"augment={cfg.augment}, mix={cfg.mix}, contrastive="
                f"{cfg.contrastive:g}: detection augments by flips (and colour "
                "jitter with strong): augment none | light | strong, mix none, "
                "contrastive 0"
            )
        if cfg.monitor != "auto":
            raise ValueError(
                f"monitor={cfg.monitor}: a detector keeps the epoch with the best "
                "validation mAP@0.5; leave monitor auto"
            )
        if cfg.parallel == "fsdp":
            raise ValueError("parallel fsdp is not supported for detection; use ddp")

    @property
    def tile_size(self) -> int:
        return int(self.config_.image_size or DEFAULT_TILE)

    @property
    def stage_summaries_(self) -> list[dict]:
        """The stages' log (:attr:`stages_`), under the name the detector had before."""
        return self.stages_

    def _bn_mode(self, cfg: FitConfig) -> str:
        return build_detection_strategy(cfg.replace(strategy="finetune")).stages[0].bn

    # ------------------------------------------------------------ model
    def _build(
        self, cfg: FitConfig, classes: list[str], pretrained: bool, run_dir: Path | None = None
    ) -> torch.nn.Module:
        """The torchvision detector (its weights: pretrained, or to be loaded from
        ``run_dir``); sets the backbone's architecture, metadata and input statistics."""
        if cfg.backbone.startswith("torchvision:"):
            from ...zoo.torchvision_detect import TORCHVISION_META, build_torchvision_detector

            self.backbone_arch_ = {"id": cfg.backbone}
            self.backbone_meta_ = {"id": cfg.backbone, **TORCHVISION_META}
            model: Any = build_torchvision_detector(
                cfg.backbone.removeprefix("torchvision:"), len(classes), pretrained
            )
            self.mean_std_ = (list(model.transform.image_mean), list(model.transform.image_std))
            model.transform = no_resize_transform(*self.mean_std_)
            return model
        if run_dir is not None:
            body = rebuild_backbone(self.backbone_arch_, run_dir)
        else:
            body = create_backbone(cfg.backbone, pretrained=pretrained, cut=cfg.cut)
            self.backbone_arch_ = body.architecture()
            self.backbone_meta_ = body.meta.to_dict()
        if body.meta.modality != "image" or not isinstance(body.preprocess, PreprocessConfig):
            raise ZooError(
                f"{cfg.backbone}: a {body.meta.modality} model cannot carry an "
                "image detector; use an image backbone (packaged:efficientnet_lite0)"
            )
        self.mean_std_ = (list(body.preprocess.mean), list(body.preprocess.std))
        if body.detection_head() is not None:  # a detector source: its neck and head kept
            return SourceDetector(body, classes, list(body.meta.notes["classes"]), *self.mean_std_)
        return build_zoo_detector(
            cfg.detector, body, len(classes), cfg.fpn_channels, self.anchor_sizes_
        )

    @classmethod
    def pretrained(cls, backbone: str = "packaged:nanodet-coco", device: str = "cpu"):
        """A detector source as it is (zero-shot): its own classes (COCO's 80), each image
        resized whole to the source's input; ``predict`` / ``evaluate`` with no fit."""
        body = create_backbone(backbone)
        if body.detection_head() is None or not isinstance(body.preprocess, PreprocessConfig):
            raise ZooError(
                f"{backbone}: not a detector; zero-shot detection needs a detector source "
                "(packaged:nanodet-coco)"
            )
        classes = list(body.meta.notes["classes"])
        est = cls(backbone=backbone, image_size=ZERO_SHOT_TILE, nms_iou=0.6)
        est.config_, est.classes_ = est.resolved_config(), classes
        est.backbone_arch_, est.backbone_meta_ = body.architecture(), body.meta.to_dict()
        est.mean_std_ = (list(body.preprocess.mean), list(body.preprocess.std))
        side = body.preprocess.input_size
        model = SourceDetector(body, classes, classes, *est.mean_std_, detections=100, resize=side)
        est.model_ = model.to(device).eval()
        est.metrics_, est.history_, est.stages_, est.best_ = {}, [], [], None
        return est

    # ------------------------------------------------------------ fit
    def fit(
        self,
        X,
        y=None,
        *,
        validation=None,
        resume: bool = False,
        callbacks=(),
        unlabeled=None,
        sample_weight=None,
        fix: str = "error",
    ):
        """Fit on annotated images (COCO JSON / VOC folder / YOLO folder / BoxSource).
        Without ``validation``, ``val_fraction`` is held out spatially (see
        :func:`~headstart.data.boxes.spatial_split`): no pixel is in both.

        ``callbacks``: functions called with each epoch's row; an exception they raise
        ends the fit (its last checkpoint stays: ``resume=True`` continues it)."""
        refuse_pool(self.task, unlabeled, sample_weight)
        cfg = self.resolved_config()
        self._check_augment(cfg)
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        source = read_boxes(X, fix=fix)
        val_src: BoxSource | None
        if validation is not None:
            train_src = source
            val_src = read_boxes(validation, classes=source.classes, fix=fix)
        else:
            train_src, val_src = spatial_split(source, cfg.val_fraction, cfg.seed)
        self.config_, self.classes_ = cfg, list(source.classes)
        self.anchor_sizes_ = fit_anchor_sizes(
            np.concatenate([s.boxes for s in train_src.samples]), pyramid_maps(cfg.detector)
        )
        detector = self._build(
            cfg, self.classes_, pretrained=not cfg.backbone.startswith("scratch:")
        )
        self.model_ = detector
        self.data_origin_ = str(source.origin)
        tiles = tile_source(train_src, self.tile_size, cfg.tile_overlap)
        if tiles.num_boxes == 0:
            raise DataError(f"{source.origin}: no box is left in the training tiles")
        strategy = build_detection_strategy(cfg)
        log.info(
            "%s %s on %s: %d training tiles of %d px (%d boxes), validation %s; classes %s\n%s",
            ""
            if cfg.backbone.startswith("torchvision:") or isinstance(detector, SourceDetector)
            else cfg.detector,
            cfg.backbone,
            source.origin,
            len(tiles),
            self.tile_size,
            tiles.num_boxes,
            f"{val_src.num_boxes} boxes" if val_src else "none",
            self.classes_,
            strategy.describe(cached=False),
        )
        run_dir = Path(self.run_dir) if self.run_dir else None
        self.fingerprint_ = fit_fingerprint(cfg, train_src, val_src)
        if resume and self._load_finished(run_dir, strategy, cfg):
            self.best_ = self.metrics_.get("best")
            self.stages_ = _with_epochs(self.stages_, strategy)
            return self
        trainer = DetectionTrainer(
            DetectionModel(detector),
            body_groups(detector),
            strategy,
            cfg.replace(monitor="loss"),  # val_loss = 1 - mAP@0.5 (see DetectionTrainer)
            train_set=TileDataset(tiles, self.classes_, cfg.augment, cfg.seed),
            val_set=ImageSet(val_src) if val_src is not None and len(val_src) else None,
            features=None,
            run_dir=run_dir,
            fingerprint=self.fingerprint_,
            collate_fn=collate,
            callbacks=callbacks,
        )
        trainer.classes = self.classes_
        trainer.tile_size, trainer.tile_overlap = self.tile_size, cfg.tile_overlap
        trainer.nms_iou = cfg.nms_iou
        state = trainer.run(resume=resume)
        detector.eval()
        self.strategy_ = strategy
        self.history_ = state.history
        self.stages_ = _with_epochs(state.stage_summaries, strategy)
        self.best_ = _best_epoch(state.history, state.kept)
        self.selection_ = state.selection
        self.fit_seconds_ = time.perf_counter() - t0
        self.metrics_ = {
            "fit_seconds": self.fit_seconds_,
            "best": self.best_,
            "selection": state.selection,
            "train_tiles": len(tiles),
            "train_boxes": tiles.num_boxes,
            "tile_size": self.tile_size,
        }
        self.score_threshold_ = 0.5  # without validation: the usual default
        if val_src is not None and len(val_src):
            preds = self.predict(val_src, score_threshold=0.0)
            self.score_threshold_ = best_f1_threshold(preds, val_src.samples, self.classes_)
            self.metrics_["validation"] = detection_metrics(
                preds, val_src.samples, self.classes_, self.score_threshold_
            )
        self.is_main_process_ = trainer.accelerator.is_main_process
        if run_dir is not None and self.is_main_process_:  # one writer in a parallel run
            self.save(run_dir)
        return self

    # ------------------------------------------------------------ inference
    def predict(
        self, X, score_threshold: float = 0.05, batch_size: int | None = None
    ) -> list[dict]:
        """Per image: ``{"path", "region", "boxes" [N,4] xyxy pixels, "scores", "labels"}``,
        best first; ``X``: image files, folders, or an annotated source (its images)."""
        self._check_fitted()
        bs = batch_size or self.config_.eval_batch_size
        items: list[tuple[str, tuple[int, int, int, int] | None]]
        if isinstance(X, BoxSource):
            items = [(s.path, s.region()) for s in X.samples]
        else:
            items = [(p, None) for p in list_images(X)]
        out = []
        for path, region in items:
            image = load_rgb(path)
            region = region or (0, 0, image.shape[1], image.shape[0])
            det = detect_region(
                self.model_,
                image,
                region,
                self.tile_size,
                self.config_.tile_overlap,
                self.config_.nms_iou,
                bs,
            )
            keep = det["scores"] >= score_threshold
            out.append(
                {
                    "path": str(path),
                    "region": list(region),
                    "boxes": det["boxes"][keep].numpy(),
                    "scores": det["scores"][keep].numpy(),
                    "labels": [self.classes_[int(k) - 1] for k in det["labels"][keep]],
                }
            )
        return out

    def predict_proba(self, X, tta: str | None = None):
        raise TypeError("a detector gives boxes with scores: use predict()")

    def _evaluate_source(self, source: BoxSource) -> dict:
        preds = self.predict(source, score_threshold=0.0)
        cut = getattr(self, "score_threshold_", 0.5)
        return detection_metrics(preds, source.samples, self.classes_, cut)

    def evaluate(self, X, y=None, tta: str | None = None, fix: str = "error") -> dict:
        """mAP@0.5, mAP@0.5:0.95, per-class AP (at 0.5 and 0.5:0.95), precision/recall on
        annotated images (``X`` holds the boxes: ``y`` must be None; no test-time views)."""
        self._check_fitted()
        if y is not None:
            raise ValueError("detection reads its boxes from X (COCO / VOC / YOLO); pass y=None")
        tta_views(self, tta)  # a clear error: detectors have no test-time views
        source = read_boxes(X, classes=self.classes_, fix=fix)
        m = self._evaluate_source(source)
        m["data"] = str(source.origin)
        return m

    def score(self, X, y=None) -> float:
        return self.evaluate(X, y)["map_50"]

    # ------------------------------------------------------------ artifacts
    def run_config(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        self._check_fitted()
        versions = {}
        for pkg in (
            "headstart",
            "torch",
            "torchvision",
            "timm",
            "accelerate",
            "torchmetrics",
            "pycocotools",
        ):
            try:
                versions[pkg] = version(pkg)
            except PackageNotFoundError:
                pass
        cfg = self.config_
        strategy = getattr(self, "strategy_", None)
        return json.loads(
            json.dumps(
                {
                    "format": "headstart-run",
                    "format_version": FORMAT_VERSION,
                    "task": self.task,
                    "classes": self.classes_,
                    "detector": {
                        "arch": cfg.backbone
                        if cfg.backbone.startswith("torchvision:")
                        or isinstance(self.model_, SourceDetector)
                        else cfg.detector,
                        "fpn_channels": cfg.fpn_channels,
                        "tile_size": self.tile_size,
                        "tile_overlap": cfg.tile_overlap,
                        "anchor_sizes": getattr(self, "anchor_sizes_", None),
                        # the box score of the best validation F1: predict's default cut
                        "score_threshold": getattr(self, "score_threshold_", 0.5),
                        "mean": self.mean_std_[0],
                        "std": self.mean_std_[1],
                    },
                    "backbone": {
                        "id": cfg.backbone,
                        "architecture": self.backbone_arch_,
                        "meta": self.backbone_meta_,
                    },
                    "strategy": strategy.to_dict() if strategy is not None else None,
                    "stages": getattr(self, "stages_", []),
                    "history": getattr(self, "history_", []),
                    "metrics": getattr(self, "metrics_", {}),
                    "data": {"origin": getattr(self, "data_origin_", None)},
                    "fingerprint": getattr(self, "fingerprint_", None),
                    "fit_config": cfg.to_dict(),
                    "versions": versions,
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                default=_jsonable,
            )
        )

    def save(self, run_dir: str | Path) -> Path:
        """Weights (safetensors), history.csv, then config.json, each written atomically."""
        run_dir = Path(run_dir)
        atomic_save_tensors(
            run_dir / RUN_WEIGHTS, state_dict_tensors(self.model_), metadata={"format": "pt"}
        )
        history = getattr(self, "history_", [])
        if history:
            keys = list(dict.fromkeys(k for row in history for k in row))
            lines = [",".join(keys)] + [
                ",".join(str(row.get(k, "")) for k in keys) for row in history
            ]
            atomic_write_bytes(run_dir / "history.csv", ("\n".join(lines) + "\n").encode())
        atomic_write_json(run_dir / RUN_CONFIG, self.run_config())
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> ObjectDetector:
        from safetensors.torch import load_file

        if source_task(str(run_dir)) == cls.task:  # a detector source, used as it is
            return cls.pretrained(str(run_dir), device)
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        if config.get("task") != cls.task:
            raise ValueError(f"{run_dir}: a {config.get('task')!r} model, not a detector")
        cfg = FitConfig.from_dict(config["fit_config"])
        est = cls(config=cfg, run_dir=run_dir)
        est.config_, est.classes_ = cfg, list(config["classes"])
        est.backbone_arch_ = config["backbone"]["architecture"]
        est.backbone_meta_ = config["backbone"]["meta"]
        est.anchor_sizes_ = config["detector"].get("anchor_sizes")
        est.score_threshold_ = config["detector"].get("score_threshold", 0.5)
        model = est._build(cfg, est.classes_, pretrained=False, run_dir=run_dir)
        model.load_state_dict(load_file(str(run_dir / RUN_WEIGHTS)))
        est.model_ = model.to(device).eval()
        est.metrics_ = config.get("metrics", {})
        est.history_ = config.get("history", [])
        est.stages_ = config.get("stages", [])
        est.best_ = est.metrics_.get("best")
        est.fingerprint_ = config.get("fingerprint")
        est.data_origin_ = (config.get("data") or {}).get("origin")
        return est

    # ------------------------------------------------------------ pictures
    def render(self, X, score_threshold: float | None = None, max_side: int = 1400) -> list:
        """(title, PIL image) per image: predicted boxes (scoring at least ``score_threshold``,
        default the run's) in blue and, for an annotated source, the true boxes in red; images
        larger than ``max_side`` are scaled down."""
        from ...report.pictures import draw_boxes

        self._check_fitted()
        if score_threshold is None:
            score_threshold = getattr(self, "score_threshold_", 0.5)
        truths = X.samples if isinstance(X, BoxSource) else None
        out = []
        for k, p in enumerate(self.predict(X, score_threshold=score_threshold)):
            x0, y0, x1, y1 = p["region"]
            true = truths[k].boxes if truths is not None else None
            image = draw_boxes(
                load_rgb(p["path"])[y0:y1, x0:x1],
                p["boxes"],
                p["labels"],
                p["scores"],
                true,
                origin=(x0, y0),
                show_labels=len(self.classes_) > 1,
                max_side=max_side,
            )
            n_true = f", {len(true)} true" if true is not None else ""
            out.append((f"{Path(p['path']).name}: {len(p['boxes'])} predicted{n_true}", image))
        return out

    def draw(
        self, X, out_dir: str | Path, score_threshold: float | None = None, max_side: int = 1400
    ) -> list[Path]:
        """:meth:`render` as PNG files in ``out_dir``."""
        from ...report.pictures import encode

        out_dir = Path(out_dir)
        written = []
        for k, (title, image) in enumerate(self.render(X, score_threshold, max_side)):
            path = out_dir / f"{k:02d}_{Path(title.split(':')[0]).stem}.png"
            atomic_write_bytes(path, encode(image, "PNG"))
            written.append(path)
        return written

    def write_report(
        self, run_dir: str | Path, X=None, compare: dict | None = None, max_images: int = 4
    ) -> Path:
        """``run_dir/report.html``: one self-contained page (see
        :func:`headstart.report.build_detection_report`); ``X``: images to draw."""
        from ...report import build_detection_report
        from ...report.pictures import encode

        pictures = []
        if X is not None:
            if isinstance(X, BoxSource):
                X = X.subset(range(min(max_images, len(X))))
            else:
                X = list_images(X)[:max_images]
            pictures = [
                (title, encode(image, "JPEG")) for title, image in self.render(X, max_side=1000)
            ]
        path = Path(run_dir) / "report.html"
        atomic_write_bytes(
            path, build_detection_report(self.run_config(), pictures, compare).encode()
        )
        return path


def _with_epochs(summaries: list[dict], strategy) -> list[dict]:
    """The stage log with each stage's planned epochs (the report's table shows them)."""
    return [{**s, "epochs": stage.epochs} for s, stage in zip(summaries, strategy.stages)]


def _best_epoch(history: list[dict], kept: dict | None) -> dict | None:
    """The epoch the fit kept: ``{"val_map_50", "stage", "epoch"}``; None without
    validation (the last epoch is kept)."""
    if kept is None or not any("val_map_50" in r for r in history):
        return None
    for r in history:
        if f"{r['stage']} epoch {r['epoch']}" == kept["where"] and "val_map_50" in r:
            return {"val_map_50": r["val_map_50"], "stage": r["stage"], "epoch": r["epoch"]}
    # a WiSE-FT mix of two stages' weights: no epoch of its own
    return {"val_map_50": 1.0 - kept["loss"], "stage": kept["where"], "epoch": None}


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (tuple, set)):
        return list(v)
    return str(v)
