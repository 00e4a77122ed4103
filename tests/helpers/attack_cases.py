"""Cases, black boxes and checks shared by the attack tests (tests/attacks/), written once here.

- score-based: :func:`tiny_score_case` (a tiny model and images with one misclassified), :func:`run_attack` (an
  attack on a counting black box), :func:`near_boundary`, :class:`SpyBlackBox` (records every success check),
  :class:`RowwiseLinear` / :func:`mean_gap_images` and :func:`assert_independent_of_batch` (paired trajectories);
- decision-based: :func:`cnn_data` / :func:`cnn_case` (the tiny CNN and images labelled by it),
  :func:`decision_attack` (a decision attack with settings small enough for a few hundred queries),
  :class:`NoisyLogits`, :class:`VerificationLog`, :func:`distance`, :func:`counted_rows_match`, and the paired
  helpers :func:`other_batch` / :func:`assert_same_rows`;
- the linear model of the ``linear_model`` fixture (class 1 iff mean pixel > 0.5): :func:`linear_images` and the
  closed-form boundary distances :func:`true_linf_distance`, :func:`true_l2_distance` (that model) and
  :func:`linear_distance` (any 2-class linear model)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rfd.attacks import AttackResult, make_attack
from rfd.attacks.base import Attack
from rfd.attacks.boundary import Boundary
from rfd.attacks.hsja import HopSkipJump
from rfd.attacks.signopt import SignOPT
from rfd.blackbox import LocalBlackBox
from tests.helpers.models import Counting, TinyCNN, tiny_cnn

__all__ = [
    "DECISION_SMALL", "NoisyLogits", "RowwiseLinear", "SpyBlackBox", "VerificationLog", "assert_independent_of_batch",
    "assert_same_rows", "cnn_case", "cnn_data", "counted_rows_match", "decision_attack", "distance",
    "linear_distance", "linear_images", "mean_gap_images", "near_boundary", "other_batch", "run_attack",
    "tiny_score_case", "true_l2_distance", "true_linf_distance", "uncharged",
]


# ---------------------------------------------------------------------------------------------- running attacks
def uncharged(res: AttackResult) -> int:
    """The forwards an attack's run made that are no query: verifications and re-evaluations."""
    return res.verification_forwards + res.reevaluation_forwards


def run_attack(attack: str | Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               budget: int | None = None, verify: int = 3, output: str = "logits",
               bb_class: type[LocalBlackBox] = LocalBlackBox, **cfg: Any
               ) -> tuple[AttackResult, LocalBlackBox, Counting]:
    """(result, black box, counting wrapper) of ``attack`` (a registry name built with ``cfg`` and ``budget``, or
    an attack) on ``model`` behind a score black box whose budget is ``budget``, else the attack's."""
    if isinstance(attack, str):
        attack = make_attack(attack, **cfg, **({} if budget is None else {"budget": budget}))
    elif cfg:
        raise TypeError("settings go to the attack's constructor when an attack is given")
    counting = Counting(model)
    bb = bb_class(counting, budget=budget or attack.config.budget, verify=verify, output=output)  # type: ignore[arg-type]
    return attack.run(bb, x, y), bb, counting


# ---------------------------------------------------------------------------------------------- score cases
def tiny_score_case(kind: str, linear_model: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model, 6 images, labels) for ``kind`` "linear" (the fixture), "cnn-gray" (1x8x8) or "cnn-rgb" (3x6x6):
    labels are the model's clean predictions except the last one (misclassified)."""
    g = torch.Generator().manual_seed(7)
    model: nn.Module
    if kind == "linear":
        x = 0.5 + 0.15 * (torch.rand(6, 1, 4, 4, generator=g) - 0.5)
        model = linear_model
    elif kind == "cnn-gray":
        x = torch.rand(6, 1, 8, 8, generator=g)
        model = TinyCNN(1, 8, 4, seed=1)
    else:  # "cnn-rgb": several channels
        x = torch.rand(6, 3, 6, 6, generator=g)
        model = TinyCNN(3, 6, 3, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % int(model.num_classes)  # type: ignore[arg-type]
    return model, x, y


def near_boundary(gap: float, n: int = 6) -> torch.Tensor:
    """1x4x4 images with mean exactly 0.5 - gap (class 0 of ``linear_model``, which flips at mean 0.5)."""
    x = 0.5 + 0.1 * (torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(9)) - 0.5)
    return x - x.mean((1, 2, 3), keepdim=True) + (0.5 - gap)


class SpyBlackBox(LocalBlackBox):
    """Records every success check of an attack's claim: (sample, queries charged to it then, verdict). Call
    :meth:`set_originals` with the clean images (all distinct) before the run."""

    def start(self, n: int) -> None:
        super().start(n)
        self.spied: list[tuple[int, int, bool]] = []

    def set_originals(self, x: torch.Tensor) -> None:
        self.originals = x.flatten(1)

    def is_adversarial(self, x, y, *, x0=None, threat=None, idx=None):  # type: ignore[no-untyped-def]
        ok = super().is_adversarial(x, y, x0=x0, threat=threat, idx=idx)
        if threat is not None:  # an attack's claim (the clean check passes no threat model)
            # which samples: match the clean images handed over against the originals
            sample = (x0.flatten(1)[:, None] == self.originals[None]).all(2).float().argmax(1)
            q = self.queries
            self.spied += [(int(i), int(q[i]), bool(v)) for i, v in zip(sample, ok)]
        return ok


