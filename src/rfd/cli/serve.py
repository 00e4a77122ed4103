"""`rfd serve --model M --defense ... --keys keys.yaml --db queries.sqlite`: serve a defended model over HTTP.

Batching is on by default (``--no-batching`` turns it off): concurrent requests share one forward of the
defended model (see :mod:`rfd.serve.service`). It is the default because it changes nothing a client can rely on
and raises throughput under concurrent load (benchmarks/bench_serve_load.py, BENCHMARKS.md ``serve_load``): every
request is still answered with its own rows, charged, rate-limited and logged on its own, and a request that
arrives alone is forwarded alone, with exactly the noise draws it gets without batching (so a sequential request
sequence, e.g. one RemoteBlackBox attack, is answered identically, and reproducibly for a seeded defense). What
batching changes is which noise numbers concurrent requests get (one draw call per coalesced forward), and those
already depended on the order in which concurrent requests arrived. ``--no-batching`` gives the
one-forward-per-request server, e.g. to replay a concurrent request log draw for draw.

The wait (``--batch-wait-ms``) defaults to 0: a step takes the requests queued when it starts and never holds
one back. Under load requests queue up while the step before runs, so the steps coalesce anyway (the benchmark
measures the same rows per forward at 0 and 2 ms), and a sequential client, the usual client of this server,
pays no wait on every query. A wait helps where a larger batch is much cheaper per image (a GPU) and the load is
moderate.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from rfd.cli.common import CLIError, add_common, add_fast_arg, add_output_arg, fast_from_args, resolve_device
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.defense_args import add_defense_args, defend_from_args
from rfd.cli.model_args import add_model_args, model_from_args
from rfd.models.fast import accelerate

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a defended model over HTTP with API keys, budgets and a query log",
        description="Serve MODEL behind an HTTP API (FastAPI + uvicorn, one process, forwards serialized, "
        "concurrent requests coalesced into one forward unless --no-batching): "
        "POST /v1/predict answers a batch of images (JSON lists, base64 float32 or base64 PNG), GET /v1/info "
        "describes the model, GET /v1/usage a key's account, GET /healthz, GET /openapi.json. The defense draws "
        "fresh noise for every request. Every image is one query charged to the caller's API key; keys, budgets "
        "and rate limits come from --keys, and every answered request is logged in the SQLite file --db, from "
        "which the budgets are counted again after a restart.",
    )
    add_model_args(p)
    add_data_args(p)
    add_defense_args(p)
    add_output_arg(p, what="what clients get")
    p.add_argument("--keys", required=True,
                   help="YAML/JSON file: keys: {SECRET: {name, budget, per_second, per_minute}}")
    p.add_argument("--db", required=True, help="SQLite query log (created if absent; budgets are counted from it)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch", type=int, default=256, help="most images per request (default 256)")
    p.add_argument("--max-body", type=int, default=8 * 1024 * 1024,
                   help="largest request body in bytes, refused before it is read (default 8 MiB)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="coalesce concurrent requests into one forward (default on; --no-batching: one forward per "
                   "request, in arrival order)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                   help="with batching, how long a forward waits for more requests after the oldest queued one "
                   "arrived, in milliseconds (default 0: it takes what is queued and never delays a request)")
    p.add_argument("--batch-max-rows", type=int, default=256, metavar="N",
                   help="with batching, most images in one coalesced forward (default 256; a larger request runs "
                   "alone)")
    p.add_argument("--expose-stats", action="store_true",
                   help="serve GET /v1/stats (any valid key): per-stage timings and rows per forward, nothing per key")
    p.add_argument("--expose-defense-params", action="store_true",
                   help="let /v1/info show the defense's sigma, layers and calibration (default: only its kind)")
    p.add_argument("--detector", default=None, metavar="SPEC",
                   help="a stateful detector per API key in front of the model: blacklight, knn, "
                   "blacklight:action=ban, ... (flagged images: charged, logged, unanswered; ban: the key is refused "
                   "with 403 until the ban is deleted from --db); its history survives restarts in --db")
    p.add_argument("--detector-seed", type=int, default=None,
                   help="the detector's secret salt seed (keep it secret; default: the one stored in --db, random "
                   "the first time)")
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM) to serve HTTPS")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM) for --ssl-certfile")
    add_fast_arg(p)
    add_common(p, json_flag=False)
    p.set_defaults(func=run)


def _class_names(model_name: str) -> tuple[str, ...] | None:
    from rfd.models.registry import get_entry, list_models

    if model_name in list_models() and get_entry(model_name).dataset == "fashion-mnist":
        from rfd.data.fashion_mnist import FASHION_MNIST_CLASSES

        return tuple(FASHION_MNIST_CLASSES)
    return None


def build_app(args: argparse.Namespace) -> Any:
    """The FastAPI app the parsed ``args`` describe (model, defense, keys, log, limits); nothing is served yet."""
    from rfd.serve import ModelInfo, ServeConfig, create_app, load_keys

    if not 1 <= args.port <= 65535:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise CLIError("--ssl-certfile and --ssl-keyfile go together")
    if not (math.isfinite(args.batch_wait_ms) and 0 <= args.batch_wait_ms <= 10_000):
        raise CLIError(f"--batch-wait-ms must be a number of milliseconds in 0..10000, got {args.batch_wait_ms}")
    if args.batch_max_rows < 1:
        raise CLIError(f"--batch-max-rows must be >= 1 image, got {args.batch_max_rows}")
    keys = load_keys(args.keys)
    config = ServeConfig(output=args.output, max_batch=args.max_batch, max_body=args.max_body,
                         expose_defense_params=args.expose_defense_params, batching=args.batching,
                         batch_wait_ms=args.batch_wait_ms, batch_max_rows=args.batch_max_rows,
                         expose_stats=args.expose_stats)
    model = model_from_args(args, resolve_device(args.device))
    data = data_spec_from_args(args)
    defended, defense = defend_from_args(args, model, data)
    served = accelerate(defended, fast_from_args(args))  # answers equal the plain forward's up to float tolerance
    info = ModelInfo(name=args.model, input_shape=tuple(model.input_shape),  # type: ignore[arg-type]
                     num_classes=int(model.num_classes), classes=_class_names(args.model), defense=defense)
    detector, benign = None, None
    if args.detector:
        from rfd.data import select_data
        from rfd.detect import parse_detector

        try:
            detector = parse_detector(args.detector)
        except ValueError as exc:
            raise CLIError(f"--detector: {exc}") from None
        if detector.kind == "knn":  # its threshold: the calibration images of --data (benign, never evaluated)
            benign = select_data(data, 1, 0).calib_images
    return create_app(served, info=info, keys=keys, db=args.db, config=config, detector=detector,
                      detector_seed=args.detector_seed, detector_benign=benign, detector_model=model)


def run(args: argparse.Namespace) -> int:
    from rfd.serve import run_server

    app = build_app(args)
    svc = app.state.service
    sigma = svc.info.defense.get("sigma")
    batching = (f"batching up to {args.batch_max_rows} images, {args.batch_wait_ms:g} ms wait" if args.batching
                else "no batching")
    logger.info("serving %s + %s defense%s to %d keys on http://%s:%d (output %s, log %s, %s)", args.model,
                svc.info.defense["family"], "" if sigma is None else f" (sigma {sigma:.6g})", len(svc.keys), args.host,
                args.port, args.output, args.db, batching)
    run_server(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
               ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile)
    return 0
