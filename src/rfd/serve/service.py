"""What the server does, without HTTP: authenticate, check budget and rate, run the defended model, log.

Concurrency: one process, one model, and one *forward step* at a time under the model lock: the detector, the
forward and the log rows of a step run together, steps run one after another. Serializing steps is deliberate:

* the defense draws its noise from one seeded ``torch.Generator``; two forwards at once would interleave
  their draws (and feature-noise hooks hold per-forward state), so answers would depend on thread timing;
* torch already uses all its intra-op threads (``--threads``) for one batched forward; running several at
  once only oversubscribes the CPU;
* a request's log row is committed in its step, before it is answered (a crash loses no charged query).

**Without batching** (``ServeConfig(batching=False)``, ``rfd serve --no-batching``) a step is one request, and
its budget and rate checks run under the model lock too, right before it: the k-th answered request always gets
the k-th draws, so a server restarted with the same noise seed answers the same request sequence identically.

**With batching** (the default) concurrent requests are coalesced (:mod:`rfd.serve.batcher`): a request is
admitted (ban, budget and rate checked, its images *reserved* on its key so that requests in flight cannot
together overrun a budget or a rate window) and queued; one batcher thread forms a step of the queued requests,
waiting at most ``batch_wait_ms`` after the oldest one's arrival, up to ``batch_max_rows`` images, and runs one
forward for all their answered rows. Each request is still answered with exactly its own rows, charged to its own
key and logged in its own row; a request refused at admission (403 budget, 429/413 rate) is never queued, never
forwarded and never charged; if a step fails, its requests are answered 500 and their reservations given back.
The rows of one coalesced forward share one noise draw call: the step's noise is one draw shaped like the whole
batch, so the numbers a request gets depend on which requests shared its step and where in it (which depends on
arrival timing), not in general the draws it would get alone. Every row's noise is still a fresh, independent
draw from the same distribution, so what each answer is distributed like is unchanged. A request alone in its
step (one client at a time) runs exactly as without batching: a sequential request sequence is answered
identically with batching on or off, and by a restarted server with the same seed. The model's rows can also
differ from a lone forward in the last float bits (kernels block by batch size).

Decoding (JSON, base64, PNG) and building the JSON answer happen outside the model lock, in the web server's
threads. :meth:`PredictionService.stats` times every stage (:mod:`rfd.serve.stats`).

A stateful detector (:mod:`rfd.detect`, ``rfd serve --detector``) sees every image of a key before the model, in
request order (within a step too: the step's requests are screened one after another in queue order), under the
key's name as account. What a flag does is the detector's action:

* ``reject``: the image gets no answer (label -1, ``scores`` row null, ``top`` row empty) but is charged and
  logged; the request still answers 200, and ``flagged`` / ``rejected`` (one bool per image) say which;
* ``ban``: the flagged image and every later one of the request are refused, the key's history is deleted and the
  key is banned (stored in the log): every further request answers **403** with ``{"error": "key KEY is banned
  ...", "banned": true}`` until an operator deletes the ban (see :mod:`rfd.serve.querylog`); a later request of
  the key already queued (or in the same step) is refused the same way, uncharged and unlogged;
* ``log``: answered as usual, ``flagged`` says which.

Images are never answered from a cache: every answered image is a fresh forward of the (noisy) model. The
detector's state is persisted in the query log (:meth:`QueryLog.record_many` writes each request's signatures in
the same transaction as its row) and restored at start, bans included.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rfd import __version__
from rfd.blackbox.outputs import OutputSpec, parse_output
from rfd.detect.base import Detector
from rfd.serve.batcher import Batcher
from rfd.serve.decode import decode_images
from rfd.serve.errors import ServeError
from rfd.serve.keys import ApiKey, KeyRing
from rfd.serve.querylog import LogEntry, QueryLog
from rfd.serve.ratelimit import RateLimiter
from rfd.serve.schemas import FORMATS
from rfd.serve.stats import StageStats

__all__ = ["Answered", "ModelInfo", "PredictionService", "ServeConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How the server answers and what it accepts."""

    # what clients get (rfd.blackbox.outputs): logits, probs, topk:K, top1, rounded:D or labels; text or a spec
    output: str | OutputSpec = "logits"
    max_batch: int = 256  # most images in one request
    max_body: int = 8 * 1024 * 1024  # bytes; larger bodies are refused before they are read in full
    body_timeout: float = 30.0  # seconds to receive a whole body; slower clients get 408
    expose_defense_params: bool = False  # /v1/info shows sigma, layers, ... (else only the defense family)
    # coalesce concurrent requests into one forward (see the module docstring); False: one forward per request
    batching: bool = True
    # ms a step waits for more requests after its oldest one arrived; 0 (default): it takes what is queued, so a
    # lone request is never delayed, and under load requests still queue up during the step before
    batch_wait_ms: float = 0.0
    batch_max_rows: int = 256  # most images in one coalesced forward (a larger request runs alone)
    expose_stats: bool = False  # GET /v1/stats (any valid key): per-stage timings of the whole server

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", parse_output(self.output))
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 image, got {self.max_batch}")
        if self.max_body < 1024:
            raise ValueError(f"max_body must be >= 1024 bytes, got {self.max_body}")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be > 0 seconds, got {self.body_timeout}")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ValueError(f"batch_wait_ms must be a finite number of milliseconds >= 0, got {self.batch_wait_ms}")
        if self.batch_max_rows < 1:
            raise ValueError(f"batch_max_rows must be >= 1 image, got {self.batch_max_rows}")


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the server says about its model."""

    name: str  # e.g. the registry name
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # K
    classes: tuple[str, ...] | None = None  # class names, K of them, if known
    defense: Mapping[str, Any] = field(default_factory=lambda: {"family": "none"})  # must hold "family"

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or any(int(s) < 1 for s in self.input_shape):
            raise ValueError(f"input_shape must be (C, H, W) of positive sizes, got {self.input_shape}")
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names given for {self.num_classes} classes")
        if "family" not in self.defense:
            raise ValueError("ModelInfo.defense must name the defense 'family' (e.g. {'family': 'feature', ...})")


@dataclass(frozen=True, eq=False)
class Answered:
    """One request's share of a forward step, before it is rendered as JSON (:meth:`PredictionService.render`)."""

    logits: torch.Tensor  # float (n, K) on the CPU; NaN rows for refused images
    answered: torch.Tensor  # bool (n,): the image was forwarded
    flagged: torch.Tensor  # bool (n,): the detector flagged it (all False without a detector)
    refused: torch.Tensor  # bool (n,): the detector refused it (= ~answered)
    usage: dict[str, Any]  # the key's account right after this request was charged


