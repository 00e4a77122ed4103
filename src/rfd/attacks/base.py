"""What every attack shares: config, input checks, budgets, active masks, verification, result.

An attack subclasses :class:`Attack`, declares its config dataclass and implements ``_run(state, gen)`` using
only :class:`AttackState` (which wraps the black box). The base ``run`` does everything else once: it checks the
images, that the black box gives the access the attack needs (:meth:`Attack.blackbox_access`, gradients for
white-box attacks: :attr:`~rfd.blackbox.base.BlackBox.supports_gradients`), the budgets, and builds the result.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from tqdm.auto import tqdm

from rfd.attacks.projections import project
from rfd.attacks.result import AttackResult
from rfd.attacks.rng import SampleStreams
from rfd.blackbox.base import Access, BlackBox, GradientsUnavailable
from rfd.blackbox.losses import ascent_objective, margin_loss, visible_margin
from rfd.blackbox.outputs import OutputSpec
from rfd.blackbox.threat import ThreatModel, distances
from rfd.data.checks import check_images_labels

__all__ = ["Attack", "AttackAccess", "AttackConfig", "AttackState"]

# What an attack needs of the black box: scores (score-based), labels (decision-based) or gradients (white-box:
# the black box must support gradients, and answers scores too)
AttackAccess = Literal["scores", "labels", "gradients"]


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """Settings every attack takes (subclasses add their own fields, all keyword-only)."""

    norm: str = "linf"  # "linf" or "l2"
    eps: float = 0.05  # radius of the threat model, pixel units ([0, 1] images)
    budget: int = 1000  # queries per sample (EOT repetitions included)
    seed: int = 0  # seed of every random draw the attack makes
    eot: int = 1  # M forwards averaged per loss evaluation (score-based); each costs M queries
    # OARS (Feng et al., CCS 2023), the adaptive attack against stateful detectors (rfd.attacks.oars); Square, NES
    # and HopSkipJump only
    oars: bool = False  # explore the attack's perturbation scale first, then resample refused probes
    oars_target: float = 0.05  # flag rate of the exploration's trial queries to stay under
    oars_retries: int | None = None  # redraws of a refused probe; None = OARS's 5 (Square, NES) / 20 (HopSkipJump)

    def __post_init__(self) -> None:
        ThreatModel(norm=self.norm, eps=self.eps)  # type: ignore[arg-type]  # validates norm and eps
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 query, got {self.budget}")
        if self.eot < 1:
            raise ValueError(f"eot must be >= 1 forward per query, got {self.eot}")
        if not isinstance(self.oars, bool):
            raise ValueError(f"oars must be true or false, got {self.oars!r}")
        if not 0 < self.oars_target < 1:
            raise ValueError(f"oars_target is a flag rate in (0, 1), got {self.oars_target!r}")
        if self.oars_retries is not None and (isinstance(self.oars_retries, bool)
                                              or not isinstance(self.oars_retries, int) or self.oars_retries < 0):
            raise ValueError(f"oars_retries must be an integer >= 0 or None, got {self.oars_retries!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.oars:  # the OARS settings say nothing unless it is on (and older results have none)
            for k in ("oars", "oars_target", "oars_retries"):
                d.pop(k)
        return d


class AttackState:
    """Working state of one batched attack run, and the attack's only access to the black box.

    Attributes:
        x0: clean images (N, C, H, W) on the black box's device; y: labels (N,).
        active: bool (N,), samples still being attacked (clean-correct, not yet broken, budget left).
        success: bool (N,); success_queries: int64 (N,) queries at first verified success (-1 if none).
        x_adv: (N, C, H, W), per sample the verified adversarial image, else the attack's latest iterate.
        rng: :class:`~rfd.attacks.rng.SampleStreams`, one random stream per sample (use it for every draw).
    """

    def __init__(self, bb: BlackBox, x0: torch.Tensor, y: torch.Tensor, config: AttackConfig,
                 clean_correct: torch.Tensor, progress: bool = False, desc: str = "attack") -> None:
        self.bb = bb
        self.x0 = x0
        self.y = y
        self.config = config
        self.threat = ThreatModel(norm=config.norm, eps=config.eps)  # type: ignore[arg-type]
        self.budget = config.budget
        self.n = x0.shape[0]
        self.success = torch.zeros(self.n, dtype=torch.bool, device=x0.device)
        self.success_queries = torch.full((self.n,), -1, dtype=torch.int64, device=x0.device)
        self.x_adv = x0.clone()
        self.active = clean_correct.clone()
        # one random stream per sample (seeded by the attack's seed): attacks draw with
        # ``state.rng.rows(idx).rand(B, ...)`` so that a sample's draws do not depend on which other samples are
        # still active (the same draws per image under every defense: paired comparisons)
        self.rng = SampleStreams(self.n, config.seed, x0.device)
        # per-sample (N,) outputs an attack wants in its result (AttackResult.extras), e.g. "radius"
        self.extras: dict[str, torch.Tensor] = {}
        self._bar = tqdm(total=int(self.active.sum()) * self.budget, desc=desc, unit="q", disable=not progress,
                         leave=False)
        self._charged = 0
        # every claim offered to the check: sample rows and their query counts at the claim
        self._claim_idx: list[torch.Tensor] = []
        self._claim_queries: list[torch.Tensor] = []
        # bool (B,): rows of the latest query the deployment refused (a stateful detector), all False otherwise;
        # OARS-style attacks read it to resample (see rfd.attacks.oars)
        self.rejected = torch.zeros(0, dtype=torch.bool, device=x0.device)
        # OARS rejection sampling: how many times a refused probe is drawn again (0: the attack ignores refusals)
        self.retries = 0

    # -- budget ---------------------------------------------------------------------------------------
    def remaining(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """int64 queries left per sample (all N, or rows ``idx``); 0 for a sample whose session the deployment
        ended (a stateful detector's ban)."""
        q = self.bb.queries
        left = torch.where(self.bb.closed, torch.zeros_like(q), self.budget - q)
        return left if idx is None else left[idx]

    def active_idx(self, cost: int = 1) -> torch.Tensor:
        """int64 indices of active samples that can still pay ``cost`` queries; exhausted ones are retired."""
        can = self.remaining() >= cost
        self.active &= can
        return torch.nonzero(self.active).flatten()

    def _tick(self) -> None:
        if self._bar.disable:  # called after every query: skip the bookkeeping when no bar is shown
            return
        total = int(self.bb.queries.sum())
        self._bar.update(total - self._charged)
        self._charged = total
        self._bar.set_postfix(active=int(self.active.sum()), broken=int(self.success.sum()), refresh=False)

    # -- queries (charged) ----------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Scores (B, K) of x (B, C, H, W) for samples idx; costs ``eot`` queries per row."""
        if self.bb.stateful and bool(self.bb.closed[idx].any()):  # a banned sample's queries are not sent
            return self._open_rows_only(x, idx, self.scores, float("nan"), (x.shape[0], self.bb.num_classes))
        out = self.bb.scores(x, idx, repeats=self.config.eot)
        self._note_rejected(idx)
        self._tick()
        return out

    def _open_rows_only(self, x: torch.Tensor, idx: torch.Tensor, ask: Any, fill: float,
                        shape: tuple[int, ...]) -> torch.Tensor:
        """Ask only the rows whose session is open (a banned sample's request would be refused uncharged); the
        others read as refused (``fill``)."""
        open_ = ~self.bb.closed[idx]
        out = torch.full(shape, fill, device=x.device,
                         dtype=torch.int64 if isinstance(fill, int) else torch.float32)
        rejected = torch.ones_like(open_)
        if bool(open_.any()):
            out[open_] = ask(x[open_], idx[open_]).to(out.dtype)
            rejected[open_] = self.rejected
        self.rejected = rejected
        return out

    def _note_rejected(self, idx: torch.Tensor) -> None:
        rej = self.bb.last_rejected
        self.rejected = rej if rej is not None and rej.shape == idx.shape else torch.zeros_like(idx, dtype=torch.bool)

    def margin(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The paper's margin loss (B,) of x for samples idx (negative = looks adversarial); costs ``eot``. Under
        a partial output (topk, top1) the margin of the visible classes (:func:`visible_margin`)."""
        s = self.scores(x, idx)
        return visible_margin(s, self.y[idx]) if self.bb.output.partial else margin_loss(s, self.y[idx])

    def objective(self, x: torch.Tensor, idx: torch.Tensor, loss: str, *, dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(J, margin), each (B,), of x (B, C, H, W) for samples idx: the objective to *ascend* (``loss`` "margin":
        ``-margin``; "ce": cross-entropy, of logits or of the black box's probabilities) and the margin (negative =
        looks adversarial). The scores are cast to ``dtype`` first if given. Costs ``eot`` queries per row."""
        scores = self.scores(x, idx)
        if dtype is not None:
            scores = scores.to(dtype)
        return ascent_objective(scores, self.y[idx], loss, probabilities=self.bb.output.probabilities,
                                partial=self.bb.output.partial)

    def labels(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Predicted labels (B,) of x for samples idx; costs ``eot`` queries per row (majority of ``eot``
        forwards; 1 forward with the default eot=1). A refused row (a stateful detector's reject) reads as the
        true label: a refusal is no evidence that x is adversarial (:attr:`rejected` tells it apart)."""
        if self.bb.stateful and bool(self.bb.closed[idx].any()):
            out = self._open_rows_only(x, idx, self.labels, -1, (x.shape[0],))
            return torch.where(self.rejected, self.y[idx], out)
        out = self.bb.labels(x, idx, repeats=self.config.eot)
        self._note_rejected(idx)
        if bool(self.rejected.any()):
            out = torch.where(self.rejected, self.y[idx], out)
        self._tick()
        return out

    def logits_with_grad(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """White-box attacks only (a black box that ``supports_gradients``): raw logits (eot, B, K) of
        ``eot`` forwards of x (B, C, H, W) for samples idx (B,), differentiable w.r.t. x; costs ``eot`` queries
        per row (see :meth:`~rfd.blackbox.base.BlackBox.logits_with_grad`)."""
        out = self.bb.logits_with_grad(x, idx, repeats=self.config.eot)
        self._tick()
        return out

    # -- geometry -------------------------------------------------------------------------------------
    def project(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Project x (B, ...) onto the eps-ball around x0[idx] and [0, 1]."""
        return project(x, self.x0[idx], self.config.norm, self.config.eps)

    # -- success (verified, not charged) ----------------------------------------------------------------
    def report(self, x: torch.Tensor, idx: torch.Tensor, claimed: torch.Tensor | None = None) -> torch.Tensor:
        """Offer candidates x (B, ...) for samples idx whose own query looked adversarial (``claimed``, bool (B,);
        default all). Each claim is recorded (its query count), then verified by the black box's check (majority
        of ``verify`` votes, free or charged) and the eps-ball test; verified samples are marked broken at their
        query count after the check, store x, and stop. Returns bool (B,): verified."""
        verified = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        sel = torch.ones_like(verified) if claimed is None else claimed
        sel = sel & self.active[idx]
        if bool(sel.any()):
            i = idx[sel]
            self._claim_idx.append(i)
            self._claim_queries.append(self.bb.queries[i])
            ok = self.bb.is_adversarial(x[sel], self.y[i], x0=self.x0[i], threat=self.threat, idx=i)
            hit = i[ok]
            self.success[hit] = True
            self.success_queries[hit] = self.bb.queries[hit]
            self.x_adv[hit] = x[sel][ok]
            self.active[hit] = False
            verified[sel] = ok
        return verified

    def keep(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """Remember the attack's current iterate x for samples idx (the final image of failed samples)."""
        open_ = ~self.success[idx]
        self.x_adv[idx[open_]] = x[open_]

    def close(self) -> None:
        self._tick()
        self._bar.close()

    def claims(self) -> list[list[int]]:
        """Per sample, the query count at each of its claims, in order (one sort at the end, not per claim)."""
        out: list[list[int]] = [[] for _ in range(self.n)]
        if not self._claim_idx:
            return out
        i = torch.cat(self._claim_idx).cpu()
        q = torch.cat(self._claim_queries).cpu()
        order = torch.argsort(i * (int(q.max()) + 1) + q, stable=True)
        for a, b in zip(i[order].tolist(), q[order].tolist()):
            out[a].append(b)
        return out


class Attack(ABC):
    """Base of all attacks. Subclasses set ``name``, ``access``, ``norms`` and ``config_class`` and implement
    ``_run``.

    Build one with its settings as keywords (``Square(norm="linf", eps=0.05, budget=1000)``), or a config
    instance, optionally with keyword overrides (``Square(cfg, seed=1)``). A setting the config dataclass does
    not have raises ValueError naming it and listing the valid ones (the same for :func:`make_attack`).

    The attack object keeps no state between calls: ``run`` may be called again on other images."""

    name: ClassVar[str] = "attack"  # registry name
    # OARS support (rfd.attacks.oars): the config field holding the perturbation scale its exploration tunes, with
    # the search range, and the default number of redraws of a refused probe; None: the attack has no OARS form
    oars_scale: ClassVar[tuple[str, float, float] | None] = None
    oars_retries: ClassVar[int] = 5
    access: ClassVar[AttackAccess] = "scores"  # what it needs of the black box; see blackbox_access()
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    config_class: ClassVar[type[AttackConfig]] = AttackConfig

    def __init__(self, config: AttackConfig | None = None, **kwargs: Any) -> None:
        self._check_settings(kwargs)
        if config is None:
            config = self.config_class(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.norm not in self.norms:
            raise ValueError(f"{self.name} supports norms {self.norms}, got {config.norm!r}")
        if config.oars and self.oars_scale is None:
            raise ValueError(f"{self.name} has no OARS form; oars applies to square, nes and hsja")
        self.config = config

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """Names of the settings the attack takes (the fields of its config dataclass), in field order."""
        return tuple(f.name for f in dataclasses.fields(cls.config_class) if f.init)

    @classmethod
    def _check_settings(cls, kwargs: dict[str, Any]) -> None:
        valid = cls.settings()
        bad = [k for k in kwargs if k not in valid]
        if not bad:
            return
        named = []
        for k in bad:
            close = difflib.get_close_matches(k, valid, n=1)
            named.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
        raise ValueError(f"{cls.__name__}: unknown setting{'s' if len(bad) > 1 else ''} {', '.join(named)}; "
                         f"valid settings ({cls.config_class.__name__}): {', '.join(valid)}")

    @classmethod
    def blackbox_access(cls) -> Access:
        """The access to ask the black box for: ``"labels"`` for decision-based attacks, ``"scores"`` for
        score-based and white-box ones (white-box attacks also need ``bb.supports_gradients``: ``access ==
        "gradients"``). The one place that maps :attr:`access` to a black box's ``access``."""
        return "labels" if cls.access == "labels" else "scores"

    def output_problem(self, output: OutputSpec) -> str | None:
        """Why this attack, as configured, cannot run against a black box answering ``output`` (None: it can).

        Score-based attacks need scores (not ``labels``) and, under a partial output (topk, top1), an objective
        computable from the visible classes (the margin, not the cross-entropy of a class that may be hidden).
        White-box attacks read the model's logits and gradients, which an output setting does not shape: they run
        only where the answer is ``logits``. Decision-based attacks need labels, which every setting gives."""
        if self.access == "scores":
            if not output.scores:
                return f"{self.name} is score-based and output setting {output} answers labels only"
            if output.partial and getattr(self.config, "loss", "margin") == "ce":
                return (f"{self.name} with loss='ce' needs the true class's probability, which output setting "
                        f"{output} hides once the class leaves the visible ones; use loss='margin'")
        if self.access == "gradients" and output.kind != "logits":
            return (f"{self.name} is a white-box attack (it reads logits and gradients); output setting {output} "
                    "applies to black-box answers only: use output 'logits'")
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    def run(self, bb: BlackBox, x: torch.Tensor, y: torch.Tensor, *, progress: bool = False) -> AttackResult:
        """Attack images x (N, C, H, W) float32 in [0, 1] with int labels y (N,) through black box ``bb``.

        The black box must give the attack's access (score-based: ``bb.access == "scores"``; white-box:
        ``bb.supports_gradients``, else :class:`~rfd.blackbox.base.GradientsUnavailable`). Its budget, if set,
        must be at least the attack's; its counts are reset by this call. Returns the per-sample
        :class:`~rfd.attacks.result.AttackResult` (tensors on the CPU; distances in pixel units)."""
        check_images_labels(x, y)
        if self.access == "scores" and bb.access != "scores":
            raise ValueError(f"{self.name} is score-based but the black box answers labels only")
        problem = self.output_problem(bb.output)
        if problem:
            raise ValueError(problem)
        if self.access == "gradients" and not bb.supports_gradients:
            raise GradientsUnavailable(
                f"{self.name} is a white-box attack and needs gradients, but {type(bb).__name__} answers "
                "scores/labels only (a remote black box, rfd serve, gives no gradients; use a LocalBlackBox "
                "around an in-process model)"
            )
        if bb.budget is not None and bb.budget < self.config.budget:
            raise ValueError(f"black-box budget {bb.budget} is below the attack budget {self.config.budget}")
        dev = bb.device
        x0, y0 = x.to(dev), y.to(dev)
        bb.start(x0.shape[0])
        clean_correct = ~bb.is_adversarial(x0, y0)
        state = AttackState(bb, x0, y0, self.config, clean_correct, progress=progress, desc=self.name)
        gen = torch.Generator(device=dev).manual_seed(self.config.seed)
        try:
            if self.config.oars:
                from rfd.attacks.oars import run_oars

                run_oars(self, state, gen)
            else:
                self._run(state, gen)
        finally:
            state.close()
        linf, l2 = distances(state.x_adv, x0)
        queries = torch.where(state.success, state.success_queries, bb.queries)
        # Final re-evaluation (uncounted, like the check): R fresh forwards of every verified adversarial image,
        # and of the clean images, so that a lucky pass of the check can be told from a real break.
        p_wrong = torch.full((x0.shape[0],), float("nan"), dtype=torch.float64, device=dev)
        s = state.success
        if bool(s.any()):
            p_wrong[s] = bb.reevaluate_wrong(state.x_adv[s], y0[s])
        clean_p_wrong = bb.reevaluate_wrong(x0, y0)
        return AttackResult(
            attack=self.name, norm=self.config.norm, eps=self.config.eps, budget=self.config.budget,
            clean_correct=clean_correct.cpu(), success=state.success.cpu(), queries=queries.cpu(),
            x_adv=state.x_adv.cpu(), linf=linf.cpu(), l2=l2.cpu(),
            verification_forwards=bb.verification_forwards, config=self.config.to_dict(),
            extras={k: v.detach().cpu() for k, v in state.extras.items()},
            checks=bb.checks.cpu(), check_forwards=bb.check_forwards.cpu(), claims=state.claims(),
            p_wrong=p_wrong.cpu(), clean_p_wrong=clean_p_wrong.cpu(), verify=bb.verify, check=bb.check,
            reevaluate=bb.reevaluate, reevaluation_forwards=bb.reevaluation_forwards,
        )

    def _oars_trials(self, state: AttackState, idx: torch.Tensor, scale: float, trials: int) -> torch.Tensor:
        """OARS exploration: ``trials`` trial queries (trials * B, C, H, W) per image idx (B,) that perturb it as
        the attack would at perturbation scale ``scale`` (image-major). Attacks with :attr:`oars_scale` override it."""
        raise NotImplementedError(f"{self.name} has no OARS form")

    @abstractmethod
    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        """Advance all active samples together until each succeeds (``state.report``) or runs out of budget."""
