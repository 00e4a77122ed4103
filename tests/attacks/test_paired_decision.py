"""Paired comparisons: every image meets the same attack randomness whichever other images share its batch.

The attacks draw from one stream per sample (``state.rng``), so an image's path depends only on the attack's
seed, its position in the batch and the answers about *it*. On a deterministic model, an image attacked next to
other images (some never attacked because they are misclassified, some finishing at other times) must get
bit-identical results: the same images, queries, successes and radii. This is what makes two defenses of a study
comparable image by image (they differ only where their answers differ).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rfd.attacks import hsja as hsja_module
from rfd.attacks.base import Attack
from rfd.attacks.boundary import Boundary
from rfd.attacks.geoda import GeoDA
from rfd.attacks.hsja import HopSkipJump
from rfd.attacks.pgd import PGD
from rfd.attacks.result import AttackResult
from rfd.attacks.rng import SampleStreams
from rfd.attacks.signflip import SignFlip
from rfd.attacks.signopt import SignOPT
from rfd.attacks.whitebox import random_start
from rfd.blackbox.local import LocalBlackBox
from tests.helpers.attack_cases import OTHER, assert_same_rows, decision_attack, other_batch
from tests.helpers.attack_cases import cnn_case as build_cnn_case

N = 10
VARIANTS = ["replaced", "alone"]  # the second batch (other_batch, tests/helpers/attack_cases.py)


@pytest.fixture(scope="module")
def cnn_case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiny CNN of the decision-attack tests, N images labelled by it, and spare images."""
    return build_cnn_case(N, spare=len(OTHER))


# decision_attack adds the small settings of tests/helpers/attack_cases.py (DECISION_SMALL)
DECISION = [(SignFlip, "linf", 0.05), (HopSkipJump, "linf", 0.05), (HopSkipJump, "l2", 0.5), (SignOPT, "linf", 0.05),
            (SignOPT, "l2", 0.5), (GeoDA, "linf", 0.05), (GeoDA, "l2", 0.5), (Boundary, "l2", 0.5),
            (Boundary, "linf", 0.05)]
DECISION_IDS = ["signflip", "hsja-linf", "hsja-l2", "signopt-linf", "signopt-l2", "geoda-linf", "geoda-l2",
                "boundary-l2", "boundary-linf"]