@dataclass(frozen=True, eq=False)
class _Request:
    """An admitted request on its way to a forward step."""

    key: ApiKey
    x: torch.Tensor  # (n, C, H, W), checked
    future: Future[Answered]
    enqueued: float  # time.perf_counter() seconds when it was admitted
    reserved_at: float | None  # service-clock time of its rate-window reservation; None: charged when answered

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


class PredictionService:
    """Answers predict requests for one (defended) model.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K); a defended model draws fresh noise on
            every forward, so every request gets fresh noise.
        info: model description for /v1/info and input checks.
        keys: who may query.
        log: the query log; per-key usage starts from its totals (budgets survive restarts).
        config: output kind, request limits and batching.
        clock: monotonic seconds, for rate limits (injectable for tests).
        detector: a stateful detector in front of the model (one account per key), restored from ``log``.
    """

    def __init__(self, model: nn.Module, *, info: ModelInfo, keys: KeyRing, log: QueryLog,
                 config: ServeConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 detector: Detector | None = None) -> None:
        self.model = model.eval()
        self.info = info
        self.keys = keys
        self.log = log
        self.config = config or ServeConfig()
        self._clock = clock
        self._lock = threading.Lock()  # the model, the detector and the log: one forward step at a time
        # steps run on the batcher thread or the HTTP server's worker threads, and a new thread does not inherit
        # torch's intra-op thread count (OpenMP keeps it per thread): each applies the creator's count once
        self._threads = torch.get_num_threads()
        self._thread_local = threading.local()
        self._state = threading.Lock()  # the accounts below: used, reserved, rate windows, bans, flags
        self._limiter = RateLimiter()
        totals = log.totals()
        self._used = {k.name: totals.get(k.name, 0) for k in keys}
        self._reserved = {k.name: 0 for k in keys}  # images admitted and not yet charged (batching)
        try:
            self._device = next(model.parameters()).device
        except StopIteration:
            self._device = torch.device("cpu")
        self.detector = detector
        self._banned = log.bans()
        flags = log.flag_totals()
        self._flagged = {k.name: flags.get(k.name, 0) for k in keys}
        if detector is not None:  # a restart keeps every key's history (only the last `cap` if capped)
            for k in keys:
                past = log.history(k.name, last=detector.spec.cap)
                if past is not None:
                    detector.restore(k.name, past)
        for k in keys:
            if k.budget is not None and self._used[k.name] >= k.budget:
                logger.warning("key %r (%s) has used its whole budget of %d images", k.name, k.fingerprint, k.budget)
        self.stage_stats = StageStats()
        self._batcher: Batcher[_Request] | None = None
        if self.config.batching:
            self._batcher = Batcher(self._step, wait_s=self.config.batch_wait_ms / 1e3,
                                    max_rows=self.config.batch_max_rows)

    # -- access -----------------------------------------------------------------------------------------
    def authenticate(self, secret: str | None) -> ApiKey:
        """The key for ``secret``; 401 when it is missing or unknown."""
        if not secret:
            raise ServeError(401, "missing API key: send it in the X-API-Key header",
                             headers={"WWW-Authenticate": "ApiKey"})
        key = self.keys.lookup(secret)
        if key is None:
            raise ServeError(401, "unknown API key", headers={"WWW-Authenticate": "ApiKey"})
        return key

    def usage(self, key: ApiKey) -> dict[str, Any]:
        """The key's account: name, used, budget, remaining (images; answered ones, not those in flight)."""
        used = self._used[key.name]
        out: dict[str, Any] = {"name": key.name, "used": used, "budget": key.budget,
                               "remaining": None if key.budget is None else max(key.budget - used, 0)}
        if self.detector is not None:
            out.update(flagged=self._flagged[key.name], banned=key.name in self._banned)
        return out

    def _banned_error(self, key: ApiKey) -> ServeError:
        return ServeError(403, f"key {key.name!r} is banned: the {self.detector.spec.label if self.detector else ''}"
                               " detector flagged its queries; an operator must lift the ban", extra={"banned": True})

    def _admit(self, key: ApiKey, n: int, now: float) -> None:
        """Refuse ``n`` more images for ``key`` if banned or over budget (403) or over a rate limit (429/413).
        Images reserved by its requests in flight count as used. Caller holds ``_state``."""
        if key.name in self._banned:
            raise self._banned_error(key)
        used = self._used[key.name] + self._reserved[key.name]
        if key.budget is not None and used + n > key.budget:
            left = max(key.budget - used, 0)
            raise ServeError(403, f"query budget exhausted for key {key.name!r}: {used} of {key.budget} images "
                                  f"used, {left} left, this request has {n}",
                             extra={"used": used, "budget": key.budget, "remaining": left})
        decision = self._limiter.check(key.name, key.limits(), n, now)
        if math.isinf(decision.wait):
            raise ServeError(413, f"a batch of {n} images can never pass the rate limit of key {key.name!r} "
                                  f"({decision.limit} images {decision.window.replace('_', ' ')}); "  # type: ignore
                                  "send smaller batches")
        if decision.wait > 0:
            raise ServeError(429, f"rate limit of key {key.name!r}: {decision.limit} images "
                                  f"{decision.window.replace('_', ' ')}; retry in {decision.wait:.3f} s",  # type: ignore
                             headers={"Retry-After": str(max(1, math.ceil(decision.wait)))},
                             extra={"retry_after": decision.wait})

    def _release(self, reqs: Sequence[_Request]) -> None:
        """Give back the reservations of requests that will not be charged. Caller holds ``_state``."""
        for r in reqs:
            if r.reserved_at is not None:
                self._reserved[r.key.name] -= r.n
                self._limiter.remove(r.key.name, r.key.limits(), r.n, r.reserved_at)

    # -- answering ----------------------------------------------------------------------------------------
    def predict_body(self, key: ApiKey, body: bytes) -> dict[str, Any]:
        """Decode a request body (see :func:`rfd.serve.decode.decode_images`) and answer it (blocks)."""
        return self.render(self.submit_body(key, body).result())

    def submit_body(self, key: ApiKey, body: bytes) -> Future[Answered]:
        """Decode a request body and :meth:`submit` it."""
        t0 = time.perf_counter()
        x = decode_images(body, self.info.input_shape, self.config.max_batch)
        self.stage_stats.add("decode", time.perf_counter() - t0)
        return self.submit(key, x)

    def predict(self, key: ApiKey, x: torch.Tensor) -> dict[str, Any]:
        """Answer checked images ``x`` (N, C, H, W) for ``key`` (blocks): N queries charged and logged.

        Returns the JSON answer: output setting, n, labels (N,), usage, and what the setting shows
        (:meth:`rfd.blackbox.outputs.OutputSpec.to_json`: ``scores`` (N, K) for logits / probs / rounded, ``top``
        pairs for topk / top1, nothing more for labels)."""
        return self.render(self.submit(key, x).result())

    def submit(self, key: ApiKey, x: torch.Tensor) -> Future[Answered]:
        """Admit checked images ``x`` (N, C, H, W) for ``key`` and have them answered.

        Raises :class:`ServeError` at once if the request is refused at admission (banned, budget, rate). With
        batching the request is queued and the returned future is answered by the batcher thread (with a
        :class:`ServeError` if the key was banned meanwhile, or the step's error); without batching the whole
        request runs here, under the model lock, and the future is already answered."""
        if self._batcher is None:
            return self._answer_now(key, x)
        t0 = time.perf_counter()
        with self._state:
            now = self._clock()
            self._admit(key, x.shape[0], now)
            req = _Request(key, x, Future(), time.perf_counter(), now)
            self._reserved[key.name] += req.n
            self._limiter.add(key.name, key.limits(), req.n, now)
        self.stage_stats.add("admission", req.enqueued - t0)
        try:
            self._batcher.put(req)
        except RuntimeError:
            with self._state:
                self._release([req])
            raise ServeError(503, "the server is shutting down") from None
        return req.future

    def _answer_now(self, key: ApiKey, x: torch.Tensor) -> Future[Answered]:
        """Without batching: admission and the request's own step under the model lock (the pre-batching server)."""
        with self._lock:
            t0 = time.perf_counter()
            with self._state:
                self._admit(key, x.shape[0], self._clock())
            req = _Request(key, x, Future(), time.perf_counter(), None)
            self.stage_stats.add("admission", req.enqueued - t0)
            self.stage_stats.add("queue", 0.0)
            req.future.set_running_or_notify_cancel()
            result = self._run_step([req])[0]
        if isinstance(result, ServeError):
            raise result
        req.future.set_result(result)
        return req.future

    def _step(self, reqs: Sequence[_Request]) -> None:
        """The batcher's step function: run the queued requests ``reqs`` (in order) and answer their futures."""
        start = time.perf_counter()
        live = [r for r in reqs if r.future.set_running_or_notify_cancel()]
        self.stage_stats.add("queue", sum(start - r.enqueued for r in reqs), len(reqs))
        if len(live) < len(reqs):  # cancelled while queued (the client went away): never answered, not charged
            with self._state:
                self._release([r for r in reqs if r not in live])
        if not live:
            return
        try:
            with self._lock:
                results = self._run_step(live)
        except Exception as exc:  # noqa: BLE001 - each caller gets it (the app answers 500 and logs it)
            with self._state:
                self._release(live)
            for r in live:
                r.future.set_exception(exc)
            return
        for r, res in zip(live, results):
            if isinstance(res, ServeError):
                r.future.set_exception(res)
            else:
                r.future.set_result(res)

    def _run_step(self, reqs: Sequence[_Request]) -> list[Answered | ServeError]:
        """One forward step for admitted requests ``reqs`` (caller holds ``_lock``): screen each request's images
        with the detector in order, forward all answered rows at once, commit one log row per request in one
        transaction, then charge each request. A request whose key is banned by then (by an earlier step, or an
        earlier request of this one) is refused 403, unscreened, unforwarded, unlogged and uncharged. If this
        raises, nothing is charged or logged."""
        if not getattr(self._thread_local, "threads_set", False):  # else the machine's default thread count,
            torch.set_num_threads(self._threads)  # and floats that differ from the caller's in the last bit
            self._thread_local.threads_set = True
        sizes = [r.n for r in reqs]
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        total = bounds[-1]
        x = reqs[0].x if len(reqs) == 1 else torch.cat([r.x for r in reqs])
        xd = x.to(self._device)
        flagged = torch.zeros(total, dtype=torch.bool)
        refused = torch.zeros(total, dtype=torch.bool)
        errors: dict[int, ServeError] = {}
        bans = [False] * len(reqs)
        banned_now: set[str] = set()
        sig: torch.Tensor | None = None
        t0 = time.perf_counter()
        if self.detector is not None:
            sig = self.detector.signatures(xd)
        action = self.detector.spec.action if self.detector is not None else None
        for i, r in enumerate(reqs):  # per request, in queue order: the detector sees each key's images in order
            lo, hi = bounds[i], bounds[i + 1]
            if r.key.name in self._banned or r.key.name in banned_now:
                errors[i] = self._banned_error(r.key)
                refused[lo:hi] = True  # never forwarded
                continue
            if self.detector is None:
                continue
            assert sig is not None
            f, _ = self.detector.observe([r.key.name] * r.n, sig[lo:hi])
            flagged[lo:hi] = f
            if action == "ban" and bool(f.any()):
                bans[i] = True
                banned_now.add(r.key.name)
                refused[lo:hi] = torch.arange(r.n) >= int(torch.nonzero(f)[0])
            elif action == "reject":
                refused[lo:hi] = f
        if self.detector is not None:
            self.stage_stats.add("detector", time.perf_counter() - t0)
        answered = ~refused
        rows = int(answered.sum())
        logits = torch.full((total, self.info.num_classes), float("nan"))
        if rows:
            t0, c0 = time.perf_counter(), time.thread_time()
            with torch.no_grad():
                out_rows = self.model(xd if rows == total else xd[answered.to(self._device)])
            if out_rows.shape != (rows, self.info.num_classes):
                raise RuntimeError(f"model answered shape {tuple(out_rows.shape)} for {rows} "
                                   f"images, expected ({rows}, {self.info.num_classes})")
            logits[answered] = out_rows.float().cpu()
            self.stage_stats.add("forward", time.perf_counter() - t0, cpu=time.thread_time() - c0)
        labels = torch.where(answered, logits.nan_to_num(0.0).argmax(1), torch.full((total,), -1))
        kept = [i for i in range(len(reqs)) if i not in errors]
        if kept:
            t0 = time.perf_counter()
            output = str(self.config.output)
            self.log.record_many([
                LogEntry(reqs[i].key.name, reqs[i].key.fingerprint, labels[bounds[i]:bounds[i + 1]], output,
                         flagged=flagged[bounds[i]:bounds[i + 1]], ban=bans[i],
                         signatures=None if sig is None else sig[bounds[i]:bounds[i + 1]])
                for i in kept])
            self.stage_stats.add("log", time.perf_counter() - t0)
        results: list[Answered | ServeError] = []
        with self._state:  # charge in queue order, so each answer's usage is its key's account right after it
            for i, r in enumerate(reqs):
                if i in errors:
                    self._release([r])
                    results.append(errors[i])
                    continue
                lo, hi = bounds[i], bounds[i + 1]
                if bans[i]:
                    assert self.detector is not None
                    self.detector.reset(r.key.name)
                    self._banned.add(r.key.name)
                if r.reserved_at is None:  # unbatched: the rate window counts it from its answer, as it always did
                    self._limiter.add(r.key.name, r.key.limits(), r.n, self._clock())
                else:
                    self._reserved[r.key.name] -= r.n
                self._used[r.key.name] += r.n
                self._flagged[r.key.name] = self._flagged.get(r.key.name, 0) + int(flagged[lo:hi].sum())
                results.append(Answered(logits[lo:hi], answered[lo:hi], flagged[lo:hi], refused[lo:hi],
                                        self.usage(r.key)))
        self.stage_stats.forward_done(rows, len(kept))
        return results

    def render(self, a: Answered) -> dict[str, Any]:
        """The JSON answer of one request: output setting, n, what the setting shows, flags, usage."""
        out: dict[str, Any] = {"output": str(self.config.output), "n": int(a.logits.shape[0])}
        if bool(a.answered.all()):
            out.update(self.spec.to_json(a.logits))
        else:
            out.update(_with_refused(self.spec.to_json(a.logits[a.answered]), a.answered))
        if self.detector is not None:
            out["flagged"] = a.flagged.tolist()
            out["rejected"] = a.refused.tolist()
        out["usage"] = a.usage
        return out

    @property
    def spec(self) -> OutputSpec:
        """The output setting (parsed by :class:`ServeConfig`)."""
        assert isinstance(self.config.output, OutputSpec)
        return self.config.output

    def describe(self) -> dict[str, Any]:
        """The /v1/info answer. The defense's parameters (e.g. sigma) only if the operator exposes them."""
        defense = dict(self.info.defense) if self.config.expose_defense_params else {"family": self.info.defense["family"]}
        return {
            "model": self.info.name, "input_shape": list(self.info.input_shape), "num_classes": self.info.num_classes,
            "classes": list(self.info.classes) if self.info.classes is not None else None,
            "output": str(self.config.output), "defense": defense, "formats": list(FORMATS),
            "max_batch": self.config.max_batch, "max_body_bytes": self.config.max_body, "version": __version__,
            "detector": None if self.detector is None else self.detector.info(),
        }

    def stats(self) -> dict[str, Any]:
        """Per-stage timings since start (:meth:`rfd.serve.stats.StageStats.snapshot`) and the batching settings;
        nothing per key."""
        return {"batching": self.config.batching, "batch_wait_ms": self.config.batch_wait_ms,
                "batch_max_rows": self.config.batch_max_rows, **self.stage_stats.snapshot()}

    def close(self) -> None:
        """Answer what is queued, then close the log."""
        if self._batcher is not None:
            self._batcher.close()
        with self._lock:
            self.log.close()


def _with_refused(body: dict[str, Any], answered: torch.Tensor) -> dict[str, Any]:
    """The body fields of the answered rows spread over all rows: label -1, ``scores`` null, ``top`` [] where
    refused."""
    rows = torch.nonzero(answered).flatten().tolist()
    n = answered.numel()
    out: dict[str, Any] = {}
    for name, empty in (("labels", -1), ("scores", None), ("top", [])):
        if name in body:
            full: list[Any] = [empty] * n
            for i, v in zip(rows, body[name]):
                full[i] = v
            out[name] = full
    return out
