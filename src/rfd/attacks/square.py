"""Square attack (Andriushchenko et al., ECCV 2020, https://arxiv.org/abs/1912.00049), l_inf and l_2.

Random search over square-shaped updates: each step proposes a change of one random square window per image
and keeps it if the margin loss went down. Written after the authors' reference code (max-andr/square-attack)
with three deliberate differences, all in the attack's favour or neutral:

* the window position, the window sign and (l_2) the pattern orientation are drawn per image; the reference
  l_2 code and torchattacks/ART share one draw across the whole batch;
* a proposal that would leave an image unchanged is redrawn before it is queried, for both norms (the
  reference does this for l_inf only), so no query is spent on a repeat;
* window positions range over every valid offset ``0 .. H - s``; the reference draws from ``0 .. H - s - 1``
  and so never moves a window onto the last row or column.

Every draw of an image (start, windows, signs, orientations, redraws) comes from that image's own random stream
(``state.rng``, see :mod:`rfd.attacks.rng`), so with ``resample = 0`` an image's search does not depend on
which other images are in the batch or still active. (With ``resample > 0`` the p schedule follows the mean
queries spent by the active images, so the window sizes, not the draws, depend on the batch.)
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.rng import RowDraws

__all__ = [
    "Square",
    "SquareConfig",
    "l2_window_size",
    "linf_window_size",
    "meta_pattern",
    "p_schedule",
    "resampled_margin",
]

log = logging.getLogger(__name__)

# Iteration thresholds (out of 10000) at which the reference code halves p; rescaled to the run's length.
_P_BOUNDARIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# A proposal closer than this to the current image (max abs pixel difference) counts as "unchanged".
_UNCHANGED_TOL = 1e-7
# Redraws per iteration before an unchanged proposal is paid for anyway (never reached in practice: a redraw
# of the l_inf sign succeeds with probability >= 1/2, an l_2 redraw almost surely).
_MAX_REDRAWS = 100
# Sign draws made at once per l_inf proposal; the first that changes the image is used.
_SIGN_DRAWS = 16
# Upper bound on the elements of one batch of re-evaluations (bounds memory for large images and resample counts).
_MAX_RESAMPLE_ELEMENTS = 2**25


@dataclass(frozen=True, kw_only=True)
class SquareConfig(AttackConfig):
    """Settings of :class:`Square` (plus norm, eps, budget, seed, eot of :class:`AttackConfig`)."""

    # Initial fraction of pixels changed per step (the paper: 0.05 for l_inf, 0.1 for l_2); None = that default.
    p_init: float | None = None
    # Extra margin evaluations (each ``eot`` queries) of a proposal that looks better than the incumbent, before
    # it is accepted on the mean of all its evaluations; 0 = accept on the single evaluation (the paper).
    resample: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p_init is not None and not (0.0 < self.p_init <= 1.0):
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")
        if isinstance(self.resample, bool) or not isinstance(self.resample, int) or self.resample < 0:
            raise ValueError(f"resample must be an integer >= 0 (extra evaluations), got {self.resample!r}")

    @property
    def initial_p(self) -> float:
        """p_init, or the paper's default for the norm."""
        if self.p_init is not None:
            return self.p_init
        return 0.05 if self.norm == "linf" else 0.1


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels to change at iteration ``it`` (0-based) of ``n_iters``: the reference schedule.

    p halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10000-iteration run; other run
    lengths rescale ``it`` to that scale first, so the schedule spans the whole budget."""
    i = int(it / max(n_iters, 1) * 10000)
    halvings = sum(1 for b in _P_BOUNDARIES if i > b)
    if i > 10000:  # past the reference's last segment it restarts from p_init, as the reference does
        halvings = 0
    return p_init / 2**halvings


def linf_window_size(p: float, c: int, h: int, w: int) -> int:
    """Side s of the l_inf square: ``round(sqrt(p * H * W))`` clipped to [1, min(H, W) - 1]."""
    s = round(math.sqrt(p * c * h * w / c))
    return max(1, min(s, min(h, w) - 1))


def l2_window_size(p: float, c: int, h: int, w: int) -> int:
    """Side s of the l_2 square: ``round(sqrt(p * H * W))``, at least 3, made odd, at most min(H, W)."""
    s = max(round(math.sqrt(p * c * h * w / c)), 3)
    if s % 2 == 0:
        s += 1
    return min(s, min(h, w))


def _rect_pattern(a: int, b: int) -> torch.Tensor:
    """(a, b) bump: nested centred rectangles weighted 1/(k+1)^2, unit l_2 norm (the reference's pseudo-Gaussian)."""
    d = torch.zeros(a, b, dtype=torch.float64)
    if a == 0 or b == 0:
        return d
    ca, cb = a // 2, b // 2
    for k in range(max(ca, cb) + 1):  # ring k spans [c - k, c + k] (clipped): a tiny loop over pattern size
        d[max(ca - k, 0): min(ca + k + 1, a), max(cb - k, 0): min(cb + k + 1, b)] += 1.0 / (k + 1) ** 2
    return d / d.norm()


@functools.lru_cache(maxsize=64)
def meta_pattern(s: int) -> torch.Tensor:
    """float32 (s, s) update pattern of the l_2 attack: a positive bump on the top half and a negative one on the
    bottom half, unit l_2 norm (the reference's ``meta_pseudo_gaussian_pert`` with two sub-squares)."""
    d = torch.zeros(s, s, dtype=torch.float64)
    d[: s // 2] = _rect_pattern(s // 2, s)
    d[s // 2:] = -_rect_pattern(s - s // 2, s)
    return (d / d.norm()).float()


def _oriented_patterns(s: int, k: int, rows: RowDraws) -> torch.Tensor:
    """(B, k, s, s) meta patterns, k per row of ``rows``, each transposed with probability 1/2 (one draw)."""
    flip = rows.rand(rows.idx.shape[0], k) < 0.5
    pat = meta_pattern(s).to(flip.device)
    return torch.where(flip[:, :, None, None], pat.t()[None, None], pat[None, None])


def _random_signs(rows: RowDraws, *shape: int) -> torch.Tensor:
    """+-1 float32 of ``shape`` = (B, ...), independent signs with probability 1/2 (one draw of each row)."""
    return rows.signs(*shape)


def _window_masks(ph: torch.Tensor, pw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """bool (B, 1, H, W): per image the s x s window with top-left corner (ph, pw)."""
    r = torch.arange(h, device=ph.device)
    c = torch.arange(w, device=ph.device)
    in_r = (r[None] >= ph[:, None]) & (r[None] < ph[:, None] + s)
    in_c = (c[None] >= pw[:, None]) & (c[None] < pw[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _window_index(ph: torch.Tensor, pw: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advanced-index triple (batch, row, col), each (B, s, s), of per-image windows in a (B, H, W, C) view."""
    ar = torch.arange(s, device=ph.device)
    rows = (ph[:, None] + ar)[:, :, None].expand(-1, s, s)
    cols = (pw[:, None] + ar)[:, None, :].expand(-1, s, s)
    batch = torch.arange(ph.shape[0], device=ph.device)[:, None, None].expand(-1, s, s)
    return batch, rows, cols


def _positions(rows: RowDraws, s: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (ph, pw), int64 (B,) each, of one s x s window per row, uniform over every valid offset."""
    n = rows.idx.shape[0]
    ph = rows.randint(0, h - s + 1, n)
    pw = rows.randint(0, w - s + 1, n)
    return ph, pw


def _unchanged(x_new: torch.Tensor, x_cur: torch.Tensor) -> torch.Tensor:
    return (x_new - x_cur).abs().flatten(1).amax(1) < _UNCHANGED_TOL


def resampled_margin(state: AttackState, x: torch.Tensor, idx: torch.Tensor, m: torch.Tensor,
                     extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-evaluate candidates before trusting them: ``extra`` more margin evaluations of each row of x.

    Args:
        x: candidates (B, C, H, W) for samples idx (B,), already evaluated once with margins m (B,).
        extra: evaluations to add per row, each ``eot`` queries (charged through ``state``).
    Returns:
        (mean, done): mean (B,) of all ``1 + extra`` evaluations of each row (m itself where not done) and bool
        (B,) done, the rows that could afford ``extra * eot`` more queries (the others are not queried)."""
    if extra < 1:
        raise ValueError(f"extra must be >= 1 evaluation, got {extra}")
    done = state.remaining(idx) >= extra * state.config.eot
    mean = m.clone()
    q = torch.nonzero(done).flatten()
    if q.numel() == 0:
        return mean, done
    xq, iq = x[q], idx[q]
    total = m[q].clone()
    chunk = max(1, _MAX_RESAMPLE_ELEMENTS // max(xq.numel(), 1))
    for j in range(0, extra, chunk):  # one batched query per chunk of repeats (usually a single chunk)
        k = min(chunk, extra - j)
        total += state.margin(xq.repeat(k, 1, 1, 1), iq.repeat(k)).view(k, -1).sum(0)
    mean[q] = total / (extra + 1)
    return mean, done


# -- l_inf ----------------------------------------------------------------------------------------------------
def linf_init(x0: torch.Tensor, eps: float, rows: RowDraws) -> torch.Tensor:
    """Vertical-stripes start: every column of every channel moved by +eps or -eps, clipped to [0, 1].

    ``rows``: the draws of the B images of x0 (e.g. ``state.rng.rows(idx)``)."""
    n, c, _, w = x0.shape
    return (x0 + eps * _random_signs(rows, n, c, 1, w)).clamp(0.0, 1.0)


def linf_proposal(x0: torch.Tensor, x_best: torch.Tensor, eps: float, s: int, rows: RowDraws) -> torch.Tensor:
    """One l_inf Square step for a batch: per image a random s x s window set to x0 +- eps (one sign per channel).

    A sign draw that would leave an image unchanged is redrawn (same window) until it changes the image. All
    redraws are drawn at once: whether a channel's window changes under +eps and under -eps is computed once,
    and each image takes the first of ``_SIGN_DRAWS`` sign draws that changes it (rejection sampling, in one
    pass). The work is done on the windows only, (B, s, s, C) gathers, so the one full-size tensor made is the
    result: with full-size masks and temporaries the step cost about a dozen image-sized allocations.

    Args:
        x0, x_best: clean and current images (B, C, H, W), x_best inside the ball.
        rows: the draws of the B images (each image's window and signs come from its own stream).
    Returns:
        proposals (B, C, H, W) inside the eps-ball and [0, 1]."""
    b, c, h, w = x0.shape
    ph, pw = _positions(rows, s, h, w)
    win = _window_index(ph, pw, s)
    x0_win = x0.permute(0, 2, 3, 1)[win]  # (B, s, s, C)
    best_win = x_best.permute(0, 2, 3, 1)[win]
    up, down = (x0_win + eps).clamp_(0.0, 1.0), (x0_win - eps).clamp_(0.0, 1.0)
    # (B, C): the window of this channel would stay as it is with sign +1 / -1
    same_up = ((up - best_win).abs_() < _UNCHANGED_TOL).flatten(1, 2).all(1)
    same_down = ((down - best_win).abs_() < _UNCHANGED_TOL).flatten(1, 2).all(1)
    signs = (rows.rand(b, _SIGN_DRAWS, c) < 0.5).transpose(0, 1)  # (draws, B, C), True = +eps
    unchanged = torch.where(signs, same_up, same_down).all(2)  # (draws, B)
    first = (~unchanged).float().argmax(0)  # first draw that changes the image (0 if none does)
    chosen = signs.gather(0, first.view(1, b, 1).expand(1, b, c))[0]  # (B, C)
    stuck = unchanged.all(0)
    if bool(stuck.any()):  # every draw unchanged (probability <= 2^-_SIGN_DRAWS per image): keep drawing
        for _ in range(_MAX_REDRAWS):
            todo = torch.nonzero(stuck).flatten()
            if todo.numel() == 0:
                break
            sg = rows.subset(todo).rand(todo.numel(), c) < 0.5
            chosen[todo] = sg
            stuck[todo] = torch.where(sg, same_up[todo], same_down[todo]).all(1)
        if bool(stuck.any()):
            log.warning("square linf: %d proposals still unchanged after redraws", int(stuck.sum()))
    x_new = x_best.clone()
    x_new.permute(0, 2, 3, 1)[win] = torch.where(chosen[:, None, None, :], up, down)
    return x_new


# -- l_2 ------------------------------------------------------------------------------------------------------
def _rescale_l2(x0: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """x0 + delta scaled to l_2 norm eps, clipped to [0, 1] (clipping only shrinks it)."""
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (x0 + delta * (eps / n).view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def l2_init(x0: torch.Tensor, eps: float, rows: RowDraws) -> torch.Tensor:
    """The reference's l_2 start: a centred grid of (up to) 5 x 5 squares of side H // 5, each holding a meta
    pattern with a random sign per channel; the sum rescaled to l_2 norm eps and clipped to [0, 1].

    ``rows``: the draws of the B images of x0 (e.g. ``state.rng.rows(idx)``)."""
    n, c, h, w = x0.shape
    s = max(min(h, w) // 5, 1)
    nh, nw = min(5, h // s), min(5, w // s)
    pats = _oriented_patterns(s, nh * nw, rows).view(n, 1, nh, nw, s, s)
    signs = _random_signs(rows, n, c, nh, nw, 1, 1)
    tiles = (pats * signs).permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
    delta = torch.zeros_like(x0)
    oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
    delta[:, :, oh: oh + nh * s, ow: ow + nw * s] = tiles
    return _rescale_l2(x0, delta, eps)


def _l2_step(x0: torch.Tensor, x_best: torch.Tensor, eps: float, s: int, rows: RowDraws) -> torch.Tensor:
    """Unconditioned l_2 proposals, one per image (see :func:`l2_proposal`); ``rows``: the B images' draws."""
    b, c, h, w = x0.shape
    delta = x_best - x0
    ph1, pw1 = _positions(rows, s, h, w)
    ph2, pw2 = _positions(rows, s, h, w)
    m1 = _window_masks(ph1, pw1, s, h, w)
    m12 = m1 | _window_masks(ph2, pw2, s, h, w)
    # Energy available: what is left of the eps budget (split over channels) plus what sits in both windows now.
    norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    norm_w1 = (delta * m1).flatten(2).norm(dim=2).view(b, c, 1, 1)
    norm_w12 = (delta * m12).flatten(2).norm(dim=2).view(b, c, 1, 1)
    bi, ri, ci = _window_index(ph1, pw1, s)
    dv = delta.permute(0, 2, 3, 1)  # (B, H, W, C) view: windows are advanced-indexed per image
    old = dv[bi, ri, ci].permute(0, 3, 1, 2)  # (B, C, s, s)
    new = _oriented_patterns(s, 1, rows) * _random_signs(rows, b, c, 1, 1)
    new = new + old / (1e-10 + norm_w1)
    target = ((eps**2 - norm_img**2).clamp_min(0.0) / c + norm_w12**2).sqrt()
    new = new / new.flatten(2).norm(dim=2).clamp_min(1e-12).view(b, c, 1, 1) * target
    delta = delta.masked_fill(m12 & ~m1, 0.0)  # window 2 gives its energy to window 1 ...
    dv = delta.permute(0, 2, 3, 1)
    dv[bi, ri, ci] = new.permute(0, 2, 3, 1)  # ... which gets the new pattern
    return _rescale_l2(x0, delta, eps)


def l2_proposal(x0: torch.Tensor, x_best: torch.Tensor, eps: float, s: int, rows: RowDraws) -> torch.Tensor:
    """One l_2 Square step for a batch (the reference's "meta" window pair, per image).

    Window 1 gets a fresh meta pattern (random orientation, sign per channel) added to its normalised old
    content, window 2 is emptied, the energy of both plus what is left of the eps budget goes to window 1,
    and the whole perturbation is rescaled to l_2 norm eps and clipped to [0, 1]. Unchanged proposals are
    redrawn.

    Args:
        x0, x_best: clean and current images (B, C, H, W).
        rows: the draws of the B images (a redraw draws from the redrawn images' streams only).
    Returns:
        proposals (B, C, H, W) inside the l_2 eps-ball and [0, 1]."""
    x_new = _l2_step(x0, x_best, eps, s, rows)
    todo = torch.nonzero(_unchanged(x_new, x_best)).flatten()
    for _ in range(_MAX_REDRAWS):
        if todo.numel() == 0:
            break
        x_new[todo] = _l2_step(x0[todo], x_best[todo], eps, s, rows.subset(todo))
        todo = todo[_unchanged(x_new[todo], x_best[todo])]
    if todo.numel():
        log.warning("square l2: %d proposals still unchanged after %d redraws", todo.numel(), _MAX_REDRAWS)
    return x_new


class Square(Attack):
    """Square attack, score-based, l_inf or l_2, minimising the margin loss (paper eq. 3).

    Each iteration costs ``eot`` queries per active image (one margin evaluation, averaged over ``eot``
    forwards); the run has ``budget // eot`` iterations including the initialisation, over which the p
    schedule is spread. A query whose margin is negative is offered to the (uncounted) majority-vote check;
    if the check fails the search simply goes on.

    Against a randomized model a single evaluation is a noisy draw: accepting a proposal on one draw that beats
    the incumbent keeps lucky low draws as incumbents, which later proposals (evaluated once each) can hardly
    ever beat, and the search stalls. ``resample = M > 0`` re-evaluates before trusting: a proposal whose first
    margin beats the incumbent's estimate pays M more margin evaluations (``M * eot`` queries) and is accepted
    only if the mean of all its ``1 + M`` evaluations still beats the incumbent's estimate, which then becomes
    that mean (the initial point is always taken, its estimate the mean of ``1 + M`` evaluations). This is the
    explicit-averaging (resampling) remedy of noisy optimization (Jin & Branke, "Evolutionary optimization in
    uncertain environments - a survey", IEEE TEC 2005, sec. II), not part of Andriushchenko et al. Cost:
    ``eot`` per proposal plus ``M * eot`` per proposal that looks better. A row whose remaining budget cannot
    pay the M extra evaluations does not accept the proposal (it is not re-evaluated; its single evaluation can
    still be claimed). A candidate is claimed (offered to the majority vote) when the mean of the evaluations it
    got is negative. The p schedule then follows the queries spent (the active images' mean, in iterations of
    ``eot`` queries) instead of the iteration count, so it still spans the budget. ``resample = 0`` (default)
    is the paper's rule, bit for bit.

    Example:
        >>> bb = LocalBlackBox(model, budget=1000)
        >>> res = Square(norm="linf", eps=0.05, budget=1000).run(bb, x, y)
        >>> res.robust_accuracy(100), res.robust_accuracy(1000)
    """

    name = "square"
    access = "scores"
    norms = ("linf", "l2")
    config_class = SquareConfig
    oars_scale = ("p_init", 0.01, 0.5)

    def _oars_trials(self, state: AttackState, idx: torch.Tensor, scale: float, trials: int) -> torch.Tensor:
        """Square's first proposals at ``p_init = scale``: from its start point, one window of the size that p
        gives changed per trial."""
        cfg = self.config
        _, c, h, w = state.x0.shape
        x_0 = state.x0[idx]
        out = []
        for _ in range(trials):  # one draw per image and trial, from the image's own stream
            draws = state.rng.rows(idx)
            if cfg.norm == "linf":
                start = linf_init(x_0, cfg.eps, draws)
                out.append(linf_proposal(x_0, start, cfg.eps, linf_window_size(scale, c, h, w), draws))
            else:
                start = l2_init(x_0, cfg.eps, draws)
                out.append(l2_proposal(x_0, start, cfg.eps, l2_window_size(scale, c, h, w), draws))
        return torch.stack(out, 1).flatten(0, 1)

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, SquareConfig)
        eps, cost, norm = cfg.eps, cfg.eot, cfg.norm
        _, c, h, w = state.x0.shape
        n_iters = cfg.budget // cost
        x_best = state.x0.clone()
        best = torch.full((state.n,), float("inf"), device=state.x0.device)

        idx = state.active_idx(cost)
        if idx.numel() == 0:
            return
        resample = cfg.resample
        x0 = state.x0[idx]
        rows = state.rng.rows(idx)  # every draw from the images' own streams (``gen`` is not used)
        x_init = linf_init(x0, eps, rows) if norm == "linf" else l2_init(x0, eps, rows)
        m = state.margin(x_init, idx)
        if resample:  # the start is always taken; its estimate is the mean of 1 + resample evaluations
            m, _ = resampled_margin(state, x_init, idx, m, resample)
        x_best[idx], best[idx] = x_init, m.nan_to_num(nan=float("inf"))  # a refused start is beaten by any answer
        state.report(x_init, idx, m < 0)

        # Every iteration costs an active image at least ``cost``: at most n_iters - 1 follow the start.
        for it in range(n_iters - 1):
            idx = state.active_idx(cost)
            if idx.numel() == 0:
                break
            if resample:  # progress in queries: the mean spent by the active images, in evaluations, minus the start
                spent = int((cfg.budget - state.remaining(idx)).sum())
                p = p_schedule(cfg.initial_p, max(spent // (idx.numel() * cost) - 1, 0), n_iters)
            else:
                p = p_schedule(cfg.initial_p, it, n_iters)
            x0, xb, rows = state.x0[idx], x_best[idx], state.rng.rows(idx)
            if norm == "linf":
                x_new = linf_proposal(x0, xb, eps, linf_window_size(p, c, h, w), rows)
            else:
                x_new = l2_proposal(x0, xb, eps, l2_window_size(p, c, h, w), rows)
            m = state.margin(x_new, idx)
            if state.retries:  # OARS rejection sampling: a refused proposal is drawn again at the same p
                x_new, m = _redraw_refused(state, x_new, m, idx, x_best, eps, p, cost)
            better = m < best[idx]
            if resample and bool(better.any()):  # pay the re-evaluations of the rows that look better
                cand = torch.nonzero(better).flatten()
                mean, done = resampled_margin(state, x_new[cand], idx[cand], m[cand], resample)
                m[cand] = mean  # each row's estimate: the mean of the evaluations it got (claims use it too)
                better[cand] = done & (mean < best[idx[cand]])
            if bool(better.any()):  # only improved rows move: no full-size where/scatter of the whole batch
                x_best[idx[better]] = x_new[better]
                best[idx[better]] = m[better]
            state.report(x_new, idx, m < 0)
        state.keep(x_best, torch.arange(state.n, device=x_best.device))


def _redraw_refused(state: AttackState, x_new: torch.Tensor, m: torch.Tensor, idx: torch.Tensor,
                    x_best: torch.Tensor, eps: float, p: float, cost: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OARS's rejection sampling for Square (Feng et al., CCS 2023): a refused proposal is replaced by a fresh one
    (new window, new values, same p) and queried, up to ``state.retries`` times, while the image can pay it."""
    _, c, h, w = state.x0.shape
    for _ in range(state.retries):
        rows = torch.nonzero(state.rejected & (state.remaining(idx) >= cost)).flatten() \
            if state.rejected.shape == m.shape else torch.zeros(0, dtype=torch.int64, device=m.device)
        if rows.numel() == 0:
            break
        i = idx[rows]
        x0, xb, draws = state.x0[i], x_best[i], state.rng.rows(i)
        if state.config.norm == "linf":
            cand = linf_proposal(x0, xb, eps, linf_window_size(p, c, h, w), draws)
        else:
            cand = l2_proposal(x0, xb, eps, l2_window_size(p, c, h, w), draws)
        mr = state.margin(cand, i)
        x_new, m = x_new.clone(), m.clone()
        x_new[rows], m[rows] = cand, mr
        rejected = torch.zeros_like(m, dtype=torch.bool)
        rejected[rows] = state.rejected
        state.rejected = rejected  # the refusals of the latest answers, row-aligned with idx
    return x_new, m