def _run(model: torch.nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
    return attack.run(LocalBlackBox(model, access="labels", budget=attack.config.budget), x, y)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cls,norm,eps", DECISION, ids=DECISION_IDS)
def test_decision_attacks_are_paired_across_batches(cnn_case, cls, norm, eps, variant) -> None:  # type: ignore[no-untyped-def]
    model, x, y, spare = cnn_case
    attack = decision_attack(cls, norm, eps, 300, seed=2)
    a = _run(model, attack, x, y)
    x2, y2, common = other_batch(x, y, spare, variant, 10)
    b = _run(model, attack, x2, y2)
    # the batches really differ in who is attacked, and for how long
    assert a.clean_correct.all() and not b.clean_correct.all()
    changed = [i for i in range(N) if i not in common]
    assert not torch.equal(a.queries[changed], b.queries[changed])
    assert a.success.any() and not a.success.all()  # some break early, others run to the end
    assert_same_rows(a, b, common)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_hsja_probes_do_not_depend_on_memory_blocks_or_batch(cnn_case, monkeypatch, norm, eps) -> None:  # type: ignore[no-untyped-def]
    """With a few probes per draw (several draws per estimate, samples dropping out of an estimate at different
    probe counts), neither the memory blocking of the probes nor the other samples change a sample's result."""
    model, x, y, spare = cnn_case
    monkeypatch.setattr(hsja_module, "_DRAW_ELEMENTS", 3 * x[0].numel())  # 3 probes per draw
    attack = HopSkipJump(norm=norm, eps=eps, budget=300, seed=5, init_evals=8)
    a = _run(model, attack, x, y)
    monkeypatch.setattr(hsja_module, "_PROBE_ELEMENTS", 1)  # one sample per block
    blocked = _run(model, attack, x, y)
    assert_same_rows(a, blocked, list(range(N)))
    x2, y2, common = other_batch(x, y, spare, "replaced", 10)
    assert_same_rows(a, _run(model, attack, x2, y2), common)


def test_same_seed_same_result_other_seed_other_result(cnn_case) -> None:  # type: ignore[no-untyped-def]
    model, x, y, _ = cnn_case
    for attack_cls, kw in ((SignFlip, {}), (HopSkipJump, {"init_evals": 20})):
        a = _run(model, attack_cls(eps=0.05, budget=150, seed=0, **kw), x, y)
        b = _run(model, attack_cls(eps=0.05, budget=150, seed=0, **kw), x, y)
        c = _run(model, attack_cls(eps=0.05, budget=150, seed=1, **kw), x, y)
        assert_same_rows(a, b, list(range(N)))
        assert not torch.equal(a.x_adv, c.x_adv)


# -- PGD's random start ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_rows_are_their_own_streams(norm: str) -> None:
    """A subset of rows gets exactly the starts those rows get in the full batch."""
    n = 12
    x0 = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = random_start(x0, norm, 0.2, SampleStreams(n, 3).rows(torch.arange(n)))
    rows = torch.tensor([2, 5, 11])
    part = random_start(x0[rows], norm, 0.2, SampleStreams(n, 3).rows(rows))
    assert torch.equal(part, full[rows])
    # each call advances the rows' streams: a second start is a fresh draw
    streams = SampleStreams(n, 3)
    first = random_start(x0, norm, 0.2, streams.rows(torch.arange(n)))
    assert torch.equal(first, full)
    assert not torch.equal(random_start(x0, norm, 0.2, streams.rows(torch.arange(n))), full)


class MeanModel(torch.nn.Module):
    """The linear fixture's model (logits ``[0.5, mean(x)]``: class 1 iff mean pixel > 0.5) without a matrix
    product: each row's logits and gradient are bit-identical whatever the batch size (BLAS picks other kernels
    for a batch of one, which moves the last bit of ``nn.Linear``'s output, and l_2 steps would carry that)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the black box a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([torch.full_like(m, 0.5), m], 1)


def _linear_case(n: int = N) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-0 images of the linear fixture (class 1 iff mean pixel > 0.5) with pixels in [0.1, 0.4], and their
    l_inf gaps to the boundary (0.5 - mean)."""
    x = 0.1 + 0.3 * torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    return x, torch.zeros(n, dtype=torch.int64), 0.5 - x.flatten(1).mean(1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_is_paired_across_batches(norm: str, variant: str) -> None:
    """Small steps from random starts with two restarts: the final iterates carry the starts, and samples leave
    at different steps and restarts; the common images end identically whoever else is in the batch."""
    model = MeanModel().eval()
    x, y, gap = _linear_case()
    eps = 1.6 * float(gap.median()) * (1 if norm == "linf" else 4)  # some images break, in either restart
    attack: Any = PGD(norm=norm, eps=eps, steps=4, step_size=0.15 * eps, restarts=2, seed=7, budget=100)
    a = attack.run(LocalBlackBox(model, verify=1), x, y)
    # "easier" replacements: images right next to the boundary (broken at once)
    spare = (x[: len(OTHER)] + (gap[: len(OTHER)] - 0.02 * eps).view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    x2, y2, common = other_batch(x, y, spare, variant, 2)
    b = attack.run(LocalBlackBox(model, verify=1), x2, y2)
    assert a.success.any() and not a.success.all()
    changed = [i for i in range(N) if i not in common]
    assert not torch.equal(a.queries[changed], b.queries[changed])
    assert_same_rows(a, b, common)
    # the starts matter: another seed ends elsewhere
    other = PGD(norm=norm, eps=eps, steps=4, step_size=0.15 * eps, restarts=2, seed=8, budget=100)
    c = other.run(LocalBlackBox(model, verify=1), x, y)
    assert not torch.equal(a.x_adv[common], c.x_adv[common])
