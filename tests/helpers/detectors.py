"""Small detectors with known answers, for testing what a stateful black box and the attacks do with flags
(the real detectors, Blacklight and kNN, are tested in tests/detect)."""

from __future__ import annotations

from collections.abc import Hashable

import torch

from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector


class RepeatDetector(Detector):
    """Flags a query whose image equals (bit for bit) an earlier query of the same account."""

    def __init__(self, action: str = "reject") -> None:
        super().__init__(DetectorSpec(kind="blacklight", action=action))
        self.history: dict[Hashable, list[torch.Tensor]] = {}

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).clone()

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self.history.setdefault(account, [])
        flags = torch.zeros(sig.shape[0], dtype=torch.bool)
        for i, row in enumerate(sig):
            flags[i] = any(torch.equal(row, p) for p in past)
            past.append(row)
        return flags, flags.double()

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        self.history.setdefault(account, []).extend(sig)

    def reset(self, account: Hashable | None = None) -> None:
        if account is None:
            self.history.clear()
        else:
            self.history.pop(account, None)

    def history_size(self, account: Hashable) -> int:
        return len(self.history.get(account, []))


class CoinDetector(Detector):
    """Flags each query with probability ``p`` from a seeded generator (a detector that is often wrong)."""

    def __init__(self, p: float, seed: int = 0, action: str = "reject") -> None:
        super().__init__(DetectorSpec(kind="blacklight", action=action))
        self.p = p
        self.gen = torch.Generator().manual_seed(seed)
        self.sizes: dict[Hashable, int] = {}

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1)

    def _observe_account(self, account: Hashable, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.sizes[account] = self.sizes.get(account, 0) + sig.shape[0]
        flags = torch.rand(sig.shape[0], generator=self.gen) < self.p
        return flags, flags.double()

    def restore(self, account: Hashable, sig: torch.Tensor) -> None:
        self.sizes[account] = self.sizes.get(account, 0) + sig.shape[0]

    def reset(self, account: Hashable | None = None) -> None:
        if account is None:
            self.sizes.clear()
        else:
            self.sizes.pop(account, None)

    def history_size(self, account: Hashable) -> int:
        return self.sizes.get(account, 0)
