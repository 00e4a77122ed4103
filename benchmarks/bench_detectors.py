"""Stateful detectors: Blacklight's speed and memory as its history grows, its cap, kNN's speed, and the
Blacklight settings for 28x28 images.

    python benchmarks/bench_detectors.py [--quick] [--out benchmarks/results/detectors.json] [--only PART ...]

Parts (all by default):

* ``fingerprints``: Blacklight fingerprints per second (SHA-256 per distinct window: the cost that dominates) for a
  batch of 1000 distinct Fashion-MNIST images and for a batch of 1000 near-duplicates (one image + uniform noise of
  0.01), whose windows the batch-wide deduplication hashes once.
* ``history``: Blacklight matching speed (queries/s, observing 1000 real fingerprints of distinct images one call
  at a time, the server's pattern) and memory (RSS growth of a forked child holding the index) with 10^4, 10^5 and
  10^6 past queries in one account, without a cap and with one. Hashing 10^6 real images would take ~8 minutes,
  so the past queries are random fingerprints (50 distinct random 64-bit hashes, as distinct images nearly are:
  they share at most a handful). The cap's effect on detection: a re-sent image is flagged while its original is
  among the last ``cap`` queries and missed once it was evicted.
* ``near_duplicates``: matching speed when the history is an attack's near-duplicates, all sharing most hashes
  (the postings of a query's hashes are as long as the history): 10^3 / 2*10^3 / 10^4 past queries that are
  uniform-noise copies (0.01) of one image (the worst case: every hash is held by ~60% of the history) or a
  Square-like walk; 1000 more observed one call at a time.
* ``knn``: kNN (pixels, k 50) queries/s in calls of 256 and of 1 with 10^3, 10^4 and 10^5 past queries.
* ``settings``: for each (window, stride) and skip_flat: benign false-positive rates of 2000 distinct Fashion-MNIST
  test images (Debian's files if present, else the 2000 bundled ones) and of the re-send stream (each image and,
  later, one slightly changed copy: :func:`rfd.detect.resend_stream`) and, for each kind of change alone (rounding
  to 1/32, brightness x U(0.9, 1.1), a 1-pixel shift), the share of copies flagged; and the share of attack-like queries
  flagged (20 images x 50 queries, each image's first query excluded): probes x + U(-eps, eps) around a fixed x
  (eps 0.01 and 0.05), rfd's NES probes (antithetic x +- 0.01 u, u Gaussian) and a Square-like walk (eps 0.1: vertical-stripe start, then proposals that set one
  random 5x5 square to x +- eps, a third of them accepted).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs

from rfd.data.bundled import load_bundled
from rfd.data.fashion_mnist import load_fashion_mnist
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect import BlacklightDetector, KNNDetector, false_positive_rate, resend_stream

PARTS = ("fingerprints", "history", "near_duplicates", "knn", "settings")
GRID = [(20, 1), (10, 1), (28, 4), (50, 25), (56, 28)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a forked child (its RSS growth is the structure it built; the parent stays small)."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def run() -> None:
        torch.set_num_threads(1)
        child.send(fn(*args))
        child.close()

    p = ctx.Process(target=run)
    p.start()
    out = parent.recv()
    p.join()
    return out


def _random_fps(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(rng.integers(-(2**62), 2**62, size=(n, 50), dtype=np.int64))


def _noise(x: torch.Tensor, n: int, eps: float, g: torch.Generator) -> torch.Tensor:
    """n probes x + U(-eps, eps) (clipped to [0, 1]) around one image x (1, C, H, W)."""
    return (x + (torch.rand(n, *x.shape[1:], generator=g) * 2 - 1) * eps).clamp(0, 1)


def _nes_probes(x: torch.Tensor, n: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """n NES probes around one image x (1, C, H, W), as rfd's NES sends them: antithetic pairs x +- sigma u,
    u ~ N(0, I), clipped to [0, 1]."""
    u = torch.randn((n + 1) // 2, *x.shape[1:], generator=g)
    return torch.cat([(x + sigma * u).clamp(0, 1), (x - sigma * u).clamp(0, 1)])[:n]


def _square_walk(x: torch.Tensor, n: int, eps: float, g: torch.Generator, side: int = 5) -> torch.Tensor:
    """n Square-attack-like queries around x (1, C, H, W): vertical stripes of +-eps, then proposals that set one
    random side x side square to x +- eps (per channel), a third of them accepted (the next ones start from it)."""
    _, c, h, w = x.shape
    stripes = torch.where(torch.rand(1, c, 1, w, generator=g) < 0.5, -eps, eps).expand(1, c, h, w)
    cur = (x + stripes).clamp(0, 1)
    out = [cur]
    for _ in range(n - 1):
        nxt = cur.clone()
        r = int(torch.randint(0, h - side + 1, (1,), generator=g))
        s = int(torch.randint(0, w - side + 1, (1,), generator=g))
        sign = torch.where(torch.rand(1, c, 1, 1, generator=g) < 0.5, -eps, eps)
        nxt[:, :, r: r + side, s: s + side] = (x[:, :, r: r + side, s: s + side] + sign).clamp(0, 1)
        out.append(nxt)
        if float(torch.rand(1, generator=g)) < 1 / 3:
            cur = nxt
    return torch.cat(out)


def _benign_images(n: int) -> tuple[torch.Tensor, str]:
    try:
        test = load_fashion_mnist("test")
        idx = torch.randperm(test.images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        return test.images[idx], "fashion-mnist test (Debian files)"
    except FileNotFoundError:
        both = torch.cat([load_bundled("eval").images, load_bundled("calib").images])
        return both[:n], "bundled eval + calib"


# -- parts ------------------------------------------------------------------------------------------------------
def part_fingerprints(images: torch.Tensor, quick: bool) -> dict[str, Any]:
    det = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=0)
    n = 300 if quick else 1000
    det.signatures(images[:50])  # warm-up
    rows = {}
    g = torch.Generator().manual_seed(0)
    for name, batch in (("distinct", images[:n]), ("near_duplicates", _noise(images[:1], n, 0.01, g))):
        t0 = time.perf_counter()
        det.signatures(batch)
        rows[name] = n / (time.perf_counter() - t0)
    return {"window": 20, "stride": 1, "batch": n, "per_s": rows}


def _history_child(size: int, cap: int | None, queries: torch.Tensor) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    det = BlacklightDetector(DetectorSpec(kind="blacklight", cap=cap), salt_seed=0)
    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    chunk = 100_000
    for i in range(0, size, chunk):
        det.restore(0, _random_fps(min(chunk, size - i), rng))
    fill = time.perf_counter() - t0
    gc.collect()
    mem = _rss_bytes() - rss0
    entries, held = det.index_entries(), det.history_size(0)
    t0 = time.perf_counter()
    flags = [bool(det.observe([0], queries[i: i + 1])[0][0]) for i in range(queries.shape[0])]
    dt = time.perf_counter() - t0
    out = {"history": size, "cap": cap, "kept": det.history_size(0), "rss_mb": mem / 2**20,
           "bytes_per_query": mem / max(held, 1), "index_entries": entries, "fill_s": fill,
           "queries_per_s": queries.shape[0] / dt, "false_flags": sum(flags)}
    if cap is not None:  # the cap's effect: the first timed query re-sent, after cap/2 and after 2*cap more
        first = queries[:1]
        det.restore(0, _random_fps(cap // 2 - queries.shape[0], rng))
        out["resent_within_cap_flagged"] = bool(det.observe([0], first)[0][0])
        det.restore(0, _random_fps(2 * cap, rng))
        f, sc = det.observe([0], first)
        out["resent_after_eviction_flagged"], out["resent_after_eviction_score"] = bool(f[0]), float(sc[0])
    return out


def part_history(images: torch.Tensor, quick: bool) -> list[dict[str, Any]]:
    det = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=0)
    queries = det.signatures(images[-1000:] if not quick else images[-200:])
    sizes = (1_000, 10_000) if quick else (10_000, 100_000, 1_000_000)
    caps = (5_000,) if quick else (10_000, 100_000)
    rows = [_in_child(_history_child, s, None, queries) for s in sizes]
    rows += [_in_child(_history_child, sizes[-1], c, queries) for c in caps]
    return rows


def part_near_duplicates(images: torch.Tensor, quick: bool) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(2)
    det = BlacklightDetector(DetectorSpec(kind="blacklight"), salt_seed=0)
    sizes = (1_000, 2_000) if quick else (1_000, 2_000, 10_000)
    m = 200 if quick else 1000
    rows = []
    for name, make in (("noise_0.01", lambda n: _noise(images[:1], n, 0.01, g)),
                       ("square_walk_0.1", lambda n: _square_walk(images[1:2], n, 0.1, g))):
        sig = det.signatures(make(sizes[-1] + m))
        for size in sizes:
            det.reset()
            det.restore(0, sig[:size])
            t0 = time.perf_counter()
            flags = [bool(det.observe([0], sig[size + i: size + i + 1])[0][0]) for i in range(m)]
            dt = time.perf_counter() - t0
            rows.append({"history": name, "size": size, "queries_per_s": m / dt, "flagged": sum(flags) / m})
    return rows


def part_knn(images: torch.Tensor, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for size in ((1_000, 10_000) if quick else (1_000, 10_000, 100_000)):
        k = KNNDetector(DetectorSpec(kind="knn"), threshold=0.0)
        g = torch.Generator().manual_seed(size)
        for i in range(0, size, 10_000):
            k.restore(0, k.signatures(torch.rand(min(10_000, size - i), 1, 28, 28, generator=g)))
        batch = images[:256]
        sig = k.signatures(batch)
        k.observe([1] * 256, sig)  # warm-up, another account
        reps = 2 if size >= 100_000 else 4
        t0 = time.perf_counter()
        for _ in range(reps):
            k.observe([0] * 256, sig)
        batched = reps * 256 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(32):
            k.observe([0], sig[i: i + 1])
        single = 32 / (time.perf_counter() - t0)
        rows.append({"history": size, "queries_per_s_batch256": batched, "queries_per_s_single": single})
    return rows


def part_settings(benign: torch.Tensor, quick: bool) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    n_img, n_q = (5, 20) if quick else (20, 50)
    attack_imgs = benign[-n_img:]
    streams = {
        "noise_0.01": [_noise(attack_imgs[i: i + 1], n_q, 0.01, g) for i in range(n_img)],
        "noise_0.05": [_noise(attack_imgs[i: i + 1], n_q, 0.05, g) for i in range(n_img)],
        "nes_0.01": [_nes_probes(attack_imgs[i: i + 1], n_q, 0.01, g) for i in range(n_img)],
        "square_0.1": [_square_walk(attack_imgs[i: i + 1], n_q, 0.1, g) for i in range(n_img)],
    }
    distinct = benign[: 300 if quick else 2000]
    resend = resend_stream(distinct, copies=1, seed=3)
    # one kind of change at a time: every original, then every copy (the share of copies flagged)
    n = distinct.shape[0]
    gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    moved = torch.cat([distinct[:, :, :, :1], distinct[:, :, :, :-1]], 3)  # one pixel right, edge replicated
    copies = {"round": torch.round(distinct * 32) / 32, "brightness": (distinct * gain).clamp(0, 1), "shift": moved}
    rows = []
    for window, stride in GRID[:2] if quick else GRID:
        for skip in (True, False):
            spec = DetectorSpec(kind="blacklight", window=window, stride=stride, skip_flat=skip)
            det = BlacklightDetector(spec, salt_seed=1)
            t0 = time.perf_counter()
            _, sc = det.observe(["d"] * distinct.shape[0], det.signatures(distinct))
            per_s = distinct.shape[0] / (time.perf_counter() - t0)
            det.reset()
            b = sc.numpy()
            row: dict[str, Any] = {
                "window": window, "stride": stride, "skip_flat": skip, "windows": (784 - window) // stride + 1,
                "queries_per_s": per_s, "fp_distinct": float((b >= spec.match).mean()),
                "distinct_score_p99": float(np.quantile(b, 0.99)), "distinct_score_max": float(b.max()),
                "fp_resend": false_positive_rate(det, resend),
            }
            for name, c in copies.items():
                det.reset()
                row[f"copies_{name}_flagged"] = float(det.observe(["c"] * (2 * n), det.signatures(
                    torch.cat([distinct, c])))[0][n:].float().mean())
            for name, seqs in streams.items():
                det.reset()
                shared = torch.cat([det.observe([i] * s.shape[0], det.signatures(s))[1][1:]
                                    for i, s in enumerate(seqs)]).numpy()
                row[f"{name}_flagged"] = float((shared >= spec.match).mean())
                row[f"{name}_score_median"] = float(np.median(shared))
            rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    fmt = [lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt[0](r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (checks that every part works)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--only", nargs="*", choices=PARTS, default=None, help="parts to run (default all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = args.only or list(PARTS)
    benign, source = _benign_images(2000)
    result: dict[str, Any] = {"benchmark": "detectors", "quick": args.quick, "threads": args.threads,
                              "benign_images": source}
    t_all = time.perf_counter()
    runs: dict[str, Callable[[torch.Tensor, bool], Any]] = {
        "fingerprints": part_fingerprints, "history": part_history, "near_duplicates": part_near_duplicates,
        "knn": part_knn, "settings": part_settings,
    }
    for part in parts:
        t0 = time.perf_counter()
        out = runs[part](benign, args.quick)
        result[part] = out
        result[f"{part}_s"] = time.perf_counter() - t0
        if isinstance(out, list) and out:
            print(f"\n## {part}\n\n{_table(out)}\n", flush=True)
    if "fingerprints" in result:
        result["blacklight_fingerprints_per_s"] = result["fingerprints"]["per_s"]["distinct"]
        result["blacklight_near_duplicate_fingerprints_per_s"] = result["fingerprints"]["per_s"]["near_duplicates"]
    if "history" in result:
        largest = max(r["history"] for r in result["history"])
        top = next(r for r in result["history"] if r["history"] == largest and r["cap"] is None)
        result["blacklight_queries_per_s_at_largest"] = top["queries_per_s"]
        result["blacklight_rss_mb_at_largest"] = top["rss_mb"]
    result["total_s"] = time.perf_counter() - t_all
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
