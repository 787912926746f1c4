"""export: ONNX and TorchScript files of tiny image and text runs, their parity with the
fitted estimator (dynamic batch, chunked texts, multi-label, LoRA), the sidecar and the ONNX
metadata, a clean interpreter that runs the ONNX file with numpy and onnxruntime alone, the
failure paths, and the CLI.

Every run here is a random-init tiny backbone (``tiny:cnn``, ``tiny:bert``) fitted in a
few seconds; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from headstart import ImageClassifier, TextClassifier
from headstart.cli import main
from headstart.data.images import DataError
from headstart.export import FILENAMES, FORMATS, ExportError, export_model
from headstart.inference import Predictor

from conftest import FAST, TEXT_FIT, make_arrays, write_folder
from conftest import make_multi_label_texts as _make_multi_label_texts
from conftest import make_texts as _make_texts
from text_common import DIGIT_WORDS, LETTER_WORDS

TEXT_FIT = {**TEXT_FIT, "lora_lr": 5e-3}
TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
BLOCKED = [
    "headstart",
    "torch",
    "torchvision",
    "timm",
    "transformers",
    "tokenizers",
    "PIL",
    "sklearn",
    "pandas",
]


def make_texts(n: int, seed: int, max_words: int = 12) -> tuple[list[str], list[str]]:
    """The shared letters/digits texts, with this file's longer word lists."""
    return _make_texts(n, seed, max_words, LETTER_WORDS, DIGIT_WORDS)


