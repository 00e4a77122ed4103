"""Attacks written for the tests, named by studies as ``tests.helpers.attacks:<Class>`` (the runner imports them
by that path, like a user's own attack)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState

__all__ = ["DrawOnce", "DrawOnceConfig"]


@dataclass(frozen=True, kw_only=True)
class DrawOnceConfig(AttackConfig):
    pass


class DrawOnce(Attack):
    """One random point in the ball per image (1 query): its distance from the clean image shows the draw."""

    name = "draw-once"
    config_class = DrawOnceConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        idx = state.active_idx(1)
        x0 = state.x0[idx]
        u = state.rng.rows(idx).rand(*x0.shape) * 2 - 1  # the sample's own stream: paired across defenses
        x = state.project(x0 + self.config.eps * u, idx)
        state.report(x, idx, state.margin(x, idx) < 0)
        state.keep(x, idx)
