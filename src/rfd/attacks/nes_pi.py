"""NES in the partial-information setting (Ilyas et al., ICML 2018, https://arxiv.org/abs/1804.08598, Algorithm 2).

The attacker sees only the top-k classes' probabilities (``topk:K``, ``top1``; the attack also runs on full
answers). Ilyas et al.'s answer is a *targeted* attack that starts where the target class is visible: from an
image of the target class, inside a large l_inf ball around the image being attacked, it alternates an NES step
that raises the target's log-probability with a shrinking of the ball, keeping the target among the visible classes
at every accepted iterate, until the ball has the attack's eps; then it goes on stepping at eps.

Per iteration and image (as their released code, labsix/limited-blackbox-attacks ``attacks.py``):

* the gradient of the target's cross-entropy from ``samples`` antithetic Gaussian probes ``x +- fd_step u``; probes
  where the target is not visible carry no loss and are left out (their code gathers the probes where it is);
* momentum (``g = beta g_prev + (1 - beta) g``) and plateau annealing of the image's largest lr;
* a proposal ``clip(x - lr sign(g))`` projected into the ball of radius ``eps_cur - de``, where ``de`` (the
  image's current decrement, first ``start_delta_eps``) is tried only when the probes' mean loss is below
  ``adv_thresh`` and the ball is still larger than eps. Each proposal is one query: accepted when the target is
  visible in its answer (the ball's radius then drops by ``de / conservative`` and the next decrement is
  ``max(de, min_delta_eps)``); else the lr is halved, and below ``2 min_lr`` the decrement is halved (dropped to 0
  below 2e-4) with the lr reset. An image for which no proposal keeps the target visible, even without shrinking
  the ball, skips this iteration's step (their code raises instead).

Targets and start images come from the attacked batch itself (the attacker has those images, and nothing else):
for each image a target class drawn from its own random stream among the batch's other classes, and as start the
first image of the batch with that label. An image whose batch holds no other class is not attacked. The attack
claims success (checked as every claim is: untargeted, inside eps, by the black box's vote) when an accepted
iterate inside the eps-ball answers a class other than the true one. Every probe and every proposal is a charged
query; the batch's line searches run as batched rounds (one query per image still searching).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.nes import antithetic_probes, nes_directions, nes_gradient, plateau_update
from rfd.blackbox.losses import cross_entropy_loss

__all__ = ["NESPartialInfo", "NESPartialInfoConfig", "pick_targets"]

_MIN_DELTA_STEP = 2e-4  # a halved decrement below this becomes 0 (their constant)


@dataclass(frozen=True, kw_only=True)
class NESPartialInfoConfig(AttackConfig):
    """Settings of :class:`NESPartialInfo` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`); defaults are
    Ilyas et al.'s released ones (``main.py``) but ``samples`` (their 50 per draw, in batches of 50)."""

    samples: int = 50  # probes (= queries) per gradient estimate, even (antithetic pairs)
    fd_step: float = 1e-3  # std of the Gaussian probes, pixel units (their sigma)
    max_lr: float = 1e-2
    min_lr: float = 5e-5
    momentum: float = 0.9
    plateau_length: int = 5
    plateau_drop: float = 2.0
    start_eps: float = 1.0  # radius of the first ball (l_inf, pixel units): 1 holds any start image
    start_delta_eps: float = 0.5
    min_delta_eps: float = 0.1
    adv_thresh: float = 0.2  # shrink the ball only when the probes' mean target cross-entropy is below this
    conservative: float = 2.0  # the ball shrinks by de / conservative for a proposal accepted at eps_cur - de

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm != "linf":
            raise ValueError("nes_pi shrinks an l_inf ball (Ilyas et al.'s partial-information attack): use norm linf")
        if self.samples < 2 or self.samples % 2:
            raise ValueError(f"samples must be an even number >= 2 (antithetic pairs), got {self.samples}")
        for name in ("fd_step", "max_lr", "min_lr", "start_delta_eps", "min_delta_eps", "adv_thresh"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.min_lr <= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= max_lr ({self.max_lr})")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.plateau_length < 2 or not self.plateau_drop > 1.0:
            raise ValueError(f"plateau_length must be >= 2 and plateau_drop > 1, got {self.plateau_length}, "
                             f"{self.plateau_drop}")
        if not self.eps <= self.start_eps <= 1.0:
            raise ValueError(f"start_eps must be in [eps, 1] = [{self.eps}, 1], got {self.start_eps}")
        if not self.conservative >= 1.0:
            raise ValueError(f"conservative must be >= 1, got {self.conservative}")

    @property
    def iteration_cost(self) -> int:
        """Least queries of one iteration and image: the probes and one proposal, times eot."""
        return (self.samples + 1) * self.eot


def pick_targets(y: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image a target class and its start image, from the batch's labels ``y`` (int64 (N,)) and one uniform
    draw per image ``u`` (float (N,) in [0, 1)): the target is uniform among the batch's classes other than the
    image's own, the start image the first of the batch with that label. Returns (targets, starts), int64 (N,);
    -1 for an image whose batch has no other class."""
    classes = torch.unique(y)  # sorted
    other = classes.unsqueeze(0) != y.unsqueeze(1)  # (N, C): the candidate targets of each image
    n_other = other.sum(1)
    pick = torch.floor(u * n_other.clamp_min(1)).long().clamp_max((n_other - 1).clamp_min(0))
    rank = other.long().cumsum(1) - 1  # position of each candidate among the image's candidates
    col = torch.argmax((other & (rank == pick.unsqueeze(1))).long(), 1)
    targets = torch.where(n_other > 0, classes[col], -1)
    first = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64, device=y.device)
    first.scatter_reduce_(0, y.flip(0), torch.arange(y.numel() - 1, -1, -1, device=y.device), "amin",
                          include_self=False)
    starts = torch.where(targets >= 0, first[targets.clamp_min(0)], -1)
    return targets, starts


class NESPartialInfo(Attack):
    """Ilyas et al.'s partial-information NES (see the module docstring): targeted, l_inf, for top-k answers.

    Example:
        >>> bb = LocalBlackBox(model, output="topk:3", budget=10000)
        >>> res = NESPartialInfo(eps=0.05, budget=10000).run(bb, x, y)
    """

    name = "nes_pi"
    access = "scores"
    norms = ("linf",)
    config_class = NESPartialInfoConfig

    def _target_loss(self, state: AttackState, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (B,) of the target class from answers (B, K); NaN where the target is not visible (a
        hidden class, NaN, or a probability rounded to 0)."""
        s = scores.double()
        probabilities = state.bb.output.probabilities
        loss = cross_entropy_loss(s.nan_to_num(0.0), target, probabilities=probabilities)
        p = s.gather(1, target[:, None]).squeeze(1)
        visible = p > 0 if probabilities else p.isfinite()
        return torch.where(visible, loss, torch.full_like(loss, float("nan")))

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, NESPartialInfoConfig)
        n, dev, x0 = state.n, state.x0.device, state.x0
        targets, starts = pick_targets(state.y, state.rng.rows(torch.arange(n, device=dev)).rand(n))
        state.active &= targets >= 0  # nothing to start from: not attacked
        state.extras["target"] = targets
        x = torch.where((starts >= 0).view(-1, 1, 1, 1), x0[starts.clamp_min(0)], x0)
        x = torch.min(torch.max(x, x0 - cfg.start_eps), x0 + cfg.start_eps).clamp(0.0, 1.0)
        eps_cur = torch.full((n,), cfg.start_eps, dtype=torch.float64, device=dev)
        delta = torch.full((n,), cfg.start_delta_eps, dtype=torch.float64, device=dev)
        max_lr = torch.full((n,), cfg.max_lr, dtype=torch.float64, device=dev)
        g_prev = torch.zeros_like(x)
        hist = torch.zeros(n, cfg.plateau_length, dtype=torch.float64, device=dev)
        count = torch.zeros(n, dtype=torch.int64, device=dev)
        pairs, sigma = cfg.samples // 2, cfg.fd_step
        while True:
            idx = state.active_idx(cfg.iteration_cost)
            if idx.numel() == 0:
                break
            xi, ti, b = x[idx], targets[idx], idx.numel()
            u = nes_directions(state.rng.rows(idx), pairs, xi.shape[1:])
            probes = antithetic_probes(xi, u, sigma)
            loss = self._target_loss(state, state.scores(probes.flatten(0, 1), idx.repeat(2 * pairs)),
                                     ti.repeat(2 * pairs)).view(2 * pairs, b)
            g = nes_gradient(u, loss[:pairs].float(), loss[pairs:].float(), sigma)
            g = cfg.momentum * g_prev[idx] + (1.0 - cfg.momentum) * g
            g_prev[idx] = g
            mean_loss = loss.nanmean(0).nan_to_num(float("inf"))  # no visible probe: no shrinking
            max_lr[idx], hist[idx], count[idx] = plateau_update(max_lr[idx], hist[idx], count[idx], mean_loss,
                                                                drop=cfg.plateau_drop, min_lr=cfg.min_lr)
            shrink = (mean_loss < cfg.adv_thresh) & (eps_cur[idx] > cfg.eps)
            self._line_search(state, x, idx, g.sign(), torch.where(shrink, delta[idx], 0.0), eps_cur, delta,
                              max_lr, count, targets)
        state.extras["radius"] = eps_cur.float()  # the ball the image reached (eps: the attack's own)
        state.keep(x, torch.arange(n, device=dev))

    def _line_search(self, state: AttackState, x: torch.Tensor, idx: torch.Tensor, step: torch.Tensor,
                     de: torch.Tensor, eps_cur: torch.Tensor, delta: torch.Tensor, max_lr: torch.Tensor,
                     count: torch.Tensor, targets: torch.Tensor) -> None:
        """Batched rounds of proposals for images ``idx`` (their ``step`` = sign of the gradient, ``de`` the
        decrement to try); updates x, eps_cur, delta and the plateau windows of the accepted ones in place."""
        cfg = self.config
        assert isinstance(cfg, NESPartialInfoConfig)
        lr = max_lr[idx].clone()
        pending = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
        x0 = state.x0
        while True:
            can = pending & (state.remaining(idx) >= cfg.eot)
            pos = torch.nonzero(can).flatten()
            if pos.numel() == 0:
                return
            i = idx[pos]
            radius = torch.maximum(eps_cur[i] - de[pos], torch.full_like(de[pos], cfg.eps)).float().view(-1, 1, 1, 1)
            prop = (x[i] - lr[pos].float().view(-1, 1, 1, 1) * step[pos])
            prop = torch.min(torch.max(prop, x0[i] - radius), x0[i] + radius).clamp(0.0, 1.0)
            scores = state.scores(prop, i)
            ok = self._target_loss(state, scores, targets[i]).isfinite()
            acc, acc_pos = i[ok], pos[ok]
            if acc.numel():
                x[acc] = prop[ok]
                shrunk = de[acc_pos] > 0
                eps_cur[acc] = torch.maximum(eps_cur[acc] - de[acc_pos] / cfg.conservative,
                                             torch.full_like(eps_cur[acc], cfg.eps))
                delta[acc] = torch.where(shrunk, de[acc_pos].clamp_min(cfg.min_delta_eps), delta[acc])
                count[acc] = torch.where(shrunk, torch.zeros_like(count[acc]), count[acc])  # a new plateau window
                at_eps = eps_cur[acc] <= cfg.eps
                visible = scores[ok].nan_to_num(float("-inf")).argmax(1)
                state.report(prop[ok], acc, at_eps & (visible != state.y[acc]))
                pending[acc_pos] = False
            # refused proposals: halve the lr; at its floor, halve the decrement and start the lr again
            bad = pos[~ok]
            halve = lr[bad] >= 2 * cfg.min_lr
            lr[bad] = torch.where(halve, lr[bad] / 2, max_lr[idx[bad]])
            new_de = torch.where(halve, de[bad], de[bad] / 2)
            new_de = torch.where(new_de < _MIN_DELTA_STEP, torch.zeros_like(new_de), new_de)
            stuck = ~halve & (de[bad] == 0)  # even the current ball loses the target: skip this iteration
            de[bad] = new_de
            pending[bad[stuck]] = False
