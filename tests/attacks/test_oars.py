"""Attacks against a stateful deployment: every attack runs unchanged (refusals read as "no answer"), and OARS
(exploration + rejection sampling) never exceeds the budget and uses the reject signal."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
import torch

from rfd.attacks.registry import ATTACKS, make_attack
from rfd.blackbox.local import LocalBlackBox
from rfd.blackbox.stateful import StatefulBlackBox
from rfd.defenses.detector_spec import DetectorSpec
from rfd.detect.base import Detector
from tests.helpers.detectors import CoinDetector

BUDGET = 200


class NearDetector(Detector):
    """Flags a query within l_inf distance ``tau`` of an earlier query of its account."""

    def __init__(self, tau: float) -> None:
        super().__init__(DetectorSpec(kind="knn"))
        self.tau = tau
        self.past: dict[Hashable, torch.Tensor] = {}

    def signatures(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def _observe_account(self, account, sig):
        flags = torch.zeros(sig.shape[0], dtype=torch.bool)
        for i, row in enumerate(sig):
            h = self.past.get(account)
            flags[i] = h is not None and bool(((h - row).abs().amax(1) < self.tau).any())
            self.past[account] = row[None] if h is None else torch.cat([h, row[None]])
        return flags, flags.double()

    def restore(self, account, sig):
        self.past[account] = sig

    def reset(self, account=None):
        self.past.clear() if account is None else self.past.pop(account, None)

    def history_size(self, account):
        return 0 if account not in self.past else self.past[account].shape[0]


def _data(n: int = 6):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 4, 4, generator=g) * 0.4 + 0.3
    return x


class WatchedBlackBox(StatefulBlackBox):
    """Counts queries charged to samples that were already banned when the call began (must stay 0)."""

    after_ban = 0

    def _charge(self, idx, x, cost):
        if self._banned.numel():
            self.after_ban += int(self._banned[idx].sum()) * cost
        super()._charge(idx, x, cost)


def _run(model, name: str, detector: Detector, **kw):
    a = make_attack(name, eps=0.1, budget=BUDGET, seed=1, **kw)
    bb = WatchedBlackBox(LocalBlackBox(model, access=a.blackbox_access(), budget=BUDGET), detector)
    x = _data()
    y = model(x).argmax(1)
    return a, bb, x, a.run(bb, x, y)


# transfer and P-RGF need a surrogate with the target's classes; the 2-class linear model has none
_BLACK_BOX = [n for n, c in ATTACKS.items() if c.access != "gradients" and n not in ("transfer", "prgf")]


@pytest.mark.parametrize("action", ["reject", "ban"])
@pytest.mark.parametrize("name", _BLACK_BOX)
def test_every_attack_runs_unchanged_against_a_detector(linear_model, name, action):
    _, bb, _, res = _run(linear_model, name, CoinDetector(0.3, action=action))
    assert torch.isfinite(res.x_adv).all()
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    assert bool((bb.queries <= BUDGET).all())
    assert bool((bb.rejected <= bb.queries).all()) and bool((bb.flagged <= bb.queries).all())
    if action == "ban":  # a banned sample stops: no query call of it after its session ended
        assert bb.after_ban == 0 and bool(bb.closed.any())


@pytest.mark.parametrize("name", ["square", "nes", "hsja"])
def test_oars_never_exceeds_the_budget_and_resamples(linear_model, name):
    a, bb, _, res = _run(linear_model, name, CoinDetector(0.5, seed=2), oars=True)
    assert bool((bb.queries <= BUDGET).all())
    assert "oars_scale" in res.extras
    lo, hi = a.oars_scale[1], a.oars_scale[2]
    assert lo <= float(res.extras["oars_scale"][0]) <= hi
    assert int(bb.rejected.sum()) > 0


def test_oars_exploration_finds_a_scale_the_detector_lets_through(linear_model):
    # NES probes at the default 0.01 step are all within 0.1 of each other: flagged; OARS must search upward.
    _, plain, _, _ = _run(linear_model, "nes", NearDetector(0.1))
    _, bb, _, res = _run(linear_model, "nes", NearDetector(0.1), oars=True)
    scale = float(res.extras["oars_scale"][0])
    assert scale > 0.05
    rate_plain = float(plain.flagged.sum()) / float(plain.queries.sum())
    rate_oars = float(bb.flagged.sum()) / float(bb.queries.sum())
    assert rate_plain > 0.9 and rate_oars < rate_plain - 0.3


def test_oars_is_refused_for_attacks_without_an_oars_form():
    with pytest.raises(ValueError, match="no OARS form"):
        make_attack("signhunt", eps=0.1, budget=10, oars=True)


def test_oars_settings_stay_out_of_plain_configs():
    assert "oars" not in make_attack("square", eps=0.1, budget=10).config.to_dict()
    assert make_attack("square", eps=0.1, budget=10, oars=True).config.to_dict()["oars"] is True
