"""Run an app with uvicorn: in the foreground (``rfd serve``) or in a background thread (tests, benchmarks).

One uvicorn process with one event loop (``workers=1``): the model lives once in memory, and forwards are
serialized by the service's lock (see :mod:`rfd.serve.service`). Scale out by running more servers behind a
proxy, each with its own keys and log, not by adding workers to one.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

__all__ = ["BackgroundServer", "run_server"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               ssl_keyfile: str | None = None, ssl_certfile: str | None = None) -> None:
    """Serve ``app`` until interrupted (Ctrl-C / SIGTERM end it cleanly and close the query log)."""
    if not _is_loopback(host) and ssl_certfile is None:
        logger.warning("serving on %s without TLS: API keys and images cross the network in clear text; "
                       "use --ssl-certfile/--ssl-keyfile or a TLS proxy", host)
    uvicorn.run(app, host=host, port=port, workers=1, log_level=log_level, ssl_keyfile=ssl_keyfile,
                ssl_certfile=ssl_certfile, proxy_headers=False, server_header=False)


class BackgroundServer:
    """Run ``app`` with uvicorn in a daemon thread on ``host`` and a free port; a context manager.

    ``url`` is ``http://host:port`` once started. ``stop()`` shuts the server down (lifespan shutdown
    included, so the app's query log is closed) and waits for the thread.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 30.0) -> None:
        self.app = app
        self.host = host
        self.start_timeout = start_timeout
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bound here, so the port is ours before the thread starts
        self.port: int = self._sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", workers=1))
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc

    def start(self) -> BackgroundServer:
        self._thread.start()
        self._thread.join(0.01)
        deadline = self.start_timeout
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server thread ended before it started: {self._error!r}")
            if waited >= deadline:
                self.stop()
                raise TimeoutError(f"server on {self.url} did not start within {self.start_timeout} s")
            self._thread.join(0.02)
            waited += 0.02
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:  # noqa: PYI034 - start() returns this server, typed as such
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
