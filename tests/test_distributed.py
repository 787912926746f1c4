"""Data-parallel fits: the same `headstart fit` under torchrun with 2 CPU processes (gloo)
against 1 process, and the sampler that shares an epoch between processes."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEXT_FIT, make_arrays, make_texts, write_folder


@pytest.mark.parametrize(
    "n,batch,world", [(43, 16, 2), (100, 8, 3), (33, 16, 2), (5, 4, 2), (64, 16, 4), (16, 16, 2)]
)
def test_sharded_batches_cover_every_item_once_per_epoch(n, batch, world):
    from headstart.train import ShardedBatchSampler

    for epoch in range(3):
        per_rank = []
        for rank in range(world):
            s = ShardedBatchSampler(n, batch, seed=7, rank=rank, world=world)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        lengths = {len(b) for b in per_rank}
        assert len(lengths) == 1, "every process must take the same number of steps"
        seen = sorted(i for batches in per_rank for b in batches for i in b)
        assert seen == list(range(n)), "each item exactly once per epoch"
        for step in zip(*per_rank):  # a step's batches differ in size by at most one
            sizes = [len(b) for b in step]
            assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
    first = ShardedBatchSampler(n, batch, seed=7, rank=0, world=world)
    second = ShardedBatchSampler(n, batch, seed=7, rank=0, world=world)
    second.set_epoch(1)
    assert list(first) != list(second)  # a new order each epoch


@pytest.mark.parametrize("n,batch,world", [(43, 4, 2), (100, 8, 3), (9, 16, 2), (500, 8, 4)])
def test_length_buckets_under_data_parallel_cover_every_item_once(n, batch, world):
    """Text length bucketing with several processes: every item once per epoch, the same
    number of steps on every process, and a step's items of similar length."""
    import random

    from headstart.train import BucketBatchSampler

    lengths = [random.Random(i).randint(5, 500) for i in range(n)]
    for epoch in range(3):
        per_rank = []
        for rank in range(world):
            s = BucketBatchSampler(lengths, batch, seed=1, rank=rank, world=world, pool=4)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert len(s) == len(per_rank[-1])
        assert len({len(b) for b in per_rank}) == 1
        seen = sorted(i for batches in per_rank for b in batches for i in b)
        assert seen == list(range(n))
        spread = []
        for step in zip(*per_rank):
            sizes = [len(b) for b in step]
            assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
            items = [lengths[i] for b in step for i in b]
            spread.append(max(items) - min(items))
        if n >= 100:  # pools sorted by length: a step spans far less than the whole range
            assert sum(spread) / len(spread) < 0.5 * (max(lengths) - min(lengths))


