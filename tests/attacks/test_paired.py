"""Paired attacks: every image draws from its own random stream (``state.rng``), so its trajectory under an attack
does not depend on the other images of the batch, nor on when they finish. Two defenses compared on the same
images then meet the same attack randomness per image (common random numbers).

Checked for Square (l_inf, l_2), NES, Bandits and ZO-signSGD (SimBA's own check is in test_simba.py): a batch is attacked, then the same batch with some of the other images
replaced by misclassified ones (never attacked), by easier ones (broken early) or cut off (a smaller batch); the
images common to both runs must get bit-identical adversarial images, queries and success. The model is
deterministic and computes every row on its own (elementwise ops only), so an image's answers depend only on
its own queries."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rfd.attacks import AttackResult, make_attack
from rfd.attacks.nes import antithetic_probes, nes_directions
from rfd.attacks.rng import RowDraws, SampleStreams
from rfd.attacks.square import l2_init, l2_proposal, linf_init, linf_proposal
from rfd.blackbox import LocalBlackBox
from tests.helpers.attack_cases import RowwiseLinear, assert_independent_of_batch, mean_gap_images


def _attack(name: str, x: torch.Tensor, y: torch.Tensor, **cfg: Any) -> AttackResult:
    bb = LocalBlackBox(RowwiseLinear(), budget=int(cfg["budget"]), verify=3)
    return make_attack(name, **cfg).run(bb, x, y)


# name, config, gap of the hard images (a multiple of the gap that the eps-ball can just close)
CASES = [
    ("square", {"norm": "linf", "eps": 0.05, "budget": 600, "seed": 5}, 0.9 * 0.05),
    ("square", {"norm": "l2", "eps": 0.5, "budget": 400, "seed": 5}, 0.5 * 0.5 / 4),
    ("nes", {"norm": "linf", "eps": 0.05, "budget": 11 * 40, "seed": 5, "samples": 10}, 0.6 * 0.05),
    ("bandits", {"norm": "linf", "eps": 0.05, "budget": 3 * 25, "seed": 5, "tile": 1}, 0.6 * 0.05),
    ("bandits", {"norm": "l2", "eps": 0.5, "budget": 3 * 20, "seed": 5, "tile": 1}, 0.6 * 0.5 / 4),
    ("zosignsgd", {"norm": "linf", "eps": 0.05, "budget": 1 + 11 * 30, "seed": 5, "q": 10}, 0.95 * 0.05),
    ("zosignsgd", {"norm": "l2", "eps": 0.5, "budget": 1 + 5 * 30, "seed": 5, "q": 4}, 0.8 * 0.5 / 4),
]
IDS = ["square-linf", "square-l2", "nes-linf", "bandits-linf", "bandits-l2", "zosignsgd-linf", "zosignsgd-l2"]


@pytest.mark.parametrize("name,cfg,gap", CASES, ids=IDS)
def test_an_images_attack_does_not_depend_on_the_other_images(name: str, cfg: dict[str, Any], gap: float) -> None:
    # the batch, then images 1 (misclassified), 3 and 6 (easy) replaced, then the batch cut after image 5
    assert_independent_of_batch(lambda x, y: _attack(name, x, y, **cfg), mean_gap_images, gap)


# -- the building blocks draw per row -------------------------------------------------------------------------------
def _rows(n: int, seed: int, idx: list[int]) -> RowDraws:
    return SampleStreams(n, seed).rows(torch.tensor(idx, dtype=torch.int64))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_steps_of_a_row_do_not_depend_on_the_other_rows(norm: str) -> None:
    # every l_inf proposal of an image starting in the +eps corner needs redraws half of the time: the redraws,
    # too, must come from the image's own stream only
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(16, 1, 10, 10, generator=g)
    eps = 0.05 if norm == "linf" else 1.0
    init, step = (linf_init, linf_proposal) if norm == "linf" else (l2_init, l2_proposal)
    sub = [1, 4, 5, 11]
    full_rows, sub_rows = _rows(16, 3, list(range(16))), _rows(16, 3, sub)
    xf = init(x0, eps, full_rows)
    xs = init(x0[sub], eps, sub_rows)
    assert torch.equal(xf[sub], xs)
    if norm == "linf":
        xf, xs = (x0 + eps).clamp(0, 1), (x0[sub] + eps).clamp(0, 1)
    for _ in range(5):
        xf = step(x0, xf, eps, 3, full_rows)
        xs = step(x0[sub], xs, eps, 3, sub_rows)
        assert torch.equal(xf[sub], xs)


def test_nes_directions_of_a_row_do_not_depend_on_the_other_rows() -> None:
    full = nes_directions(_rows(6, 2, list(range(6))), 5, (1, 4, 4))
    part = nes_directions(_rows(6, 2, [4, 1]), 5, (1, 4, 4))
    assert full.shape == (5, 6, 1, 4, 4) and part.shape == (5, 2, 1, 4, 4)
    assert torch.equal(full[:, [4, 1]], part)
    assert abs(float(full.mean())) < 0.2 and 0.8 < float(full.std()) < 1.2  # N(0, 1)


def test_large_draws_are_split_but_stay_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from rfd.attacks import rng

    monkeypatch.setattr(rng, "_PER_CALL", 8)  # force draws of 20 values per row into 3 sub-draws
    a = rng.SampleStreams(3, 0).rows(torch.arange(3)).rand(3, 20)
    b = rng.SampleStreams(3, 0).rows(torch.tensor([1])).rand(1, 20)
    assert a.shape == (3, 20) and torch.equal(a[1], b[0])
    assert len({tuple(r.tolist()) for r in a}) == 3 and bool((a >= 0).all() and (a < 1).all())


def test_draws_in_cpu_blocks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU draws go through the rows in cache-sized blocks; the block size must not change a single value."""
    from rfd.attacks import rng

    idx = torch.tensor([3, 0, 5, 2])

    def draws() -> list[torch.Tensor]:
        rows = rng.SampleStreams(6, 7).rows(idx)
        return [rows.randn(4, 3, 5, 5), rows.rand(4, 2, 9), rows.randint(0, 7, 4, 11), rows.signs(4, 6)]

    monkeypatch.setattr(rng, "_CPU_BLOCK", 1 << 20)  # every draw in one block
    whole = draws()
    monkeypatch.setattr(rng, "_CPU_BLOCK", 10)  # one row per block
    blocked = draws()
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(whole, blocked))


def test_antithetic_probes_are_both_clipped_halves_in_order() -> None:
    x = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.99, 0.01]])  # (B=2, 3)
    u = torch.tensor([[[1.0, -1.0, 2.0], [0.5, 3.0, -2.0]]])  # (P=1, B, 3)
    out = antithetic_probes(x, u, 0.1)
    want = torch.cat([(x + 0.1 * u).clamp(0.0, 1.0), (x - 0.1 * u).clamp(0.0, 1.0)])
    assert out.shape == (2, 2, 3) and torch.equal(out, want)
    assert torch.allclose(out[0, 0], torch.tensor([0.1, 0.4, 1.0])) and torch.allclose(out[1, 1], torch.tensor([0.15, 0.69, 0.21]))
