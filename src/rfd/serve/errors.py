"""The one error type the serving code raises for a client's mistake; the app turns it into a JSON answer."""

from __future__ import annotations

__all__ = ["ServeError"]


class ServeError(Exception):
    """A request the server refuses: HTTP ``status`` (4xx), a ``detail`` message for the client, extra
    response ``headers`` (e.g. Retry-After) and ``extra`` JSON fields (e.g. retry_after in seconds)."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}
