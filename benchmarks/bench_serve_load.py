"""Bounded load test of `rfd serve` on loopback, batching off and on: throughput, latency, no 5xx, exact accounting.

    python benchmarks/bench_serve_load.py [--quick] [--out benchmarks/results/serve_load.json]

Starts `rfd serve` (fmnist-vgg + feature noise at the penultimate layer, torch threads 1, logits output,
--expose-stats) in subprocesses on 127.0.0.1, one per mode: ``batching_off`` (--no-batching: one forward per
request, the server before batching), ``batching_on`` (rfd serve's defaults: --batch-wait-ms 0, --batch-max-rows
256, --fast heap, which keeps freed memory in the server process), ``batching_on_plain`` (the same with --fast
plain: glibc hands freed activations back to the OS) and, to compare, batching with a --compare-wait-ms wait
(default 2 ms). Each mode gets the same --requests
predict requests of --batch images from the same --clients concurrent asyncio clients (compact f32 format; the
body is encoded once, so the clients' cost stays small), sent in 5 rounds (2 with --quick) that interleave the
modes, in rotating order, with the in-process forward runs of the same defended model at the request's batch
size, so that every figure sees the shared machine in the same state; the servers not being measured sit idle.
Then one client per mode sends requests one at a time (the latency of a request that arrives alone, as an
attack's RemoteBlackBox sends them). For each mode it reports status counts (any 5xx fails the run), p50/p90/p99
latency, served images/s, the mean images per forward, the ratio to the in-process throughput at the request's
batch size and, for ``batching_on``, at the mean images per forward it reached (the in-process speed at that
batch relative to the request's, measured back to back after the servers stopped), and checks that the server
charged exactly the images sent to the key and logged every request in its own row. The in-process reference is
plain eager PyTorch in this process; ``in_process_heap`` is the same forward after this process keeps its heap
too (measured last, back to back with the plain one: the setting cannot be undone), and
``served_over_in_process_heap_on`` compares the default server with it, like with like.

Memory: each server's resident size (now and at its peak, /proc) is read once all of them sit idle after their
requests (``server_memory_mib``; ``idle_rss_mib_on`` vs ``idle_rss_mib_on_plain``: what the default's heap keeps).

Where the time goes: the server's per-stage counters (GET /v1/stats, read before and after each round's
concurrent requests, so warm-up and the one-client requests are left out; see rfd.serve.stats) give per request the wall
seconds spent decoding, in admission, queued, in the forward, in the SQLite log write and building the JSON
answer, the forward thread's CPU seconds and the server's process CPU seconds; the clients' CPU seconds are
measured here, and /proc/stat says what other processes of the machine took meanwhile. The served throughput is
the in-process throughput x ``forward_speed`` (the server's forward per image vs in process) x ``model_busy``
(forward seconds / wall seconds); ``gap_on`` says in words what the shortfall of ``batching_on`` is made of. The
clients share the machine with the server: on a 2-core machine the ratio includes their cost.

The query log's own speed (``query_log``): N QueryLog.record calls alone (one transaction each, as without
batching) and the same rows committed 8 per transaction (QueryLog.record_many, as one coalesced step of 8
requests), rows/s each, on a fresh file in the temp folder.

Timing does not depend on the weights: without the trained checkpoint random weights are used (reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.blackbox.remote import encode_float32
from rfd.data.bundled import load_bundled
from rfd.defenses import DefenseSpec, defend
from rfd.models import create_model, save_checkpoint
from rfd.models.fast import keep_heap
from rfd.models.registry import get_entry
from rfd.serve.querylog import LogEntry, QueryLog

MODEL = "fmnist-vgg"
SIGMA = 0.1
KEY = "bench-key"
HEADERS = {"X-API-Key": KEY}
GOAL = 0.8  # served images/s over in-process images/s at the request's batch size, with batching on


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


def forward_times(d: torch.nn.Module, x: torch.Tensor, seconds: float) -> list[float]:
    """Seconds per forward of the defended model ``d`` at batch x.shape[0] (one thread, no HTTP), for ``seconds``."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            d(x)
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 10:
            t0 = time.perf_counter()
            d(x)
            times.append(time.perf_counter() - t0)
    return times


def _speed(batch: int, times: list[float]) -> dict[str, float]:
    med = statistics.median(times)
    return {"batch": batch, "forward_ms_median": 1e3 * med, "images_per_s": batch / med, "forwards": len(times)}


