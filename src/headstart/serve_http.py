"""The HTTP contract of `headstart serve`: one error body for every 4xx/5xx, the responses
each route documents, access control (an API key) and CORS.

Every error a client can get is ``{"detail": str, "field"?: str}`` (:class:`ErrorBody`):
the handlers here turn FastAPI's validation errors (an array by default) and every
``HTTPException`` into it, so the OpenAPI document promises one shape and keeps it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


# ---------------------------------------------------------------------- bodies
class ErrorBody(BaseModel):
    """What every error answers: a message saying what was wrong and how to fix it."""

    model_config = ConfigDict(extra="allow", title="Error")
    detail: str = Field(description="what was wrong, and how to fix it")
    field: str | None = Field(None, description="the request field at fault, where one is")


class Scored(BaseModel):
    label: str
    probability: float


class Timing(BaseModel):
    prepare: float = Field(description="decoding and preprocessing, ms")
    model: float = Field(description="waiting for and running the model's batch, ms")


class Prediction(BaseModel):
    model: str
    task: str
    prediction: str | list[str] = Field(
        description="the top class (multi-label: the classes at probability >= 0.5)"
    )
    predictions: list[Scored] = Field(description="the top_k classes, most probable first")
    timing_ms: Timing


class Health(BaseModel):
    status: str
    models: dict[str, bool] = Field(description="each model: whether it is loaded")


class ModelSummary(BaseModel):
    name: str
    task: str
    classes: list[str]
    loaded: bool
    default: bool
    explains: bool  # POST /models/{name}/explain draws the prediction's Grad-CAM map


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    task: str
    classes: list[str]
    multi_label: bool
    loaded: bool
    engine: str | None
    backbone: dict
    source: dict
    strategy: str | None
    metrics: dict = Field(description="headline metrics per split; 'n' is the split's size")
    preprocess: dict | None
    saved_at: str | None


class ApiError(HTTPException):
    """An HTTP error with the :class:`ErrorBody` ``field`` it blames (if any)."""

    def __init__(
        self,
        status: int,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(status, detail, headers=headers)
        self.field = field


_WHY = {
    400: "a malformed body: invalid JSON, a broken multipart form, too many form fields",
    401: "no API key, or a wrong one (the server runs with --api-key-file or "
    "HEADSTART_API_KEY): send Authorization: Bearer <key>",
    404: "no model of that name",
    413: "the body is over the upload limit, an image over the pixel limit (read from its "
    "header), or a text over the character limit",
    415: "a Content-Type this model does not read",
    422: "a body or parameter the model cannot take: not an image, not UTF-8 text, an empty "
    "text, a missing, unknown or repeated field, top_k out of range",
    503: "the model could not be loaded (the server log says why)",
}


def error_responses(*statuses: int) -> dict:
    """The ``responses`` of a route that answers these error statuses."""
    out: dict = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": _WHY[status]}
        if status == 401:
            out[status]["headers"] = {
                "WWW-Authenticate": {
                    "description": "Bearer (the scheme to authenticate with)",
                    "schema": {"type": "string"},
                }
            }
    return out


def error_response(
    status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict = {"detail": detail}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(
        exc.status_code, detail, getattr(exc, "field", None), getattr(exc, "headers", None)
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's array of errors as one message naming each parameter at fault."""
    parts, field = [], None
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        where, name = (loc[0], ".".join(loc[1:])) if len(loc) > 1 else ("request", "".join(loc))
        field = field or name or None
        parts.append(f"{where} parameter {name!r}: {error.get('msg', 'invalid')}")
    return error_response(422, "; ".join(parts) or "invalid request", field)


def install_error_handlers(app) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


# ---------------------------------------------------------------------- access
class KeyCheck(HTTPBearer):
    """A FastAPI dependency: the request must carry ``Authorization: Bearer <key>``. As a
    FastAPI security scheme, the OpenAPI document declares it on the routes it guards.

    The comparison is constant-time (``hmac.compare_digest`` on the UTF-8 bytes), so the
    answer's timing says nothing of how much of a guess was right."""

    def __init__(self, key: str):
        super().__init__(
            scheme_name="apiKey",
            auto_error=False,
            description="the server's API key (serve --api-key-file or "
            "HEADSTART_API_KEY), as Authorization: Bearer <key>",
        )
        if not key or not key.strip():
            raise ValueError(
                "the API key is empty; write a key (e.g. `python -c 'import "
                "secrets; print(secrets.token_urlsafe(32))'`) into the key file"
            )
        self.key = key.encode("utf-8")

    async def __call__(self, request: HTTPConnection) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                "Authorization",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self.key):
            raise ApiError(
                401,
                "the API key is not this server's; send the key it was "
                "started with (--api-key-file or HEADSTART_API_KEY)",
                "Authorization",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (what uvicorn binds) is reachable from this machine only."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for serving on a non-loopback host without a key; None otherwise."""
    if api_key or is_loopback(host):
        return None
    return (
        f"serving on {host} without an API key: anyone who can reach this port can use "
        "every model; set one with --api-key-file FILE (or HEADSTART_API_KEY), or serve "
        "on 127.0.0.1"
    )
