"""serve: the FastAPI app over two tiny runs (an image model "img", a text model "txt").

In-process (``TestClient``): the info endpoints, lazy loading, every way of sending an item
(predictions equal the estimator's own), and bad or hostile uploads, each a 4xx that leaves
the server serving. On a real uvicorn server on loopback: 300 concurrent requests (answers
match single requests, the micro-batcher shares model calls), and the web page in a real
headless Chromium.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from headstart import ImageClassifier, TextClassifier
from headstart.serve import ServeSettings, create_app

from conftest import (
    DIGIT_WORDS,
    FAST,
    LETTER_WORDS,
    TEXT_FIT,
    make_arrays,
    make_texts,
    write_folder,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MAX_UPLOAD = 256 * 1024
MAX_TEXT = 2000


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


def truncated_jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("notes.txt", "not an image " * 100)
    return buf.getvalue()


def top(body: dict) -> dict[str, float]:
    return {p["label"]: p["probability"] for p in body["predictions"]}


# ---------------------------------------------------------------------- runs and apps
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    train = write_folder(root / "train", *make_arrays(n=45, n_classes=3, seed=0))
    img = ImageClassifier("tiny:cnn", strategy="finetune", run_dir=root / "img", **FAST)
    img.fit(str(train))
    test = write_folder(root / "test", *make_arrays(n=9, n_classes=3, seed=1))
    texts, labels = make_texts(40, seed=0)
    txt = TextClassifier("tiny:bert", strategy="finetune", run_dir=root / "txt", **TEXT_FIT)
    txt.fit(texts, labels)
    images = sorted(str(p) for p in test.rglob("*.png"))
    return SimpleNamespace(
        img=img,
        txt=txt,
        root=root,
        images=images,
        models={"img": root / "img", "txt": root / "txt"},
    )


def make_app(runs, **settings):
    settings = {"max_upload_bytes": MAX_UPLOAD, "max_text_chars": MAX_TEXT, **settings}
    return create_app(runs.models, ServeSettings(**settings))


@pytest.fixture(scope="module")
def client(runs):
    statuses = []

    def record(response):
        statuses.append(response.status_code)

    with TestClient(make_app(runs)) as c:  # raise_server_exceptions: a crash fails loudly
        c.event_hooks = {"request": [], "response": [record]}
        yield c
    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))


def upload(path: str, name: str | None = None, ctype: str = "image/png") -> dict:
    return {"files": {"file": (name or Path(path).name, Path(path).read_bytes(), ctype)}}


def assert_matches(body: dict, est, item, top_k: int | None = None) -> None:
    """The answer's top classes and probabilities are the estimator's for ``item``."""
    [proba] = est.predict_proba([item])
    order = np.argsort(-proba)[: top_k or 5]
    assert [p["label"] for p in body["predictions"]] == [est.classes_[i] for i in order]
    np.testing.assert_allclose(
        [p["probability"] for p in body["predictions"]], proba[order], atol=1e-5, rtol=0
    )
    assert body["prediction"] == est.classes_[int(np.argmax(proba))]


# ---------------------------------------------------------------------- info endpoints
def test_info_endpoints(runs, client):
    models = client.get("/models").json()
    assert [(m["name"], m["task"], m["default"]) for m in models] == [
        ("img", "image", True),
        ("txt", "text", False),
    ]
    assert models[0]["classes"] == ["a", "b", "c"] and models[1]["classes"] == ["digits", "letters"]
    default = client.get("/model").json()
    named = client.get("/models/img").json()
    assert default["name"] == named["name"] == "img"
    assert {k: v for k, v in default.items() if k not in ("loaded", "engine")} == {
        k: v for k, v in named.items() if k not in ("loaded", "engine")
    }
    assert named["backbone"]["id"] == "tiny:cnn" and named["preprocess"]["input_size"] == 32
    assert "confusion_matrix" not in json.dumps(named["metrics"])
    txt = client.get("/models/txt").json()
    assert txt["task"] == "text" and txt["backbone"]["id"] == "tiny:bert"
    assert txt["preprocess"]["truncation"] == "chunks"
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and "img, txt" in missing.json()["detail"]

    spec = client.get("/openapi.json").json()
    # one predict route per model, each with the bodies its task reads (an image model
    # never read JSON; the document no longer offers it)
    assert {"/predict", "/models/img/predict", "/models/txt/predict"} <= set(spec["paths"])
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(content) and "application/json" not in content
    content = spec["paths"]["/models/txt/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "text/plain"} <= set(content)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="verdict"' in page.text and 'id="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"img", "txt"}


def test_explain_answers_the_grad_cam_map_of_the_prediction(runs, client):
    """POST /models/img/explain: the upload's evaluation crop beside the same Grad-CAM
    panel `predict --explain` writes; text models have no such route."""
    import io

    from PIL import Image

    from headstart.explain import explained_panels

    listed = {m["name"]: m["explains"] for m in client.get("/models").json()}
    assert listed == {"img": True, "txt": False}
    r = client.post("/models/img/explain", **upload(runs.images[2]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    [want] = explained_panels(runs.img, [np.asarray(Image.open(runs.images[2]).convert("RGB"))])
    assert got.shape == want.shape == (32, 64, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert not np.array_equal(got[:, :32], got[:, 32:])  # the map is drawn over the crop
    bad = client.post("/models/img/explain", files={"file": ("x.png", b"zip!", "image/png")})
    assert bad.status_code == 422 and "not an image" in bad.json()["detail"]
    assert client.post("/models/txt/explain", json={"text": "abc"}).status_code in (404, 405)
    assert "/models/img/explain" in client.get("/openapi.json").json()["paths"]


def test_models_load_lazily_one_by_one(runs):
    app = make_app(runs)
    with TestClient(app) as c:
        assert c.get("/health").json()["models"] == {"img": False, "txt": False}
        assert [m["loaded"] for m in c.get("/models").json()] == [False, False]
        assert c.get("/models/img").json()["engine"] is None
        assert c.post("/predict", **upload(runs.images[0])).status_code == 200
        assert c.get("/health").json()["models"] == {"img": True, "txt": False}
        assert app.state.served["txt"].predictor is None
        assert c.post("/models/txt/predict", json={"text": "abc"}).status_code == 200
        assert c.get("/health").json()["models"] == {"img": True, "txt": True}
        info = c.get("/models/txt").json()
        assert info["loaded"] is True and info["engine"] == "torch"


def test_create_app_refuses_what_it_cannot_serve(runs, tmp_path):
    twin = tmp_path / "other" / "img"
    shutil.copytree(runs.models["img"], twin)
    with pytest.raises(ValueError, match="two runs are named 'img'"):
        create_app([runs.models["img"], twin])
    app = create_app([runs.models["txt"], twin])  # a list: named after the folders
    assert list(app.state.served) == ["txt", "img"]
    with pytest.raises(ValueError, match="not a headstart run directory"):
        create_app({"x": tmp_path})
    with pytest.raises(ValueError, match="nothing to serve"):
        create_app({})


def test_onnx_engine_and_pixel_limit_settings(runs):
    from headstart.export import export_model

    with pytest.raises(ValueError, match="headstart export"):  # refused at start, not per request
        make_app(runs, engine="onnx")
    export_model(runs.models["img"], "onnx", n_check=8)
    export_model(runs.models["txt"], "onnx", check=["abc cafe", "123 456 789"])
    app = make_app(runs, engine="onnx")
    with TestClient(app) as c:
        for path in runs.images[:3]:
            r = c.post("/predict", **upload(path))
            assert r.status_code == 200, r.text
            assert_matches(r.json(), runs.img, path)
        assert c.get("/models/img").json()["engine"] == "onnx"
    with TestClient(make_app(runs, max_pixels=100)) as c:  # the test images are 16 x 16
        r = c.post("/predict", **upload(runs.images[0]))
        assert r.status_code == 413 and "16x16" in r.json()["detail"]
        assert "100" in r.json()["detail"]


# ---------------------------------------------------------------------- predictions
def test_image_as_multipart_and_as_raw_bytes(runs, client):
    for path in runs.images[:3]:
        multipart = client.post("/predict", **upload(path))
        raw = client.post(
            "/models/img/predict",
            content=Path(path).read_bytes(),
            headers={"content-type": "image/png"},
        )
        octets = client.post(
            "/predict",
            content=Path(path).read_bytes(),
            headers={"content-type": "application/octet-stream"},
        )
        for r in (multipart, raw, octets):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "img" and body["task"] == "image"
            assert len(body["predictions"]) == 3
            assert set(body["timing_ms"]) == {"prepare", "model"}
            assert_matches(body, runs.img, path)


def test_top_k(runs, client):
    path = runs.images[1]
    one = client.post("/predict?top_k=1", **upload(path)).json()
    assert len(one["predictions"]) == 1
    assert_matches(one, runs.img, path, top_k=1)
    two = client.post("/predict?top_k=2", **upload(path)).json()
    assert_matches(two, runs.img, path, top_k=2)
    many = client.post("/predict?top_k=50", **upload(path)).json()
    assert len(many["predictions"]) == 3  # no more than the classes
    probs = [p["probability"] for p in many["predictions"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    for bad in ("0", "-1", "x"):
        assert client.post(f"/predict?top_k={bad}", **upload(path)).status_code == 422


@pytest.mark.parametrize("how", ["json", "form-text", "form-file", "form-urlencoded", "text-plain"])
def test_text_in_every_form(how, runs, client):
    text = "cafe dead 123 abc bad face bead fade aged ebb gag"  # several chunks
    kwargs = {
        "json": {"json": {"text": text}},
        "form-text": {"files": {"text": (None, text)}},
        "form-file": {"files": {"file": ("note.txt", text.encode(), "text/plain")}},
        "form-urlencoded": {"data": {"text": text}},  # curl -d text=..., a plain HTML form
        "text-plain": {
            "content": text.encode(),
            "headers": {"content-type": "text/plain; charset=utf-8"},
        },
    }[how]
    r = client.post("/models/txt/predict", **kwargs)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "txt" and body["task"] == "text"
    assert_matches(body, runs.txt, text)


# ---------------------------------------------------------------------- bad uploads
BIG = png_header(20_000, 20_000)

BAD = {
    # name: (model path, request kwargs (a factory: generators are single use), status,
    #        what the message says)
    "truncated-jpeg": (
        "/predict",
        lambda: {"files": {"file": ("a.jpg", truncated_jpeg(), "image/jpeg")}},
        422,
        "truncated",
    ),
    "zip-as-image": (
        "/predict",
        lambda: {"files": {"file": ("a.png", zip_bytes(), "image/png")}},
        422,
        "not an image",
    ),
    "zip-raw": (
        "/predict",
        lambda: {"content": zip_bytes(), "headers": {"content-type": "application/zip"}},
        415,
        "Content-Type",
    ),
    "20000x20000-png-header": (
        "/predict",
        lambda: {"content": BIG, "headers": {"content-type": "image/png"}},
        413,
        "downscale",
    ),
    "20000x20000-png-upload": (
        "/predict",
        lambda: {"files": {"file": ("big.png", BIG, "image/png")}},
        413,
        "downscale",
    ),
    "49-megapixel-png": (
        "/predict",
        lambda: {"content": png_header(7000, 7000), "headers": {"content-type": "image/png"}},
        413,
        "40,000,000",
    ),
    "1x200-png": (
        "/predict",
        lambda: {"content": png_header(1, 200), "headers": {"content-type": "image/png"}},
        413,
        "times apart",
    ),
    "empty-raw-body": (
        "/predict",
        lambda: {"content": b"", "headers": {"content-type": "image/png"}},
        422,
        "empty",
    ),
    "empty-upload": (
        "/predict",
        lambda: {"files": {"file": ("a.png", b"", "image/png")}},
        422,
        "empty",
    ),
    "no-body-no-type": ("/predict", lambda: {}, 415, "Content-Type"),
    "wrong-form-field": (
        "/predict",
        lambda: {"files": {"image": ("a.png", b"x", "image/png")}},
        422,
        "'file'",
    ),
    "two-files": (
        "/predict",
        lambda: {
            "files": [
                ("file", ("a.png", b"x", "image/png")),
                ("file", ("b.png", b"y", "image/png")),
            ]
        },
        400,
        "files",
    ),
    "too-many-form-fields": (
        "/models/txt/predict",
        lambda: {"files": [(f"f{i}", (None, "x")) for i in range(6)]},
        400,
        "fields",
    ),
    "multipart-without-boundary": (
        "/predict",
        lambda: {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "boundary",
    ),
    "json-to-image-model": ("/predict", lambda: {"json": {"text": "hello"}}, 415, "JSON"),
    "non-utf8-text": (
        "/models/txt/predict",
        lambda: {"content": b"caf\xe9 \xff\xfe", "headers": {"content-type": "text/plain"}},
        422,
        "UTF-8",
    ),
    "non-utf8-text-file": (
        "/models/txt/predict",
        lambda: {"files": {"file": ("t.txt", b"\xff\xfeab", "text/plain")}},
        422,
        "UTF-8",
    ),
    "invalid-json": (
        "/models/txt/predict",
        lambda: {"content": b'{"text": "abc"', "headers": {"content-type": "application/json"}},
        400,
        "not valid JSON",
    ),
    "json-without-text": ("/models/txt/predict", lambda: {"json": {"txt": "abc"}}, 422, "'text'"),
    "empty-text": ("/models/txt/predict", lambda: {"json": {"text": "  \n "}}, 422, "empty"),
    "text-too-long": (
        "/models/txt/predict",
        lambda: {"json": {"text": "a" * (MAX_TEXT + 1)}},
        413,
        f"{MAX_TEXT:,}",
    ),
    "image-to-text-model": (
        "/models/txt/predict",
        lambda: {"content": png_header(8, 8), "headers": {"content-type": "image/png"}},
        415,
        'this model reads text; send JSON {"text": ...} \u2014 the body looks like a PNG image',
    ),
    "unknown-model": ("/models/nope/predict", lambda: {"json": {"text": "abc"}}, 404, "'nope'"),
    "over-limit-content-length": (
        "/predict",
        lambda: {"content": b"\0" * (MAX_UPLOAD + 1), "headers": {"content-type": "image/png"}},
        413,
        "upload limit",
    ),
    "over-limit-multipart": (
        "/predict",
        lambda: {"files": {"file": ("a.png", b"\0" * (MAX_UPLOAD + 1), "image/png")}},
        413,
        "upload limit",
    ),
    "over-limit-chunked": (
        "/predict",
        lambda: {
            "content": (b"\0" * 16_384 for _ in range(40)),
            "headers": {"content-type": "image/png"},
        },
        413,
        "upload limit",
    ),
    "over-limit-chunked-multipart": (
        "/predict",
        lambda: {
            "content": (b"--x\r\n" + b"\0" * 16_384 for _ in range(40)),
            "headers": {"content-type": "multipart/form-data; boundary=x"},
        },
        413,
        "upload limit",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_is_a_4xx_and_the_server_keeps_serving(case, runs, client):
    path, kwargs, status, says = BAD[case]
    request = client.build_request("POST", path, **kwargs())
    if case.startswith("over-limit-chunked"):  # no Content-Length: the limit is met streaming
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
    r = client.send(request)
    assert r.status_code == status, (r.status_code, r.text)
    assert says in r.json()["detail"], r.json()
    good = client.post("/predict", **upload(runs.images[0]))
    assert good.status_code == 200
    assert_matches(good.json(), runs.img, runs.images[0])
    text = client.post("/models/txt/predict", json={"text": "abc bad"})
    assert text.status_code == 200


def test_deeply_nested_json_is_a_400(runs):
    nested = b"[" * 100_000 + b"]" * 100_000  # 200 kB, under the upload limit
    with TestClient(make_app(runs), raise_server_exceptions=False) as c:
        r = c.post(
            "/models/txt/predict", content=nested, headers={"content-type": "application/json"}
        )
        assert c.post("/models/txt/predict", json={"text": "abc"}).status_code == 200
    assert r.status_code == 400, r.text


def test_chunked_body_under_the_limit_is_accepted(runs, client):
    data = Path(runs.images[2]).read_bytes()
    chunks = (data[i : i + 100] for i in range(0, len(data), 100))
    r = client.post("/predict", content=chunks, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert_matches(r.json(), runs.img, runs.images[2])


def test_upload_file_name_is_never_used_as_a_path(runs, client, tmp_path, monkeypatch):
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    passwd = Path("/etc/passwd")
    before = passwd.stat() if passwd.exists() else None
    absolute = tmp_path / "absolute.png"
    for name in ("../../etc/passwd", "../../../x.png", str(absolute), "..", "a/../../b.png"):
        r = client.post("/predict", **upload(runs.images[0], name=name))
        assert r.status_code == 200, (name, r.text)
        assert_matches(r.json(), runs.img, runs.images[0])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not absolute.exists()
    if before is not None:
        after = passwd.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


# ---------------------------------------------------------------------- live server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(runs):
    """A real uvicorn server on loopback in a thread: (base URL, app)."""
    import httpx
    import uvicorn

    app = make_app(runs, max_wait_ms=5.0)
    port = free_port()
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
    yield SimpleNamespace(base=base, app=app)
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_concurrent_requests_are_batched_and_answered_right(runs, live):
    import httpx

    images = runs.images[:6]
    expected = {}
    with httpx.Client(base_url=live.base, timeout=30) as c:
        for path in images:  # one at a time: the single-request answers
            r = c.post("/predict", **upload(path))
            assert r.status_code == 200
            expected[path] = r.json()
    batcher = live.app.state.served["img"].batcher
    calls0, items0 = batcher.calls, batcher.items

    def work(worker: int) -> list[tuple[str, int, dict | str]]:
        out = []
        with httpx.Client(base_url=live.base, timeout=60) as c:
            for i in range(worker, 300, 16):
                path = images[i % len(images)]
                if i % 2:
                    r = c.post(
                        "/models/img/predict",
                        content=Path(path).read_bytes(),
                        headers={"content-type": "image/png"},
                    )
                else:
                    r = c.post("/predict", **upload(path))
                out.append((path, r.status_code, r.json() if r.status_code == 200 else r.text))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(work, range(16)) for x in part]
    assert len(results) == 300
    errors = [(p, s, b) for p, s, b in results if s != 200]
    assert errors == []
    for path, _, body in results:
        assert body["prediction"] == expected[path]["prediction"]
        assert [p["label"] for p in body["predictions"]] == [
            p["label"] for p in expected[path]["predictions"]
        ]
        np.testing.assert_allclose(
            list(top(body).values()), list(top(expected[path]).values()), atol=1e-5
        )
    assert batcher.items - items0 == 300
    assert batcher.calls - calls0 < 300, batcher.calls - calls0


def test_concurrent_texts_of_different_lengths(runs, live):
    """Texts of 1 to 3 chunks batched together answer as they do alone."""
    import httpx

    texts = [
        "abc",
        "123 456",
        " ".join(LETTER_WORDS),
        " ".join(DIGIT_WORDS * 2),
        "cafe 42 dead 777 face",
        "9",
    ]
    with httpx.Client(base_url=live.base, timeout=30) as c:
        expected = {t: c.post("/models/txt/predict", json={"text": t}).json() for t in texts}
    for t in texts:
        assert_matches(expected[t], runs.txt, t)
    batcher = live.app.state.served["txt"].batcher
    calls0 = batcher.calls

    def work(worker: int) -> list[tuple[str, int, dict | str]]:
        out = []
        with httpx.Client(base_url=live.base, timeout=60) as c:
            for i in range(worker, 96, 16):
                t = texts[i % len(texts)]
                r = c.post("/models/txt/predict", json={"text": t})
                out.append((t, r.status_code, r.json() if r.status_code == 200 else r.text))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(work, range(16)) for x in part]
    assert len(results) == 96 and [r for r in results if r[1] != 200] == []
    for t, _, body in results:
        assert body["prediction"] == expected[t]["prediction"]
        np.testing.assert_allclose(
            [p["probability"] for p in body["predictions"]],
            [p["probability"] for p in expected[t]["predictions"]],
            atol=1e-5,
        )
    assert batcher.calls - calls0 < 96


def wait_state(page, state: str) -> None:
    """Wait for ``document.body.dataset.state`` (a selector: the page's CSP forbids the
    eval that ``wait_for_function`` needs)."""
    page.wait_for_selector(f"body[data-state='{state}']", state="attached", timeout=15000)


def test_web_page_in_headless_chromium(runs, live, tmp_path):
    import httpx
    from PIL import Image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "Chromium is needed for the page test: apt-get install -y chromium "
            "(scripts/setup.sh installs it)"
        )
    from playwright.sync_api import sync_playwright

    image, text = runs.images[4], "123 456 789 2024 314"
    zipped = tmp_path / "archive.png"
    zipped.write_bytes(zip_bytes())
    with httpx.Client(base_url=live.base, timeout=30) as c:
        api_image = c.post("/models/img/predict", **upload(image)).json()
        api_text = c.post("/models/txt/predict", json={"text": text}).json()
        api_zip = c.post("/models/img/predict", **upload(str(zipped)))
    assert api_zip.status_code == 422

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(live.base + "/")
            wait_state(page, "ready")
            assert page.locator("#model option").all_inner_texts() == ["img (image)", "txt (text)"]
            assert "tiny:cnn" in page.inner_text("#info")
            assert page.is_visible("#drop") and not page.is_visible("#text")

            page.set_input_files("#file", image)
            wait_state(page, "explained")  # predicted, then the Grad-CAM map under the bars
            verdict = page.inner_text("#verdict")
            assert api_image["prediction"] in verdict
            assert verdict == f"Prediction: {api_image['prediction']}"
            rows = page.locator("#bars .row")
            assert rows.count() == 3
            assert rows.first.locator(".name").inner_text() == api_image["prediction"]
            assert page.is_visible("#preview") and not page.is_visible("#error")
            assert page.is_visible("#why-img")
            size = page.eval_on_selector("#why-img", "i => [i.naturalWidth, i.naturalHeight]")
            assert size == [64, 32]  # the 32 px crop beside its map
            page.screenshot(path=str(shot), full_page=True)

            page.select_option("#model", "txt")
            page.wait_for_selector("#text", state="visible")
            page.fill("#text", text)
            with page.expect_response(lambda r: "/models/txt/predict" in r.url) as answer:
                page.click("#send-text")
            assert answer.value.status == 200
            wait_state(page, "predicted")
            assert page.inner_text("#verdict") == f"Prediction: {api_text['prediction']}"
            assert page.locator("#bars .row").count() == 2
            assert console == [] and errors == []

            # a zip "image": the server's message is shown, the results are hidden
            page.select_option("#model", "img")
            page.wait_for_selector("#drop", state="visible")
            page.set_input_files("#file", str(zipped))
            wait_state(page, "error")
            assert page.is_visible("#error") and not page.is_visible("#results")
            assert page.inner_text("#error") == api_zip.json()["detail"]
        finally:
            browser.close()
    assert errors == []
    # the only console message: Chromium's own note of the 422 answer
    assert [t for t, _ in console] == ["error"] and "422" in console[0][1], console
    assert requests and all(
        u.startswith(live.base + "/") or u.startswith(("blob:", "data:")) for u in requests
    ), requests
    assert any(u.endswith("/models/img/predict?top_k=5") for u in requests)
    assert any(u.endswith("/models/img/explain") for u in requests)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape[1] == 1000 and pixels.std() > 5 and (pixels < 128).mean() > 0.005


@pytest.fixture(autouse=True, scope="module")
def _no_proxy():
    """httpx must reach the loopback server directly, whatever the environment says."""
    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.lower() in ("http_proxy", "https_proxy", "all_proxy")
    }
    yield
    os.environ.update(saved)
