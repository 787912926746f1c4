"""serve's HTTP contract (#36): the OpenAPI document tells the truth, checked by schemathesis
against a real server on loopback; the API key; CORS; the messages of the bad inputs a
client meets (a pixel bomb, an image sent to a text model, empty texts).

The served runs are tiny random models (``tiny:cnn``, ``tiny:bert``): plumbing only.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from headstart import ImageClassifier, TextClassifier
from headstart.serve import ServeSettings, create_app
from headstart.serve_http import exposure_warning

from conftest import FAST, TEXT_FIT, make_arrays, make_texts, write_folder

KEY = "k3y-0f-th1s-server"
MAX_UPLOAD = 256 * 1024
MAX_TEXT = 2000
AUTH = {"Authorization": f"Bearer {KEY}"}
READS_TEXT = 'this model reads text; send JSON {"text": ...} \u2014 the body looks like a PNG image'

# schemathesis: what an image or a text file is (a format its generator cannot know from
# "format: binary"), and a rejection with 413 (a text over maxLength) counted as one
ST_HOOKS = """
import io
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def _image(size, color, fmt):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


images = st.builds(_image, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                   st.tuples(*[st.integers(0, 255)] * 3), st.sampled_from(["PNG", "JPEG"]))
texts = st.text(min_size=1, max_size=300).filter(str.strip).map(str.encode)
schemathesis.openapi.media_type("image/png", images)
schemathesis.openapi.media_type("application/octet-stream", images)
schemathesis.openapi.media_type("text/plain", texts)
"""
ST_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                     "428", "429", "5xx"]
"""
ST_EXAMPLES = 20  # per operation and phase


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk (8-bit RGB, correct CRC) and IEND: no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def png(size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    train = write_folder(root / "train", *make_arrays(n=45, n_classes=3, seed=0))
    ImageClassifier("tiny:cnn", strategy="finetune", run_dir=root / "img", **FAST).fit(str(train))
    texts, labels = make_texts(40, seed=0)
    TextClassifier("tiny:bert", strategy="finetune", run_dir=root / "txt", **TEXT_FIT).fit(
        texts, labels
    )
    return SimpleNamespace(root=root, models={"img": root / "img", "txt": root / "txt"})


def make_app(runs, **settings):
    settings = {"max_upload_bytes": MAX_UPLOAD, "max_text_chars": MAX_TEXT, **settings}
    return create_app(runs.models, ServeSettings(**settings))


@pytest.fixture(autouse=True, scope="module")
def _no_proxy():
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy")
    }
    yield
    os.environ.update(saved)


class StatusCount:
    """ASGI wrapper counting the statuses the app answers (5xx included)."""

    def __init__(self, app):
        self.app, self.statuses = app, []

    async def __call__(self, scope, receive, send):
        async def counting(message):
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, counting)


