"""Transfer attack: MI-FGSM (Dong et al., CVPR 2018, https://arxiv.org/abs/1710.06081) with input diversity
(DI, Xie et al., CVPR 2019, https://arxiv.org/abs/1803.06978), computed on a surrogate model the attacker owns.

The adversarial images come from the surrogate alone; the target is never queried. The black box only checks
the final images with its (uncounted) majority-vote success test, so every sample's query count stays 0 (in
``check="charged"`` mode the check's votes are what the attacker pays). This is the paper's stated limitation:
noise in the target's features at inference time does nothing against an example crafted elsewhere.

Input diversity, for 28x28 images: with probability ``diversity_prob`` (0.5, as published) an image is resized
(nearest neighbour, as in Xie et al.'s code) to ``r x r`` with r uniform in [H, S), zero-padded at a random
offset to ``S x S`` with ``S = ceil(H * resize_rate)``, and resized back to ``H x H`` (bilinear), because the
reference models take fixed 28x28 inputs (Xie et al.'s Inception accepts the 330x330 canvas directly). The
default ``resize_rate = 330 / 299`` is the published ratio (299 -> [299, 330), padded to 330), so 28x28 images
become r in [28, 31) on a 31x31 canvas, and 299x299 ones exactly the published [299, 330) and 330.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from rfd.attacks.base import AttackConfig, AttackState
from rfd.attacks.rng import RowDraws
from rfd.attacks.surrogate import SurrogateAttack, SurrogateAttackConfig, surrogate_gradient
from rfd.attacks.whitebox import LOSSES, ascent_step, objective

__all__ = ["Transfer", "TransferConfig", "input_diversity", "mi_update"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TransferConfig(SurrogateAttackConfig):
    """Settings of :class:`Transfer` (plus norm, eps, budget, seed, eot, surrogate). ``budget`` and ``eot`` do
    not matter: the target is never queried."""

    steps: int = 10  # MI-FGSM iterations T on the surrogate
    decay: float = 1.0  # momentum decay mu (Dong et al.: 1.0); 0 gives I-FGSM (with DI: DI-FGSM)
    step_size: float | None = None  # pixel units (l_inf: per pixel, l_2: per image); default eps / steps
    diversity_prob: float = 0.5  # probability p of the DI transform per image and step (0 = plain MI-FGSM)
    resize_rate: float = 330 / 299  # DI canvas side = ceil(H * resize_rate); >= 1 (Xie et al.: 299 -> 330)
    loss: str = "ce"  # surrogate objective: "ce" (the papers) or "margin" (max_{i != y} z_i - z_y)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (math.isfinite(self.decay) and self.decay >= 0):
            raise ValueError(f"decay must be >= 0 (momentum mu), got {self.decay}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be positive (pixel units) or None, got {self.step_size}")
        if not 0.0 <= self.diversity_prob <= 1.0:
            raise ValueError(f"diversity_prob must be in [0, 1], got {self.diversity_prob}")
        if not (math.isfinite(self.resize_rate) and self.resize_rate >= 1.0):
            raise ValueError(f"resize_rate must be >= 1 (the DI canvas is at least the image), got "
                             f"{self.resize_rate}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def alpha(self) -> float:
        """The step size in use (pixel units)."""
        return self.step_size if self.step_size is not None else self.eps / self.steps


def input_diversity(x: torch.Tensor, draws: RowDraws, prob: float, resize_rate: float) -> torch.Tensor:
    """Xie et al.'s random resize-and-pad of images x (B, C, H, W), differentiable w.r.t. x; same shape out.

    Per image, one draw of its stream (``draws``, rows = the B images): with probability ``prob`` resize to
    (rh, rw) = (H, W) + floor(u (S - (H, W))) with one u for both sides (nearest neighbour), pad with zeros at
    a random offset to the canvas S = (ceil(H resize_rate), ceil(W resize_rate)), then resize back to (H, W)
    bilinearly; else leave it. Batched: the per-image resize and offset are one gather, not a loop."""
    b, _, h, w = x.shape
    u = draws.rand(b, 4).to(x.device)
    sh, sw = math.ceil(h * resize_rate - 1e-9), math.ceil(w * resize_rate - 1e-9)
    if prob <= 0.0 or (sh == h and sw == w):
        return x
    rh = h + torch.floor(u[:, 1] * (sh - h)).long().clamp(max=max(sh - h - 1, 0))
    rw = w + torch.floor(u[:, 1] * (sw - w)).long().clamp(max=max(sw - w - 1, 0))
    top = torch.floor(u[:, 2] * (sh - rh + 1)).long().clamp(max=sh - rh)
    left = torch.floor(u[:, 3] * (sw - rw + 1)).long().clamp(max=sw - rw)

    def source(size: int, canvas: int, r: torch.Tensor, off: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # canvas position p of each image -> the source pixel nearest-neighbour resizing puts there, and whether
        # p lies inside the resized image (else padding): src = floor((p - off) * size / r)
        p = torch.arange(canvas, device=x.device)[None, :] - off[:, None]
        inside = (p >= 0) & (p < r[:, None])
        src = torch.div(p.clamp(min=0) * size, r[:, None], rounding_mode="floor").clamp(max=size - 1)
        return src, inside

    sr, in_r = source(h, sh, rh, top)
    sc, in_c = source(w, sw, rw, left)
    rows = torch.arange(b, device=x.device)[:, None, None]
    canvas = x[rows, :, sr[:, :, None], sc[:, None, :]].permute(0, 3, 1, 2)  # (B, C, S_h, S_w)
    canvas = canvas * (in_r[:, :, None] & in_c[:, None, :])[:, None].to(x.dtype)
    out = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
    apply = (u[:, 0] < prob).view(b, 1, 1, 1)
    return torch.where(apply, out, x)


def mi_update(g: torch.Tensor, grad: torch.Tensor, decay: float) -> torch.Tensor:
    """MI-FGSM's momentum: ``g <- decay * g + grad / ||grad||_1`` per image (g, grad: (B, C, H, W))."""
    l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
    return decay * g + grad / l1.view(-1, *([1] * (grad.dim() - 1)))


