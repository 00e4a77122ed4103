"""The black box: the only door between an attack and a model.

It counts queries per sample, enforces per-sample budgets, and decides success by majority vote: uncounted, as
in the paper's evaluation (Appendix D.4), or ``charged`` to the attacker's budget, as a real API attacker pays.
Votes stop as soon as the majority is decided, and every check is accounted per sample.

Capabilities. Every black box answers :meth:`~BlackBox.scores` or :meth:`~BlackBox.labels`. Gradients are an
optional capability: a black box with ``supports_gradients`` (:class:`~rfd.blackbox.local.LocalBlackBox`, an
in-process model) also answers :meth:`~BlackBox.logits_with_grad`, which white-box attacks (PGD, C&W) use; the
others raise :class:`GradientsUnavailable`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch

from rfd.blackbox.outputs import OutputSpec, parse_output
from rfd.blackbox.threat import ThreatModel

__all__ = ["Access", "BlackBox", "BudgetExceeded", "CheckMode", "GradientsUnavailable", "votes_needed"]

Access = Literal["scores", "labels"]
CheckMode = Literal["free", "charged"]


def votes_needed(k: int) -> int:
    """Wrong votes out of ``k`` that make a majority (more than half): ``k // 2 + 1``."""
    return k // 2 + 1


class BudgetExceeded(RuntimeError):
    """Raised when a query would take a sample past its budget (an attack bug: attacks must check first)."""


class GradientsUnavailable(ValueError):
    """Raised when gradients are asked of a black box that answers only scores or labels
    (``supports_gradients`` is False), e.g. a white-box attack against a remote endpoint."""


