"""API keys: who may query the server, how many images in all (budget), and how fast (rate limits).

The key file is YAML (or JSON, which YAML reads too)::

    keys:
      sk-alice-4f1c9a0e:            # the secret the client sends in the X-API-Key header
        name: alice                 # who it is; the query log and the budgets count by this name
        budget: 100000              # images answered in all, across restarts (omit or null: unlimited)
        per_second: 200             # at most this many images in any 1-second window (omit: unlimited)
        per_minute: 5000            # at most this many images in any 60-second window (omit: unlimited)

Every image counts as one query. Keys are held only as SHA-256 digests in memory, so a lookup compares
digests (no timing signal about the secret) and the secrets never reach the log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ApiKey", "KeyRing", "key_digest", "load_keys"]

_FIELDS = ("name", "budget", "per_second", "per_minute")


def key_digest(secret: str) -> str:
    """Hex SHA-256 of an API key secret (what the server keeps instead of the secret)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """One client of the server.

    Attributes:
        name: the client's name; budgets and the query log count by name (unique in a key file).
        digest: hex SHA-256 of the secret.
        budget: images this client may have answered in all (across restarts), or None for unlimited.
        per_second: images allowed in any 1-second window, or None.
        per_minute: images allowed in any 60-second window, or None.
    """

    name: str
    digest: str
    budget: int | None = None
    per_second: int | None = None
    per_minute: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"API key name must be a non-empty string, got {self.name!r}")
        for field in ("budget", "per_second", "per_minute"):
            v = getattr(self, field)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"API key {self.name!r}: {field} must be a positive integer or null, got {v!r}")

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the digest: identifies the key in logs without revealing it."""
        return self.digest[:12]

    def limits(self) -> dict[str, int | None]:
        """The key's rate limits as {window name: images per window}."""
        return {"per_second": self.per_second, "per_minute": self.per_minute}


class KeyRing:
    """The set of valid keys, looked up by secret."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_digest: dict[str, ApiKey] = {}
        names: set[str] = set()
        for k in keys:
            if k.digest in self._by_digest:
                raise ValueError(f"API key of {k.name!r} is listed twice")
            if k.name in names:
                raise ValueError(f"two API keys share the name {k.name!r}; budgets count by name, so names must "
                                 "be unique")
            names.add(k.name)
            self._by_digest[k.digest] = k
        if not self._by_digest:
            raise ValueError("no API keys given: a server without keys would refuse every request")

    def lookup(self, secret: str) -> ApiKey | None:
        """The key for ``secret``, or None if it is unknown."""
        return self._by_digest.get(key_digest(secret))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_digest.values())

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "keys") -> KeyRing:
        """Build from ``{"keys": {secret: {name, budget, per_second, per_minute}}}`` (see the module docstring)."""
        if not isinstance(data, Mapping) or set(data) != {"keys"}:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source}: expected a mapping with the single entry 'keys', got {found}")
        entries = data["keys"]
        if not isinstance(entries, Mapping) or not entries:
            raise ValueError(f"{source}: 'keys' must map each API key secret to its settings")
        out = []
        for secret, spec in entries.items():
            if not isinstance(secret, str) or not secret:
                raise ValueError(f"{source}: API keys must be non-empty strings, got {secret!r}")
            where = f"{source}: key of {spec.get('name')!r}" if isinstance(spec, Mapping) else f"{source}"
            if not isinstance(spec, Mapping):
                raise ValueError(f"{where}: settings must be a mapping with {', '.join(_FIELDS)}")
            unknown = sorted(set(spec) - set(_FIELDS))
            if unknown:
                raise ValueError(f"{where}: unknown settings {unknown}; allowed: {', '.join(_FIELDS)}")
            if "name" not in spec:
                raise ValueError(f"{where}: missing 'name'")
            try:
                out.append(ApiKey(name=spec["name"], digest=key_digest(secret), budget=spec.get("budget"),
                                  per_second=spec.get("per_second"), per_minute=spec.get("per_minute")))
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
        return cls(out)


def load_keys(path: str | Path) -> KeyRing:
    """Read a YAML or JSON key file (format in the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"API key file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"API key file {p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                         f"{exc}") from None
    return KeyRing.from_mapping(data, source=str(p))
