"""Frozen passes on the CPU: a batch of images run in chunks of ~CPU_CHUNK_PIXELS pixels
(``headstart.features.forward_in_chunks``, what every frozen pass of headstart runs on the
CPU) against the same batch in one forward call (the reference), in one process.

Each network gets the BatchNorm fold and channels_last of a frozen pass; a batch of
``--batch`` random images (the default eval_batch_size) per resolution; the two ways are
timed alternately, median of ``--repeats``. Packaged Lite0/Lite2 carry their real weights;
the timm architectures are random-init (timing only: no weights are downloaded).

    python benchmarks/cpu_chunks.py [--sizes 64,96,160,224] [--budgets 131072,262144]
Goal: median chunked / whole >= 1.2 over the networks and sizes, none below 0.85 (set after
the first measurements: MobileNetV3 at 64-96 px is 0.87-0.97, the one loss seen).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from headstart import features
from headstart.features import fold_batchnorm, forward_in_chunks


def networks(names: list[str]):
    from headstart.zoo import create_backbone

    for name in names:
        if name.startswith("packaged:"):
            net = create_backbone(name, pretrained=True)
        else:
            import timm

            net = timm.create_model(name, pretrained=False, num_classes=0)
        net.eval()
        net = (fold_batchnorm(net) or net).to(memory_format=torch.channels_last)
        yield name, net


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--models",
        default="packaged:efficientnet_lite0,packaged:efficientnet_lite2,"
        "resnet50,convnext_tiny,mobilenetv3_large_100",
    )
    ap.add_argument("--sizes", default="64,96,160,224")
    ap.add_argument(
        "--budgets",
        default=str(features.CPU_CHUNK_PIXELS),
        help="comma-separated CPU_CHUNK_PIXELS values to try (default: the shipped one)",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    shipped = features.CPU_CHUNK_PIXELS
    print(
        f"== CPU frozen pass, {torch.get_num_threads()} threads, batch {args.batch}; "
        f"shipped CPU_CHUNK_PIXELS = {shipped}"
    )
    ratios = []
    for name, net in networks(args.models.split(",")):
        for side in (int(s) for s in args.sizes.split(",")):
            torch.manual_seed(0)
            x = torch.randn(args.batch, 3, side, side).contiguous(memory_format=torch.channels_last)
            net(x[:2])  # warm-up
            times: dict = {"whole": []}
            times.update({b: [] for b in budgets})
            out = {}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out["whole"] = net(x)
                times["whole"].append(time.perf_counter() - t0)
                for b in budgets:
                    features.CPU_CHUNK_PIXELS = b
                    t0 = time.perf_counter()
                    out[b] = forward_in_chunks(net, x)
                    times[b].append(time.perf_counter() - t0)
            features.CPU_CHUNK_PIXELS = shipped
            whole = statistics.median(times["whole"])
            cells = []
            for b in budgets:
                t = statistics.median(times[b])
                per = max(features.CPU_CHUNK_MIN, b // (side * side))
                diff = (out[b] - out["whole"]).abs().max().item()
                scale = max(1.0, out["whole"].abs().max().item())
                assert diff <= 1e-4 * scale, f"{name} {side}px: chunks changed the output by {diff}"
                cells.append(
                    f"{b}: {1000 * t / args.batch:.2f} ms/item (chunks of {per}) "
                    f"ratio {whole / t:.2f}"
                )
                if b == shipped:
                    ratios.append(whole / t)
            print(
                f"  {name:34s} {side:4d} px  whole {1000 * whole / args.batch:.2f} ms/item; "
                + "; ".join(cells),
                flush=True,
            )
    if ratios:
        print(
            f"  ratio chunked/whole at the shipped budget: median "
            f"{statistics.median(ratios):.2f}, min {min(ratios):.2f}  "
            "(goal: median >= 1.2, min >= 0.85)"
        )


if __name__ == "__main__":
    main()
