"""A reader for TensorFlow.js graph models (``model.json`` + binary weight shards), with no
TensorFlow: the GraphDef's nodes (op, inputs, attributes) and the weights as numpy arrays.

``model.json`` holds ``modelTopology`` (a GraphDef in protobuf's JSON mapping: bytes as
base64, 64-bit integers as strings) and ``weightsManifest``: groups of shard files whose
concatenated bytes hold the weights one after the other, in manifest order. A weight is
stored as its ``dtype`` unless ``quantization`` says otherwise: float16, or uint8/uint16 with
an affine ``scale`` and ``min`` (TF.js's ``--quantize_*`` converter options); either way it is
dequantised to its original float32 here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ZooError

_DTYPES = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
    "float16": np.float16,
    "uint8": np.uint8,
    "uint16": np.uint16,
}


@dataclass
class GraphNode:
    """One GraphDef node: its op, inputs (``name`` or ``name:k``) and decoded attributes."""

    name: str
    op: str
    inputs: list[str]
    attr: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        """An attribute as a Python value: strings decoded, lists of ints as ints."""
        if key not in self.attr:
            return default
        return _attr_value(self.attr[key])


@dataclass
class TfjsGraph:
    """A TF.js graph model read into memory."""

    path: Path
    nodes: dict[str, GraphNode]  # in the file's order
    weights: dict[str, np.ndarray]
    signature: dict
    info: dict  # format, generatedBy, convertedBy

    def ops(self, op: str) -> list[GraphNode]:
        return [n for n in self.nodes.values() if n.op == op]

    def consumers(self, name: str) -> list[GraphNode]:
        """Nodes that take ``name`` (any of its outputs) as an input."""
        return [n for n in self.nodes.values() if any(_source(i) == name for i in n.inputs)]

    def producer(self, node: GraphNode, k: int = 0) -> GraphNode:
        """The node behind input ``k`` of ``node``."""
        return self.nodes[_source(node.inputs[k])]

    def weight(self, name: str) -> np.ndarray:
        try:
            return self.weights[name]
        except KeyError:
            raise ZooError(f"{self.path}: no weight named {name!r} in the manifest") from None


def _source(ref: str) -> str:
    """The node name of an input reference (``^ctrl``, ``name:1`` -> ``name``)."""
    return ref.lstrip("^").split(":")[0]


def _attr_value(v: dict):
    if "s" in v:
        return base64.b64decode(v["s"]).decode()
    if "i" in v:
        return int(v["i"])
    if "f" in v:
        return float(v["f"])
    if "b" in v:
        return bool(v["b"])
    if "type" in v:
        return v["type"]
    if "list" in v:
        lst = v["list"]
        if "i" in lst:
            return [int(x) for x in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(x).decode() for x in lst["s"]]
        if "f" in lst:
            return [float(x) for x in lst["f"]]
        return []
    return v


def read_tfjs_graph(model_json: str | Path) -> TfjsGraph:
    """Parse ``model_json`` and its weight shards (beside it); a missing or short shard is a
    ZooError naming the file."""
    path = Path(model_json)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZooError(f"{path}: cannot read the TF.js model ({exc})") from None
    if "modelTopology" not in spec or "weightsManifest" not in spec:
        raise ZooError(f"{path}: not a TF.js graph model (no modelTopology / weightsManifest)")
    nodes = {
        n["name"]: GraphNode(n["name"], n["op"], list(n.get("input", [])), n.get("attr", {}))
        for n in spec["modelTopology"].get("node", [])
    }
    weights: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        blob = b"".join(_read_shard(path.parent / p) for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            array, offset = _take(blob, offset, w, path)
            weights[w["name"]] = array
        if offset != len(blob):
            raise ZooError(
                f"{path}: the shards {group['paths']} hold {len(blob)} bytes, the manifest "
                f"describes {offset}: the files do not belong together"
            )
    info = {k: spec[k] for k in ("format", "generatedBy", "convertedBy") if k in spec}
    return TfjsGraph(path, nodes, weights, spec.get("signature", {}), info)


def _read_shard(shard: Path) -> bytes:
    try:
        return shard.read_bytes()
    except OSError as exc:
        raise ZooError(f"{shard}: cannot read the weight shard ({exc})") from None


def _take(blob: bytes, offset: int, w: dict, path: Path) -> tuple[np.ndarray, int]:
    """Weight ``w`` at ``offset`` of ``blob``, dequantised; and the offset after it."""
    shape = [int(s) for s in w["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = w.get("quantization")
    stored = quant["dtype"] if quant else w["dtype"]
    if stored not in _DTYPES:
        raise ZooError(f"{path}: weight {w['name']!r} is stored as {stored}, not supported")
    dtype = np.dtype(_DTYPES[stored])
    end = offset + count * dtype.itemsize
    if end > len(blob):
        raise ZooError(f"{path}: the weight shards end inside {w['name']!r}: truncated file")
    raw = np.frombuffer(blob, dtype=dtype, count=count, offset=offset)
    if quant and stored in ("uint8", "uint16"):
        array = raw.astype(np.float32) * float(quant["scale"]) + float(quant["min"])
    elif stored == "float16":
        array = raw.astype(np.float32)
    else:
        array = raw.copy()
    return array.reshape(shape), end
