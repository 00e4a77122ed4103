"""A stateful deployment: a query-history detector (:mod:`rfd.detect`) in front of any black box.

Every forward an attacker pays for is first shown to the detector (the raw [0, 1] image, before any noise of the
model behind it) under the attacker's account. A flagged forward is, per the detector's action:

* ``reject``: not answered; it is still charged to the sample's budget, and the attack sees "rejected" (a NaN
  score row, label -1, and :attr:`~rfd.blackbox.base.BlackBox.last_rejected`), what a real API's refusal gives;
* ``ban``: rejected, and the account's session ends: its history is cleared and its further queries are refused
  (:attr:`closed` is set, so the attack stops that sample instead of spending its budget on refusals);
* ``log``: answered, and counted as flagged.

An EOT query of M forwards is M queries to the detector (the same image M times: the repeats after the first are
exact duplicates); its answer averages the answered forwards and is rejected only if none was answered.
Answers are never served from a cache: an answered forward is a fresh forward of the (noisy) model.

Accounts: ``"sample"`` (default) gives every attacked image its own account, the per-attack setting of Li et
al. and Chen et al., and what the per-image detection figures (flagged at least once, queries to first flag)
mean; ``"shared"`` puts all images of one attack run in one account (one attacker, one key). Histories start
empty at :meth:`start`.

The success check and the final re-evaluation are the evaluator's, not the attacker's: they do not pass the
detector (in ``check="charged"`` mode the votes are charged, as always, but not screened).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Literal

import torch

from rfd.blackbox.base import BlackBox
from rfd.detect.base import Detector

__all__ = ["Accounts", "StatefulBlackBox", "detection_figures", "group_ranks"]

Accounts = Literal["sample", "shared"]


class StatefulBlackBox(BlackBox):
    """A detector in front of ``inner`` (a :class:`~rfd.blackbox.local.LocalBlackBox`, a remote one, ...).

    Access, output setting, budget and check settings are ``inner``'s; ``inner``'s own counters are not used
    (this black box charges). Per sample it keeps, besides the base counts: :attr:`flagged` (forwards flagged),
    :attr:`rejected` (forwards refused: flagged under reject/ban, and every query after a ban) and
    :attr:`first_flag` (the sample's query number of its first flagged forward, -1 if none).

    Args:
        inner: the black box answering accepted forwards.
        detector: the detector; its ``spec.action`` says what a flag does.
        accounts: ``"sample"`` (one account per attacked image) or ``"shared"`` (one for the whole run).
    """

    def __init__(self, inner: BlackBox, detector: Detector, *, accounts: Accounts = "sample") -> None:
        super().__init__(access=inner.access, output=inner.output, budget=inner.budget, verify=inner.verify,
                         check=inner.check, reevaluate=inner.reevaluate)
        if accounts not in ("sample", "shared"):
            raise ValueError(f"accounts must be 'sample' (one per attacked image) or 'shared', got {accounts!r}")
        self.inner = inner
        self.detector = detector
        self.action = detector.spec.action
        self.accounts: Accounts = accounts
        self._flagged = torch.zeros(0, dtype=torch.int64)
        self._rejected = torch.zeros(0, dtype=torch.int64)
        self._first_flag = torch.zeros(0, dtype=torch.int64)
        self._banned = torch.zeros(0, dtype=torch.bool)
        self.detector_seconds = 0.0  # wall time spent in the detector (signatures + matching)

    # -- delegation ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._forward(x)

    def _forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._forward_labels(x)

    def _uncounted_labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._uncounted_labels(x)

    # -- accounting ---------------------------------------------------------------------------------
    def start(self, n: int) -> None:
        super().start(n)
        self.inner.start(n)
        self.detector.reset()
        dev = self.device
        self._flagged = torch.zeros(n, dtype=torch.int64, device=dev)
        self._rejected = torch.zeros(n, dtype=torch.int64, device=dev)
        self._first_flag = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self._banned = torch.zeros(n, dtype=torch.bool, device=dev)
        self.detector_seconds = 0.0

    @property
    def stateful(self) -> bool:
        return True

    @property
    def closed(self) -> torch.Tensor:
        """bool (n,): samples whose account was banned (their attack stops)."""
        return self._banned.clone()

    @property
    def flagged(self) -> torch.Tensor:
        """int64 (n,): forwards of each sample the detector flagged."""
        return self._flagged.clone()

    @property
    def rejected(self) -> torch.Tensor:
        """int64 (n,): forwards of each sample that got no answer."""
        return self._rejected.clone()

    @property
    def first_flag(self) -> torch.Tensor:
        """int64 (n,): the query number (1-based) of each sample's first flagged forward, -1 if never flagged."""
        return self._first_flag.clone()

    # -- screening ----------------------------------------------------------------------------------
    def _screen(self, x: torch.Tensor, idx: torch.Tensor, repeats: int) -> torch.Tensor:
        """Show the forwards of one query call to the detector: bool (repeats, B), True where answered.

        Rows are sent repeat-major (all B rows, then again for each further repeat); ``self._queries`` already
        holds this call's charge."""
        b = x.shape[0]
        t0 = time.perf_counter()
        sample = idx.repeat(repeats)  # (R*B,) the sample of each forward, in sending order
        # each forward's query number within its sample: queries before the call + its rank among the sample's
        # forwards of this call
        before = self._queries[sample] - torch.zeros_like(self._queries).index_add_(
            0, idx, torch.full_like(idx, repeats))[sample]
        number = before + group_ranks(sample) + 1
        refused = self._banned[sample].clone()
        flags = torch.zeros_like(refused)
        live = torch.nonzero(~refused).flatten()
        if live.numel():
            sig = self.detector.signatures(x)
            rows = live % b
            account = sample[live] if self.accounts == "sample" else torch.zeros_like(live)
            f, _ = self.detector.observe(account.cpu(), sig[rows.to(sig.device)])
            flags[live] = f.to(flags.device)
        if self.action == "ban" and bool(flags.any()):
            refused |= self._after_first(flags, sample)
            banned = torch.unique(sample[flags])
            if self.accounts == "shared":
                self._banned[:] = True
                self.detector.reset(0)
            else:
                self._banned[banned] = True
                for s in banned.tolist():
                    self.detector.reset(s)
        if self.action != "log":
            refused |= flags
        self._flagged.index_add_(0, sample, flags.long())
        self._rejected.index_add_(0, sample, refused.long())
        first = torch.full_like(self._first_flag, 2**62).scatter_reduce(
            0, sample[flags], number[flags], reduce="amin")
        new = (self._first_flag < 0) & (first < 2**62)
        self._first_flag[new] = first[new]
        self.detector_seconds += time.perf_counter() - t0
        return (~refused).view(repeats, b)

    @staticmethod
    def _after_first(flags: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """bool: forwards sent after their sample's first flagged forward of this call (a ban refuses them)."""
        pos = torch.arange(flags.numel(), device=flags.device)
        big = torch.full((int(sample.max()) + 1,), flags.numel(), dtype=torch.int64, device=flags.device)
        first = big.scatter_reduce(0, sample[flags], pos[flags], reduce="amin")
        return pos > first[sample]

    # -- queries ------------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Scores (B, K) as :meth:`BlackBox.scores`, with refused rows all NaN (see :attr:`last_rejected`)."""
        if self.access != "scores" or not self.output.scores:
            return super().scores(x, idx, repeats=repeats)  # raises the base class's error
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        ok = self._screen(x, idx, repeats)
        answers = []
        for r in range(repeats):
            out = torch.full((x.shape[0], self.num_classes), float("nan"), device=x.device)
            sel = ok[r]
            if bool(sel.any()):
                out[sel] = self._forward(x[sel]).to(out.dtype)
            answers.append(out)
        self.last_rejected = ~ok.any(0)
        return answers[0] if repeats == 1 else torch.stack(answers).nanmean(0)

    def labels(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Labels (B,) as :meth:`BlackBox.labels` (majority of the answered forwards), -1 for refused rows."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        ok = self._screen(x, idx, repeats)
        b = x.shape[0]
        votes = torch.zeros(b, self.num_classes, dtype=torch.int64, device=x.device)
        for r in range(repeats):
            sel = torch.nonzero(ok[r]).flatten()
            if sel.numel():
                lab = self._forward_labels(x[sel])
                votes.index_put_((sel, lab), torch.ones_like(lab), accumulate=True)
        answered = ok.any(0)
        self.last_rejected = ~answered
        return torch.where(answered, votes.argmax(1), torch.full_like(answered, -1, dtype=torch.int64))


def group_ranks(keys: torch.Tensor) -> torch.Tensor:
    """int64 (B,): each element's rank among the equal elements before it in ``keys`` (B,) (0 for the first of
    each key): e.g. the position of a query among its sample's queries of one batch."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    pos = torch.arange(keys.numel(), device=keys.device)
    start = torch.ones_like(sorted_keys, dtype=torch.bool)
    start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group_start = torch.cummax(torch.where(start, pos, torch.zeros_like(pos)), 0).values
    ranks = torch.empty_like(pos)
    ranks[order] = pos - group_start
    return ranks


def detection_figures(flagged: Sequence[float], first_flag: Sequence[float], queries: Sequence[float]
                      ) -> dict[str, float]:
    """What a detector did to one attack, over its attacked images (per image: forwards flagged, query number
    of the first flag (<= 0: never), queries charged): ``detected`` % of images flagged at least once,
    ``first_flag`` median query number of the first flag among them, ``flagged`` % of all queries flagged,
    ``queries`` mean queries charged (rejected ones included). NaN where there is nothing to measure."""
    n = len(queries)
    if n == 0:
        return {"detected": math.nan, "first_flag": math.nan, "flagged": math.nan, "queries": math.nan}
    hits = [float(f) for f in first_flag if f > 0]
    spent = float(sum(queries))
    return {"detected": 100.0 * len(hits) / n, "first_flag": statistics.median(hits) if hits else math.nan,
            "flagged": 100.0 * float(sum(flagged)) / spent if spent else math.nan, "queries": spent / n}
