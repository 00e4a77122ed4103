"""Bounded load test of `rfd serve` on loopback: latency, throughput, and no 5xx under concurrent clients.

    python benchmarks/bench_serve_load.py [--quick] [--out benchmarks/results/serve_load.json]

Starts `rfd serve` (fmnist-vgg + feature noise at the penultimate layer, torch threads 1, scores output) in a
subprocess on 127.0.0.1, then --clients concurrent asyncio clients send --requests predict requests of --batch
images each (compact f32 format; the body is encoded once, so the clients' cost stays small). Reports status
counts (any 5xx fails the run), p50/p90/p99 latency, served images/s, and the ratio to the in-process forward
throughput of the same defended model at the same batch size and thread count (measured first, with the server
not yet running). Also checks that the server charged exactly requests x batch images to the key and logged
every request. The clients share the machine with the server: on a 2-core machine the ratio includes their cost.
Timing does not depend on the weights: without the trained checkpoint random weights are used (reported).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.blackbox.remote import encode_float32
from rfd.data.bundled import load_bundled
from rfd.defenses import DefenseSpec, defend
from rfd.models import create_model, save_checkpoint
from rfd.models.registry import get_entry

MODEL = "fmnist-vgg"
SIGMA = 0.1
KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _checkpoint(tmp: Path) -> tuple[Path | None, str]:
    path = get_entry(MODEL).checkpoint_path()
    if path is not None and path.is_file():
        return None, "trained"
    torch.manual_seed(0)
    ckpt = tmp / f"{MODEL}-random.safetensors"
    save_checkpoint(create_model(MODEL, pretrained=False), ckpt)
    return ckpt, "random (no checkpoint; timing does not depend on weights)"


def in_process(ckpt: Path | None, x: torch.Tensor, seconds: float) -> dict[str, float]:
    """Images/s of the defended model's forward at batch x.shape[0], one thread, no HTTP."""
    model = create_model(MODEL, checkpoint=ckpt) if ckpt is not None else create_model(MODEL)
    times = []
    with defend(model, DefenseSpec(family="feature", sigma=SIGMA)) as d, torch.no_grad():
        for _ in range(3):
            d(x)
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 10:
            t0 = time.perf_counter()
            d(x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"forward_ms_median": 1e3 * med, "images_per_s": x.shape[0] / med, "forwards": len(times)}


async def load(url: str, body: bytes, requests: int, clients: int) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    headers = {"X-API-Key": KEY, "content-type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            issued += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", content=body, headers=headers)
                status = r.status_code
            except httpx.HTTPError:
                status = -1  # no answer at all: counted as a failure
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return latencies, statuses, wall


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 requests instead of 2000")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=None, help="requests in all (default 2000, quick 200)")
    ap.add_argument("--batch", type=int, default=16, help="images per request (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the in-process run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_req = args.requests or (200 if args.quick else 2000)
    x = load_bundled("eval").images[: args.batch].contiguous()
    body = json.dumps(encode_float32(x)).encode()

    with tempfile.TemporaryDirectory(prefix="rfd-bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        ckpt, weights = _checkpoint(tmp)
        base = in_process(ckpt, x, seconds=1.0 if args.quick else 5.0)
        print(f"in-process: {base['images_per_s']:.0f} images/s ({base['forward_ms_median']:.2f} ms per batch of "
              f"{args.batch})", file=sys.stderr, flush=True)

        (tmp / "keys.yaml").write_text(f"keys:\n  {KEY}:\n    name: bench\n")
        db = tmp / "queries.sqlite"
        port = _free_port()
        cmd = [sys.executable, "-m", "rfd.cli.main", "serve", "--model", MODEL, "--defense", "feature", "--sigma",
               str(SIGMA), "--keys", str(tmp / "keys.yaml"), "--db", str(db), "--port", str(port),
               "--max-batch", str(max(args.batch, 256)), "--threads", str(args.threads), "--quiet"]
        if ckpt is not None:
            cmd += ["--checkpoint", str(ckpt)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise RuntimeError(f"rfd serve exited with {server.returncode}: {err[-2000:]}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("rfd serve did not come up within 120 s")
                time.sleep(0.2)
            asyncio.run(load(url, body, min(20, n_req), args.clients))  # warm-up, not measured
            warm = min(20, n_req)
            latencies, statuses, wall = asyncio.run(load(url, body, n_req, args.clients))
            charged = httpx.get(f"{url}/v1/usage", headers={"X-API-Key": KEY}).json()["used"]
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        con = sqlite3.connect(db)
        logged = con.execute("SELECT COUNT(*), SUM(n_images) FROM queries").fetchone()
        con.close()

    ok = statuses.get(200, 0)
    n5xx = sum(v for k, v in statuses.items() if k >= 500 or k < 0)
    served = ok * args.batch / wall
    total_ok = ok + warm
    accounting_ok = charged == total_ok * args.batch and logged[0] == total_ok and logged[1] == charged
    result = {
        "target": "HTTP serving throughput and latency under concurrent load (loopback)",
        "quick": args.quick, "model": MODEL, "weights": weights, "defense": f"feature, penultimate, sigma {SIGMA}",
        "threads": args.threads, "clients": args.clients, "requests": n_req, "batch": args.batch,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "n_5xx_or_failed": n5xx,
        "latency_ms": {"p50": 1e3 * _pct(latencies, 0.50), "p90": 1e3 * _pct(latencies, 0.90),
                       "p99": 1e3 * _pct(latencies, 0.99), "max": 1e3 * max(latencies)},
        "wall_s": wall, "requests_per_s": ok / wall, "served_images_per_s": served,
        "in_process": base, "served_over_in_process": served / base["images_per_s"],
        "server_charged_images": charged, "log_rows": logged[0], "accounting_exact": accounting_ok,
        "torch": torch.__version__,
    }
    write_result(result, args.out)
    return 0 if n5xx == 0 and ok == n_req and accounting_ok else 1


if __name__ == "__main__":
    sys.exit(main())
