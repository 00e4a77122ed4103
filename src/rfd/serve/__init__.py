"""Serve a defended model over HTTP: API keys with budgets and rate limits, a SQLite query log, strict input
checks (needs the ``serve`` extra: fastapi, uvicorn, httpx, pillow).

Example::

    from rfd.serve import create_app, load_keys, ModelInfo, ServeConfig, run_server
    app = create_app(defended, info=ModelInfo(name="fmnist-vgg", input_shape=(1, 28, 28), num_classes=10,
                     defense=spec.to_dict()), keys=load_keys("keys.yaml"), db="queries.sqlite")
    run_server(app, host="127.0.0.1", port=8000)
"""

from rfd.extras import require

require("fastapi", "rfd.serve")  # before the modules that import it: a missing extra gets a clear error
require("uvicorn", "rfd.serve")

from rfd.serve.app import API_KEY_HEADER, create_app
from rfd.serve.decode import decode_images, encode_float32, encode_png
from rfd.serve.errors import ServeError
from rfd.serve.keys import ApiKey, KeyRing, key_digest, load_keys
from rfd.serve.querylog import QueryLog, QueryRecord
from rfd.serve.runner import BackgroundServer, run_server
from rfd.serve.service import ModelInfo, PredictionService, ServeConfig

__all__ = [
    "API_KEY_HEADER",
    "ApiKey",
    "BackgroundServer",
    "KeyRing",
    "ModelInfo",
    "PredictionService",
    "QueryLog",
    "QueryRecord",
    "ServeConfig",
    "ServeError",
    "create_app",
    "decode_images",
    "encode_float32",
    "encode_png",
    "key_digest",
    "load_keys",
    "run_server",
]
