"""What every stateful detector shares: per-account query histories of signatures, and flags.

A detector turns each query (the raw [0, 1] image, before any noise) into a *signature* (Blacklight: its salted
window hashes; kNN: an embedding), keeps the signatures of each account's past queries, and flags a query that
is too close to one of them. Signatures are what the server persists, so an account's history survives a
restart (:meth:`Detector.restore`).

Rows of one :meth:`Detector.observe` call are taken in order: row j is compared with the account's history
*and* with the earlier rows of the same call of the same account, then added. Flagged queries enter the
history too (Blacklight's rule; an attacker gains nothing by having a query flagged).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from rfd.defenses.detector_spec import DetectorSpec

__all__ = ["Detector"]


class Detector(ABC):
    """A query-history detector.

    Subclasses implement :meth:`signatures`, :meth:`_observe_account`, :meth:`restore`, :meth:`reset` and
    :meth:`history_size`. ``spec`` is the :class:`~rfd.defenses.detector_spec.DetectorSpec` it was built from.
    """

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec

    @abstractmethod
    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        """Signatures (B, D) of images x (B, C, H, W) in [0, 1] (one row per query)."""

    @abstractmethod
    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check rows ``sig`` (b, D) of one account in order against its history and add them: (flags bool (b,),
        scores float64 (b,)) with scores as :meth:`observe` describes."""

    @abstractmethod
    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        """Add past signatures (b, D) to ``account``'s history without checking them (a restart)."""

    @abstractmethod
    def reset(self, account: Hashable | None = None) -> None:
        """Forget ``account``'s history (all accounts when None)."""

    @abstractmethod
    def history_size(self, account: Hashable) -> int:
        """Past queries kept for ``account``."""

    def info(self) -> dict[str, Any]:
        """What the detector runs, for ``/v1/info`` and reports (never its secret salt)."""
        return self.spec.to_dict()

    def observe(self, accounts: Sequence[Hashable] | torch.Tensor, sig: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flag queries: rows ``sig`` (B, D), row i sent by ``accounts[i]``, processed in order and then kept in
        the histories. Returns (flags bool (B,), scores float64 (B,)) on the CPU; the score is the detector's
        measure of closeness (Blacklight: most hashes shared with one past query; kNN: mean distance to the k
        nearest past queries, inf with an empty history)."""
        keys = accounts.tolist() if isinstance(accounts, torch.Tensor) else list(accounts)
        if len(keys) != sig.shape[0]:
            raise ValueError(f"accounts has {len(keys)} entries but there are {sig.shape[0]} signatures")
        if keys and all(k == keys[0] for k in keys):  # one account (a server request): no regrouping
            f, s = self._observe_account(keys[0], sig)
            return f.cpu(), s.cpu().double()
        flags = torch.zeros(len(keys), dtype=torch.bool)
        scores = torch.zeros(len(keys), dtype=torch.float64)
        groups: dict[Hashable, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for k, rows in groups.items():
            r = torch.tensor(rows, dtype=torch.int64)
            f, s = self._observe_account(k, sig[r.to(sig.device)])
            flags[r] = f.cpu()
            scores[r] = s.cpu().double()
        return flags, scores

    def check(self, x: torch.Tensor, accounts: Sequence[Hashable] | torch.Tensor) -> torch.Tensor:
        """Flags bool (B,) of images x (B, C, H, W) sent by ``accounts`` (see :meth:`observe`)."""
        return self.observe(accounts, self.signatures(x))[0]
