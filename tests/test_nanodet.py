"""``packaged:nanodet-coco``: the TF.js reader, NanoDet-g rebuilt in PyTorch, its decoding,
the GFL training loss, and - with the real weights - parity with the TF.js graph run by
TensorFlow (``tests/fixtures/nanodet_tf_reference.json``, written by
``scripts/nanodet_tf_reference.py``) and zero-shot ``predict`` from the command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.zoo.base import ZooError
from headstart.zoo.nanodet import (
    COCO_CLASSES,
    INPUT_SIZE,
    NanoDetBackbone,
    NanoDetNet,
    decode,
    preprocess,
)
from headstart.zoo.tfjs_graph import read_tfjs_graph

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "nanodet_tf_reference.json"


# ----------------------------------------------------------------------------- the reader
def write_tfjs(folder: Path, arrays: dict[str, np.ndarray], quantize: str = "float16") -> Path:
    """A TF.js graph model of Const nodes holding ``arrays``, weights in one shard."""
    weights, blobs = [], []
    for name, a in arrays.items():
        entry = {"name": name, "shape": list(a.shape), "dtype": "float32"}
        if quantize == "float16":
            entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            blobs.append(a.astype(np.float16).tobytes())
        elif quantize == "uint8":
            lo, scale = float(a.min()), float(a.max() - a.min()) / 255
            entry["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale}
            blobs.append(np.round((a - lo) / scale).astype(np.uint8).tobytes())
        else:
            blobs.append(a.astype(np.float32).tobytes())
        weights.append(entry)
    (folder / "m.bin").write_bytes(b"".join(blobs))
    spec = {
        "format": "graph-model",
        "modelTopology": {
            "node": [
                {"name": n, "op": "Const", "attr": {"padding": {"s": "U0FNRQ=="}}} for n in arrays
            ]
        },
        "weightsManifest": [{"paths": ["m.bin"], "weights": weights}],
    }
    (folder / "m.json").write_text(json.dumps(spec))
    return folder / "m.json"


@pytest.mark.parametrize("quantize,tol", [("none", 0), ("float16", 1e-3), ("uint8", 0.01)])
def test_reader_dequantises_the_weights(tmp_path, quantize, tol):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(3, 3, 2, 4)).astype(np.float32), "b": np.arange(5.0)}
    graph = read_tfjs_graph(write_tfjs(tmp_path, arrays, quantize))
    assert graph.nodes["a"].get("padding") == "SAME"  # attributes decoded (base64 string)
    for name, a in arrays.items():
        got = graph.weight(name)
        assert got.shape == a.shape and got.dtype == np.float32
        assert np.abs(got - a).max() <= tol * max(1.0, np.abs(a).max())


def test_reader_names_a_truncated_shard(tmp_path):
    path = write_tfjs(tmp_path, {"a": np.ones((4, 4), np.float32)})
    (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:-2])
    with pytest.raises(ZooError, match="truncated"):
        read_tfjs_graph(path)


# ----------------------------------------------------------------------------- network, decode
def test_a_graph_in_another_layout_is_named_as_such(monkeypatch, tmp_path):
    """A convolution whose data_format is not NHWC is refused with that reason, not with a
    stride that matches."""
    import base64

    from headstart.zoo import nanodet, tfjs_graph

    net = NanoDetNet()
    first = net.convolutions()[0]
    b64 = lambda t: base64.b64encode(t.encode()).decode()  # noqa: E731
    nodes, weights = {}, {}
    for i in range(len(net.convolutions())):
        name = "convolution" if i == 0 else f"convolution_{i}"
        attr = {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "data_format": {"s": b64("NCHW")}}
        nodes[name] = tfjs_graph.GraphNode(name, "Conv2D", ["x", f"w{i}"], attr)
        nodes[f"w{i}"] = tfjs_graph.GraphNode(f"w{i}", "Const", [])
        nodes[f"b{i}"] = tfjs_graph.GraphNode(f"b{i}", "Const", [])
        nodes[f"add{i}"] = tfjs_graph.GraphNode(f"add{i}", "BiasAdd", [name, f"b{i}"])
    weights["w0"] = np.zeros((3, 3, 3, first.out_channels), np.float32)
    weights["b0"] = np.zeros(first.out_channels, np.float32)
    graph = tfjs_graph.TfjsGraph(tmp_path / "m.json", nodes, weights, {}, {})
    monkeypatch.setattr(tfjs_graph, "read_tfjs_graph", lambda path: graph)
    with pytest.raises(ZooError, match="NCHW"):
        nanodet.load_tfjs_weights(net, tmp_path / "m.json")


def test_network_shapes_and_contract():
    net = NanoDetNet()
    outs = net(torch.zeros(1, 3, 96, 128))
    assert [tuple(c.shape) for c, _ in outs] == [(1, 80, 12, 16), (1, 80, 6, 8), (1, 80, 3, 4)]
    assert all(r.shape[1] == 44 for _, r in outs)
    assert len(net.convolutions()) == 34  # the graph's Conv2D count
    body = NanoDetBackbone(net)
    assert body.forward(torch.zeros(2, 3, 64, 64)).shape == (2, 512)
    assert [g.name for g in body.groups()] == ["stem", "csp3", "csp4", "csp5", "neck"]
    head_params = sum(p.numel() for p in net.head.parameters())
    assert (
        sum(p.numel() for p in body.parameters())
        == sum(p.numel() for p in net.parameters()) - head_params
    )  # the head is not part of the backbone's modules
    assert body.detection_head() is net.head


def test_decode_one_point_to_its_box():
    """A single confident point at cell (2, 3) of stride 8 whose bins say (1, 2, 3, 4)
    strides: the box is its centre minus/plus those distances."""
    cls = [torch.full((1, 80, s, s), -20.0) for s in (8, 4, 2)]
    reg = [torch.zeros(1, 44, s, s) for s in (8, 4, 2)]
    cls[0][0, 41, 2, 3] = 5.0
    for side, d in enumerate((1, 2, 3, 4)):
        reg[0][0, side * 11 + d, 2, 3] = 30.0  # all the mass on bin d
    out = decode(list(zip(cls, reg)), (64, 64))[0]
    assert out["labels"].tolist() == [41] and COCO_CLASSES[41] == "cup"
    cx, cy = 3.5 * 8, 2.5 * 8
    assert torch.allclose(out["boxes"][0], torch.tensor([cx - 8, cy - 16, cx + 24, cy + 32]))
    assert out["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())


def test_class_layer_keeps_a_source_class():
    from headstart.tasks.detect.nanodet import SourceDetector, class_sources

    assert class_sources(["Person", "tree", "traffic_light"], list(COCO_CLASSES)) == [0, None, 9]
    net = NanoDetNet()
    old = net.head.cls[1].weight[0].clone()
    det = SourceDetector(
        NanoDetBackbone(net), ["tree", "person"], list(COCO_CLASSES), (0,) * 3, (1,) * 3
    )
    assert det.head.cls[1].out_channels == 2
    assert torch.equal(det.head.cls[1].weight[1], old)  # person kept
    assert det.head.cls[1].bias[0].item() == pytest.approx(-4.595)  # tree: the prior


def test_gfl_loss_trains_a_tiny_detector():
    """The loss is finite with and without objects; its box terms fall on one image."""
    from headstart.tasks.detect.nanodet import SourceDetector

    torch.manual_seed(0)
    det = SourceDetector(
        NanoDetBackbone(NanoDetNet()), ["thing"], list(COCO_CLASSES), (0.5,) * 3, (0.25,) * 3
    )
    image = torch.rand(3, 64, 64) * 0.2
    image[:, 16:48, 8:40] = 0.9
    target = {"boxes": torch.tensor([[8.0, 16.0, 40.0, 48.0]]), "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    det.train()
    losses = det([image, image], [target, empty])
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_bbox"] > 0
    opt = torch.optim.AdamW(det.parameters(), lr=1e-3)
    history = []
    for _ in range(30):  # QFL alone may rise: its targets are the IoUs, which grow
        step = det([image], [target])
        history.append({k: float(v.detach()) for k, v in step.items()})
        opt.zero_grad()
        sum(step.values()).backward()
        opt.step()
    assert history[-1]["loss_bbox"] < 0.6 * history[0]["loss_bbox"]
    assert history[-1]["loss_dfl"] < history[0]["loss_dfl"]
    det.eval()
    out = det([image])[0]
    assert out["labels"].min() >= 1  # 1..K, as torchvision's detectors


# ----------------------------------------------------------------------------- real weights
def _reference_script():
    spec = importlib.util.spec_from_file_location(
        "nanodet_ref", ROOT / "scripts" / "nanodet_tf_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _iou(a, b) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    area = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2])
    return float(inter / (area - inter))


@pytest.mark.slow
def test_parity_with_the_tfjs_graph_on_22_images():
    """Every detection (score >= 0.3) TensorFlow's run of the graph made on the 22 images is
    made by the PyTorch rebuild too: same class, box IoU >= 0.9, score within 0.02, and no
    other; the raw maximum class score per level within 1e-3. Astronaut -> person, coffee
    -> cup."""
    from headstart.zoo.nanodet import build_nanodet

    ref = json.loads(FIXTURE.read_text())
    script = _reference_script()
    assert [im["name"] for im in ref["images"]] == list(script.IMAGES) and len(script.IMAGES) == 22
    net = build_nanodet()
    worst_iou, worst_score = 1.0, 0.0
    with torch.inference_mode():
        for im in ref["images"]:
            x = preprocess(script.load_image(im["name"]))
            outs = net(x)
            got = decode(outs, (INPUT_SIZE, INPUT_SIZE), score_threshold=0.3)[0]
            maxes = [float(c.sigmoid().max()) for c, _ in outs]
            assert np.allclose(maxes, im["max_score"], atol=1e-3), im["name"]
            want = im["detections"]
            assert len(got["boxes"]) == len(want), im["name"]
            for d in want:
                box = np.array(d["box"])
                match = [
                    (_iou(box, b.numpy()), float(s))
                    for b, s, lab in zip(got["boxes"], got["scores"], got["labels"])
                    if COCO_CLASSES[int(lab)] == d["label"]
                ]
                assert match, (im["name"], d)
                iou, score = max(match)
                worst_iou, worst_score = (
                    min(worst_iou, iou),
                    max(worst_score, abs(score - d["score"])),
                )
    assert worst_iou >= 0.9 and worst_score <= 0.02, (worst_iou, worst_score)
    labels = {im["name"]: [d["label"] for d in im["detections"]] for im in ref["images"]}
    assert labels["astronaut"][0] == "person" and labels["coffee"][0] == "cup"


@pytest.mark.slow
def test_zero_shot_predict_from_the_command_line(tmp_path, capsys):
    from skimage import data
    from skimage.io import imsave

    from headstart.cli import main

    imsave(tmp_path / "astronaut.png", data.astronaut())
    imsave(tmp_path / "coffee.png", data.coffee())
    out = tmp_path / "boxes.csv"
    assert (
        main(
            [
                "predict",
                "packaged:nanodet-coco",
                str(tmp_path),
                "--out",
                str(out),
                "--min-score",
                "0.4",
            ]
        )
        == 0
    )
    import csv

    rows = list(csv.DictReader(out.open()))
    best = {}
    for r in rows:
        name = Path(r["item"]).stem
        if name not in best or float(r["score"]) > float(best[name]["score"]):
            best[name] = r
    assert best["astronaut"]["label"] == "person" and best["coffee"]["label"] == "cup"
    x0, y0, x1, y1 = (float(best["astronaut"][k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    assert x1 - x0 > 200 and y1 - y0 > 300  # in the 512 px image's pixels, not the 416 input


# ----------------------------------------------------------------------------- the estimator
def squares(folder: Path, n: int = 4, side: int = 64):
    """``n`` scenes of ``side`` px, each with two bright squares (class "square")."""
    from PIL import Image

    from headstart.data.boxes import BoxSample, BoxSource

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        pixels = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
        boxes = []
        for x, y in ((4 + 3 * i, 6), (34, 30 + 2 * i)):
            pixels[y : y + 20, x : x + 20] = (230, 200, 40)
            boxes.append([x, y, x + 20, y + 20])
        path = folder / f"s{i}.png"
        Image.fromarray(pixels).save(path)
        samples.append(BoxSample(str(path), side, side, np.array(boxes), ["square"] * 2))
    return BoxSource(samples, ["square"], str(folder))


def test_fit_neck_and_head_save_load(tmp_path):
    """``partial --partial-groups 1`` trains the neck and the head of the detector source
    (random weights here: ``scratch:``), leaves the CSP backbone as it was, and a saved run
    predicts as the fitted one."""
    from headstart.tasks.detect import ObjectDetector
    from headstart.tasks.detect.nanodet import SourceDetector

    torch.set_num_threads(1)
    source = squares(tmp_path / "scenes")
    det = ObjectDetector(
        "scratch:packaged:nanodet-coco",
        strategy="partial",
        partial_groups=1,
        bn="frozen",
        image_size=64,
        epochs=2,
        batch_size=2,
        early_stopping=0,
        val_fraction=0.0,
        device="cpu",
        seed=0,
    )
    torch.manual_seed(0)
    before = NanoDetBackbone(NanoDetNet()).state_dict()
    det.fit(source)
    assert isinstance(det.model_, SourceDetector)
    assert det.stage_summaries_[0]["trainable_groups"] == ["neck"]
    after = det.model_.backbone.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("csp."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("neck."))
    assert det.model_.head.num_classes == 1
    assert {"loss_qfl", "loss_bbox", "loss_dfl"} <= set(det.history_[0])
    run = det.save(tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["detector"]["arch"] == (
        "scratch:packaged:nanodet-coco"
    )
    paths = [s.path for s in source.samples]
    want = det.predict(paths, score_threshold=0.0)
    got = ObjectDetector.load(run).predict(paths, score_threshold=0.0)
    for a, b in zip(want, got):
        assert np.allclose(a["boxes"], b["boxes"]) and np.allclose(a["scores"], b["scores"])
