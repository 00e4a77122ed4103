"""Seeds derived from names: every chunk of every cell gets its own seed, fixed by what it is, not by when or
where it runs (so a resumed, sharded or Ray-executed study draws exactly the same numbers)."""

from __future__ import annotations

import hashlib

__all__ = ["content_key", "derive_seed"]

_MASK = (1 << 63) - 1  # non-negative and valid for torch.Generator.manual_seed and DefenseSpec.seed


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. study seed, cell key, chunk index, purpose), stable across processes,
    machines and Python versions (blake2b of their ``repr`` joined by ``|``; no ``hash()``, which is salted)."""
    text = "|".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") & _MASK


def content_key(canonical_json: str) -> str:
    """A short stable id (20 hex characters) of a canonical JSON text."""
    return hashlib.blake2b(canonical_json.encode(), digest_size=10).hexdigest()
