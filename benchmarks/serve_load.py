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

Then a burst of large images: `--large-clients` clients each send `--large-requests` requests
of `--large-images` greyscale PNGs of `--large-side`² pixels (a pattern that compresses to a
few tens of KB), while the server's resident memory is sampled every 20 ms. Reports its base
(just before), peak, and value `--settle` seconds after the burst, and the answers by status:
503 (the service's decoding budget was spent; Retry-After) and 4xx are refusals, anything
else an error. `--large-clients 0` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
import numpy as np
from PIL import Image

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
        large = await large_burst(client, server, args) if args.large_clients > 0 else None
    single_summary, concurrent_summary = single.summary(), concurrent.summary()
    return {
        "large_images": large,
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


def large_png(side: int) -> bytes:
    """A `side`² greyscale PNG of diagonal stripes: every pixel must be decoded, yet rows repeat
    with a shift, so it compresses to a few tens of KB."""
    row = (np.arange(2 * side) * 255 // (2 * side)).astype(np.uint8)
    pixels = np.lib.stride_tricks.sliding_window_view(row, side)[:side]  # row y is `row` shifted by y
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "L").save(out, format="PNG", optimize=True)
    return out.getvalue()


async def large_burst(client: httpx.AsyncClient, server: subprocess.Popen, args: argparse.Namespace) -> dict:
    """`--large-clients` clients sending `--large-images` large PNGs per request; memory and statuses."""
    png = large_png(args.large_side)
    files = [("images", (f"large{i}.png", png, "image/png")) for i in range(args.large_images)]
    statuses: dict[str, int] = {}
    base = peak = resident_mib(server.pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_mib(server.pid))
            await asyncio.sleep(0.02)

    async def one_client() -> None:
        for _ in range(args.large_requests):
            try:
                response = await client.post("/v1/captions", files=files, timeout=300)
                key = str(response.status_code)
                if response.status_code == 200 and any("error" in r for r in response.json()["results"]):
                    key = "200 with an unread image"
            except httpx.HTTPError as error:
                key = type(error).__name__
            statuses[key] = statuses.get(key, 0) + 1

    sampler = asyncio.create_task(sample())
    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(args.large_clients)))
    seconds = time.perf_counter() - start
    done.set()
    await sampler
    await asyncio.sleep(args.settle)
    after = resident_mib(server.pid)
    refused = sum(n for key, n in statuses.items() if (key.isdigit() and 400 <= int(key) < 500) or key == "503")
    return {
        "clients": args.large_clients,
        "requests": args.large_clients * args.large_requests,
        "images_per_request": args.large_images,
        "image": f"{args.large_side}x{args.large_side} greyscale PNG, {len(png)} bytes",
        "seconds": round(seconds, 2),
        "statuses": statuses,
        "captioned_requests": statuses.get("200", 0),
        "refused_503_or_4xx": refused,
        "errors": sum(statuses.values()) - statuses.get("200", 0) - refused,
        "server_rss_mib_base": round(base, 1),
        "server_rss_mib_peak": round(peak, 1),
        "server_rss_mib_peak_over_base": round(peak - base, 1),
        f"server_rss_mib_after_{args.settle:g}s": round(after, 1),
        "server_rss_after_over_base_pct": round(100 * (after - base) / base, 1),
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
    parser.add_argument("--large-clients", type=int, default=16, help="clients of the large-image burst (default 16)")
    parser.add_argument("--large-requests", type=int, default=1, help="requests per large-image client (default 1)")
    parser.add_argument("--large-images", type=int, default=4, help="large images per request (default 4)")
    parser.add_argument("--large-side", type=int, default=6000, help="side of the large images, pixels (default 6000)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the burst to read memory again")
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
