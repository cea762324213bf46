"""Load on `captioner serve`: one client at a time vs N concurrent clients; prints one JSON object.

python -m benchmarks.serve_load                      # trains the tests' tiny model first (~1 min), then ~2 min
python -m benchmarks.serve_load --ckpt runs/demo/checkpoints/best.ckpt --clients 16 --requests 2000

Starts the server as a subprocess on 127.0.0.1 (a free port) and sends it single-image
`POST /v1/captions` requests, images taken in turn from a synthetic test set. After a warm-up,
`--rounds` rounds each run one client at a time, then `--clients` concurrent clients, every
phase bounded in requests (`--single-requests`, `--requests` split over the rounds) and in
seconds (`--time-limit`). Reports requests/s, p50/p99 latency and errors of each kind of load,
the server's resident memory before the first concurrent phase and at the end, and
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from captioner.data import synth

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: the benchmark must not expose a server


def train_small_checkpoint(workdir: Path) -> tuple[Path, Path]:
    """The test suite's tiny model (tests/fixtures.py) trained on a small synthetic set, as the tests do.

    Returns (checkpoint, folder of test images). Its captions end after a natural number of
    words; the benchmark measures serving, not caption quality.
    """
    from tests.fixtures import train_tiny_checkpoint

    data = synth.generate(workdir / "shapes", train=24, val=8, test=32, size=64, seed=0)
    return train_tiny_checkpoint(data, workdir / "run"), data / "test"


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


@dataclass
class Phase:
    """What one load phase observed; phases of the same kind add up with `+`."""

    clients: int
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: Phase) -> Phase:
        errors = dict(self.errors)
        for kind, count in other.errors.items():
            errors[kind] = errors.get(kind, 0) + count
        return Phase(
            self.clients,
            self.requests + other.requests,
            self.seconds + other.seconds,
            self.latencies + other.latencies,
            self.words + other.words,
            errors,
        )

    def summary(self) -> dict:
        latencies = sorted(self.latencies)
        return {
            "clients": self.clients,
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(len(latencies) / self.seconds, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)
            if latencies
            else None,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "mean_caption_words": round(statistics.mean(self.words), 1) if self.words else None,
        }


async def load(
    client: httpx.AsyncClient, images: list[bytes], *, clients: int, requests: int, time_limit_s: float, beam_size: int
) -> Phase:
    """`clients` concurrent loops sending one image per request until `requests` were sent or time is up."""
    phase = Phase(clients)
    deadline = time.monotonic() + time_limit_s

    async def one_client() -> None:
        while phase.requests < requests and time.monotonic() < deadline:
            image = images[phase.requests % len(images)]
            phase.requests += 1
            start = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/captions", files={"images": ("image.png", image, "image/png")}, data={"beam_size": beam_size}
                )
                entry = response.json()["results"][0] if response.status_code == 200 else {}
                problem = None if "tokens" in entry else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                problem = type(error).__name__
            if problem is None:
                phase.latencies.append(time.perf_counter() - start)
                phase.words.append(len(entry["tokens"]))
            else:
                phase.errors[problem] = phase.errors.get(problem, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    phase.seconds = time.perf_counter() - start
    return phase


async def run_phases(args: argparse.Namespace, server: subprocess.Popen, port: int, images: list[bytes]) -> dict:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", limits=limits, timeout=timeout) as client:
        await wait_healthy(client, server, timeout_s=120)
        common = {"beam_size": args.beam_size}
        warmup = await load(client, images, clients=args.clients, requests=args.warmup, time_limit_s=60, **common)
        # The two kinds of load alternate in rounds, so a change in the machine's other load
        # (it is shared) weighs on both sides of the ratio alike.
        single, concurrent = Phase(1), Phase(args.clients)
        rss_before = None
        for round_ in range(args.rounds):
            single += await load(
                client,
                images,
                clients=1,
                requests=_share(args.single_requests, args.rounds, round_),
                time_limit_s=args.time_limit,
                **common,
            )
            rss_before = rss_before or resident_mib(server.pid)
            concurrent += await load(
                client,
                images,
                clients=args.clients,
                requests=_share(args.requests, args.rounds, round_),
                time_limit_s=args.time_limit,
                **common,
            )
        rss_after = resident_mib(server.pid)
        model = (await client.get("/v1/model")).json()
    single_summary, concurrent_summary = single.summary(), concurrent.summary()
    return {
        "model": {key: model[key] for key in ("backbone", "grid", "image_size", "vocab_size")},
        "beam_size": args.beam_size,
        "rounds": args.rounds,
        "warmup_errors": sum(warmup.errors.values()),
        "one_client": single_summary,
        "concurrent": concurrent_summary,
        "batching_speedup": round(concurrent_summary["requests_per_s"] / single_summary["requests_per_s"], 2),
        "server_rss_mib_before": round(rss_before, 1),
        "server_rss_mib_after": round(rss_after, 1),
        "server_rss_growth_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
    }


def _share(total: int, rounds: int, index: int) -> int:
    """Round `index`'s part of `total` requests split over `rounds` (the parts add up to `total`)."""
    return total // rounds + (index < total % rounds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="checkpoint to serve (default: train the tiny test model first)")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: the synthetic test set)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=2000, help="requests of the concurrent phase (default 2000)")
    parser.add_argument("--single-requests", type=int, default=200, help="requests of the one-client phase")
    parser.add_argument("--warmup", type=int, default=64, help="warm-up requests (default 64)")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two phases (default 4)")
    parser.add_argument(
        "--time-limit", type=float, default=20.0, help="seconds at most per phase and round (default 20)"
    )
    parser.add_argument("--beam-size", type=int, default=3, help="beam size of every request (default 3)")
    parser.add_argument("--max-batch", type=int, help="the server's --max-batch (default: the server's default)")
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
        command += ["--port", str(port), "--log-level", "warning"]
        command += [] if args.max_batch is None else ["--max-batch", str(args.max_batch)]
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