def log_speed(tmp: Path, n: int, batch: int, per_txn: int = 8) -> dict[str, float]:
    """Rows/s of the query log: ``n`` rows of ``batch`` labels, one transaction each, then ``per_txn`` per one."""
    labels = torch.arange(batch) % 10
    flagged = torch.zeros(batch, dtype=torch.bool)
    entry = LogEntry("bench", "0123456789ab", labels, "logits", flagged=flagged)
    out: dict[str, float] = {"rows": n, "labels_per_row": batch, "rows_per_transaction_batched": per_txn}
    for name, group in (("one_per_transaction", 1), ("batched", per_txn)):
        log = QueryLog(tmp / f"log-{name}.sqlite")
        t0 = time.perf_counter()
        if group == 1:
            for _ in range(n):
                log.record(entry.key_name, entry.key_id, labels, "logits", flagged=flagged)
        else:
            for _ in range(n // group):
                log.record_many([entry] * group)
        dt = time.perf_counter() - t0
        log.close()
        out[f"{name}_rows_per_s"] = (n // group) * group / dt
        out[f"{name}_ms_per_transaction"] = 1e3 * dt / (n // group)
    return out


async def load(url: str, body: bytes, requests: int, clients: int) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    headers = {**HEADERS, "content-type": "application/json"}

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


@contextmanager
def serving(cmd: list[str], env: dict[str, str], url: str) -> Iterator[int]:
    """`rfd serve` in a subprocess, up (healthz answers) for the block (which gets its pid), terminated after it."""
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        yield server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _memory_mib(pid: int) -> dict[str, float] | None:
    """Resident memory of process ``pid`` now and at its peak, MiB (Linux /proc; None elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError, ValueError):
        return None


def _machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine have spent busy so far (Linux /proc/stat; None elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _stage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-stage seconds and counts of the measured window (after - before)."""
    return {s: {k: after["stages"][s][k] - before["stages"][s][k] for k in ("seconds", "cpu_seconds", "count")}
            for s in after["stages"]}


async def _window(url: str, body: bytes, n_req: int, clients: int) -> dict[str, Any]:
    """One measured window on one server: its stats before and after, the clients' and the machine's CPU."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        before = (await c.get("/v1/stats", headers=HEADERS)).json()
    ru0, busy0 = resource.getrusage(resource.RUSAGE_SELF), _machine_busy_s()
    latencies, statuses, wall = await load(url, body, n_req, clients)
    ru1, busy1 = resource.getrusage(resource.RUSAGE_SELF), _machine_busy_s()
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        after = (await c.get("/v1/stats", headers=HEADERS)).json()
    return {"latencies": latencies, "statuses": statuses, "wall": wall, "stages": _stage_delta(before, after),
            "forwards": after["forwards"] - before["forwards"], "rows": after["rows"] - before["rows"],
            "server_cpu": after["process_cpu_s"] - before["process_cpu_s"],
            "client_cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "machine_busy": None if busy0 is None or busy1 is None else busy1 - busy0}


def summarize(flags: list[str], windows: list[dict[str, Any]], sequential: tuple[list[float], dict[int, int]],
              charged: int, logged: tuple[int, int], warm: int, batch: int) -> dict[str, Any]:
    """One mode's figures over all its measured windows, and its accounting check (``charged`` images, ``logged``
    (rows, images) against every request sent: warm-up, the windows and the one-client requests)."""
    latencies = [t for w in windows for t in w["latencies"]]
    statuses: dict[int, int] = {}
    for w in windows:
        for k, v in w["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    wall = sum(w["wall"] for w in windows)
    stages = {s: {k: sum(w["stages"][s][k] for w in windows) for k in ("seconds", "cpu_seconds", "count")}
              for s in windows[0]["stages"]}
    forwards = sum(w["forwards"] for w in windows)
    rows = sum(w["rows"] for w in windows)
    server_cpu = sum(w["server_cpu"] for w in windows)
    client_cpu = sum(w["client_cpu"] for w in windows)
    machine = None if any(w["machine_busy"] is None for w in windows) else sum(w["machine_busy"] for w in windows)
    seq_latencies, seq_statuses = sequential
    ok = statuses.get(200, 0)
    n5xx = sum(v for st in (statuses, seq_statuses) for k, v in st.items() if k >= 500 or k < 0)
    total_ok = ok + warm + seq_statuses.get(200, 0)
    return {
        "flags": " ".join(flags),
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "n_5xx_or_failed": n5xx,
        "latency_ms": {"p50": 1e3 * _pct(latencies, 0.50), "p90": 1e3 * _pct(latencies, 0.90),
                       "p99": 1e3 * _pct(latencies, 0.99), "max": 1e3 * max(latencies)},
        "sequential_client": {"requests": len(seq_latencies), "ok": seq_statuses.get(200, 0),
                              "latency_ms_p50": 1e3 * _pct(seq_latencies, 0.50),
                              "latency_ms_p99": 1e3 * _pct(seq_latencies, 0.99)},
        "wall_s": wall, "requests_per_s": ok / wall, "served_images_per_s": ok * batch / wall,
        "forwards": forwards, "mean_rows_per_forward": rows / forwards if forwards else 0.0,
        "server_charged_images": charged, "log_rows": logged[0],
        "accounting_exact": charged == total_ok * batch and logged[0] == total_ok and logged[1] == charged,
        "stage_ms_per_request": {s: 1e3 * v["seconds"] / max(ok, 1) for s, v in stages.items()},
        "forward_ms_per_forward": 1e3 * stages["forward"]["seconds"] / max(forwards, 1),
        "log_ms_per_forward": 1e3 * stages["log"]["seconds"] / max(forwards, 1),
        "model_busy": stages["forward"]["seconds"] / wall,
        # share of the forward's wall time its thread was on a CPU (the rest: waiting for a core or for the GIL)
        "forward_on_cpu": stages["forward"]["cpu_seconds"] / max(stages["forward"]["seconds"], 1e-9),
        "forward_cpu_ms_per_request": 1e3 * stages["forward"]["cpu_seconds"] / max(ok, 1),
        "server_cpu_ms_per_request": 1e3 * server_cpu / max(ok, 1),
        "client_cpu_ms_per_request": 1e3 * client_cpu / max(ok, 1),
        "cpu_cores_busy": (server_cpu + client_cpu) / wall,
        # what other processes of the machine took meanwhile (another job on a shared machine slows the run)
        "other_processes_cores_busy": None if machine is None else max(0.0, (machine - server_cpu - client_cpu) / wall),
        "_forward_s_per_row": stages["forward"]["seconds"] / max(rows, 1),
    }


def _gap(r: dict[str, Any], batch: int) -> str:
    """What the batching server's shortfall from in-process throughput is made of, in words, from its run ``r``."""
    ms = r["stage_ms_per_request"]
    outside = r["server_cpu_ms_per_request"] - r["forward_cpu_ms_per_request"]
    at_rows = r["in_process_at_mean_rows_per_forward"]
    other = r["other_processes_cores_busy"]
    return (f"served = in-process at batch {batch} x forward_speed {r['forward_speed']:.2f} (the server's forward "
            f"per image vs in process at batch {batch}; in process, heap {'kept' if at_rows['heap'] else 'plain'} as "
            f"in this server, a batch of {at_rows['batch']} runs at {at_rows['relative_to_plain_batch']:.2f} of that "
            f"speed per image, and the forward's thread was on a "
            f"CPU {r['forward_on_cpu']:.0%} of its wall time, waiting for the GIL or a core the rest) x model_busy "
            f"{r['model_busy']:.2f} (share of the wall time the model ran; the rest it waited for requests) = "
            f"{r['served_over_in_process']:.2f}. Per request the server spent {r['server_cpu_ms_per_request']:.2f} ms "
            f"CPU: {r['forward_cpu_ms_per_request']:.2f} in the forward, {outside:.2f} outside it (HTTP, event loop "
            f"and these stages, in wall ms: decode {ms['decode']:.2f}, JSON answer {ms['encode']:.2f}, SQLite log "
            f"{ms['log']:.3f}, admission {ms['admission']:.3f}); the clients {r['client_cpu_ms_per_request']:.2f} ms "
            f"CPU; server + clients kept {r['cpu_cores_busy']:.2f} of 2 cores busy"
            + ("" if other is None else f", other processes {other:.2f}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 requests per mode instead of 2000")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=None, help="requests per mode (default 2000, quick 200)")
    ap.add_argument("--batch", type=int, default=16, help="images per request (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server and the in-process run")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0,
                    help="the batching server's wait in ms (default 0, rfd serve's default)")
    ap.add_argument("--compare-wait-ms", type=float, default=2.0,
                    help="also run the batching server with this wait in ms, to compare (default 2; < 0: skip)")
    ap.add_argument("--batch-max-rows", type=int, default=256, help="the batching server's most rows per forward")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_req = args.requests or (200 if args.quick else 2000)
    images = load_bundled("eval").images
    x = images[: args.batch].contiguous()
    body = json.dumps(encode_float32(x)).encode()
    seconds = 1.0 if args.quick else 5.0

    with tempfile.TemporaryDirectory(prefix="rfd-bench-serve-") as tmpdir:
        tmp = Path(tmpdir)
        ckpt, weights = _checkpoint(tmp)
        model = create_model(MODEL, checkpoint=ckpt) if ckpt is not None else create_model(MODEL)
        qlog = log_speed(tmp, 500 if args.quick else 4000, args.batch)

        (tmp / "keys.yaml").write_text(f"keys:\n  {KEY}:\n    name: bench\n")
        base_cmd = [sys.executable, "-m", "rfd.cli.main", "serve", "--model", MODEL, "--defense", "feature",
                    "--sigma", str(SIGMA), "--keys", str(tmp / "keys.yaml"), "--max-batch", str(max(args.batch, 256)),
                    "--threads", str(args.threads), "--expose-stats", "--quiet"]
        if ckpt is not None:
            base_cmd += ["--checkpoint", str(ckpt)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        batching = ["--batching", "--batch-max-rows", str(args.batch_max_rows), "--batch-wait-ms"]
        modes = {"batching_off": ["--no-batching"], "batching_on": batching + [f"{args.batch_wait_ms:g}"]}
        if args.compare_wait_ms >= 0:
            modes[f"batching_on_wait_{args.compare_wait_ms:g}ms"] = batching + [f"{args.compare_wait_ms:g}"]
        # the defaults with --fast plain: coalesced forwards are large enough for glibc to unmap their freed
        # activations after every forward and fault them in again on the next (rfd.models.fast); the default, heap,
        # keeps them
        modes["batching_on_plain"] = modes["batching_on"] + ["--fast", "plain"]
        names = list(modes)
        urls = {name: f"http://127.0.0.1:{_free_port()}" for name in names}
        warm = min(20, n_req)
        rounds = 2 if args.quick else 5
        windows: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        times16: list[float] = []
        sequential = {}
        charged = {}
        pids = {}
        with contextlib.ExitStack() as stack, defend(model, DefenseSpec(family="feature", sigma=SIGMA)) as d:
            for name in names:  # all servers up at once, idle but for the one being measured
                port = urls[name].rsplit(":", 1)[1]
                pids[name] = stack.enter_context(serving(base_cmd + ["--db", str(tmp / f"{name}.sqlite"), "--port", port]
                                            + modes[name], env, urls[name]))
                asyncio.run(load(urls[name], body, warm, args.clients))  # warm-up, not measured
            for rnd in range(rounds):  # rounds interleave the modes and the in-process runs: each sees the machine
                n = n_req // rounds + (1 if rnd < n_req % rounds else 0)  # in the same state (it is shared)
                times16 += forward_times(d, x, seconds / rounds)
                for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                    windows[name].append(asyncio.run(_window(urls[name], body, n, args.clients)))
            for name in names:
                sequential[name] = asyncio.run(load(urls[name], body, 30 if args.quick else 200, 1))[:2]
                charged[name] = httpx.get(f"{urls[name]}/v1/usage", headers=HEADERS).json()["used"]
            time.sleep(1.0)  # every server idle: what it keeps resident between requests
            memory = {name: _memory_mib(pid) for name, pid in pids.items()}
            stack.close()  # servers stopped: the in-process speed at the coalesced batch size, with no server running
            achieved = {name: max(1, round(sum(w["rows"] for w in windows[name])
                                           / max(1, sum(w["forwards"] for w in windows[name]))))
                        for name in ("batching_on", "batching_on_plain")}
            back = {}  # allocator -> batch -> forward times, back to back and alternating: ratios hold under load
            for heap in (False, True):
                if heap:
                    keep_heap()  # process-wide and for good: the plain figures are all taken by now
                sizes = sorted({args.batch, *achieved.values()})
                back[heap] = {b: [] for b in sizes}
                for _ in range(3):
                    for b in sizes:
                        xb = images.repeat(-(-b // images.shape[0]), 1, 1, 1)[:b].contiguous()
                        back[heap][b] += forward_times(d, xb, seconds / (3 * len(sizes)))
        runs = {}
        for name in names:
            con = sqlite3.connect(tmp / f"{name}.sqlite")
            logged = con.execute("SELECT COUNT(*), SUM(n_images) FROM queries").fetchone()
            con.close()
            runs[name] = summarize(modes[name], windows[name], sequential[name], charged[name], logged, warm,
                                   args.batch)
            r = runs[name]
            r["server_memory_mib"] = memory[name]
            print(f"{name}: {r['served_images_per_s']:.0f} images/s, {r['mean_rows_per_forward']:.1f} rows per "
                  f"forward, p99 {r['latency_ms']['p99']:.1f} ms", file=sys.stderr, flush=True)
    base = _speed(args.batch, times16)
    plain16 = _speed(args.batch, back[False][args.batch])["images_per_s"]

    def in_process_at(batch: int, heap: bool) -> dict[str, Any]:
        """In-process images/s at ``batch`` (heap kept or not): the interleaved batch-16 figure x the back-to-back
        ratio."""
        sp = _speed(batch, back[heap][batch])
        return {"batch": batch, "heap": heap, "images_per_s": base["images_per_s"] * sp["images_per_s"] / plain16,
                "relative_to_plain_batch": sp["images_per_s"] / plain16, "back_to_back": sp}

    base_heap = in_process_at(args.batch, True)
    print(f"in-process: {base['images_per_s']:.0f} images/s at batch {args.batch} "
          f"(heap kept: x{base_heap['relative_to_plain_batch']:.2f})", file=sys.stderr, flush=True)

    for r in runs.values():
        r["served_over_in_process"] = r["served_images_per_s"] / base["images_per_s"]
        r["forward_speed"] = 1.0 / r.pop("_forward_s_per_row") / base["images_per_s"]
    on, off, on_plain = runs["batching_on"], runs["batching_off"], runs["batching_on_plain"]
    for name, heap in (("batching_on", True), ("batching_on_plain", False)):
        at = in_process_at(achieved[name], heap)
        runs[name]["in_process_at_mean_rows_per_forward"] = at
        runs[name]["served_over_in_process_at_mean_rows"] = runs[name]["served_images_per_s"] / at["images_per_s"]
    passed = all(r["n_5xx_or_failed"] == 0 and r["statuses"].get("200") == n_req and r["accounting_exact"]
                 and r["sequential_client"]["ok"] == r["sequential_client"]["requests"] for r in runs.values())
    result = {
        "target": "HTTP serving throughput and latency under concurrent load (loopback), batching off and on",
        "goal": f">= {GOAL}x in-process images/s at batch {args.batch} with batching on, "
                f"{args.clients} clients x {args.batch} images, 0 errors, exact accounting",
        "goal_met": passed and on["served_over_in_process"] >= GOAL,
        "goal_met_like_with_like": passed and on["served_images_per_s"] / base_heap["images_per_s"] >= GOAL,
        "goal_met_with_fast_plain": passed and on_plain["served_over_in_process"] >= GOAL,
        "quick": args.quick, "model": MODEL, "weights": weights, "defense": f"feature, penultimate, sigma {SIGMA}",
        "threads": args.threads, "clients": args.clients, "requests": n_req, "batch": args.batch,
        "batch_wait_ms": args.batch_wait_ms, "batch_max_rows": args.batch_max_rows,
        "served_images_per_s_off": off["served_images_per_s"], "served_images_per_s_on": on["served_images_per_s"],
        "served_over_in_process_off": off["served_over_in_process"],
        "served_over_in_process_on": on["served_over_in_process"],
        "served_over_in_process_heap_on": on["served_images_per_s"] / base_heap["images_per_s"],
        "served_images_per_s_on_plain": on_plain["served_images_per_s"],
        "served_over_in_process_on_plain": on_plain["served_over_in_process"],
        "p99_ms_on_plain": on_plain["latency_ms"]["p99"],
        # what the default's heap costs: the idle server's resident memory over the same server with --fast plain
        "idle_rss_mib_on": (on["server_memory_mib"] or {}).get("rss_mib"),
        "idle_rss_mib_on_plain": (on_plain["server_memory_mib"] or {}).get("rss_mib"),
        "mean_rows_per_forward_on": on["mean_rows_per_forward"],
        "served_over_in_process_at_mean_rows_on": on["served_over_in_process_at_mean_rows"],
        "p99_ms_off": off["latency_ms"]["p99"], "p99_ms_on": on["latency_ms"]["p99"],
        "sequential_p50_ms_off": off["sequential_client"]["latency_ms_p50"],
        "sequential_p50_ms_on": on["sequential_client"]["latency_ms_p50"],
        "n_5xx_or_failed": sum(r["n_5xx_or_failed"] for r in runs.values()),
        "accounting_exact": all(r["accounting_exact"] for r in runs.values()),
        # > 0: another job shared the machine during the run (the server needs about 1.2 of the 2 cores)
        "other_processes_cores_busy": statistics.mean(r["other_processes_cores_busy"] or 0.0 for r in runs.values()),
        "query_log_rows_per_s": qlog["one_per_transaction_rows_per_s"],
        "query_log_rows_per_s_batched": qlog["batched_rows_per_s"],
        "gap_on": _gap(on, args.batch),
        "gap_on_plain": _gap(on_plain, args.batch),
        "in_process": base,
        "in_process_heap": base_heap,
        "query_log": qlog,
        "runs": runs,
        "torch": torch.__version__,
    }
    write_result(result, args.out)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