def test_too_few_items_for_the_processes_is_a_clear_error():
    from headstart.train import ShardedBatchSampler

    with pytest.raises(ValueError, match="fewer processes"):
        ShardedBatchSampler(3, 8, seed=0, rank=0, world=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(
    folder: Path, out: Path, strategy: str, procs: int, batch: int
) -> subprocess.CompletedProcess:
    args = [
        "-m",
        "headstart",
        "fit",
        str(folder),
        "--backbone",
        "tiny:cnn",
        "--strategy",
        strategy,
        "--epochs",
        "3",
        "--head-epochs",
        "3",
        "--lr",
        "0.01",
        "--head-lr",
        "0.01",
        "--batch-size",
        str(batch),
        "--early-stopping",
        "0",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--val-fraction",
        "0.25",
        "--partial-groups",
        "2",
        "--out",
        str(out),
    ]
    if procs > 1:
        cmd = [
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
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["lp_ft", "partial", "gradual"])
def test_two_processes_train_like_one(strategy, tmp_path):
    """2 processes with half the batch each: the same global batch and steps as 1 process.
    Both train; the 2-process run sees every training item once per epoch (its history
    counts the items over both processes); frozen groups cause no DDP error; one process
    writes the run; the validation metrics agree."""
    X, y = make_arrays(96, n_classes=3, seed=1)
    folder = write_folder(tmp_path / "train", X, y)
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _fit(folder, one, strategy, 1, 16)
    r2 = _fit(folder, two, strategy, 2, 8)
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("run: ") == 1, r2.stdout  # one process reports
    # gradients were averaged: both processes end with the same weights (checked in fit)
    assert "data-parallel fit over 2 processes (MULTI_CPU): identical weights" in r2.stderr, (
        r2.stderr[-3000:]
    )
    n_train = 96 - 24
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2) >= 3
    assert all(int(row["train_items"]) == n_train for row in h2), [row["train_items"] for row in h2]
    m1 = json.loads((one / "config.json").read_text())["metrics"]["validation"]
    m2 = json.loads((two / "config.json").read_text())["metrics"]["validation"]
    assert m1["accuracy"] >= 0.9 and m2["accuracy"] >= 0.9
    assert abs(m1["accuracy"] - m2["accuracy"]) <= 0.1
    assert abs(float(h1[-1]["val_loss"]) - float(h2[-1]["val_loss"])) <= 0.25
    stages = json.loads((two / "config.json").read_text())["stages"]
    if strategy == "lp_ft":  # the probe's frozen pass (train and validation parts in one)
        assert "this process computed 48 of 96 items (2 processes)" in r2.stderr  # is shared
    if strategy == "partial":
        assert stages[0]["trainable_params"] < stages[0]["total_params"]
    assert not list(two.glob(".*.tmp")) and (two / "model.safetensors").is_file()


