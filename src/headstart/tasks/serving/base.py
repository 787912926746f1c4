"""What every task object of the serving half does, and the defaults of the classifiers.

A task object (one per task, named by its estimator's ``serving`` class attribute) answers
every question whose answer depends on the task: how raw inputs are listed and read, what
the inference graph takes and gives, what an export feeds it, how an HTTP body becomes an
item, and how results print on the command line. ``inference``, ``export``, ``serve``,
``predict`` and the CLI ask it instead of comparing task names.

Reading and running items for one fitted model is a :class:`Feed` (made by
:meth:`TaskServing.feed`): it holds what the task needs of the model (transforms, the
tokenizer's padding id) while a :class:`~headstart.inference.Predictor` lives.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...data.images import IMAGE_EXTENSIONS, DataError, _csv_path, _image_files, existing_path

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class BodyError(ValueError):
    """A request body the task cannot take: ``status`` (HTTP), the message, and the field
    at fault (a form or JSON field), where there is one."""

    def __init__(self, status: int, detail: str, field: str | None = None):
        super().__init__(detail)
        self.status = status
        self.field = field


class Feed:
    """One fitted model's items: prepared one by one (an error per item, never raised),
    collated into the graph's named inputs, and the graph's output made the result."""

    def __init__(self, estimator, baseline=None):
        self.estimator = estimator
        self.baseline = baseline  # a kept classic baseline predicts instead of the graph

    def prepare_many(self, items: list) -> list:
        raise NotImplementedError

    def collate(self, prepared: list) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def baseline_inputs(self, prepared: list):
        """What the kept classic baseline reads of prepared items (its own vectors)."""
        return np.stack(prepared)

    def finish(self, proba: np.ndarray, feats, prepared: list) -> np.ndarray:
        """What the run predicts from the graph's probabilities (and its features, when the
        graph gives them) of ``prepared``."""
        return proba


class TaskServing:
    """The serving half of a task. Stateless: one instance per task class."""

    task = "base"  # the run's config.json ``task``, named in messages
    what = "models"  # the task's models in the plural, for messages
    served = True  # whether export and serve take its runs
    kind: str = "images"  # what an input folder holds
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    input_names: tuple[str, ...] = ()  # the inference graph's inputs, in order
    form_field = "'file'"  # what an HTTP form must carry, for the message
    data_in_settings = False  # whether fit's DATA may be left out (control: --env)
    # what a pool of unlabelled items may be (`suggest --pool`), for messages
    pool_help = "a folder of images (searched recursively) or a CSV with a 'path' column"

    def item_column(self, cfg) -> str:
        """The column of a CSV that names each item (``fit`` reads it back)."""
        return "path"

    def refusal(self, doing: str, run_dir) -> str | None:
        """Why ``doing`` ("exporting", "serving") cannot take a run of this task; None
        where it can."""
        if self.served:
            return None
        return (
            f"{run_dir}: {doing} {self.what} is not supported yet; predict with "
            f"`headstart predict {run_dir} INPUTS`"
        )

    # ------------------------------------------------------------ reading raw inputs
    def open_labeled(self, data, cfg, path_column: str = "path", classes=None, fix: str = "error"):
        """Labeled data as the command line names it (folder, CSV, table; ``fix``: what
        a bad box does, detection)."""
        raise NotImplementedError(f"{self.what} read their data in `fit` itself")

    def open_inputs(self, data):
        """Unlabeled items (paths, a folder, a CSV with a path column) as a source."""
        raise NotImplementedError(f"{self.what} have no unlabeled source")

    def list_inputs(self, inputs: list, text_column: str = "text") -> list[tuple[str, object]]:
        """``(name, item)`` for every input, in order; nothing is decoded yet."""
        out: list[tuple[str, object]] = []
        for i, entry in enumerate(inputs):
            out.extend(self.entries(entry, i, text_column))
        return out

    def entries(self, entry, i: int, text_column: str) -> list[tuple[str, object]]:
        """One input: the files of a folder, a CSV's path column, or one path; anything
        else (an array, an image object) named by its position."""
        if isinstance(entry, (str, Path)):
            return self._file_entries(entry)
        return [(f"item[{i}]", entry)]

    def folder_files(self, folder: Path) -> list[str]:
        return _image_files(folder)

    def _file_entries(self, entry: str | Path) -> list[tuple[str, object]]:
        p = Path(entry)
        if existing_path(p) is None:
            return [(str(p), str(p))]  # a missing file (or an impossible name): its own row
        if p.is_dir():
            files = self.folder_files(p)
            if not files:
                raise DataError(f"{p}: no {self.kind} found ({', '.join(self.extensions)})")
            return [(f, f) for f in files]
        if p.suffix.lower() == ".csv" and p.is_file():
            with open(p, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if "path" not in (reader.fieldnames or []):
                    raise DataError(
                        f"{p}: no column 'path' (columns: "
                        f"{', '.join(reader.fieldnames or [])}); name each image's "
                        "file in a 'path' column"
                    )
                rows = [(line, r["path"]) for line, r in enumerate(reader, 2)]
            return [
                (
                    str(_csv_path(p, v)) if v else f"{p}:row {line}",
                    str(_csv_path(p, v)) if v else "",
                )
                for line, v in rows
            ]
        return [(str(p), str(p))]

    # ------------------------------------------------------------ inference
    def _no_graph(self) -> ValueError:
        return ValueError(
            f"{self.what} have no inference graph; predict with `headstart predict RUN INPUTS`"
        )

    def graph(self, estimator, model, multi_label: bool):
        """The fitted ``model`` as a module from the graph's inputs to probabilities."""
        raise self._no_graph()

    def feed(self, estimator, views: list, max_pixels: int | None, baseline=None) -> Feed:
        """The :class:`Feed` of a fitted ``estimator`` (``views``: its test-time views)."""
        raise self._no_graph()

    # ------------------------------------------------------------ export
    def check_items(self, estimator, source) -> list:
        """The items of ``source`` (a path or a list) an export's parity check predicts."""
        return list(self.open_inputs(source).items)

    def check_source(self, items: list):
        """``items`` as what the estimator's ``_open_unlabeled`` reads."""
        return self.open_inputs(items)

    def dynamic_shapes(self, batch) -> dict:
        """The graph's inputs in order, each with its dynamic axes (``batch``: the batch
        dimension of every input)."""
        return {name: {0: batch} for name in self.input_names}

    def export_run(
        self, estimator, run_dir, format, out, check, n_check: int, tolerance: float, opset: int
    ) -> dict | None:
        """A task that exports its own graph: the export's result fields (checked for
        parity); None: the classifiers' export (:func:`headstart.export.export_model`)."""
        return None

    def export_inputs(self, predictor) -> tuple[list[dict], dict]:
        """The exported graph's inputs, and the preprocessing recipe outside it."""
        raise self._no_graph()

    def export_outputs(self, estimator) -> dict:
        """Outputs of the exported graph beside its probabilities (sidecar entries)."""
        return {}

    def features_check(self, estimator, source, reference: np.ndarray, feats):
        """For a graph that also outputs features the run predicts from: a function
        ``(features, rows) -> largest difference`` of what the run predicts from the file's
        features against from its own; None otherwise."""
        return None

    def save_beside(self, estimator, folder: Path) -> list[str]:
        """Files an export needs beside the model (written into ``folder``); notes."""
        return []

    # ------------------------------------------------------------ HTTP
    def request_body(self, settings) -> dict:
        """The OpenAPI ``requestBody`` of this task's predict route: what
        :meth:`read_request` reads, and nothing it refuses."""
        what = f"the {self.kind[:-1]} file's bytes"
        raw = {"schema": {"type": "string", "format": "binary", "description": what}}
        return {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": f"the {self.kind[:-1]} file",
                            }
                        },
                    },
                    "encoding": {"file": {"contentType": f"{self.task}/*"}},
                },
                f"{self.task}/*": raw,
                "application/octet-stream": raw,
            },
        }

    async def read_request(self, request, ctype: str, settings):
        """The one item a request carries (a file's bytes here); :class:`BodyError` when
        the body is not one this task takes."""
        if ctype == "multipart/form-data":
            form = await read_form(request, settings, self)
            check_fields(form, ("file",), self)
            return await upload_bytes(form, "file", self)
        if ctype == "application/json":
            raise BodyError(
                415,
                f"an {self.task} model takes a multipart upload (field 'file') "
                f"or the raw file bytes (Content-Type {self.task}/...), not JSON",
            )
        if ctype.startswith(f"{self.task}/") or ctype == "application/octet-stream":
            return await request.body()
        raise unsupported(
            ctype,
            "a multipart form with field 'file', or the file's bytes with "
            f"Content-Type {self.task}/*",
        )

    # ------------------------------------------------------------ command line
    def input_summary(self, estimator) -> str:
        """The input spec as ``fit`` prints it (``224px``)."""
        raise NotImplementedError

    def bn_note(self, stage: dict) -> str:
        """What a training stage's line says of BatchNorm (nothing by default)."""
        return ""

    def model_words(self, estimator) -> str:
        """The model as ``fit``'s summary names it."""
        return estimator.config_.backbone

    def kept_words(self, best) -> str:
        """Which weights the fit kept (its metrics' ``best``), in words."""
        return best or "the last epoch (no validation)"

    def after_fit(self, estimator, run_dir, test) -> list[str]:
        """What ``fit`` writes once the run is saved (and tested), as lines to print."""
        return []

    def run_study(self, args, cfg, given: dict, out, progress) -> list[str] | None:
        """``headstart study`` done the task's own way, as lines to print (control: env
        steps instead of data fractions); None: the shared study over nested fractions of
        labelled data (:func:`headstart.study.run_study`)."""
        return None

    def format_metrics(self, m: dict) -> str:
        from ...metrics import format_metrics

        return format_metrics(m)

    def evaluate(self, estimator, data, tta: str = "none", fix: str = "error") -> dict:
        """``headstart evaluate``'s metrics (``fix``: what a bad box does, detection)."""
        if tta != "none":
            return estimator.evaluate(data, tta=tta)
        return estimator.evaluate(data)

    def evaluation_lines(self, estimator, m: dict) -> list[str]:
        """``headstart evaluate``'s report of ``m``."""
        from ...metrics import baseline_lines, format_calibration

        lines = []
        if m.get("verdict"):
            lines.append(f"verdict: {m['verdict']['line']}")
        lines.append(self.format_metrics(m))
        if "tta" in m:
            lines.append(
                f"  test-time augmentation: the mean over {len(m['tta']['views'])} "
                f"views ({', '.join(m['tta']['views'])})"
            )
        if "calibration" in m:
            lines.append(f"  {format_calibration(m['calibration'])}")
        if "add_classes" in m:  # a model extended with --add-classes: forgetting shows here
            from ...incremental import format_split

            lines.append(f"  {format_split(m['add_classes'])}")
        lines += [
            f"  {line}"
            for line in baseline_lines(
                m,
                estimator.metrics_.get("baseline_name", ""),
                estimator.metrics_.get("blend_mode", "mean"),
            )
        ]
        if "clinical" in m:  # before the tables: the confusion matrix stays the last lines
            from ...clinical import format_clinical

            lines += format_clinical(m["clinical"], m["clinical"]["positive"])
        width = max(len(c) for c in estimator.classes_)
        lines.append(f"{'class':<{width}}  precision  recall     f1  support")
        for c, v in m["per_class"].items():
            lines.append(
                f"{c:<{width}}  {v['precision']:9.3f}  {v['recall']:6.3f}  "
                f"{v['f1']:5.3f}  {v['support']:7d}"
            )
        if "confusion_matrix" in m:
            lines.append("confusion matrix (rows: true, columns: predicted):")
            for c, row in zip(estimator.classes_, m["confusion_matrix"]):
                lines.append(f"{c:<{width}}  " + " ".join(f"{v:5d}" for v in row))
        return lines

    def explains(self, config: dict) -> bool:
        """Whether ``serve`` draws heat maps of this run's predictions (its config.json)."""
        return False

    def explain_png(self, estimator, item, max_pixels: int | None) -> bytes:
        """One served item's heat map as PNG bytes (where :meth:`explains`)."""
        raise NotImplementedError(f"{self.what} draw no heat maps")

    def explain(self, run_dir, inputs: list, out_dir) -> str:
        """``headstart predict --explain DIR``: a heat map per input (image classifiers:
        Grad-CAM); returns the line that sums it up."""
        raise ValueError(
            f"--explain draws Grad-CAM heat maps of image classifiers; {self.what} have "
            "none (drop --explain)"
        )

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
        """``headstart predict``: predict ``inputs`` with the run into a CSV (``out``, or
        stdout); returns the line that sums it up."""
        from ...inference import Predictor
        from ...predict import write_predictions

        predictor = Predictor.from_run(run_dir, engine=engine, tta=tta)
        counts = write_predictions(
            predictor,
            inputs,
            out,
            batch_size=batch_size,
            progress=progress,
            text_column=predictor.estimator.config_.text_column,
        )
        return f"wrote {counts['predicted']} predictions to {out}" + (
            f"; {counts['errors']} item(s) failed, see their 'error' column"
            if counts["errors"]
            else ""
        )


