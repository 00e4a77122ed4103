"""Candidate layers for the feature defense, and their ranking by predicted robustness (paper Tables 6 and 14).

Candidates (always starting with ``"input"`` and ending with ``"penultimate"``) are found by common module names,
with any prefix (``net.`` inside :class:`rfd.models.ImageClassifier`):

- transformers and timm "blocks" models: ``patch_embed`` (or another stem) and every ``blocks.<i>``;
- ResNets (reference, torchvision, timm): the stem (``stem`` / ``act1`` / ``relu``) and every ``layer<i>``;
- timm staged models (ConvNeXt, RegNet, ...): the stem and every ``stages.<i>``;
- otherwise VGG-style stacks: every activation that follows a conv or linear layer, except one that feeds the
  classifier only through dropout/flatten (it would equal ``"penultimate"``).

Ranking. For a target clean-accuracy drop, each layer's sigma is calibrated; then per correctly classified
image the Theorem-1 probability of a wrong attacker decision at ``nu = sigma^2`` and proposal variance ``mu``
is computed on the clean image and after one step toward the adversary, along with the robustness magnitude
``sigma * ||grad_h||``, the mean gradient norm (Table 6) and the mean change of the ratio during the step
(Table 14). Layers are sorted by the chosen metric (highest = predicted most robust); an optional short Square
run confirms the top ones.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from rfd.analysis.gradients import check_eval_mode, model_device
from rfd.analysis.magnitude import robustness_magnitude
from rfd.analysis.ratio import StepConfig, gradient_ratios
from rfd.analysis.taps import INPUT, PENULTIMATE, check_layer_names
from rfd.analysis.theorem1 import defense_for_layer, predicted_flip_probability
from rfd.defenses import classifier_name, defend

__all__ = ["METRICS", "LayerRanking", "candidate_layers", "confirm_with_attack", "rank_layers"]

log = logging.getLogger(__name__)

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish, nn.Hardswish, nn.Tanh)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)
_STEMS = ("patch_embed", "stem", "act1", "relu", "bn1", "conv_stem")  # first match wins


def _indexed(names: list[str], pattern: str) -> dict[str, list[tuple[int, str]]]:
    """prefix -> [(index, name)] for names ``<prefix><pattern><index>`` with nothing after the index."""
    rx = re.compile(rf"^(.*?)(?:{pattern})(\d+)$")
    out: dict[str, list[tuple[int, str]]] = {}
    for n in names:
        m = rx.match(n)
        if m:
            out.setdefault(m.group(1), []).append((int(m.group(2)), n))
    return out


def _stage_layers(modules: dict[str, nn.Module]) -> list[str]:
    names = [n for n in modules if n]
    best: tuple[tuple[int, int, int], str, list[str]] | None = None
    for order, pattern in enumerate((r"blocks\.", r"layer", r"stages\.")):
        for prefix, items in _indexed(names, pattern).items():
            if len(items) < 2:
                continue
            # The outermost sequence (shortest prefix) is the backbone's main one: a ConvNeXt's stages.<i>, not
            # the blocks.<j> inside a stage.
            key = (prefix.count("."), len(prefix), order)
            if best is None or key < best[0]:
                best = (key, prefix, [n for _, n in sorted(items)])
    if best is None:
        return []
    _, prefix, stages = best
    stem = next((prefix + s for s in _STEMS if prefix + s in modules), None)
    return ([stem] if stem else []) + stages


def _activation_layers(model: nn.Module, head: str | None) -> list[str]:
    out = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (child_name, child) in enumerate(children):
            if not isinstance(child, _ACTIVATIONS):
                continue
            # The nearest weighted layer before it in the same container, skipping norms and pooling.
            follows_weight = False
            for _, prev in reversed(children[:i]):
                if isinstance(prev, _ACTIVATIONS):
                    break
                if isinstance(prev, _WEIGHTED):
                    follows_weight = True
                    break
            if not follows_weight:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            rest = children[i + 1:]
            feeds_head = False
            for nxt_name, nxt in rest:
                nxt_full = f"{parent_name}.{nxt_name}" if parent_name else nxt_name
                if nxt_full == head:
                    feeds_head = True
                    break
                if not isinstance(nxt, _PASS_THROUGH):
                    break
            if not feeds_head:
                out.append(full)
    return out


def candidate_layers(model: nn.Module) -> list[str]:
    """Default layers to analyse: ``"input"``, the main blocks/stages (see module doc), ``"penultimate"``.

    Returns names usable by the defense (``model.named_modules()`` names plus the two special names)."""
    modules = dict(model.named_modules())
    try:
        head: str | None = classifier_name(model)
    except ValueError:
        head = None
    found = _stage_layers(modules) or _activation_layers(model, head)
    if not found:
        log.warning("no blocks, stages or activations recognised in %s; analysing only input and penultimate "
                    "(pass explicit layer names to go deeper)", type(model).__name__)
    out = [INPUT] + [n for n in found if n != head]
    if head is not None:
        out.append(PENULTIMATE)
    return out


METRICS = ("theorem1", "theorem1-step", "magnitude")


@dataclass(frozen=True)
class LayerRanking:
    """Layers sorted from most to least robust by ``metric``.

    Attributes:
        metric: the ranking metric (see :data:`METRICS`).
        target_drop, mu: the accuracy cost every sigma was calibrated to, and the attacker's proposal variance.
        rows: one dict per layer (sorted): layer, sigma, calibration accuracy, ``prob_clean`` / ``prob_step`` (mean
            Theorem-1 probability on clean / stepped images), ``magnitude_median``, ``grad_norm_mean``,
            ``ratio_change_mean``, ``score``, ``rank`` (1 = best).
        images: correctly classified images the numbers come from.
        confirm: rows of the optional attack confirmation (layer, sigma, robust accuracy, ...), else empty.
    """

    metric: str
    target_drop: float
    mu: float
    step: StepConfig
    rows: list[dict[str, Any]]
    images: int
    confirm: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recommended(self) -> str:
        """The layer to defend: the top-ranked one, unless the confirmation attack found another layer clearly
        more robust (its robust accuracy above the top-ranked layer's by more than two standard errors of the
        difference; smaller gaps on a few attacked images are noise and do not override the prediction)."""
        if not self.confirm:
            return str(self.rows[0]["layer"])
        top = min(self.confirm, key=lambda r: r["rank"])
        best = max(self.confirm, key=lambda r: (r["robust_accuracy"], -r["rank"]))
        p1, p2 = top["robust_accuracy"], best["robust_accuracy"]
        se = math.sqrt(p1 * (1 - p1) / top["images"] + p2 * (1 - p2) / best["images"])
        return str(best["layer"] if p2 - p1 > 2 * se else top["layer"])

    def summary(self) -> dict[str, Any]:
        return {"metric": self.metric, "target_drop": self.target_drop, "mu": self.mu,
                "step": {"norm": self.step.norm, "size": self.step.size}, "images": self.images,
                "recommended": self.recommended, "ranking": self.rows, "confirm": self.confirm}


def rank_layers(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: Sequence[str] | None, *, calib_x: torch.Tensor,
    calib_y: torch.Tensor, target_drop: float = 0.02, mu: float = 1e-3,
    metric: Literal["theorem1", "theorem1-step", "magnitude"] = "theorem1-step", step: StepConfig | None = None,
    seed: int = 0, calib_draws: int = 10, batch_size: int = 128, progress: bool = False,
) -> LayerRanking:
    """Rank ``layers`` (default :func:`candidate_layers`) by predicted robustness at equal accuracy cost.

    Args:
        model: classifier in eval mode.
        x, y: analysed images (evaluation split) and labels; only the correctly classified ones count.
        layers: names, or None for the candidates.
        calib_x, calib_y: calibration split for the sigmas.
        target_drop: clean-accuracy drop every layer's sigma costs.
        mu: attacker proposal variance per pixel (pixel units squared) in the Theorem-1 probability.
        metric: ``"theorem1"`` (mean probability on clean images), ``"theorem1-step"`` (after one step toward the
            adversary, the regime an attack spends its queries in) or ``"magnitude"`` (median ``sigma ||grad_h||``).
        step: the simulated attacker step for the stepped images (default :class:`StepConfig`()).
        seed, calib_draws: calibration seed and noise draws per sigma.
    """
    check_eval_mode(model)
    if metric not in METRICS:
        raise ValueError(f"unknown ranking metric {metric!r}; allowed: {', '.join(METRICS)}")
    if not mu > 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    names = check_layer_names(model, layers if layers is not None else candidate_layers(model))
    step = step if step is not None else StepConfig()
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    mag = robustness_magnitude(model, x, y, names, target_drop=target_drop, calib_x=calib_x, calib_y=calib_y,
                               seed=seed, calib_draws=calib_draws, batch_size=batch_size, progress=progress)
    keep = mag.correct.to(dev)
    if not bool(keep.any()):
        raise ValueError("the model misclassifies every analysed image; nothing to rank on")
    rat = gradient_ratios(model, x[keep], y[keep], names, step=step, batch_size=batch_size, progress=progress)
    before, after, change = rat.ratios("before"), rat.ratios("after"), rat.change()
    rows = []
    for n in names:
        nu = mag.sigma(n) ** 2
        p_clean = predicted_flip_probability(before[n], nu, mu)
        p_step = predicted_flip_probability(after[n], nu, mu)
        c = change[n][torch.isfinite(change[n])]
        cal = mag.calibration[n]
        row = {
            "layer": n, "sigma": mag.sigma(n), "calib_accuracy": cal["accuracy"], "calib_drop": cal["drop"],
            "prob_clean": float(p_clean[torch.isfinite(p_clean)].mean()),
            "prob_step": float(p_step[torch.isfinite(p_step)].mean()),
            "magnitude_median": float(mag.magnitude(n).median()),
            "grad_norm_mean": float(rat.before.grad_h_norm[n].mean()),
            "ratio_change_mean": float(c.mean()) if c.numel() else math.nan,
        }
        row["score"] = {"theorem1": row["prob_clean"], "theorem1-step": row["prob_step"],
                        "magnitude": row["magnitude_median"]}[metric]
        rows.append(row)
    # Best first; non-finite scores last; ties (saturated probabilities) broken by the magnitude.
    rows.sort(key=lambda r: (-r["score"] if math.isfinite(r["score"]) else math.inf, -r["magnitude_median"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return LayerRanking(metric=metric, target_drop=float(target_drop), mu=float(mu), step=step, rows=rows,
                        images=int(keep.sum()))


def confirm_with_attack(
    model: nn.Module, ranking: LayerRanking, x: torch.Tensor, y: torch.Tensor, *, top: int = 2,
    attack: str = "square", norm: str = "linf", eps: float = 0.1, budget: int = 200, verify: int = 9, seed: int = 0,
    progress: bool = False,
) -> LayerRanking:
    """Attack the model defended at each of the ``top`` ranked layers (at its calibrated sigma); returns a copy of
    ``ranking`` with ``confirm`` rows (layer, rank, sigma, clean accuracy by majority vote, robust accuracy at
    ``budget``, mean queries of the successful attacks).

    Uses :func:`rfd.attacks.make_attack` through :class:`rfd.blackbox.LocalBlackBox` with score access; the
    attack's budget is per image. The images are those of the evaluation split the caller passes."""
    from rfd.attacks import make_attack
    from rfd.blackbox import LocalBlackBox

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    rows = []
    for r in ranking.rows[:top]:
        defended = defend(model, defense_for_layer(r["layer"], r["sigma"] ** 2), seed=seed)
        try:
            bb = LocalBlackBox(defended, budget=budget, verify=verify)
            atk = make_attack(attack, norm=norm, eps=eps, budget=budget, seed=seed)
            res = atk.run(bb, x, y, progress=progress)
        finally:
            defended.remove()
        q = res.queries[res.success].double()
        rows.append({"layer": r["layer"], "rank": r["rank"], "sigma": r["sigma"], "attack": attack, "norm": norm,
                     "eps": eps, "budget": budget, "images": int(x.shape[0]), "clean_accuracy": res.clean_accuracy,
                     "robust_accuracy": res.robust_accuracy(budget),
                     "mean_queries_success": float(q.mean()) if q.numel() else math.nan})
    return LayerRanking(metric=ranking.metric, target_drop=ranking.target_drop, mu=ranking.mu, step=ranking.step,
                        rows=ranking.rows, images=ranking.images, confirm=rows)