class BlackBox(ABC):
    """Query access to a (possibly randomized) classifier.

    Subclasses implement :meth:`_forward` (one forward of a batch, returning scores (B, K)). Everything an
    attacker pays for goes through :meth:`scores`, :meth:`labels` or (white-box, where ``supports_gradients``)
    :meth:`logits_with_grad`, which add to the per-sample counts.

    Args:
        access: ``"scores"`` (logits or probabilities) or ``"labels"`` (hard labels only): what the attack asks.
        output: what the model answers (:mod:`rfd.blackbox.outputs`): ``"logits"``, ``"probs"``, ``"topk:K"``,
            ``"top1"``, ``"rounded:D"`` or ``"labels"``; score answers are shaped by it (hidden classes NaN),
            labels are always the model's predicted class. Queries are charged the same in every setting.
        budget: per-sample query budget, or None for unlimited.
        verify: forwards per success check; majority decides (paper: 9; 1 = the "lucky" mode of Table 15; a
            large k such as 100 is the "strict check": the same test as the strict re-reading, used as stop rule).
        check: ``"free"`` (the paper: checks are not charged) or ``"charged"`` (each vote of a check costs one
            query of the sample's budget; a check the budget cannot finish fails).
        reevaluate: R, fresh forwards with which an attack's final images are classified again after the run
            (uncounted; the ``strict`` and ``expected`` readings of robust accuracy rest on them).

    Per sample it keeps: queries charged, success checks made and the forwards those checks used.

    Call :meth:`start` with the number of samples before an attack; sample ``i`` is row ``i`` of the attack's
    batch and ``idx`` arguments are int64 (B,) tensors of such row numbers.
    """

    def __init__(self, *, access: Access = "scores", output: str | OutputSpec = "logits", budget: int | None = None,
                 verify: int = 9, check: CheckMode = "free", reevaluate: int = 100) -> None:
        if access not in ("scores", "labels"):
            raise ValueError(f"access must be 'scores' or 'labels', got {access!r}")
        if budget is not None and budget < 1:
            raise ValueError(f"budget must be >= 1 or None, got {budget}")
        if verify < 1:
            raise ValueError(f"verify must be >= 1 forwards, got {verify}")
        if check not in ("free", "charged"):
            raise ValueError(f"check must be 'free' (uncounted, the paper) or 'charged' (paid from the budget), "
                             f"got {check!r}")
        if reevaluate < 1:
            raise ValueError(f"reevaluate must be >= 1 forwards, got {reevaluate}")
        self.access: Access = access
        self.budget = budget
        self.verify = verify
        self.check: CheckMode = check
        self.reevaluate = reevaluate
        self.output: OutputSpec = parse_output(output)
        self._queries = torch.zeros(0, dtype=torch.int64)
        self._checks = torch.zeros(0, dtype=torch.int64)
        self._check_forwards = torch.zeros(0, dtype=torch.int64)
        self.verification_forwards = 0  # uncounted forwards of success checks (clean check included)
        self.reevaluation_forwards = 0  # uncounted forwards of the final re-evaluation
        # bool (B,): rows of the latest scores/labels call the deployment refused (a stateful detector's
        # "rejected"); None for a black box that never refuses
        self.last_rejected: torch.Tensor | None = None

    # -- capabilities -------------------------------------------------------------------------------
    @property
    def supports_gradients(self) -> bool:
        """Whether :meth:`logits_with_grad` is answered (white-box access to a differentiable model). False
        here; a black box around an in-process model (:class:`~rfd.blackbox.local.LocalBlackBox`) says True."""
        return False

    # -- to implement -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where tensors given to and returned by this black box live."""

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """K, the number of classes."""

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """One forward of images (B, C, H, W) in [0, 1]: scores (B, K) as :attr:`output` shows them (hidden
        classes NaN), fresh randomness per call."""

    def _forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        """One forward returning labels (B,); override when the backend only gives labels."""
        return self._forward(x).argmax(1)

    # -- accounting ---------------------------------------------------------------------------------
    def start(self, n: int) -> None:
        """Begin a new attack on ``n`` samples: all counts to zero."""
        if n < 1:
            raise ValueError(f"need at least one sample, got n={n}")
        self._queries = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._checks = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._check_forwards = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.verification_forwards = 0
        self.reevaluation_forwards = 0

    @property
    def queries(self) -> torch.Tensor:
        """int64 (n,): queries charged to each sample since :meth:`start` (a copy)."""
        return self._queries.clone()

    @property
    def stateful(self) -> bool:
        """Whether a query-history detector screens the queries (refusals, bans: :attr:`last_rejected`,
        :attr:`closed`). False here."""
        return False

    @property
    def closed(self) -> torch.Tensor:
        """bool (n,): samples whose session the deployment ended (a stateful detector's ban); their attack stops.
        All False here."""
        return torch.zeros_like(self._queries, dtype=torch.bool)

    @property
    def checks(self) -> torch.Tensor:
        """int64 (n,): success checks of each sample's claims since :meth:`start` (clean check excluded)."""
        return self._checks.clone()

    @property
    def check_forwards(self) -> torch.Tensor:
        """int64 (n,): forwards those checks used (charged as queries too in ``check="charged"`` mode)."""
        return self._check_forwards.clone()

    def remaining(self, idx: torch.Tensor) -> torch.Tensor:
        """int64 (B,): queries left for samples ``idx`` (a large number when unlimited)."""
        if self.budget is None:
            return torch.full_like(idx, 2**62)
        return self.budget - self._queries[idx]

    def _charge(self, idx: torch.Tensor, x: torch.Tensor, cost: int) -> None:
        if idx.dtype != torch.int64 or idx.dim() != 1 or idx.shape[0] != x.shape[0]:
            raise ValueError(
                f"idx must be int64 of shape ({x.shape[0]},) matching the batch, got {idx.dtype} {tuple(idx.shape)}"
            )
        if self._queries.numel() == 0:
            raise RuntimeError("call start(n) before querying the black box")
        # Sum the charge per sample first: a batch may hold several rows of one sample (NES probes).
        add = torch.zeros_like(self._queries).index_add_(0, idx, torch.full_like(idx, cost))
        if self.budget is not None:
            over = self._queries + add > self.budget
            if bool(over.any()):
                first = int(torch.nonzero(over)[0])
                raise BudgetExceeded(
                    f"sample {first} would use {int(self._queries[first] + add[first])} queries, "
                    f"budget is {self.budget}"
                )
        self._queries += add

    # -- queries ------------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Scores (B, K) of images ``x`` (B, C, H, W) for samples ``idx`` (B,) as :attr:`output` shows them;
        each row costs ``repeats``.

        With ``repeats = M > 1`` (EOT) the answer is the mean of M forwards, and M queries are charged; under a
        partial output (topk, top1) each class is averaged over the forwards that showed it (NaN if none did)."""
        if self.access != "scores":
            raise PermissionError("this black box answers labels only; score-based attacks cannot use it")
        if not self.output.scores:
            raise PermissionError(f"output setting {self.output} answers labels only; score-based attacks cannot "
                                  "use it")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        if repeats == 1:
            return self._forward(x)
        if self.output.partial:
            return torch.stack([self._forward(x) for _ in range(repeats)]).nanmean(0)
        out = self._forward(x)
        for _ in range(repeats - 1):
            out = out + self._forward(x)
        return out / repeats

    def labels(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """Labels (B,) of images ``x`` for samples ``idx``; each row costs ``repeats`` (majority of them)."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        if repeats == 1:
            return self._forward_labels(x)
        votes = torch.stack([self._forward_labels(x) for _ in range(repeats)], 1)
        return torch.mode(votes, 1).values

    def logits_with_grad(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """White-box access (PGD, C&W), only where :attr:`supports_gradients`: raw logits (repeats, B, K) of
        ``repeats`` independent forwards of images ``x`` (B, C, H, W) in [0, 1] for samples ``idx`` (B,), with
        the autograd graph kept so the caller can differentiate any function of them w.r.t. ``x`` (or w.r.t.
        whatever ``x`` was computed from). Each row costs ``repeats`` queries (EOT: M forwards = M queries), as
        a score query does, so white-box budgets compare with score-based ones.

        Raises :class:`GradientsUnavailable` here; black boxes that can differentiate their model override it."""
        raise GradientsUnavailable(
            f"white-box attacks need gradients; {type(self).__name__} answers scores/labels only "
            "(use a LocalBlackBox around an in-process model)"
        )

    # -- success check -----------------------------------------------------------------------------------
    def _uncounted_labels(self, x: torch.Tensor) -> torch.Tensor:
        """One forward's labels (B,) for a check or re-evaluation that no attacker pays for (remote: the
        evaluator's key)."""
        return self._forward_labels(x)

    def _wrong_counts(self, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
        """int64 (B,): how many of ``k`` fresh uncounted forwards do not predict ``y`` (all k, no early stop).
        Several repeats go into one forward when the batch is small: fewer, larger forwards, same draws count."""
        wrong = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        if x.shape[0] == 0:
            return wrong
        per = max(1, min(k, 256 // x.shape[0]))
        done = 0
        while done < k:
            m = min(per, k - done)
            lab = self._uncounted_labels(x.repeat(m, *([1] * (x.dim() - 1))))
            wrong += (lab.view(m, x.shape[0]) != y.unsqueeze(0)).long().sum(0)
            done += m
        return wrong

    def misclassified_votes(self, x: torch.Tensor, y: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """int64 (B,): how many of ``k`` (default ``verify``) forwards do not predict ``y``. Not charged."""
        k = self.verify if k is None else k
        wrong = self._wrong_counts(x, y, k)
        self.verification_forwards += k * x.shape[0]
        return wrong

    def reevaluate_wrong(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """float64 (B,): the fraction of ``reevaluate`` fresh forwards that misclassify ``x`` (uncounted,
        all R forwards: this is a rate, not a vote). Batched over images and repeats."""
        wrong = self._wrong_counts(x, y, self.reevaluate)
        self.reevaluation_forwards += self.reevaluate * x.shape[0]
        return wrong.double() / self.reevaluate

    def majority_wrong(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None, *,
                       k: int | None = None) -> torch.Tensor:
        """bool (B,): more than half of ``k`` (default ``verify``) forwards misclassify ``x``.

        Voting stops per row as soon as the majority is decided (the decision equals that of all k votes of
        the same sequence), and each round asks every undecided row for the fewest votes that could decide it,
        in one batched forward. With ``idx`` (B,) the check is a claim of those samples: it is counted per
        sample, and in ``check="charged"`` mode every vote costs the sample one query; a check that runs out
        of budget before it is decided fails. Without ``idx`` (the clean-image check) it is never charged."""
        k = self.verify if k is None else k
        b = x.shape[0]
        need = votes_needed(k)
        wrong = torch.zeros(b, dtype=torch.int64, device=x.device)
        right = torch.zeros_like(wrong)
        charged = idx is not None and self.check == "charged"
        if idx is not None:
            if idx.dtype != torch.int64 or idx.shape != (b,):
                raise ValueError(f"idx must be int64 of shape ({b},), got {idx.dtype} {tuple(idx.shape)}")
            self._checks.index_add_(0, idx, torch.ones_like(idx))
        open_ = torch.ones(b, dtype=torch.bool, device=x.device)
        while True:
            # fewest further votes that could decide each row: all wrong, or all right
            todo = torch.minimum(need - wrong, (k - need + 1) - right)
            if charged:
                assert idx is not None
                todo = torch.minimum(todo, (self.remaining(idx)).clamp(min=0))
            rows = torch.nonzero(open_ & (todo > 0)).flatten()
            if rows.numel() == 0:
                break
            reps = todo[rows]
            src = rows.repeat_interleave(reps)
            if charged:
                assert idx is not None
                self._charge(idx[src], x[src], 1)
                lab = self._forward_labels(x[src])
            else:
                lab = self._uncounted_labels(x[src])
                self.verification_forwards += int(src.numel())
            miss = (lab != y[src]).long()
            wrong.index_add_(0, src, miss)
            right.index_add_(0, src, 1 - miss)
            if idx is not None:
                self._check_forwards.index_add_(0, idx[src], torch.ones_like(src))
            open_ = (wrong < need) & (right < k - need + 1)
        return wrong >= need

    def is_adversarial(
        self, x: torch.Tensor, y: torch.Tensor, *, x0: torch.Tensor | None = None, threat: ThreatModel | None = None,
        idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """bool (B,): the majority of ``verify`` forwards misclassify ``x``, and, when ``x0`` and ``threat`` are
        given, ``x`` lies in the eps-ball around ``x0`` and in [0, 1]. ``idx`` (B,) makes it a counted claim of
        those samples (see :meth:`majority_wrong`); points outside the ball are refused before any vote."""
        inside = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if threat is not None:
            if x0 is None:
                raise ValueError("is_adversarial: threat given without the clean images x0")
            inside = threat.contains(x, x0)
        ok = torch.zeros_like(inside)
        if bool(inside.all()):
            return self.majority_wrong(x, y, idx)
        if bool(inside.any()):
            ok[inside] = self.majority_wrong(x[inside], y[inside], None if idx is None else idx[inside])
        return ok
