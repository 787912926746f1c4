"""The detector on the shared training loop: the stage log of trainable / total parameters,
scikit-learn's ``clone``, exact resume across a stage boundary, and a data-parallel fit
(torchrun, 2 CPU processes, gloo) against one process. Scenes as in test_detect.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_detect import CLASSES, QUICK, SIDE, draw_scene, random_shapes

from headstart.data.boxes import BoxSource, write_boxes
from headstart.tasks.detect import ObjectDetector

TINY_BODY = {"stem": 232, "block1": 1184, "block2": 4672}  # tiny:cnn, BN included
TINY_BN = {"stem": 16, "block1": 32, "block2": 64}  # 2 * channels each


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_scenes")
    rng = np.random.default_rng(0)
    samples = [
        draw_scene(
            root / "img" / f"scene{i:02d}.png",
            SIDE,
            SIDE,
            random_shapes(rng, SIDE, SIDE, 1 + i % 3),
            seed=i,
        )
        for i in range(16)
    ]
    source = BoxSource(samples, list(CLASSES), str(root / "img"))
    return source, write_boxes(source, root / "scenes.json", "coco")


def test_clone_and_get_params():
    from sklearn.base import clone

    det = ObjectDetector("tiny:cnn", strategy="partial", detector="fcos", epochs=3)
    twin = clone(det)
    assert twin is not det and twin.get_params() == det.get_params()
    assert twin.get_params()["detector"] == "fcos"
    twin.set_params(epochs=5, strategy="finetune")
    assert twin.resolved_config().epochs == 5 and twin.resolved_config().strategy == "finetune"
    assert det.resolved_config().epochs == 3
    assert not [k for k in vars(det) if k.endswith("_")]  # __init__ stores arguments only


def test_stage_log_counts_trainable_and_total(scenes, caplog):
    """lp_ft on tiny:cnn: the heads stage trains the new layers only; the finetune stage
    every backbone convolution too, but no BatchNorm weight (frozen on pretrained weights).
    The counts are checked against the hand-computed sizes of tiny:cnn."""
    small = scenes[0].subset(range(4, 8))
    with caplog.at_level(logging.INFO, logger="headstart"):
        det = ObjectDetector("tiny:cnn", strategy="lp_ft", head_epochs=1, **QUICK).fit(small)
    total = sum(p.numel() for p in det.model_.parameters())
    body = sum(TINY_BODY.values())
    assert sum(p.numel() for p in det.model_.backbone.body.parameters()) == body
    heads, full = det.stages_
    assert det.stage_summaries_ is det.stages_
    assert heads["stage"] == "heads" and heads["trainable_groups"] == []
    assert heads["total_params"] == full["total_params"] == total
    assert heads["trainable_params"] == total - body
    assert full["trainable_params"] == total - sum(TINY_BN.values())
    assert full["trainable_groups"] == ["stem", "block1", "block2"] and full["bn"] == "frozen"
    for s in (heads, full):
        assert (
            f"stage {s['stage']}: trainable {s['trainable_params']:,} / {total:,} parameters"
        ) in caplog.text
    # partial, BatchNorm trained on request: block2 whole (its BN weights too)
    part = ObjectDetector(
        "tiny:cnn", strategy="partial", partial_groups=1, bn="train", **QUICK
    ).fit(small)
    (s,) = part.stages_
    assert s["trainable_params"] == total - body + TINY_BODY["block2"] and s["bn"] == "train"
    saved = json.loads(json.dumps(part.run_config()["stages"]))
    assert saved[0]["trainable_params"] == s["trainable_params"] and saved[0]["epochs"] == 1


class Interrupt(Exception):
    pass


def test_resume_across_stages_gives_the_same_weights_exactly(scenes, tmp_path):
    """lp_ft with validation, killed in the first finetune epoch (after the heads stage
    settled, its best weights stored): the resumed fit ends with bit-identical weights and
    history to a fit never interrupted (same process, one thread: no source of
    nondeterminism the checkpoint does not hold)."""
    small = scenes[0].subset(range(8))
    settings = dict(QUICK, strategy="lp_ft", head_epochs=2, epochs=2, val_fraction=0.25)

    def stop(row):
        if row["stage"] == "finetune" and row["epoch"] == 1:
            raise Interrupt

    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        ObjectDetector("tiny:cnn", run_dir=run, **settings).fit(small, callbacks=[stop])
    assert (run / "checkpoints" / "last" / "state.json").is_file()
    seen = []
    det = ObjectDetector("tiny:cnn", run_dir=run, **settings).fit(
        small, resume=True, callbacks=[seen.append]
    )
    assert [(r["stage"], r["epoch"]) for r in seen] == [("finetune", 1), ("finetune", 2)]
    ref = ObjectDetector("tiny:cnn", run_dir=tmp_path / "ref", **settings).fit(small)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ref.history_]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in det.history_] == strip
    want, got = ref.model_.state_dict(), det.model_.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert det.best_ == ref.best_ and det.selection_ == ref.selection_


# ----------------------------------------------------------------------------- DDP
FIT = textwrap.dedent("""
    import json, logging, sys
    import torch
    from headstart.tasks.detect import ObjectDetector
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    det = ObjectDetector("tiny:cnn", detector="fasterrcnn", strategy="finetune", epochs=4,
                         batch_size=batch, image_size=96, fpn_channels=32, lr=3e-3,
                         head_lr=3e-3, early_stopping=0, val_fraction=0.25, num_workers=0,
                         device="cpu", seed=0, run_dir=out).fit(data)
    if det.is_main_process_:
        print("fitted", json.dumps(det.metrics_["validation"]["map_50"]))
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: Path, data: Path, out: Path, procs: int, batch: int):
    args = [str(script), str(data), str(out), str(batch)]
    cmd = (
        [sys.executable, *args]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(procs),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            *args,
        ]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.distributed
