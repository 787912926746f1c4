"""Load test of `headstart serve` on loopback, against the raw model call per request.

A real run (packaged ImageNet Lite0, `feature_extract` on 300 Fashion-MNIST images, the
default input size) is served by `headstart serve` in its own process (uvicorn). 16
concurrent clients (asyncio + httpx, one process) upload real Fashion-MNIST test PNGs,
2000 requests per configuration. Reported: errors, p50 / p95 latency, requests/s.

Reference, in this process: the same model called once per item, batch 1, on the same
images, as a loop (the "raw model call": no HTTP, no batching). ``prepare + call`` adds
the decoding and resizing the server also does. The ratio is the server's requests/s
over the raw loop's items/s: above 1 means the server's micro-batching more than pays
for HTTP, multipart parsing and JSON.

With ``--api-key KEY`` every configuration also runs with the server requiring that key
(``HEADSTART_API_KEY``; the clients send ``Authorization: Bearer KEY``), alternating with
the open server in this one process; the last column is the keyed server's requests/s
over the open one's.

    python benchmarks/serve_load.py [--requests 2000] [--clients 16] [--run RUN]
                                    [--configs batched,unbatched,onnx] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fashion_mnist_pngs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_run(out: Path) -> Path:
    from headstart.cli import main

    data = Path(tempfile.mkdtemp(prefix="headstart-serve-data-"))
    assert (
        main(
            [
                "-q",
                "datasets",
                "fashion-mnist",
                "--out",
                str(data),
                "--per-class",
                "30",
                "--test-per-class",
                "5",
            ]
        )
        == 0
    )
    assert (
        main(["-q", "fit", str(data / "train"), "--strategy", "feature_extract", "--out", str(out)])
        == 0
    )
    return out


def start_server(
    run: Path, port: int, extra: list[str], api_key: str | None = None
) -> subprocess.Popen:
    import httpx

    env = {k: v for k, v in os.environ.items() if k != "HEADSTART_API_KEY"}
    if api_key:
        env["HEADSTART_API_KEY"] = api_key
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headstart",
            "-q",
            "serve",
            str(run),
            "--port",
            str(port),
            "--preload",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


async def load(
    url: str, payloads: list[bytes], n: int, clients: int, api_key: str | None = None
) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            body = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                r = await http.post(url, files={"file": ("x.png", body, "image/png")})
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as http:
        # warm-up (not counted)
        await asyncio.gather(
            *[
                http.post(url, files={"file": ("x.png", payloads[0], "image/png")})
                for _ in range(clients)
            ]
        )
        t0 = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(clients)])
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "rps": n / wall,
        "wall_s": wall,
    }


def raw_reference(run: Path, files: list[Path], n: int = 300) -> dict:
    from headstart.inference import Predictor

    predictor = Predictor.from_run(run)
    data = [f.read_bytes() for f in files]
    prepared = [predictor.prepare(d) for d in data[:50]]
    for p in prepared[:5]:
        predictor.run([p])  # warm-up
    call, full = [], []
    for i in range(n):
        t0 = time.perf_counter()
        predictor.run([prepared[i % len(prepared)]])
        call.append(time.perf_counter() - t0)
    for i in range(n):
        t0 = time.perf_counter()
        predictor.run([predictor.prepare(data[i % len(data)])])
        full.append(time.perf_counter() - t0)
    return {
        "call_ms": statistics.median(call) * 1e3,
        "call_ips": n / sum(call),
        "full_ms": statistics.median(full) * 1e3,
        "full_ips": n / sum(full),
        "input": predictor.estimator.preprocess_.input_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--run", default=None, help="a run to serve (default: fit one)")
    parser.add_argument("--configs", default="batched,unbatched,onnx")
    parser.add_argument(
        "--api-key",
        default=None,
        help="also run every configuration with "
        "the server requiring this key (the ratio keyed/open is printed)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of each server, alternating open and keyed; the median req/s is reported",
    )
    args = parser.parse_args()
    run = Path(args.run) if args.run else fit_run(Path(tempfile.mkdtemp()) / "run")
    images, _ = fashion_mnist_pngs(100)
    files = sorted(images.rglob("*.png"))
    payloads = [f.read_bytes() for f in files]

    ref = raw_reference(run, files)
    print(f"model: {run} ({ref['input']}px input), {os.cpu_count()} CPU cores")
    print(
        f"raw model call per request (batch 1, in process): median {ref['call_ms']:.1f} ms, "
        f"{ref['call_ips']:.1f} items/s; with decode+resize: median {ref['full_ms']:.1f} ms, "
        f"{ref['full_ips']:.1f} items/s"
    )
    configs = {
        "batched": ["--max-batch", "32"],
        "unbatched": ["--max-batch", "1"],
        "onnx": ["--max-batch", "32", "--engine", "onnx"],
    }
    wanted = [c for c in args.configs.split(",") if c]
    if "onnx" in wanted and not (run / "export" / "model.onnx").is_file():
        from headstart.export import export_model

        export_model(run, "onnx")
    print(
        f"{'server':<14} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'req/s':>7} {'vs raw call':>11}" + ("  keyed/open" if args.api_key else "")
    )
    keys = [None, args.api_key] if args.api_key else [None]
    for name in wanted:
        results: dict = {key: [] for key in keys}
        for _ in range(max(1, args.rounds)):
            for key in keys:  # open and keyed alternate: drift on a shared machine hits both
                port = free_port()
                proc = start_server(run, port, configs[name], key)
                try:
                    results[key].append(
                        asyncio.run(
                            load(
                                f"http://127.0.0.1:{port}/predict",
                                payloads,
                                args.requests,
                                args.clients,
                                key,
                            )
                        )
                    )
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        rps = {key: statistics.median(r["rps"] for r in rs) for key, rs in results.items()}
        for key, rs in results.items():
            r = rs[-1]
            errors = sum(x["errors"] for x in rs)
            label = name + ("+key" if key else "")
            print(
                f"{label:<14} {sum(x['requests'] for x in rs):>8} {errors:>6} "
                f"{statistics.median(x['p50_ms'] for x in rs):>8.1f} "
                f"{statistics.median(x['p95_ms'] for x in rs):>8.1f} {rps[key]:>7.1f} "
                f"{rps[key] / ref['call_ips']:>10.2f}x"
                + (f"  {rps[key] / rps[None]:>10.3f}" if key else "")
                + (f"  first errors: {r['first_errors']}" if errors else "")
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