@contextlib.contextmanager
def loopback(app):
    """A real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# ---------------------------------------------------------------------- schemathesis
@pytest.mark.parametrize("keyed", [False, True], ids=["open", "api-key"])
def test_schemathesis_finds_no_contract_failure(runs, tmp_path, keyed):
    """schemathesis (pinned) against the served document, every check on: zero failures,
    zero errors, zero 5xx. Deterministic generation, a bounded number of examples per
    operation, a time limit."""
    counted = StatusCount(make_app(runs, api_key=KEY if keyed else None))
    (tmp_path / "hooks.py").write_text(ST_HOOKS)
    (tmp_path / "schemathesis.toml").write_text(ST_CONFIG)
    report = tmp_path / "report.json"
    with loopback(counted) as base:
        cmd = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(ST_EXAMPLES),
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ]
        if keyed:
            cmd += ["-H", f"Authorization: Bearer {KEY}"]
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(tmp_path / "hooks.py"),
            "NO_PROXY": "127.0.0.1",
            "SCHEMATHESIS_TELEMETRY": "false",
        }
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    out = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert report.is_file(), out
    result = json.loads(report.read_text())
    statuses = counted.statuses
    figure = (
        f"schemathesis {result['schemathesis_version']} ({'API key' if keyed else 'open'}"
        f"): {result['operations']['tested']} operations, "
        f"{result['test_cases']['generated']} test cases generated, {len(statuses)} "
        f"requests served, {result['test_cases']['unique_failures']} failures, "
        f"{sum(s >= 500 for s in statuses)} 5xx; statuses "
        f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }"
    )
    print(figure)
    assert result["failures"] == [] and result["errors"] == [], out
    assert result["test_cases"]["unique_failures"] == 0 and proc.returncode == 0, out
    assert result["operations"]["tested"] == result["operations"]["total"] == 8, out
    assert result["test_cases"]["generated"] >= 200, figure
    assert all(s < 500 for s in statuses), figure
    assert {200, 400, 413, 415, 422} <= set(statuses), figure  # the errors were reached
    if keyed:
        assert 401 in statuses, figure  # requests without the key were refused


def test_the_document_declares_every_status_and_one_error_body(runs):
    with TestClient(make_app(runs, api_key=KEY)) as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    paths = spec["paths"]
    predict = {"400", "401", "413", "415", "422", "503"}
    for path in ("/predict", "/models/img/predict", "/models/txt/predict"):
        responses = paths[path]["post"]["responses"]
        assert set(responses) == {"200"} | predict, path
        assert paths[path]["post"]["security"] == [{"apiKey": []}]
        assert "WWW-Authenticate" in responses["401"]["headers"]
    assert set(paths["/models/{name}"]["get"]["responses"]) == {"200", "401", "404"}
    assert paths["/models/{name}"]["get"]["parameters"][0]["schema"]["enum"] == ["img", "txt"]
    assert set(paths["/health"]["get"]["responses"]) == {"200"}
    assert "security" not in paths["/health"]["get"]
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["apiKey"]["description"],
    }
    refs = {
        json.dumps(r["content"]["application/json"]["schema"])
        for p in paths.values()
        for op in p.values()
        for status, r in op["responses"].items()
        if status != "200"
    }
    assert refs == {json.dumps({"$ref": "#/components/schemas/ErrorBody"})}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["detail"] and set(error["properties"]) == {"detail", "field"}
    image = paths["/predict"]["post"]["requestBody"]["content"]
    assert set(image) == {"multipart/form-data", "image/*", "application/octet-stream"}
    form = image["multipart/form-data"]["schema"]
    assert form["additionalProperties"] is False and form["required"] == ["file"]
    text = paths["/models/txt/predict"]["post"]["requestBody"]["content"]
    assert text["application/json"]["schema"]["additionalProperties"] is False
    assert text["application/json"]["schema"]["properties"]["text"]["maxLength"] == MAX_TEXT
    assert set(text["multipart/form-data"]["schema"]["properties"]) == {"text", "file"}
    with TestClient(make_app(runs)) as c:  # no key: nothing to declare
        open_spec = c.get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert "401" not in open_spec["paths"]["/predict"]["post"]["responses"]


def test_every_error_is_the_documented_body(runs):
    with TestClient(make_app(runs)) as c:
        answers = {
            "top_k": c.post(
                "/predict?top_k=0", content=png(), headers={"content-type": "image/png"}
            ),
            "unknown model": c.post("/models/nope/predict", json={"text": "abc"}),
            "unknown route": c.get("/nothing/here"),
            "wrong method": c.put("/predict"),
            "json extra": c.post("/models/txt/predict", json={"text": "abc", "lang": "en"}),
            "form extra": c.post(
                "/predict", files={"file": ("a.png", png(), "image/png"), "note": (None, "x")}
            ),
            "form twice": c.post("/models/txt/predict", data={"text": ["a", "b"]}),
            "both": c.post(
                "/models/txt/predict",
                files={"text": (None, "abc"), "file": ("t.txt", b"abc", "text/plain")},
            ),
            "too many fields": c.post(
                "/models/txt/predict", files=[(f"f{i}", (None, "x")) for i in range(6)]
            ),
        }
    expected = {
        "top_k": (422, "top_k"),
        "unknown model": (404, "name"),
        "unknown route": (404, None),
        "wrong method": (405, None),
        "json extra": (422, "lang"),
        "form extra": (422, "note"),
        "form twice": (422, "text"),
        "both": (422, "file"),
        "too many fields": (400, None),
    }
    for case, r in answers.items():
        body = r.json()
        status, field = expected[case]
        assert r.status_code == status, (case, r.status_code, body)
        assert isinstance(body["detail"], str) and body["detail"], (case, body)
        assert body.get("field") == field, (case, body)
        assert set(body) <= {"detail", "field"}, (case, body)
    assert "query parameter 'top_k'" in answers["top_k"].json()["detail"]
    assert "'lang'" in answers["json extra"].json()["detail"]
    assert answers["wrong method"].headers["allow"] == "POST"


def test_a_model_that_cannot_load_is_a_503(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs.models["img"], broken)
    app = create_app({"broken": broken}, ServeSettings())
    (broken / "model.safetensors").write_bytes(b"not weights")
    with TestClient(app) as c:
        r = c.post("/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 503, r.text
        assert "'broken' could not be loaded" in r.json()["detail"]
        assert c.get("/health").json() == {"status": "ok", "models": {"broken": False}}


# ---------------------------------------------------------------------- the API key
def test_the_key_guards_every_model_route_and_health_stays_open(runs):
    with TestClient(make_app(runs, api_key=KEY)) as c:
        calls = {
            "models": lambda h: c.get("/models", headers=h),
            "model": lambda h: c.get("/model", headers=h),
            "model info": lambda h: c.get("/models/txt", headers=h),
            "predict": lambda h: c.post(
                "/predict", content=png(), headers={**h, "content-type": "image/png"}
            ),
            "predict named": lambda h: c.post(
                "/models/txt/predict", json={"text": "abc"}, headers=h
            ),
        }
        for name, call in calls.items():
            missing = call({})
            assert missing.status_code == 401, (name, missing.text)
            assert missing.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <key>" in missing.json()["detail"]
            for wrong in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer x", f"Basic {KEY}", KEY):
                r = call({"Authorization": wrong})
                assert r.status_code == 401, (name, wrong, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
            assert call(AUTH).status_code == 200, name
            assert call({"Authorization": f"bearer {KEY}"}).status_code == 200, name
        # an unknown model is not named to a client without the key
        assert c.post("/models/nope/predict", json={"text": "a"}).status_code == 401
        assert c.post("/models/nope/predict", json={"text": "a"}, headers=AUTH).status_code == 404
        assert c.get("/health").status_code == 200
        for page in ("/", "/docs", "/openapi.json"):
            assert c.get(page).status_code == 200, page
        assert KEY not in c.get("/openapi.json").text
        # the description no longer lists the models to anyone who asks
        assert "img" not in c.get("/openapi.json").json()["info"]["description"]
    assert KEY not in repr(ServeSettings(api_key=KEY))


def test_the_key_is_compared_in_constant_time(runs, monkeypatch):
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with TestClient(make_app(runs, api_key=KEY)) as c:
        assert c.get("/models", headers={"Authorization": "Bearer guess"}).status_code == 401
        assert c.get("/models", headers=AUTH).status_code == 200
    assert seen == [(b"guess", KEY.encode()), (KEY.encode(), KEY.encode())]
    with pytest.raises(ValueError, match="empty"):
        make_app(runs, api_key="  ")


@pytest.mark.parametrize(
    "host,warned",
    [
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("example.org", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("::1", False),
        ("[::1]", False),
    ],
)
def test_serving_beyond_loopback_without_a_key_warns(host, warned):
    message = exposure_warning(host, None)
    assert (message is not None) == warned
    if warned:
        assert f"serving on {host} without an API key" in message
        assert "--api-key-file" in message
    assert exposure_warning(host, KEY) is None


def test_cli_serve_reads_the_key_and_warns(runs, tmp_path, monkeypatch, caplog, capsys):
    import uvicorn

    from headstart.cli import main

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append((app, kw)))
    monkeypatch.delenv("HEADSTART_API_KEY", raising=False)
    run = str(runs.models["txt"])
    with caplog.at_level(logging.WARNING, logger="headstart"):
        assert main(["serve", run, "--host", "0.0.0.0", "--port", "1"]) == 0
    assert started[-1][1]["host"] == "0.0.0.0"
    assert started[-1][0].state.settings.api_key is None
    assert any("0.0.0.0 without an API key" in r.getMessage() for r in caplog.records)

    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        assert (
            main(
                [
                    "serve",
                    run,
                    "--host",
                    "0.0.0.0",
                    "--api-key-file",
                    str(key_file),
                    "--cors-origin",
                    "https://app.example.com",
                ]
            )
            == 0
        )
    settings = started[-1][0].state.settings
    assert settings.api_key == KEY and settings.cors_origins == ("https://app.example.com",)
    assert not any("without an API key" in r.getMessage() for r in caplog.records)
    assert "API key required" in capsys.readouterr().err

    monkeypatch.setenv("HEADSTART_API_KEY", "from-the-env")
    assert main(["serve", run]) == 0
    assert started[-1][0].state.settings.api_key == "from-the-env"
    key_file.write_text("\n")
    assert main(["serve", run, "--api-key-file", str(key_file)]) != 0
    assert "the API key file is empty" in capsys.readouterr().err


def test_cors_is_off_unless_an_origin_is_allowed(runs):
    preflight = {
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with TestClient(make_app(runs)) as c:
        r = c.get("/health", headers={"Origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.options("/predict", headers=preflight).headers
    with TestClient(make_app(runs, cors_origins=("https://app.example.com",))) as c:
        r = c.options("/predict", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        other = c.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


# ---------------------------------------------------------------------- messages
def test_messages_of_the_inputs_that_confused(runs):
    with TestClient(make_app(runs)) as c:
        bomb = c.post(
            "/predict", content=png_header(50000, 50000), headers={"content-type": "image/png"}
        )
        assert bomb.status_code == 413
        assert bomb.json()["detail"] == (
            "the upload: the image header says 50000x50000 "
            "pixels, more than the limit of 40,000,000; "
            "downscale it"
        )
        assert "decompression bomb" not in bomb.text
        for kwargs in (
            {"files": {"file": ("photo.png", png(), "image/png")}},
            {"content": png(), "headers": {"content-type": "text/plain"}},
        ):
            r = c.post("/models/txt/predict", **kwargs)
            assert r.status_code == 422 and r.json()["detail"] == READS_TEXT, r.text
            assert "UTF-8 (byte 0)" not in r.text
        r = c.post(
            "/models/txt/predict", content=b"caf\xe9", headers={"content-type": "text/plain"}
        )
        assert r.status_code == 422 and "not UTF-8 (byte 3: 0xe9)" in r.json()["detail"]
        r = c.post("/models/txt/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 415 and r.json()["detail"] == READS_TEXT
        r = c.post(
            "/models/txt/predict",
            content=b'{"text": "\\ud800abc"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and "lone surrogate" in r.json()["detail"]


def test_every_empty_text_row_is_named_with_the_total(tmp_path):
    from headstart.data.images import DataError
    from headstart.data.text import open_text_source

    path = tmp_path / "reviews.csv"
    rows = ["text,label", "good,pos", " ,neg", "fine,pos", ",neg", "bad,neg"]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        open_text_source(path)
    assert str(info.value) == (
        f"{path}: 2 rows have an empty text in column 'text': row 3, "
        "row 5; remove the rows or fill in their texts"
    )
    path.write_text("\n".join(["text,label"] + [" ,neg"] * 14 + ["ok,pos"]) + "\n")
    with pytest.raises(DataError) as info:
        open_text_source(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 14 rows have an empty text in column 'text': row 2, ")
    assert "row 11 and 4 more;" in message and "row 12" not in message


def test_the_page_asks_for_the_key_and_shows_metrics_with_their_n(runs):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is needed for the page test: apt-get install -y chromium "
            "(scripts/setup.sh installs it)"
        )
    from playwright.sync_api import sync_playwright

    n = json.loads((runs.models["img"] / "config.json").read_text())["metrics"]["validation"]["n"]
    errors = []
    with loopback(make_app(runs, api_key=KEY)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")
            page.wait_for_selector("#key-card", state="visible", timeout=15000)
            assert "API key" in page.inner_text("#key-note")
            page.fill("#key", KEY)
            page.click("#send-key")
            page.wait_for_selector("body[data-state='ready']", state="attached", timeout=15000)
            assert not page.is_visible("#key-card")
            info = page.inner_text("#info")
            assert f"validation accuracy 100% (n={n})" in info or f"(n={n})" in info, info
            page.set_input_files(
                "#file", files=[{"name": "a.png", "mimeType": "image/png", "buffer": png()}]
            )
            page.wait_for_selector("body[data-state='predicted']", state="attached", timeout=15000)
        finally:
            browser.close()
    assert errors == []