def test_two_processes_detect_like_one(scenes, tmp_path):
    """torchrun, 2 CPU processes (gloo) with 2 tiles each against 1 process with 4: the same
    global batches. Both processes end with identical weights (checked in the fit), every
    training tile is seen once per epoch, one process writes the run, and the result
    matches one process within a tolerance: the losses are not bit-equal because
    torchvision normalises each process's loss over its own tiles' sampled anchors and
    proposals (a mean of two means, not the mean over four tiles), and each process draws
    its own RPN / box-head samples. Measured on these scenes: see the report."""
    _, coco = scenes
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _run(script, coco, one, 1, 4)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = _run(script, coco, two, 2, 2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("fitted") == 1, r2.stdout
    assert "data-parallel fit over 2 processes (MULTI_CPU): identical weights" in r2.stderr, (
        r2.stderr[-3000:]
    )
    c1 = json.loads((one / "config.json").read_text())
    c2 = json.loads((two / "config.json").read_text())
    h1, h2 = c1["history"], c2["history"]
    assert len(h1) == len(h2) == 4
    assert all(r["train_items"] == c1["metrics"]["train_tiles"] for r in h1 + h2)
    l1, l2 = [r["train_loss"] for r in h1], [r["train_loss"] for r in h2]
    m1, m2 = c1["metrics"]["validation"]["map_50"], c2["metrics"]["validation"]["map_50"]
    assert l2[-1] < 0.85 * l2[0]  # the 2-process fit trains (12 steps)
    for a, b in zip(l1, l2):
        assert abs(a - b) <= 0.15 * a, (l1, l2)
    assert abs(m1 - m2) <= 0.15, (m1, m2)
    assert c2["stages"][0]["trainable_params"] == c1["stages"][0]["trainable_params"]
    assert (two / "checkpoints" / "last").is_dir() and not list(two.glob(".*.tmp"))