def make_multi_label_texts(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    return _make_multi_label_texts(n, seed, 1, 5, LETTER_WORDS, DIGIT_WORDS)


def odd_images(folder: Path) -> list[str]:
    """Images that are not 16x16 RGB PNGs: other sizes and aspect ratios, grey, RGBA with
    transparency, palette, JPEG (the resize, centre crop and conversions are exercised)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    wide = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    paths.append(folder / "wide.png")
    wide.save(paths[-1])
    grey = Image.fromarray(rng.integers(0, 255, (50, 20), dtype=np.uint8), "L")
    paths.append(folder / "grey.png")
    grey.save(paths[-1])
    rgba = rng.integers(0, 255, (30, 30, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0
    paths.append(folder / "alpha.png")
    Image.fromarray(rgba, "RGBA").save(paths[-1])
    paths.append(folder / "palette.gif")
    wide.convert("P").save(paths[-1])
    paths.append(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)).save(paths[-1], quality=90)
    return [str(p) for p in paths]


# ---------------------------------------------------------------------- fitted runs
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_image")
    train = write_folder(root / "train", *make_arrays(n=40, seed=0))
    est = ImageClassifier("tiny:cnn", strategy="finetune", run_dir=root / "run", **FAST)
    est.fit(str(train))
    test = write_folder(root / "test", *make_arrays(n=19, seed=1))
    items = sorted(str(p) for p in test.rglob("*.png")) + odd_images(root / "odd")
    assert len(items) == 24
    return SimpleNamespace(run=root / "run", est=est, items=items, root=root)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_text")
    texts, labels = make_texts(40, seed=0)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(root / "train.csv", index=False)
    est = TextClassifier("tiny:bert", strategy="finetune", run_dir=root / "run", **TEXT_FIT)
    est.fit(str(root / "train.csv"))
    items, _ = make_texts(24, seed=1)
    return SimpleNamespace(run=root / "run", est=est, items=items, root=root)


@pytest.fixture(scope="module")
def image_exports(image_run):
    return {fmt: export_model(image_run.run, fmt) for fmt in FORMATS}


@pytest.fixture(scope="module")
def text_exports(text_run):
    return {fmt: export_model(text_run.run, fmt) for fmt in FORMATS}


def onnx_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------- parity, files
@pytest.mark.parametrize("task", ["image", "text"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_passes_its_parity_check_and_writes_model_and_sidecar(
    task, fmt, image_run, text_run, image_exports, text_exports
):
    run, result = (
        (image_run, image_exports[fmt]) if task == "image" else (text_run, text_exports[fmt])
    )
    path = Path(result.path)
    assert path == run.run / "export" / FILENAMES[fmt] and path.is_file()
    assert result.format == fmt and result.size_bytes == path.stat().st_size > 0
    assert 0.0 <= result.max_abs_diff < TOL and result.tolerance == TOL
    assert result.checked_items == 32  # of the 40 training items (n_check default)
    assert result.checked_on == run.est.data_origin_
    assert result.batch_sizes == [32, 1]
    assert not list(path.parent.glob(".*.tmp"))  # no temporary file left behind

    sidecar = json.loads(Path(result.sidecar).read_text())
    assert Path(result.sidecar) == path.with_name(path.name + ".json")
    assert sidecar["file"] == path.name and sidecar["task"] == task
    assert sidecar["export_format"] == fmt
    assert sidecar["classes"] == run.est.classes_
    assert sidecar["multi_label"] is False and sidecar["output"]["activation"] == "softmax"
    assert sidecar["parity"]["max_abs_diff"] == result.max_abs_diff
    pre = sidecar["preprocess"]
    assert pre["steps"] and pre["inside_graph"]
    if task == "image":
        assert sidecar["inputs"] == [
            {"name": "image", "dtype": "uint8", "shape": ["batch", 32, 32, 3]}
        ]
        assert pre["input_size"] == 32 and pre["mean"] == list(run.est.preprocess_.mean)
        assert not (path.parent / "tokenizer").exists()
    else:
        assert [i["name"] for i in sidecar["inputs"]] == ["input_ids", "attention_mask"]
        assert all(i["dtype"] == "int64" for i in sidecar["inputs"])
        assert (pre["kind"], pre["max_length"], pre["truncation"], pre["max_chunks"]) == (
            "text",
            16,
            "chunks",
            3,
        )
        assert (path.parent / "tokenizer" / "tokenizer.json").is_file()
        assert result.notes == ["tokenizer saved in tokenizer/"]


@pytest.mark.parametrize("task", ["image", "text"])
def test_onnx_metadata_holds_the_sidecar(task, image_run, text_run, image_exports, text_exports):
    import onnx

    run, result = (
        (image_run, image_exports["onnx"]) if task == "image" else (text_run, text_exports["onnx"])
    )
    model = onnx.load(result.path)
    props = {p.key: p.value for p in model.metadata_props}
    assert "headstart" in props
    meta = json.loads(props["headstart"])
    assert meta["classes"] == run.est.classes_
    sidecar = json.loads(Path(result.sidecar).read_text())
    assert meta == {k: v for k, v in sidecar.items() if k not in ("file", "parity")}
    # the graph's own inputs and output are the ones the metadata names
    assert [i.name for i in model.graph.input] == [i["name"] for i in meta["inputs"]]
    assert [o.name for o in model.graph.output] == [meta["output"]["name"]]


def test_torchscript_file_carries_a_pointer_to_its_sidecar(image_exports):
    import torch

    extra = {"headstart.json": ""}
    torch.jit.load(image_exports["torchscript"].path, map_location="cpu", _extra_files=extra)
    assert "model.torchscript.pt.json" in json.loads(extra["headstart.json"])["note"]


# ---------------------------------------------------------------------- dynamic batch
@pytest.mark.parametrize("task", ["image", "text"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_dynamic_batch_matches_predict_proba(
    task, fmt, image_run, text_run, image_exports, text_exports
):
    run, result = (
        (image_run, image_exports[fmt]) if task == "image" else (text_run, text_exports[fmt])
    )
    predictor = Predictor(run.est)
    if fmt == "onnx":
        session = onnx_session(result.path)
        engine = lambda inputs: session.run(None, inputs)[0]  # noqa: E731
    else:
        import torch

        module = torch.jit.load(result.path, map_location="cpu").eval()

        def engine(inputs):
            with torch.no_grad():
                return module(*[torch.from_numpy(v) for v in inputs.values()]).numpy()

    prepared = predictor.prepare_many(run.items)
    assert not any(isinstance(p, Exception) for p in prepared)
    if task == "text":  # padding chunks are exercised: documents of 1 and of 3 chunks
        assert {len(p) for p in prepared[:17]} >= {1, 3}
    for n in (1, 5, 17):
        got = engine(predictor.collate(prepared[:n]))
        expected = run.est.predict_proba(run.items[:n])
        assert got.shape == expected.shape == (n, 2)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    # the odd images (other sizes, grey, alpha, palette, JPEG) are in the last batch
    got = engine(predictor.collate(prepared))
    np.testing.assert_allclose(got, run.est.predict_proba(run.items), atol=TOL, rtol=0)


@pytest.mark.parametrize("mode", ["mean", "joint"])
def test_blended_text_run_exports_its_encoder_and_predictors_blend(tmp_path, mode):
    """A --blend run: the file is the encoder (parity with the network alone; a joint run's
    file also outputs the features its TF-IDF + features model reads, and what that model
    predicts from them is checked too), and the ONNX- and torch-engine predictors apply the
    TF-IDF side as the estimator does."""
    import onnxruntime as ort

    texts, labels = make_texts(40, seed=0)
    est = TextClassifier(
        "tiny:bert",
        strategy="finetune",
        run_dir=tmp_path / "run",
        **{**TEXT_FIT, "baseline": True, "blend": True, "blend_mode": mode},
    ).fit(texts, labels)
    items = [a + " " + b for a, b in zip(*[make_texts(12, seed=s)[0] for s in (1, 2)])]
    result = export_model(tmp_path / "run", "onnx", check=items)
    assert result.max_abs_diff < TOL
    note = "--blend-mode joint" if mode == "joint" else "blends its TF-IDF baseline in"
    assert any(note in n for n in result.notes)
    meta = json.loads(Path(result.sidecar).read_text())
    session = ort.InferenceSession(result.path, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    if mode == "joint":
        assert meta["features_output"]["name"] == "features"
        assert outputs == ["probabilities", "features"]
    else:
        assert "features_output" not in meta and outputs == ["probabilities"]
    expected = est.predict_proba(items)
    own = est._head_proba(est._features(est._open_unlabeled(items)))
    assert np.abs(expected - own).max() > 1e-3  # the blend moves the probabilities
    for engine in ("onnx", "torch"):
        predictor = Predictor.from_run(tmp_path / "run", engine=engine)
        got = np.stack([r.probabilities for r in predictor.predict(items, batch_size=5)])
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    if mode == "joint":  # a tuple out of the TorchScript file: checked the same way
        assert export_model(tmp_path / "run", "torchscript", check=items).max_abs_diff < TOL


def test_text_sidecar_recipe_reproduces_the_prepared_inputs(text_run, text_exports):
    """The exported tokenizer and the sidecar's numbers are enough to build the inputs."""
    from tokenizers import Tokenizer

    export_dir = Path(text_exports["onnx"].path).parent
    meta = json.loads(Path(text_exports["onnx"].sidecar).read_text())["preprocess"]
    tok = Tokenizer.from_file(str(export_dir / "tokenizer" / "tokenizer.json"))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    body = meta["max_length"] - 2
    predictor = Predictor(text_run.est)
    long_text = " ".join(LETTER_WORDS)  # more than 3 chunks: truncated
    for text in text_run.items[:8] + [long_text]:
        ids = tok.encode(text, add_special_tokens=False).ids
        expected = [[cls] + ids[j : j + body] + [sep] for j in range(0, len(ids), body)][
            : meta["max_chunks"]
        ]
        assert [list(c) for c in predictor.prepare(text)] == expected, text


# ---------------------------------------------------------------------- clean interpreter
CLEAN_SCRIPT = """
import json, sys
BLOCKED = set({blocked!r})

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: the export must run without it")
        return None

sys.meta_path.insert(0, Blocker())
import numpy as np
import onnxruntime as ort

model, folder = sys.argv[1], sys.argv[2]
refused = []
for name in sorted(BLOCKED):
    try:
        __import__(name)
    except ImportError:
        refused.append(name)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = json.loads(session.get_modelmeta().custom_metadata_map["headstart"])
feeds = {{}}
for spec in meta["inputs"]:
    array = np.load(f"{{folder}}/{{spec['name']}}.npy")
    assert str(array.dtype) == spec["dtype"], (spec, array.dtype)
    feeds[spec["name"]] = array
(proba,) = session.run([meta["output"]["name"]], feeds)
np.save(f"{{folder}}/probabilities.npy", proba)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
with open(f"{{folder}}/result.json", "w") as f:
    json.dump({{"classes": meta["classes"], "task": meta["task"], "refused": refused,
               "loaded": loaded}}, f)
"""


@pytest.mark.parametrize("task", ["image", "text"])
def test_onnx_runs_in_a_clean_interpreter_without_headstart(
    task, image_run, text_run, image_exports, text_exports, tmp_path
):
    run, result = (
        (image_run, image_exports["onnx"]) if task == "image" else (text_run, text_exports["onnx"])
    )
    predictor = Predictor(run.est)
    inputs = predictor.collate(predictor.prepare_many(run.items))
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
    script = tmp_path / "script.py"
    script.write_text(CLEAN_SCRIPT.format(blocked=BLOCKED))
    proc = subprocess.run(
        [sys.executable, "-I", str(script), result.path, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["refused"] == sorted(BLOCKED)  # the blocker did block them all
    assert out["loaded"] == []
    assert out["classes"] == run.est.classes_ and out["task"] == task
    proba = np.load(tmp_path / "probabilities.npy")
    np.testing.assert_allclose(proba, run.est.predict_proba(run.items), atol=TOL, rtol=0)


# ---------------------------------------------------------------------- multi-label, LoRA
def test_multi_label_text_run_exports_sigmoids(tmp_path):
    texts, labels = make_multi_label_texts(36, seed=0)
    est = TextClassifier(
        "tiny:bert",
        strategy="feature_extract",
        run_dir=tmp_path / "run",
        **{**TEXT_FIT, "head_epochs": 10},
    ).fit(texts, labels)
    assert est.multi_label_
    check, _ = make_multi_label_texts(12, seed=1)
    result = export_model(tmp_path / "run", "onnx", check=check)
    assert result.max_abs_diff < TOL and result.checked_on == "texts"
    meta = json.loads(Path(result.sidecar).read_text())
    assert meta["multi_label"] is True and meta["output"]["activation"] == "sigmoid"
    predictor = Predictor(est)
    session = onnx_session(result.path)
    got = session.run(None, predictor.collate(predictor.prepare_many(check)))[0]
    expected = est.predict_proba(check)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert not np.allclose(got.sum(1), 1.0)  # sigmoids, not a softmax


def test_lora_text_run_exports_merged_and_matches(tmp_path):
    import onnx

    texts, labels = make_texts(40, seed=0)
    est = TextClassifier(
        "tiny:bert", strategy="lora", lora_r=2, run_dir=tmp_path / "run", **TEXT_FIT
    ).fit(texts, labels)
    assert est.model_.backbone.lora is not None
    check, _ = make_texts(16, seed=2)
    result = export_model(tmp_path / "run", "onnx", check=check)
    assert result.max_abs_diff < TOL and result.checked_items == 16
    model = onnx.load(result.path)
    assert not [i.name for i in model.graph.initializer if "lora" in i.name.lower()]
    predictor = Predictor(est)
    got = onnx_session(result.path).run(None, predictor.collate(predictor.prepare_many(check)))
    np.testing.assert_allclose(got[0], est.predict_proba(check), atol=TOL, rtol=0)
    # the run itself keeps its adapters (merging works on a copy)
    assert any("lora_" in n for n, _ in est.model_.backbone.named_parameters())


# ---------------------------------------------------------------------- failures
def test_run_whose_training_data_is_gone_needs_check(image_run, tmp_path, capsys):
    train = write_folder(tmp_path / "train", *make_arrays(n=24, seed=3))
    ImageClassifier("tiny:cnn", strategy="feature_extract", run_dir=tmp_path / "run", **FAST).fit(
        str(train)
    )
    shutil.rmtree(train)
    with pytest.raises(ExportError) as info:
        export_model(tmp_path / "run", "torchscript")
    msg = str(info.value)
    assert "--check" in msg and str(train) in msg and "gone" in msg
    assert not (tmp_path / "run" / "export" / FILENAMES["torchscript"]).exists()
    assert main(["-q", "export", str(tmp_path / "run"), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "--check" in err and "Traceback" not in err
    # the fix the message gives works
    check = str(image_run.root / "test")
    result = export_model(tmp_path / "run", "torchscript", check=check)
    assert result.max_abs_diff < TOL and result.checked_on == check
    assert result.checked_items == 19


@pytest.mark.parametrize("fmt,tolerance", [("onnx", 0.0), ("torchscript", -1.0)])
def test_failing_parity_leaves_no_model_file(fmt, tolerance, image_run, tmp_path):
    out = tmp_path / "exports" / FILENAMES[fmt]
    with pytest.raises(ExportError) as info:
        export_model(image_run.run, fmt, out=out, tolerance=tolerance)
    assert "does not match" in str(info.value) and f"{tolerance:g}" in str(info.value)
    assert not out.exists()
    assert not out.with_name(out.name + ".json").exists()
    assert list(out.parent.iterdir()) == []  # no temporary file either


def test_bad_check_item_is_named(image_run, tmp_path):
    missing = str(tmp_path / "missing.png")
    with pytest.raises((ExportError, DataError), match="missing.png"):
        export_model(
            image_run.run, "onnx", out=tmp_path / "m.onnx", check=[image_run.items[0], missing]
        )
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format_is_a_value_error(image_run, tmp_path):
    with pytest.raises(ValueError, match="coreml.*onnx, torchscript"):
        export_model(image_run.run, "coreml", out=tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


# ---------------------------------------------------------------------- CLI
def test_cli_export_json(image_run, tmp_path, capsys):
    out = tmp_path / "cli" / "model.onnx"
    code = main(
        [
            "-q",
            "export",
            str(image_run.run),
            "--format",
            "onnx",
            "--json",
            "--out",
            str(out),
            "--n-check",
            "8",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert 0.0 <= result["max_abs_diff"] < TOL
    assert result["path"] == str(out) and out.is_file()
    assert result["format"] == "onnx" and result["checked_items"] == 8
    assert result["sidecar"] == str(out) + ".json" and Path(result["sidecar"]).is_file()
