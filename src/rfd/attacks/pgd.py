"""PGD: projected gradient descent (Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083), l_inf and l_2,
with EOT (Athalye et al., ICML 2018) for randomized models."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Generator

from rfd.attacks.base import AttackConfig, AttackState
from rfd.attacks.whitebox import LOSSES, WhiteBoxAttack, objective, pgd_loop

__all__ = ["PGD", "PGDConfig"]


@dataclass(frozen=True, kw_only=True)
class PGDConfig(AttackConfig):
    """Settings of :class:`PGD` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`).

    ``eot`` = M: each gradient is the mean over M forwards (fresh noise each); a step costs M queries per
    sample. The run stops for a sample at ``budget`` queries even if steps remain."""

    steps: int = 40  # gradient steps per restart
    step_size: float | None = None  # pixel units (l_inf: per pixel, l_2: per image); default 2.5 eps / steps
    restarts: int = 1  # runs from fresh random starts for the samples still unbroken
    random_start: bool = True  # start uniformly in the eps-ball (False: at the clean image)
    loss: str = "ce"  # "ce" (cross-entropy, Madry et al.) or "margin" (max_{i != y} z_i - z_y on the logits)
    early_stop: bool = True  # offer each iterate its own forward misclassifies to the majority-vote check

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {self.steps} and {self.restarts}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be positive (pixel units) or None, got {self.step_size}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def alpha(self) -> float:
        """The step size in use (pixel units)."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


class PGD(WhiteBoxAttack):
    """Projected gradient descent on the cross-entropy (or margin) loss, batched over images.

    From a random point of the eps-ball, ``steps`` times: ascend the loss (sign of the gradient for l_inf,
    the normalised gradient for l_2), project back onto the ball and [0, 1]. With ``eot=M`` the gradient is
    averaged over M noise draws, so randomized defenses are attacked fairly; each step then costs M queries.

    Args (:class:`PGDConfig`): norm ("linf" | "l2"), eps (pixel units), budget (queries per sample), seed,
        eot, steps (40), step_size (2.5 * eps / steps), restarts (1), random_start, loss ("ce" | "margin"),
        early_stop.

    Example::

        bb = LocalBlackBox(defend(model, spec))
        result = PGD(norm="linf", eps=0.05, steps=20, eot=10, budget=200).run(bb, x, y)
        result.robust_accuracy()
    """

    name: ClassVar[str] = "pgd"
    config_class: ClassVar[type[AttackConfig]] = PGDConfig

    def _run(self, state: AttackState, gen: Generator) -> None:
        cfg: PGDConfig = self.config  # type: ignore[assignment]
        pgd_loop(state, objective(cfg.loss), steps=cfg.steps, step_size=cfg.alpha, restarts=cfg.restarts,
                 start_random=cfg.random_start, early_stop=cfg.early_stop)
