"""Serve fitted models over HTTP: a FastAPI app (run by uvicorn) and a small web page.

``create_app({"fashion": "runs/fm", "spam": "runs/spam"})`` serves several runs from one
process; each is loaded on its first request. Endpoints:

* ``GET /``                         the web page: drop an image or type a text, see the top classes
* ``POST /predict``                 the first (default) model; ``POST /models/{name}/predict``
                                     any other. Body: a multipart form with ``file`` (an image;
                                     for a text model, a UTF-8 text file) or ``text``; JSON
                                     ``{"text": ...}``; or the raw image bytes (``image/*``).
* ``GET /models``, ``GET /models/{name}``, ``GET /model``   classes, backbone, source metadata,
                                     metrics, preprocessing
* ``GET /health``                   liveness and which models are loaded
* ``GET /docs``                     the OpenAPI page (FastAPI)

Bad input is a 4xx with a message saying what was wrong, never a 500: a body over the
upload limit (413), an image over the pixel limit (413, refused from its header), a file
that is no image or is truncated (422), an empty or non-UTF-8 text (422), a missing,
unknown or repeated form field (422), an unsupported content type (415), a malformed body
(400), an unknown model (404); a model that cannot be loaded is a 503. Every error has one
body, ``{"detail": str, "field"?: str}``, and the OpenAPI document (``/openapi.json``)
lists each route's statuses and, per model (``/models/NAME/predict``), the bodies its task
reads (see :mod:`headstart.serve_http`). Uploads are read into memory and decoded from
there: nothing a request sends (file names included) is ever used as a path.

With an API key (``ServeSettings.api_key``; ``serve --api-key-file`` or
``HEADSTART_API_KEY``) every route but ``/health``, the page and the API docs needs
``Authorization: Bearer <key>`` (401 otherwise). CORS is off unless ``cors_origins`` names
the origins allowed.

Requests arriving together are predicted together: each model has a micro-batcher that
runs everything queued (up to ``max_batch`` items, waiting at most ``max_wait_ms`` for
more) in one call of the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from .inference import MAX_PIXELS, ItemError, ItemTooLarge, Predictor
from .serve_http import (
    ApiError,
    Health,
    KeyCheck,
    ModelInfo,
    ModelSummary,
    Prediction,
    error_responses,
    exposure_warning,
    install_error_handlers,
)
from .tasks.serving import BodyError, TaskServing

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
DEFAULT_TOP_K = 5


@dataclass
class ServeSettings:
    """Limits and batching of one server; the CLI flags of `headstart serve`."""

    engine: str = "torch"  # torch, or onnx (RUN/export/model.onnx)
    max_upload_bytes: int = MAX_UPLOAD_BYTES  # request bodies larger than this: 413
    max_pixels: int = MAX_PIXELS  # images larger than this: 413, from the header
    max_text_chars: int = MAX_TEXT_CHARS  # longer texts: 413
    max_batch: int = 32  # items per model call
    max_wait_ms: float = 2.0  # how long a batch waits for more items
    device: str = "cpu"
    # Authorization: Bearer <key> required on every route but /health, the page and the docs
    # (None: open to anyone who reaches the port); never shown in a repr or a log
    api_key: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()  # origins whose pages may call the API (CORS)


# ---------------------------------------------------------------------- models
@dataclass
class ServedModel:
    name: str
    run_dir: Path
    config: dict
    serving: TaskServing  # the task's: how a request body becomes an item
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    explainer: Any = None  # the PyTorch estimator Grad-CAM needs (any engine), on first use

    @property
    def task(self) -> str:
        return self.config.get("task", "image")

    def load(self, settings: ServeSettings) -> Predictor:
        """The model's predictor, loaded on first use (once, whatever the concurrency)."""
        with self.lock:
            if self.predictor is None:
                t0 = time.perf_counter()
                predictor = Predictor.from_run(
                    self.run_dir,
                    engine=settings.engine,
                    device=settings.device,
                    max_pixels=settings.max_pixels,
                )
                self.batcher = Batcher(predictor, settings.max_batch, settings.max_wait_ms)
                self.predictor = predictor
                log.info(
                    "loaded %s from %s in %.1fs (%s engine)",
                    self.name,
                    self.run_dir,
                    time.perf_counter() - t0,
                    predictor.engine.name,
                )
        return self.predictor

    def load_explainer(self):
        """The run's estimator (Grad-CAM differentiates the PyTorch model), loaded once."""
        from .tasks import load_estimator

        with self.lock:
            if self.explainer is None:
                self.explainer = load_estimator(self.run_dir)
        return self.explainer

    def describe(self) -> dict:
        """What `/models/{name}` shows; read from the run's config, no loading needed."""
        c = self.config
        meta = c["backbone"].get("meta", {})
        return {
            "name": self.name,
            "task": self.task,
            "classes": c["classes"],
            "multi_label": bool(c.get("multi_label")),
            "loaded": self.predictor is not None,
            "engine": self.predictor.engine.name if self.predictor else None,
            "backbone": {
                "id": c["backbone"]["id"],
                "feature_dim": c["backbone"].get("feature_dim"),
            },
            "source": {
                k: meta.get(k)
                for k in ("id", "source_data", "source_task", "domain", "licence", "params")
            },
            "strategy": (c.get("strategy") or {}).get("name")
            if isinstance(c.get("strategy"), dict)
            else c.get("strategy"),
            "metrics": _plain_metrics(c.get("metrics", {})),
            "preprocess": c.get("preprocess"),
            "saved_at": c.get("saved_at"),
        }