# ---------------------------------------------------------------------------------------------- paired (score)
class RowwiseLinear(nn.Module):
    """2 classes on 1 x 4 x 4 images: logits ``[0.5, mean(x)]`` (class 1 iff the mean pixel is above 0.5), the
    mean summed pixel by pixel with elementwise adds, so a row's logits are bit-identical whatever the batch."""

    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        acc = f[:, 0].clone()
        for k in range(1, f.shape[1]):
            acc = acc + f[:, k]
        m = acc / f.shape[1]
        return torch.stack([torch.full_like(m, 0.5), m], 1)


def mean_gap_images(gaps: list[float], seed: int) -> torch.Tensor:
    """1x4x4 images with mean exactly 0.5 - gap (class 0 for gap > 0, class 1 for gap < 0)."""
    x = 0.5 + 0.1 * (torch.rand(len(gaps), 1, 4, 4, generator=torch.Generator().manual_seed(seed)) - 0.5)
    return x - x.mean((1, 2, 3), keepdim=True) + (0.5 - torch.tensor(gaps).view(-1, 1, 1, 1))


def assert_independent_of_batch(attack: Callable[[torch.Tensor, torch.Tensor], AttackResult],
                                images: Callable[[list[float], int], torch.Tensor], gap: float, *,
                                easy_gap: float = 1e-3) -> AttackResult:
    """Attacks 8 class-0 images at ``gap`` (``images(gaps, seed)``, class 1 for a negative gap), then the same
    batch with images 1 (misclassified: never attacked), 3 and 6 (``easy_gap``: broken early) replaced, and the
    batch cut after image 5: the images common to the runs must end bit-identically. Returns the first run."""
    n = 8
    common = [0, 2, 4, 5, 7]  # the images of all runs (same positions: an image's stream is its position)
    others = [1, 3, 6]
    x = images([gap] * n, 1)
    y = torch.zeros(n, dtype=torch.long)
    ref = attack(x, y)
    x2 = x.clone()
    x2[1] = images([-0.1], 2)[0]  # class 1, labelled 0
    x2[[3, 6]] = images([easy_gap, easy_gap], 3)
    alt = attack(x2, y)
    cut = attack(x[:6], y[:6])  # the batch cut after image 5 (images 6 and 7 absent)

    # not vacuous: the active sets differ while common images are still attacked, and they finish at different times
    assert not bool(alt.clean_correct[1]) and int(alt.queries[1]) == 0
    assert bool(alt.success[[3, 6]].all())
    assert int(alt.queries[[3, 6]].max()) < int(ref.queries[common].max())
    assert not torch.equal(alt.queries[others], ref.queries[others])
    assert bool(ref.success[common].any()) and int(ref.queries[common].max()) > int(ref.queries[common].min())
    for other, keep in ((alt, common), (cut, [i for i in common if i < 6])):
        assert torch.equal(other.x_adv[keep], ref.x_adv[keep])
        assert torch.equal(other.queries[keep], ref.queries[keep])
        assert torch.equal(other.success[keep], ref.success[keep])
    return ref


# ---------------------------------------------------------------------------------------------- decision cases
def cnn_case(n: int = 12, spare: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiny CNN (tests/helpers/models.py), n images in [0, 1] labelled by its own predictions, and ``spare``
    more images (the next draws of the same generator)."""
    model = tiny_cnn()
    x = torch.rand(n + spare, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x[:n]).argmax(1)
    return model, x[:n], y, x[n:]


def cnn_data(wrong: int = 2) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """:func:`cnn_case`'s 12 images with the first ``wrong`` labels deliberately wrong (misclassified clean
    images: never attacked, 0 queries)."""
    model, x, y, _ = cnn_case()
    y[:wrong] = (y[:wrong] + 1) % 10
    return model, x, y


# settings that let a decision attack reach its main loop within a few hundred queries on the tiny CNN
DECISION_SMALL: dict[type[Attack], dict[str, Any]] = {
    HopSkipJump: {"init_evals": 20},
    SignOPT: {"init_directions": 10, "k": 30},
    Boundary: {"stats_every": 2, "spherical_window": 5, "step_window": 3},
}


def decision_attack(cls: type[Attack], norm: str, eps: float, budget: int, **kw: Any) -> Attack:
    """``cls`` with :data:`DECISION_SMALL`'s settings (``kw`` overrides them)."""
    return cls(norm=norm, eps=eps, budget=budget, **{**DECISION_SMALL.get(cls, {}), **kw})


class NoisyLogits(nn.Module):
    """A randomized model: Gaussian noise of std sigma on the logits, fresh per forward, from its own generator."""

    def __init__(self, model: nn.Module, sigma: float, seed: int = 0) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out + self.sigma * torch.randn(out.shape, generator=self.gen)