# ---------------------------------------------------------------------- HTTP helpers
MAX_FORM_FIELDS = 4  # the parser's limit: a form with more is refused (400) before reading


async def read_form(request, settings, serving: TaskServing):
    """The request's form: one file at most, a few fields, text parts within the limit."""
    from starlette.exceptions import HTTPException

    try:
        return await request.form(
            max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=settings.max_text_chars * 4
        )
    except HTTPException as exc:  # the multipart parser's own refusal (400)
        raise BodyError(
            exc.status_code,
            f"{exc.detail}; this {serving.task} model reads a form with {serving.form_field}",
        ) from None


def check_fields(form, allowed: tuple[str, ...], serving: TaskServing) -> None:
    """Refuse (422) a field the task does not read, or one sent twice: a form that says
    two things is answered, not guessed at."""
    for name in form.keys():
        if name not in allowed:
            raise BodyError(
                422,
                f"this {serving.task} model reads no form field {name!r}; "
                f"send {serving.form_field} alone",
                name,
            )
        count = len(form.getlist(name))
        if count > 1:
            raise BodyError(422, f"the form has {count} fields {name!r}; send one", name)


async def upload_bytes(form, name: str, serving: TaskServing) -> bytes:
    """The bytes of the form's file field ``name`` (a part with a file name)."""
    from starlette.datastructures import UploadFile

    value = form.get(name)
    if isinstance(value, UploadFile):
        return await value.read()
    if value is None:
        raise missing_field(form, serving.task, serving.form_field)
    raise BodyError(
        422,
        f"the form field {name!r} is a plain value; send it as a file "
        f"(a part with a file name: curl -F {name}=@FILE)",
        name,
    )


def missing_field(form, task: str, wanted: str) -> BodyError:
    given = ", ".join(sorted(form.keys())) or "none"
    return BodyError(
        422,
        f"this {task} model needs a form field {wanted}; the form has: {given}",
        wanted.split("'")[1] if "'" in wanted else None,
    )


def unsupported(ctype: str, how: str) -> BodyError:
    return BodyError(415, f"unsupported Content-Type {ctype or '(none)'!r}: send {how}")