def _sharded_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset

    from headstart.features import compute_features, sharded_passes

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    data = TensorDataset(torch.arange(35.0).reshape(7, 5), torch.zeros(7))
    whole = compute_features(net, data, 2, "cpu", False, 0)
    with sharded_passes():
        shared = compute_features(net, data, 2, "cpu", False, 0)
    torch.save({"whole": whole, "shared": shared}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_sharded_feature_pass_equals_the_whole_pass(tmp_path):
    """Inside sharded_passes each of 2 processes computes every other item (7 items: 4 and
    3); the gathered features equal one process's whole pass, in dataset order."""
    import torch
    import torch.multiprocessing as mp

    out = str(tmp_path / "feats")
    mp.spawn(_sharded_worker, args=(2, f"file://{tmp_path / 'rdzv'}", out), nprocs=2)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert got["shared"].shape == (7, 3)
        assert torch.allclose(got["shared"], got["whole"], atol=1e-6)


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_data_parallel_fit_resumes_after_a_kill(parallel, tmp_path):
    """SIGKILL a 2-process fit after some epochs were checkpointed, rerun it with --resume:
    it continues from the last checkpoint (no epoch run twice, none lost) to the end. Under
    FSDP the checkpoint holds the gathered weights and optimizer moments, cut into shards
    again on resume."""
    import signal
    import time

    X, y = make_arrays(64, n_classes=2, seed=3)
    folder = write_folder(tmp_path / "train", X, y)
    run = tmp_path / "run"
    epochs = 40
    args = [
        "-m",
        "headstart",
        "fit",
        str(folder),
        "--backbone",
        "tiny:cnn",
        "--strategy",
        "finetune",
        "--epochs",
        str(epochs),
        "--lr",
        "0.01",
        "--batch-size",
        "8",
        "--early-stopping",
        "0",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--val-fraction",
        "0.25",
        "--parallel",
        parallel,
        "--out",
        str(run),
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    done_before_kill = 0
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").is_file():
            done_before_kill = len(_history(run))
            if done_before_kill >= 3:
                break
        time.sleep(0.05)
    import psutil  # torchrun's workers may leave its process group: kill the whole tree

    tree = psutil.Process(proc.pid).children(recursive=True)
    for p in [psutil.Process(proc.pid), *tree]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)
    assert 3 <= done_before_kill < epochs, "the fit must be killed midway"
    killed_at = len(_history(run))
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    import re

    found = re.search(r"resuming from .*last: stage 0, epoch (\d+)", again.stderr)
    assert found, again.stderr[-3000:]
    # the checkpoint is written just before history.csv: the kill may fall between them
    assert int(found.group(1)) in (killed_at, killed_at + 1)
    history = _history(run)
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
    assert all(int(r["train_items"]) == 48 for r in history)
    assert "identical weights" in again.stderr
    assert ("FSDP: this process holds" in again.stderr) == (parallel == "fsdp")
    assert json.loads((run / "config.json").read_text())["metrics"]["validation"]["accuracy"] >= 0.9
    # the killed and resumed fit ends with the weights of one never interrupted
    whole = tmp_path / "whole"
    cmd[cmd.index("--master_port") + 1] = str(_free_port())
    cmd[cmd.index("--out") + 1] = str(whole)
    subprocess.run(cmd, capture_output=True, env=env, timeout=600, check=True)
    import torch
    from safetensors.torch import load_file

    resumed, reference = (load_file(str(d / "model.safetensors")) for d in (run, whole))
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.distributed
def test_two_process_text_fit_buckets_by_length_and_sees_every_text_once(tmp_path):
    """Text (tiny:bert) under 2 processes: the length-bucketing sampler shares each epoch,
    so both processes together train on every text exactly once per epoch."""
    import pandas as pd

    texts, labels = make_texts(60, seed=4)
    data = tmp_path / "train.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
    run = tmp_path / "run"
    flags = []
    for key, value in {**TEXT_FIT, "epochs": 3}.items():
        flag = "--" + key.replace("_", "-")
        flags += (
            [flag]
            if value is True
            else [f"--no-{key.replace('_', '-')}"]
            if value is False
            else [flag, str(value)]
        )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "headstart",
        "fit",
        str(data),
        "--task",
        "text",
        "--backbone",
        "tiny:bert",
        "--strategy",
        "finetune",
        *flags,
        "--out",
        str(run),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    history = _history(run)
    assert len(history) == 3 and all(int(r["train_items"]) == 48 for r in history)
    assert "identical weights" in done.stderr


def _launch(args: list[str], procs: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "headstart",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.distributed
@pytest.mark.parametrize(
    "task,strategy", [("image", "lp_ft"), ("image", "gradual"), ("text", "lora")]
)
def test_fsdp_trains_exactly_like_ddp(task, strategy, tmp_path):
    """--parallel fsdp shards every layer group and the head across 2 processes (each
    holds about half the weights while the backbone trains) and computes what DDP computes:
    the same losses every epoch and the same final weights, with frozen groups (the probe,
    gradual unfreezing), BN statistics that train, and LoRA adapters in frozen layers."""
    import torch
    from safetensors.torch import load_file

    if task == "image":
        X, y = make_arrays(96, n_classes=3, seed=1)
        data = write_folder(tmp_path / "train", X, y)
        args = [
            "fit",
            str(data),
            "--backbone",
            "tiny:cnn",
            "--strategy",
            strategy,
            "--epochs",
            "2",
            "--head-epochs",
            "2",
            "--lr",
            "0.01",
            "--head-lr",
            "0.01",
            "--batch-size",
            "8",
            "--early-stopping",
            "0",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--val-fraction",
            "0.25",
            "--bn",
            "train",
        ]
    else:
        import pandas as pd

        texts, labels = make_texts(60, seed=4)
        data = tmp_path / "train.csv"
        pd.DataFrame({"text": texts, "label": labels}).to_csv(data, index=False)
        args = [
            "fit",
            str(data),
            "--task",
            "text",
            "--backbone",
            "tiny:bert",
            "--strategy",
            strategy,
            "--epochs",
            "2",
            "--head-epochs",
            "2",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--early-stopping",
            "0",
            "--no-baseline",
            "--max-length",
            "16",
        ]
    ddp = _launch([*args, "--out", str(tmp_path / "ddp")])
    fsdp = _launch([*args, "--parallel", "fsdp", "--out", str(tmp_path / "fsdp")])
    import re

    held = [
        tuple(int(n.replace(",", "")) for n in m)
        for m in re.findall(
            r"FSDP: this process holds ([\d,]+) of ([\d,]+) parameters", fsdp.stderr
        )
    ]
    assert held and not re.search("FSDP: this process", ddp.stderr), fsdp.stderr[-3000:]
    total = held[0][1]  # per stage that trains the backbone, the 2 shards make the whole
    assert all(t == total and 0 < h < total for h, t in held)
    assert sum(h for h, _ in held[:2]) == total
    assert "(MULTI_CPU, FSDP): identical weights" in fsdp.stderr
    h_ddp, h_fsdp = _history(tmp_path / "ddp"), _history(tmp_path / "fsdp")
    assert len(h_ddp) == len(h_fsdp)
    for a, b in zip(h_ddp, h_fsdp):
        assert a["stage"] == b["stage"] and a["train_items"] == b["train_items"]
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert abs(float(a[key]) - float(b[key])) <= 1e-5, (key, a, b)
    w_ddp = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    w_fsdp = load_file(str(tmp_path / "fsdp" / "model.safetensors"))
    assert w_ddp.keys() == w_fsdp.keys()
    for k in w_ddp:
        assert torch.allclose(w_ddp[k].float(), w_fsdp[k].float(), atol=1e-5), k


def test_fsdp_refuses_fp16_and_warns_on_one_process(tmp_path, caplog):
    from headstart.config import FitConfig
    from headstart.train import Trainer

    class FakeAccelerator:  # what Trainer reads of a 2-process Accelerator
        num_processes = 2
        device = "cpu"

        class distributed_type:
            value = "MULTI_CPU"

    cfg = FitConfig(parallel="fsdp", precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="bf16"):
        Trainer(
            None,
            [],
            None,
            cfg,
            train_set=None,
            val_set=None,
            features=None,
            accelerator=FakeAccelerator(),
        )
    with caplog.at_level("WARNING"):
        Trainer(
            None,
            [],
            None,
            FitConfig(parallel="fsdp", device="cpu"),
            train_set=None,
            val_set=None,
            features=None,
        )
    assert "one process, nothing to shard" in caplog.text


@pytest.mark.distributed
def test_rank_shares_its_feature_passes_between_processes(tmp_path):
    """`torchrun ... -m headstart rank`: each of 2 processes computes half of every
    candidate's forward pass (a random-init one and two cut points of one backbone); the
    one table printed equals the single-process ranking."""
    X, y = make_arrays(60, n_classes=3, seed=2)
    folder = write_folder(tmp_path / "train", X, y)
    args = [
        "rank",
        str(folder),
        "--models",
        "tiny:cnn,tiny:cnn@1,scratch:tiny:cnn",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "headstart", *args, "--feature-cache", str(tmp_path / "cache1")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _launch([*args, "--feature-cache", str(tmp_path / "cache2")])
    # one pass over the training (54) and validation (6) parts together, shared by the cuts
    assert "this process computed 30 of 60 items (2 processes)" in two.stderr, two.stderr[-3000:]
    assert "of 54 items" not in two.stderr and "of 6 items" not in two.stderr
    assert two.stdout.count('"label"') == 3  # one process printed the table

    def scores(out: str) -> dict:
        return {r["label"]: r["scores"] for r in json.loads(out)["rows"] if not r["error"]}

    whole, shared = scores(one.stdout), scores(two.stdout)
    assert whole.keys() == shared.keys() and len(whole) == 3
    for name, values in whole.items():
        assert values == pytest.approx(shared[name], rel=1e-5, abs=1e-6, nan_ok=True), name
    again = _launch([*args, "--feature-cache", str(tmp_path / "cache2")])  # all cached
    assert "this process computed" not in again.stderr
    cached = scores(again.stdout)
    for name, values in shared.items():
        assert values == pytest.approx(cached[name], nan_ok=True), name
