"""OARS: the adaptive attack against stateful detectors (Feng, Feng, Liu, Xu & Ma, "Stateful Defenses for Machine
Learning Models Are Not Yet Secure Against Black-box Attacks", CCS 2023, https://arxiv.org/abs/2303.06280).

A stateful deployment answers a flagged query with a refusal, and that refusal is a signal. OARS uses it twice:

1. **Adaptive exploration** before the attack: binary-search the attack's perturbation scale (Square's initial
   fraction of changed pixels ``p_init``, NES's sampling step ``fd_step`` in [0.01, 0.5], HopSkipJump's probe
   distance multiplier ``probe_scale``) so that the flag rate of trial queries made at that scale stays under a
   target (OARS: 0.05). Trial queries are real queries: they are charged and enter the account's history.
2. **Rejection sampling** during the attack: a refused probe is drawn again (a new random direction or square)
   up to k times (OARS: 5 for NES, 20 for HSJA; rfd uses 5 for Square too); gradient estimates use only the
   answered probes. Every redraw is charged; an image redraws only while its budget can pay, so the budget is
   never exceeded.

rfd's exploration is batched: one scale for all images of a run, the smallest on the search's log grid whose
trial flag rate over the images is at most the target (or the top of the range if none is), from ``steps``
bisection rounds of ``trials`` trial queries per image. OARS explores per attacked image; with one account per
image and images of one dataset the rates are alike, and the batched search keeps every image on the same
attack settings. SignHunt has no OARS form: its probes are deterministic sign flips of size eps (nothing to
resample, no scale to tune); neither have the other attacks of rfd.

Turn it on with the attack settings ``oars=True`` (``oars_target``, ``oars_retries``), e.g.
``NES(eps=0.05, budget=2000, oars=True)`` or ``{name: nes, params: {oars: true}}`` in a study. The scale chosen
is in ``result.extras["oars_scale"]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch

from rfd.attacks.base import AttackState

if TYPE_CHECKING:
    from rfd.attacks.base import Attack

__all__ = ["EXPLORATION_STEPS", "EXPLORATION_TRIALS", "explore_scale", "run_oars"]

EXPLORATION_STEPS = 5  # bisection rounds on the log scale
EXPLORATION_TRIALS = 4  # trial queries per image and round


def explore_scale(attack: Attack, state: AttackState, *, target: float, steps: int = EXPLORATION_STEPS,
                  trials: int = EXPLORATION_TRIALS) -> float:
    """OARS's exploration: the attack's perturbation scale, by bisection on a log scale over its range, whose trial
    queries are refused at a rate of at most ``target``. Trials are charged; an image takes part only while it
    can pay a round and keep one query for the attack. Returns the scale (the top of the range if no tested
    scale passes; the bottom if there was no image to test with)."""
    assert attack.oars_scale is not None
    _, lo, hi = attack.oars_scale
    best = hi
    a, b = math.log(lo), math.log(hi)
    cost = trials * state.config.eot
    for _ in range(steps):
        idx = state.active_idx(cost + state.config.eot)
        if idx.numel() == 0:
            break
        s = math.exp((a + b) / 2)
        x = attack._oars_trials(state, idx, s, trials)
        rows = idx.repeat_interleave(trials)
        if attack.access == "labels":
            state.labels(x, rows)
        else:
            state.scores(x, rows)
        rate = float(state.rejected.float().mean()) if state.rejected.numel() else 0.0
        if rate <= target:
            best, b = min(best, s), math.log(s)
        else:
            a = math.log(s)
    return best


def run_oars(attack: Attack, state: AttackState, gen: torch.Generator) -> None:
    """Run ``attack`` as OARS: explore its scale (:func:`explore_scale`), then its own search with rejection
    sampling (``state.retries`` redraws of refused probes) at that scale."""
    cfg = attack.config
    assert attack.oars_scale is not None
    field = attack.oars_scale[0]
    scale = explore_scale(attack, state, target=cfg.oars_target)
    state.extras["oars_scale"] = torch.full((state.n,), scale, device=state.x0.device)
    tuned = type(attack)(dataclasses.replace(cfg, oars=False, **{field: scale}))  # type: ignore[arg-type]
    state.retries = cfg.oars_retries if cfg.oars_retries is not None else attack.oars_retries
    tuned._run(state, gen)
