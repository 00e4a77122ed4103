"""What the server does, without HTTP: authenticate, check budget and rate, run the defended model, log.

Concurrency: one process, one model, and a single lock around every forward (with its budget check and its
log entry). Serializing forwards is deliberate:

* the defense draws its noise from one seeded ``torch.Generator``; two forwards at once would interleave
  their draws (and feature-noise hooks hold per-forward state), so answers would depend on thread timing.
  With the lock, the k-th answered request always gets the k-th draws: a server restarted with the same
  noise seed answers the same request sequence identically;
* torch already uses all its intra-op threads (``--threads``) for one batched forward; running several at
  once only oversubscribes the CPU;
* the budget check, the forward and the log entry form one step, so two requests of one key cannot both
  pass a check that only one of them fits.

Decoding (JSON, base64, PNG) happens outside the lock, in the web server's worker threads.

A stateful detector (:mod:`rfd.detect`, ``rfd serve --detector``) sees every image of a key before the model, in
request order, under the key's name as account. What a flag does is the detector's action:

* ``reject``: the image gets no answer (label -1, ``scores`` row null, ``top`` row empty) but is charged and
  logged; the request still answers 200, and ``flagged`` / ``rejected`` (one bool per image) say which;
* ``ban``: the flagged image and every later one of the request are refused, the key's history is deleted and the
  key is banned (stored in the log): every further request answers **403** with ``{"error": "key KEY is banned
  ...", "banned": true}`` until an operator deletes the ban (see :mod:`rfd.serve.querylog`);
* ``log``: answered as usual, ``flagged`` says which.

Images are never answered from a cache: every answered image is a fresh forward of the (noisy) model. The
detector's state is persisted in the query log (:meth:`QueryLog.record` writes the request's signatures in the
same transaction as its row) and restored at start, bans included.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rfd import __version__
from rfd.blackbox.outputs import OutputSpec, parse_output
from rfd.detect.base import Detector
from rfd.serve.decode import decode_images
from rfd.serve.errors import ServeError
from rfd.serve.keys import ApiKey, KeyRing
from rfd.serve.querylog import QueryLog
from rfd.serve.ratelimit import RateLimiter
from rfd.serve.schemas import FORMATS

__all__ = ["ModelInfo", "PredictionService", "ServeConfig"]

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", parse_output(self.output))
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 image, got {self.max_batch}")
        if self.max_body < 1024:
            raise ValueError(f"max_body must be >= 1024 bytes, got {self.max_body}")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout must be > 0 seconds, got {self.body_timeout}")


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


class PredictionService:
    """Answers predict requests for one (defended) model.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K); a defended model draws fresh noise on
            every forward, so every request gets fresh noise.
        info: model description for /v1/info and input checks.
        keys: who may query.
        log: the query log; per-key usage starts from its totals (budgets survive restarts).
        config: output kind and request limits.
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
        self._lock = threading.Lock()
        self._limiter = RateLimiter()
        totals = log.totals()
        self._used = {k.name: totals.get(k.name, 0) for k in keys}
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
        """The key's account: name, used, budget, remaining (images)."""
        used = self._used[key.name]
        out: dict[str, Any] = {"name": key.name, "used": used, "budget": key.budget,
                               "remaining": None if key.budget is None else max(key.budget - used, 0)}
        if self.detector is not None:
            out.update(flagged=self._flagged[key.name], banned=key.name in self._banned)
        return out

    def _admit(self, key: ApiKey, n: int, now: float) -> None:
        """Refuse ``n`` more images for ``key`` if over budget (403) or over a rate limit (429/413)."""
        used = self._used[key.name]
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

    # -- answering ----------------------------------------------------------------------------------------
    def predict_body(self, key: ApiKey, body: bytes) -> dict[str, Any]:
        """Decode a request body (see :func:`rfd.serve.decode.decode_images`) and answer it."""
        x = decode_images(body, self.info.input_shape, self.config.max_batch)
        return self.predict(key, x)

    def predict(self, key: ApiKey, x: torch.Tensor) -> dict[str, Any]:
        """Answer checked images ``x`` (N, C, H, W) for ``key``: one forward, N queries charged and logged.

        Returns the JSON answer: output setting, n, labels (N,), usage, and what the setting shows
        (:meth:`rfd.blackbox.outputs.OutputSpec.to_json`: ``scores`` (N, K) for logits / probs / rounded, ``top``
        pairs for topk / top1, nothing more for labels)."""
        n = x.shape[0]
        with self._lock:
            if key.name in self._banned:
                raise ServeError(403, f"key {key.name!r} is banned: the {self.detector.spec.label if self.detector else ''}"
                                      " detector flagged its queries; an operator must lift the ban",
                                 extra={"banned": True})
            self._admit(key, n, self._clock())
            xd = x.to(self._device)
            flagged = refused = torch.zeros(n, dtype=torch.bool)
            sig: torch.Tensor | None = None
            ban = False
            if self.detector is not None:
                sig = self.detector.signatures(xd)
                flagged, _ = self.detector.observe([key.name] * n, sig)
                action = self.detector.spec.action
                if action == "ban" and bool(flagged.any()):
                    ban = True
                    refused = torch.arange(n) >= int(torch.nonzero(flagged)[0])
                elif action == "reject":
                    refused = flagged.clone()
            answered = ~refused
            logits = torch.full((n, self.info.num_classes), float("nan"))
            if bool(answered.any()):
                with torch.no_grad():
                    out_rows = self.model(xd if bool(answered.all()) else xd[answered.to(self._device)])
                if out_rows.shape != (int(answered.sum()), self.info.num_classes):
                    raise RuntimeError(f"model answered shape {tuple(out_rows.shape)} for {int(answered.sum())} "
                                       f"images, expected ({int(answered.sum())}, {self.info.num_classes})")
                logits[answered] = out_rows.float().cpu()
            labels = torch.where(answered, logits.nan_to_num(0.0).argmax(1), torch.full((n,), -1))
            self.log.record(key.name, key.fingerprint, labels, str(self.config.output), flagged=flagged,
                            signatures=sig, ban=ban)
            if ban:
                assert self.detector is not None
                self.detector.reset(key.name)
                self._banned.add(key.name)
            self._limiter.add(key.name, key.limits(), n, self._clock())
            self._used[key.name] += n
            self._flagged[key.name] = self._flagged.get(key.name, 0) + int(flagged.sum())
            usage = self.usage(key)
        out: dict[str, Any] = {"output": str(self.config.output), "n": n}
        if bool(answered.all()):
            out.update(self.spec.to_json(logits))
        else:
            out.update(_with_refused(self.spec.to_json(logits[answered]), answered))
        if self.detector is not None:
            out["flagged"] = flagged.tolist()
            out["rejected"] = refused.tolist()
        out["usage"] = usage
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

    def close(self) -> None:
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
