"""Load on `captioner serve`: one client at a time vs N concurrent clients; prints one JSON object.

python -m benchmarks.serve_load                      # trains a small checkpoint first (~30 s), ~2 min in all
python -m benchmarks.serve_load --ckpt runs/demo/checkpoints/best.ckpt --clients 16 --requests 2000

Starts the server as a subprocess on 127.0.0.1 (a free port) and sends it single-image
`POST /v1/captions` requests, images taken in turn from a synthetic test set. Phases, each
bounded in requests and in seconds: warm-up; one client at a time (`--single-requests`); then
`--clients` concurrent clients (`--requests` in all). Reports requests/s, p50/p99 latency and
errors per phase, the server's resident memory before and after the concurrent phase, and
`batching_speedup` = concurrent requests/s over one-client requests/s, measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from captioner.data import synth

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: the benchmark must not expose a server


def train_small_checkpoint(workdir: Path) -> tuple[Path, Path]:
    """configs/shapes.yaml (the demo model) trained for one short epoch on a small synthetic set.

    Returns (checkpoint, folder of test images). Enough training for captions of a natural
    length; the benchmark measures serving, not caption quality.
    """
    from captioner.commands.train import cli_main

    data = synth.generate(workdir / "shapes", train=512, val=8, test=32, size=64, seed=0)
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "shapes.yaml"),
            "--data.data_dir",
            str(data),
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(workdir),
            "--checkpoint.monitor",
            "null",
            "--checkpoint.dirpath",
            str(workdir / "checkpoints"),
        ]
    )
    return workdir / "checkpoints" / "best.ckpt", data / "test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def resident_mib(pid: int) -> float:
    """Resident set size of process `pid` (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def wait_healthy(client: httpx.AsyncClient, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {timeout_s} s")


async def load(
    client: httpx.AsyncClient, images: list[bytes], *, clients: int, requests: int, time_limit_s: float, beam_size: int
) -> dict:
    """`clients` concurrent loops sending one image per request until `requests` were sent or time is up."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + time_limit_s

    async def one_client() -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            image = images[sent % len(images)]
            sent += 1
            start = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/captions", files={"images": ("image.png", image, "image/png")}, data={"beam_size": beam_size}
                )
                ok = response.status_code == 200 and "error" not in response.json()["results"][0]
                problem = None if ok else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            if problem is None:
                latencies.append(time.perf_counter() - start)
            else:
                errors[problem] = errors.get(problem, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": sent,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
        if latencies
        else None,
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def run_phases(args: argparse.Namespace, server: subprocess.Popen, port: int, images: list[bytes]) -> dict:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=timeout) as client:
        await wait_healthy(client, server, timeout_s=120)
        common = {"beam_size": args.beam_size}
        warmup = await load(client, images, clients=args.clients, requests=args.warmup, time_limit_s=60, **common)
        single = await load(
            client, images, clients=1, requests=args.single_requests, time_limit_s=args.time_limit, **common
        )
        rss_before = resident_mib(server.pid)
        concurrent = await load(
            client, images, clients=args.clients, requests=args.requests, time_limit_s=args.time_limit, **common
        )
        rss_after = resident_mib(server.pid)
        model = (await client.get("/v1/model")).json()
    return {
        "model": {key: model[key] for key in ("backbone", "grid", "image_size", "vocab_size")},
        "beam_size": args.beam_size,
        "warmup_errors": warmup["errors"],
        "one_client": single,
        "concurrent": concurrent,
        "batching_speedup": round(concurrent["requests_per_s"] / single["requests_per_s"], 2),
        "server_rss_mib_before": round(rss_before, 1),
        "server_rss_mib_after": round(rss_after, 1),
        "server_rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint to serve (default: train a small one first)")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: the synthetic test set)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=2000, help="requests of the concurrent phase (default 2000)")
    parser.add_argument("--single-requests", type=int, default=200, help="requests of the one-client phase")
    parser.add_argument("--warmup", type=int, default=64, help="warm-up requests (default 64)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds at most per phase (default 60)")
    parser.add_argument("--beam-size", type=int, default=3, help="beam size of every request (default 3)")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve_load_") as scratch:
        if args.ckpt is None:
            ckpt, synthetic = train_small_checkpoint(Path(scratch))
        else:
            ckpt, synthetic = (
                args.ckpt,
                synth.generate(Path(scratch) / "shapes", train=1, val=0, test=32, size=64) / "test",
            )
        image_dir = args.images or synthetic
        images = [path.read_bytes() for path in sorted(image_dir.glob("*.png"))[:32]]
        if not images:
            raise SystemExit(f"no .png images in {image_dir}")
        port = free_port()
        command = [sys.executable, "-m", "captioner.cli", "serve", "--ckpt", str(ckpt), "--host", HOST]
        command += ["--port", str(port), "--max-batch", str(args.max_batch), "--log-level", "warning"]
        server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            results = asyncio.run(run_phases(args, server, port, images))
        finally:
            server.terminate()
            server.wait(timeout=30)
    results["cpu_count"] = os.cpu_count()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