def _plain_metrics(metrics: dict) -> dict:
    """The headline numbers (no confusion matrices or per-class tables)."""
    out: dict[str, Any] = {}
    for split, values in metrics.items():
        if isinstance(values, dict):
            out[split] = {
                k: v
                for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        elif isinstance(values, (int, float, str)):
            out[split] = values
    return out


class Batcher:
    """Collects prepared items of one model and predicts them in shared calls."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_ms: float):
        self.predictor = predictor
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.calls = 0
        self.items = 0

    async def submit(self, prepared):
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # first use, or a new event loop (tests start one per call)
            self.loop, self.queue, self.worker = loop, asyncio.Queue(), None
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self._work())
        future = loop.create_future()
        await self.queue.put((prepared, future))
        return await future

    def _queue(self) -> asyncio.Queue:
        assert self.queue is not None  # submit makes it before it starts the worker
        return self.queue

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue().get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue().empty():
                    batch.append(self._queue().get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue().get(), left))
                except TimeoutError:
                    break
            batch = [(p, f) for p, f in batch if not f.done()]  # clients that gave up
            if not batch:
                continue
            try:
                proba = await asyncio.to_thread(self.predictor.run, [p for p, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.calls += 1
            self.items += len(batch)
            for (_, f), row in zip(batch, proba):
                if not f.done():
                    f.set_result(row)


# ---------------------------------------------------------------------- body limit
class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get a 413 (by Content-Length
    before reading, or while streaming a chunked body)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return await _send_json(send, 400, "Content-Length is not a number")
            if too_big:
                return await _send_json(send, 413, self._message(int(length)))
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, self._message(seen))

    def _message(self, size: int) -> str:
        return (
            f"the request body ({size:,} bytes or more) is larger than the upload limit "
            f"of {self.max_bytes:,} bytes; send a smaller file (the server's "
            "--max-upload-mb sets the limit)"
        )


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- the app
def create_app(models, settings: ServeSettings | None = None):
    """A FastAPI app serving ``models``: ``{name: run_dir}`` or a list of run dirs (named
    after their folders). The first is the default of ``/predict`` and ``/model``."""
    from .tasks import serving_for
    from .zoo.local import is_run_dir, read_run_config

    settings = settings or ServeSettings()
    if not isinstance(models, dict):
        named: dict = {}
        for run in models:
            name = Path(run).resolve().name
            if name in named:
                raise ValueError(f"two runs are named {name!r}; give names: name=RUN")
            named[name] = run
        models = named
    if not models:
        raise ValueError("nothing to serve: give at least one run directory")
    served: dict[str, ServedModel] = {}
    for name, run in models.items():
        if not name or any(c in name for c in "/{}?#%") or name in (".", ".."):
            raise ValueError(
                f"{name!r}: a model name is part of its URL (/models/NAME/"
                "predict): use letters, digits, '-', '_' or '.'; name it: NAME=RUN"
            )
        if not is_run_dir(run):
            raise ValueError(
                f"{run}: not a headstart run directory (config.json and "
                "model.safetensors written by `headstart fit`)"
            )
        if settings.engine == "onnx" and not (Path(run) / "export" / "model.onnx").is_file():
            raise ValueError(
                f"{run}: no ONNX export to serve with --engine onnx; run "
                f"`headstart export {run} --format onnx` first"
            )
        config = read_run_config(run)
        serving = serving_for(config.get("task", "image"), run)
        refusal = serving.refusal("serving", run)
        if refusal:
            raise ValueError(refusal)
        served[name] = ServedModel(name, Path(run), config, serving)
    default = next(iter(served))

    app = FastAPI(
        title="headstart",
        version=_version(),
        description="Predictions of models fine-tuned with headstart. "
        + ("" if settings.api_key else f"Serving: {', '.join(served)} (default {default}). ")
        + 'Every error answers {"detail": str, "field"?: str}.',
    )
    app.state.served = served
    app.state.settings = settings
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    page = resources.files("headstart").joinpath("static/index.html").read_text("utf-8")
    guarded = [Depends(KeyCheck(settings.api_key))] if settings.api_key else []
    denied = (401,) if settings.api_key else ()
    predict_errors = error_responses(400, *denied, 413, 415, 422, 503)

    def lookup(name: str) -> ServedModel:
        if name not in served:
            raise ApiError(404, f"no model named {name!r}; served: {', '.join(served)}", "name")
        return served[name]

    async def loaded(model: ServedModel) -> Predictor:
        if model.predictor is None:
            try:
                return await run_in_threadpool(model.load, settings)
            except Exception as exc:  # noqa: BLE001 - the client gets a 503, the log the trace
                log.exception("cannot load model %s from %s", model.name, model.run_dir)
                raise ApiError(
                    503,
                    f"model {model.name!r} could not be loaded "
                    f"({type(exc).__name__}); the server log says why",
                ) from None
        return model.predictor

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                "media-src blob:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'"
            },
        )

    @app.get("/health", response_model=None, responses={200: {"model": Health}})
    async def health():
        return {"status": "ok", "models": {n: m.predictor is not None for n, m in served.items()}}

    @app.get(
        "/models",
        dependencies=guarded,
        response_model=None,
        responses={200: {"model": list[ModelSummary]}, **error_responses(*denied)},
    )
    async def list_models():
        return [
            {
                "name": m.name,
                "task": m.task,
                "classes": m.config["classes"],
                "loaded": m.predictor is not None,
                "default": m.name == default,
                "explains": m.serving.explains(m.config),
            }
            for m in served.values()
        ]

    @app.get(
        "/model",
        dependencies=guarded,
        response_model=None,
        responses={200: {"model": ModelInfo}, **error_responses(*denied)},
    )
    async def default_model():
        return served[default].describe()

    # the name is read from the path, not declared as a parameter: FastAPI would document
    # its validation error (a 422 no name can cause); the document lists the served names
    @app.get(
        "/models/{name}",
        dependencies=guarded,
        response_model=None,
        responses={200: {"model": ModelInfo}, **error_responses(*denied, 404)},
        openapi_extra={
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": list(served)},
                    "description": "a served model",
                }
            ]
        },
    )
    async def model_info(request: Request):
        return lookup(request.path_params["name"]).describe()

    async def predict(model: ServedModel, request: Request, top_k: int):
        item = await _read_item(request, model.serving, settings)
        predictor = await loaded(model)
        t0 = time.perf_counter()
        try:
            prepared = await run_in_threadpool(predictor.prepare, item)
        except ItemTooLarge as exc:
            raise ApiError(413, str(exc)) from None
        except ItemError as exc:
            raise ApiError(422, str(exc)) from None
        t1 = time.perf_counter()
        assert model.batcher is not None  # load made it with the predictor
        proba = await model.batcher.submit(prepared)
        t2 = time.perf_counter()
        order = proba.argsort()[::-1][: max(1, min(top_k, len(proba)))]
        label = predictor.labels(proba)
        return {
            "model": model.name,
            "task": model.task,
            "prediction": label,
            "predictions": [
                {"label": predictor.classes[i], "probability": float(proba[i])} for i in order
            ],
            "timing_ms": {"prepare": round((t1 - t0) * 1e3, 2), "model": round((t2 - t1) * 1e3, 2)},
        }

    top_k_query = Query(DEFAULT_TOP_K, ge=1, le=1000, description="how many classes to list")

    def predict_route(model: ServedModel):
        async def endpoint(request: Request, top_k: int = top_k_query):
            return await predict(model, request, top_k)

        return endpoint

    docs: dict[str, Any] = {
        "response_model": None,
        "dependencies": guarded,
        "responses": {200: {"model": Prediction}, **predict_errors},
    }
    app.add_api_route(
        "/predict",
        predict_route(served[default]),
        methods=["POST"],
        operation_id="predict",
        summary=f"Predict with the default model ({served[default].task})",
        name="predict",
        openapi_extra={"requestBody": served[default].serving.request_body(settings)},
        **docs,
    )
    for model in served.values():  # one route per model: each documents its task's bodies
        app.add_api_route(
            f"/models/{model.name}/predict",
            predict_route(model),
            methods=["POST"],
            operation_id=f"predict_{model.name}",
            summary=f"Predict with {model.name} ({model.task})",
            name=f"predict_{model.name}",
            openapi_extra={"requestBody": model.serving.request_body(settings)},
            **docs,
        )

    def explain_route(model: ServedModel):
        async def endpoint(request: Request):
            item = await _read_item(request, model.serving, settings)
            try:
                estimator = await run_in_threadpool(model.load_explainer)
            except Exception as exc:  # noqa: BLE001 - the client gets a 503, the log the trace
                log.exception("cannot load model %s from %s", model.name, model.run_dir)
                raise ApiError(503, f"model {model.name!r} could not be loaded") from exc
            try:
                png = await run_in_threadpool(
                    model.serving.explain_png, estimator, item, settings.max_pixels
                )
            except ItemTooLarge as exc:
                raise ApiError(413, str(exc)) from None
            except ItemError as exc:
                raise ApiError(422, str(exc)) from None
            return Response(png, media_type="image/png")

        return endpoint

    for model in served.values():  # Grad-CAM where the task draws one (image classifiers)
        if model.serving.explains(model.config):
            app.add_api_route(
                f"/models/{model.name}/explain",
                explain_route(model),
                methods=["POST"],
                operation_id=f"explain_{model.name}",
                summary=f"The Grad-CAM map of {model.name}'s prediction, as a PNG (the "
                "evaluation crop beside it with the map over it)",
                name=f"explain_{model.name}",
                openapi_extra={"requestBody": model.serving.request_body(settings)},
                response_class=Response,
                dependencies=guarded,
                responses={
                    200: {"content": {"image/png": {}}, "description": "the map"},
                    **predict_errors,
                },
            )

    @app.post("/models/{name}/predict", include_in_schema=False, dependencies=guarded)
    async def predict_unknown(name: str):  # every served name has its route above
        lookup(name)

    return app


async def _read_item(request, serving: TaskServing, settings: ServeSettings):
    """The one item a request carries, as the model's task decodes its body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        return await serving.read_request(request, ctype, settings)
    except BodyError as exc:
        raise ApiError(exc.status, str(exc), exc.field) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headstart")
    except PackageNotFoundError:
        return "dev"


def serve(
    models,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    preload: bool = False,
) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(models, settings)
    warning = exposure_warning(host, app.state.settings.api_key)
    if warning:
        log.warning(warning)
    if preload:
        for model in app.state.served.values():
            model.load(app.state.settings)
    uvicorn.run(app, host=host, port=port, log_level="warning")
