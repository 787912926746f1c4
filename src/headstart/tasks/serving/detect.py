"""Object detection, served: boxes predicted and evaluated on the command line (no graph to
export or serve yet)."""

from __future__ import annotations

from .base import TaskServing


class DetectionServing(TaskServing):
    """Images in (files, folders, CSVs with a path column), boxes out."""

    task = "detect"
    what = "detectors"
    served = False

    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        from ...data.boxes import read_boxes

        return read_boxes(data, classes=classes, fix=fix)

    def input_summary(self, estimator) -> str:
        return f"{estimator.tile_size}px tiles"

    def bn_note(self, stage: dict) -> str:
        return f", BN {stage['bn']}"

    def model_words(self, estimator) -> str:
        from ..detect.nanodet import SourceDetector

        cfg = estimator.config_
        whole = isinstance(getattr(estimator, "model_", None), SourceDetector)
        return (
            cfg.backbone
            if cfg.backbone.startswith("torchvision:") or whole
            else f"{cfg.detector} on {cfg.backbone}"
        )

    def kept_words(self, best) -> str:
        if not best:
            return "the last epoch (no validation)"
        if best["epoch"] is None:  # a WiSE-FT mix of two stages' weights: no epoch of its own
            return best["stage"]
        return f"epoch {best['epoch']} of {best['stage']}"

    def after_fit(self, estimator, run_dir, test) -> list[str]:
        return [f"report: {estimator.write_report(run_dir, test)}"]

    def evaluate(self, estimator, data, tta: str = "none", fix: str = "error") -> dict:
        return estimator.evaluate(data, fix=fix)

    def format_metrics(self, m: dict) -> str:
        from ...metrics import format_detection_metrics

        return format_detection_metrics(m)

    def evaluation_lines(self, estimator, m: dict) -> list[str]:
        width = max(5, *(len(c) for c in estimator.classes_))
        lines = [
            self.format_metrics(m),
            f"{'class':<{width}}  AP@0.5  AP@0.5:0.95  precision  recall  true boxes  predicted",
        ]
        for c, v in m["per_class"].items():
            lines.append(
                f"{c:<{width}}  {v['ap_50']:6.3f}  {v['ap']:11.3f}  "
                f"{v['precision']:9.3f}  {v['recall']:6.3f}  {v['support']:10d}  "
                f"{v['predicted']:9d}"
            )
        return lines

    def predict_to_csv(
        self,
        run_dir,
        inputs: list,
        out=None,
        *,
        engine: str = "torch",
        tta: str = "none",
        batch_size: int = 64,
        min_score: float | None = None,
        progress: bool = True,
    ) -> str:
        """One row per box, ``item, xmin, ymin, xmax, ymax, label, score, error``."""
        from ...predict import write_detections
        from ..base import tta_views
        from ..registry import load_estimator

        det = load_estimator(run_dir)
        tta_views(det, tta)  # a clear error: detectors have no test-time views
        counts = write_detections(det, inputs, out, min_score=min_score, progress=progress)
        return f"wrote {counts['boxes']} boxes of {counts['images']} image(s) to {out}" + (
            f"; {counts['errors']} image(s) failed, see their 'error' column"
            if counts["errors"]
            else ""
        )