class VerificationLog(LocalBlackBox):
    """A black box that remembers every success check of an attack's claim it answered: (images, verdicts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[torch.Tensor, torch.Tensor]] = []

    def is_adversarial(self, x, y, *, x0=None, threat=None, idx=None):  # type: ignore[no-untyped-def]
        ok = super().is_adversarial(x, y, x0=x0, threat=threat, idx=idx)
        if threat is not None:
            self.log.append((x.clone(), ok.clone()))
        return ok


def distance(r: AttackResult) -> torch.Tensor:
    """Each sample's distance from its clean image in the attack's norm."""
    return r.linf if r.norm == "linf" else r.l2


def counted_rows_match(counted: Counting, bb: LocalBlackBox) -> bool:
    """Every forward the model saw is a charged query, a verification forward or a re-evaluation forward."""
    return counted.rows == int(bb.queries.sum()) + (bb.verification_forwards + bb.reevaluation_forwards)


# ---------------------------------------------------------------------------------------------- paired (decision)
WRONG = [1, 6]  # positions given a wrong label in the second batch: misclassified, never attacked
OTHER = [3, 8]  # positions given another image in the second batch: attacked, finishing at other times


def other_batch(x: torch.Tensor, y: torch.Tensor, spare_x: torch.Tensor, variant: str, classes: int, *,
                spare_y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The second batch of a paired comparison and the positions common to both. ``replaced``: images at
    :data:`WRONG` mislabelled, those at :data:`OTHER` swapped for ``spare_x`` (labelled ``spare_y`` if given);
    ``alone``: every image but image 4 mislabelled (the survivor is attacked on its own)."""
    x2, y2 = x.clone(), y.clone()
    if variant == "replaced":
        y2[WRONG] = (y2[WRONG] + 1) % classes
        x2[OTHER] = spare_x[: len(OTHER)]
        if spare_y is not None:
            y2[OTHER] = spare_y[: len(OTHER)]
        changed = set(WRONG) | set(OTHER)
    else:
        others = [i for i in range(x.shape[0]) if i != 4]
        y2[others] = (y2[others] + 1) % classes
        changed = set(others)
    return x2, y2, [i for i in range(x.shape[0]) if i not in changed]


def assert_same_rows(a: AttackResult, b: AttackResult, rows: list[int]) -> None:
    """Bit-identical results for ``rows``: images, queries, success, claims and every extra."""
    assert torch.equal(a.x_adv[rows], b.x_adv[rows])
    assert torch.equal(a.queries[rows], b.queries[rows])
    assert torch.equal(a.success[rows], b.success[rows])
    assert [a.claims[i] for i in rows] == [b.claims[i] for i in rows]
    for key in a.extras:
        assert torch.equal(a.extras[key][rows], b.extras[key][rows]), key


# ---------------------------------------------------------------------------------------------- the linear model
def linear_images(n: int = 6, low: float = 0.0, high: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-0 images of the linear fixture (class 1 iff mean pixel > 0.5), pixels uniform in [low, high]."""
    x = low + (high - low) * torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    return x, torch.zeros(n, dtype=torch.int64)


def true_linf_distance(x: torch.Tensor) -> torch.Tensor:
    """Smallest r with mean(min(x + r, 1)) = 0.5, per image (closed form on the sorted headrooms 1 - x)."""
    out = []
    for row in x.flatten(1).double():
        need = (0.5 - row.mean()) * row.numel()  # total increase needed
        head = (1 - row).sort().values
        for k in range(row.numel()):
            # pixels before k are saturated at 1; the rest move by r: sum(head[:k]) + (d - k) r = need
            r = (need - head[:k].sum()) / (row.numel() - k)
            if r <= head[k]:
                out.append(float(r))
                break
    return torch.tensor(out)


def true_l2_distance(x: torch.Tensor) -> torch.Tensor:
    """Without saturation the l_2-closest boundary point moves every pixel by the same amount c = 0.5 - mean."""
    c = 0.5 - x.flatten(1).mean(1)
    assert (x.flatten(1).amax(1) + c <= 1).all()  # no pixel saturates, so the formula is exact
    return c * math.sqrt(x[0].numel())


def linear_distance(model: nn.Module, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance to the boundary of a 2-class linear model ``model.fc``: |margin| / ||w_1 - w_0||_1 (l_inf) or _2
    (l_2), asserting that the closest boundary point lies inside [0, 1] (so the box does not change the answer)."""
    fc = model.fc
    assert isinstance(fc, nn.Linear)
    w = (fc.weight[1] - fc.weight[0]).detach().double()
    flat = x.flatten(1).double()
    bias = 0.0 if fc.bias is None else float((fc.bias[1] - fc.bias[0]).detach())
    margin = flat @ w + bias
    if norm == "linf":
        dist = margin.abs() / w.abs().sum()
        closest = flat - torch.sign(margin)[:, None] * dist[:, None] * torch.sign(w)[None, :]
    else:
        dist = margin.abs() / w.norm()
        closest = flat - (margin / w.dot(w))[:, None] * w[None, :]
    assert (closest >= 0).all() and (closest <= 1).all()
    return dist.float()
