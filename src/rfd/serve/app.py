"""The HTTP API (FastAPI) around a :class:`~rfd.serve.service.PredictionService`.

Endpoints:

* ``POST /v1/predict`` (API key): answer a batch of images; body in one of three formats (see
  :mod:`rfd.serve.schemas`); every image is one query charged to the key.
* ``GET /v1/usage`` (API key): the key's account (used, budget, remaining) and rate limits.
* ``GET /v1/info``: model name, input shape, classes, output kind, defense family, request limits.
* ``GET /v1/stats`` (API key; only with ``ServeConfig(expose_stats=True)``, ``rfd serve --expose-stats``): the
  server's per-stage timings (:meth:`PredictionService.stats`).
* ``GET /healthz``: liveness.
* ``GET /openapi.json`` (and ``/docs``): the OpenAPI schema.

Errors are JSON ``{"detail": "..."}`` with a 4xx status: 400 malformed body, 401 missing/unknown key,
403 budget exhausted, 408 body too slow, 413 body or batch too large, 422 bad images, 429 rate limit
(with ``Retry-After``), 503 shutting down. An unexpected failure is logged and answered 500; the server keeps
serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from torch import nn

from rfd import __version__
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector
from rfd.detect.build import build_detector
from rfd.serve.bodylimit import BodyLimitMiddleware
from rfd.serve.decode import PREDICT_REQUEST
from rfd.serve.errors import ServeError
from rfd.serve.keys import KeyRing
from rfd.serve.querylog import QueryLog
from rfd.serve.schemas import ErrorResponse, InfoResponse, PredictResponse, UsageResponse
from rfd.serve.service import ModelInfo, PredictionService, ServeConfig

__all__ = ["API_KEY_HEADER", "create_app"]

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="your API key")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "malformed request body", 401: "missing or unknown API key", 403: "query budget exhausted, or the key banned by a "
        "stateful detector (body: banned true)",
        408: "request body too slow", 413: "request body or batch too large", 422: "bad images",
        429: "rate limit; see Retry-After",
    }.items()
}


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status, headers=exc.headers)


def _request_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI schema of the predict body (the body is parsed by hand, so FastAPI cannot derive it)."""
    schema = PREDICT_REQUEST.json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return schema, defs


def create_app(
    model: nn.Module,
    *,
    info: ModelInfo,
    keys: KeyRing,
    db: str | Path,
    config: ServeConfig | None = None,
    detector: DetectorSpec | str | None = None,
    detector_seed: int | None = None,
    detector_benign: torch.Tensor | None = None,
    detector_model: nn.Module | None = None,
) -> FastAPI:
    """A FastAPI app serving ``model`` (already defended: fresh noise per forward) to the holders of ``keys``.

    Args:
        model: maps images (N, C, H, W) in [0, 1] to logits (N, K).
        info: what /v1/info says and what inputs are accepted.
        keys: API keys with budgets and rate limits.
        db: SQLite query log path; created if absent, and per-key usage is counted from it on start.
        config: output kind, limits and batching (default: :class:`ServeConfig` defaults).
        detector: a stateful detector in front of the model (a spec or its text, e.g. ``"blacklight"``): one
            account per key, its histories and bans persisted in ``db``.
        detector_seed: the detector's secret salt seed; None uses the one stored in ``db`` (a random one the
            first time), so a restarted server fingerprints as before.
        detector_benign: benign images (N, C, H, W) for a kNN detector's threshold; detector_model: the clean
            model for a kNN detector on penultimate features.

    The log opens when the app is built and closes when the app shuts down (ASGI lifespan).
    """
    config = config or ServeConfig()
    log = QueryLog(db)
    guard: Detector | None = None
    if detector is not None:
        try:
            guard = build_detector(detector, seed=log.salt_seed(detector_seed), model=detector_model,
                                   benign=detector_benign)
        except BaseException:
            log.close()
            raise
    service = PredictionService(model, info=info, keys=keys, log=log, config=config, detector=guard)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="rfd model server", version=__version__, lifespan=lifespan,
        description="A classifier defended against query-based black-box attacks (randomized feature defense). "
        "Every image sent to /v1/predict is one query charged to your API key.",
    )
    app.state.service = service
    body_schema, body_defs = _request_schema()

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": body_schema}}}})
    async def predict(request: Request, api_key: str | None = Security(_api_key)) -> JSONResponse:
        """Answer a batch of images in the server's output setting (logits, probs, topk:K, top1, rounded:D or
        labels), with the predicted class of each."""
        key = service.authenticate(api_key)
        body = await request.body()
        try:
            # decoding and admission in a worker thread (they can take milliseconds); the forward step then runs
            # on the batcher thread (or, without batching, in that worker thread) while the event loop waits
            # without blocking
            pending = await run_in_threadpool(service.submit_body, key, body)
            answered = await asyncio.wrap_future(pending)
            t0 = time.perf_counter()
            response = JSONResponse(service.render(answered))
            service.stage_stats.add("encode", time.perf_counter() - t0)
        except ServeError:
            raise
        except Exception:  # a bug, not the client's fault: log it, answer 500, keep serving
            logger.exception("predict failed for key %r", key.name)
            return JSONResponse({"detail": "internal error while answering; the operator has the log"},
                                status_code=500)
        return response

    @app.get("/v1/usage", response_model=UsageResponse, responses={401: _ERRORS[401]},
             response_model_exclude_unset=True)  # the detector fields only where a detector runs
    async def usage(api_key: str | None = Security(_api_key)) -> dict[str, Any]:
        """Your key's account: images used, budget, remaining, and rate limits."""
        key = service.authenticate(api_key)
        return {**service.usage(key), **key.limits()}

    @app.get("/v1/info", response_model=InfoResponse)
    async def info_() -> dict[str, Any]:
        """The served model: input shape, classes, output kind, defense family, request limits."""
        return service.describe()

    if config.expose_stats:
        @app.get("/v1/stats", responses={401: _ERRORS[401]})
        async def stats(api_key: str | None = Security(_api_key)) -> dict[str, Any]:
            """Where the server's time goes (operator setting ``expose_stats``): per-stage seconds and counts,
            forwards, rows per forward, process CPU seconds, since start; nothing per key."""
            service.authenticate(api_key)
            return service.stats()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body_defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, max_body=config.max_body, timeout=config.body_timeout)
    return app