class Transfer(SurrogateAttack):
    """Transfer attack: MI-FGSM with input diversity (M-DI2-FGSM) on a surrogate; zero queries to the target.

    From the clean image, ``steps`` times on the surrogate: the gradient of its loss at the (with probability p
    randomly resized and padded) iterate, momentum ``g = mu g + grad / ||grad||_1``, a step of ``step_size``
    along sign(g) (l_inf) or g / ||g||_2 (l_2, Dong et al.'s l_2 variant), projection onto the eps-ball and
    [0, 1]. The final images are then offered to the black box's success check (majority vote, uncounted):
    nothing else reaches the target. Every random draw (DI) comes from the image's own stream (``state.rng``).

    Args (:class:`TransferConfig`): norm ("linf" | "l2"), eps (pixel units), surrogate (registry name,
        "fmnist-resnet"), steps (10), decay (1.0), step_size (eps / steps), diversity_prob (0.5), resize_rate
        (330 / 299), loss ("ce"); budget, seed, eot as every attack (budget and eot unused).

    Shapes: images (N, C, H, W) in [0, 1]; the surrogate must take the same images and give K logits like the
    target. Use :meth:`with_surrogate` to pass a module instead of a registry name.

    Example::

        bb = LocalBlackBox(defend(load_model("fmnist-vgg"), spec))
        result = Transfer(norm="linf", eps=0.1, surrogate="fmnist-resnet").run(bb, x, y)
        result.robust_accuracy()  # result.queries are all 0
    """

    name: ClassVar[str] = "transfer"
    access = "labels"  # the success check is all it needs (it runs on score black boxes too)
    norms = ("linf", "l2")
    config_class: ClassVar[type[AttackConfig]] = TransferConfig

    def _run(self, state: AttackState, gen: torch.Generator) -> None:
        cfg = self.config
        assert isinstance(cfg, TransferConfig)
        idx = state.active_idx(0)
        if idx.numel() == 0:
            return
        model = self.surrogate_for(state)
        obj = objective(cfg.loss)
        x0, y = state.x0[idx], state.y[idx]
        x = x0.clone()
        g = torch.zeros_like(x)
        for _ in range(cfg.steps):
            draws = state.rng.rows(idx)

            def diversify(z: torch.Tensor, draws: RowDraws = draws) -> torch.Tensor:
                return input_diversity(z, draws, cfg.diversity_prob, cfg.resize_rate)

            grad = surrogate_gradient(model, x, y, obj, transform=diversify if cfg.diversity_prob > 0 else None)
            g = mi_update(g, grad, cfg.decay)
            x = state.project(ascent_step(x, g, cfg.norm, cfg.alpha), idx)
        state.keep(x, idx)
        ok = state.report(x, idx)
        log.debug("transfer from %s: %d of %d verified", cfg.surrogate, int(ok.sum()), idx.numel())
