"""Figures of the analysis as PNG files (matplotlib's Agg canvas, no pyplot: no global state, no display).

Each function takes a result object from :mod:`rfd.analysis` and a path, writes one PNG and returns the path;
``label`` (e.g. the model name) prefixes the title.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rfd.analysis.approx_error import ApproxErrorResult
from rfd.analysis.layers import LayerRanking
from rfd.analysis.magnitude import MagnitudeResult
from rfd.analysis.ratio import RatioResult
from rfd.analysis.theorem1 import Theorem1Result

__all__ = ["plot_approx_error", "plot_magnitude", "plot_ranking", "plot_ratios", "plot_theorem1"]

_BEFORE, _AFTER = "#4C72B0", "#DD8452"


def _positive(v: torch.Tensor) -> list[float]:
    v = v.detach().double().flatten().cpu()
    return v[torch.isfinite(v) & (v > 0)].tolist()


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(p, dpi=120)
    return p


def _width(n: int) -> float:
    return max(6.0, 1.1 * n + 2)


def _short(layer: str) -> str:
    """Drop the ``net.`` prefix of ImageClassifier names, unless only a bare index would be left."""
    rest = layer.removeprefix("net.")
    return rest if any(ch.isalpha() for ch in rest) else layer


def _title(label: str, text: str) -> str:
    return f"{label}: {text}" if label else text


def _paired_boxes(ax, groups: Sequence[str], left: Sequence[list[float]], right: Sequence[list[float]],
                  labels: tuple[str, str]) -> None:
    pos = list(range(len(groups)))
    for data, off, color, label in ((left, -0.2, _BEFORE, labels[0]), (right, 0.2, _AFTER, labels[1])):
        safe = [d if d else [math.nan] for d in data]
        bp = ax.boxplot(safe, positions=[p + off for p in pos], widths=0.35, patch_artist=True, showfliers=False,
                        manage_ticks=False)
        for b in bp["boxes"]:
            b.set_facecolor(color)
            b.set_alpha(0.75)
        for med in bp["medians"]:
            med.set_color("black")
        ax.plot([], [], color=color, linewidth=8, alpha=0.75, label=label)
    ax.set_xticks(pos)
    ax.set_xticklabels([_short(g) for g in groups], rotation=30, ha="right")
    ax.legend()


def plot_ratios(result: RatioResult, path: str | os.PathLike[str], *, label: str = "") -> Path:
    """Figure 1: per layer, the distribution of ``||grad_h||^2 / ||grad_x||^2`` before and after the step."""
    b, a = result.ratios("before"), result.ratios("after")
    fig = Figure(figsize=(_width(len(result.layers)), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    _paired_boxes(ax, result.layers, [_positive(b[n]) for n in result.layers], [_positive(a[n]) for n in result.layers],
                  ("clean", f"after one {result.step.norm} step ({result.step.size:g})"))
    ax.set_yscale("log")
    ax.set_xlabel("layer h")
    ax.set_ylabel(r"$\|\nabla_h L\|^2 / \|\nabla_x L\|^2$")
    ax.set_title(_title(label, f"gradient-norm ratio per layer ({int(result.index.numel())} images)"))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_theorem1(result: Theorem1Result, path: str | os.PathLike[str], *, label: str = "") -> Path:
    """Predicted vs measured wrong-decision probability: every (layer, nu, mu, image) cell coloured by ``mu``, and
    the means over images per (layer, nu, mu) coloured by layer."""
    fig = Figure(figsize=(12, 5.2))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colors = [f"C{i % 10}" for i in range(max(len(result.mus), len(result.layers)))]
    for mi, mu in enumerate(result.mus):
        p = result.predicted[:, :, mi].flatten().tolist()
        m = result.measured[:, :, mi].flatten().tolist()
        ax1.scatter(p, m, s=6, alpha=0.4, color=colors[mi], label=f"mu={mu:.3g}")
    pm, mm = result.predicted.mean(-1), result.measured.mean(-1)
    for li, layer in enumerate(result.layers):
        ax2.scatter(pm[li].flatten().tolist(), mm[li].flatten().tolist(), s=30, color=colors[li], label=_short(layer))
    corr = result.correlations()
    for ax, sub in ((ax1, f"per image: Pearson {corr['pearson']:.3f}, Spearman {corr['spearman']:.3f}"),
                    (ax2, f"mean over images: Pearson {corr['pearson_cell_means']:.3f}")):
        ax.plot([0, 0.5], [0, 0.5], "k--", linewidth=1, label="measured = predicted")
        ax.set_xlim(-0.02, 0.55)
        ax.set_ylim(-0.02, 0.75)
        ax.set_xlabel("predicted P(wrong decision) (Theorem 1)")
        ax.set_ylabel(f"measured rate ({result.draws} proposals)")
        ax.set_title(sub, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_title(label, "Theorem 1, predicted vs measured probability that the attacker is misled"))
    fig.tight_layout()
    return _save(fig, path)


def plot_approx_error(results: Sequence[ApproxErrorResult], path: str | os.PathLike[str], *, label: str = "") -> Path:
    """Figure 3: histograms of ``log10`` first-order error per noise variance, one panel per place (input or
    layer), and the median relative error against the variance."""
    n = len(results)
    cols = min(4, n + 1)
    nrows = math.ceil((n + 1) / cols)
    fig = Figure(figsize=(4.6 * cols, 4.0 * nrows))
    for k, res in enumerate(results):
        ax = fig.add_subplot(nrows, cols, k + 1)
        for v, var in enumerate(res.variances):
            vals = [math.log10(e) for e in _positive(res.error[v])]
            if vals:
                ax.hist(vals, bins=40, alpha=0.5, color=f"C{v % 10}", label=f"var={var:.3g}")
        ax.set_xlabel(r"$\log_{10}$ |first-order error| (logit units)")
        ax.set_ylabel("count (image x draw)")
        what = "attacker step u (mu)" if res.layer == "input" else f"defense noise at {_short(res.layer)} (nu)"
        ax.set_title(what, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    ax = fig.add_subplot(nrows, cols, n + 1)
    for k, res in enumerate(results):
        med = [r["median_rel_error"] for r in res.summary()]
        ax.plot(list(res.variances), med, "o-", color=f"C{k % 10}", label=_short(res.layer))
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="error = first-order term")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise variance (mu for input, nu for a layer)")
    ax.set_ylabel("median relative error")
    ax.set_title("where the approximation breaks", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.suptitle(_title(label, "error of the first-order approximation"))
    fig.tight_layout()
    return _save(fig, path)


def plot_magnitude(result: MagnitudeResult, path: str | os.PathLike[str], *, label: str = "") -> Path:
    """Figure 2: per layer, the distribution of ``sigma * ||grad_h||`` at the calibrated sigma (correct images)."""
    fig = Figure(figsize=(_width(len(result.layers)), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    data = [_positive(result.magnitude(n)) or [math.nan] for n in result.layers]
    bp = ax.boxplot(data, patch_artist=True, showfliers=False)
    for b in bp["boxes"]:
        b.set_facecolor(_BEFORE)
        b.set_alpha(0.75)
    for med in bp["medians"]:
        med.set_color("black")
    ax.set_xticks(range(1, len(result.layers) + 1))
    ax.set_xticklabels([f"{_short(n)}\nsigma={result.sigma(n):.3g}" for n in result.layers], rotation=30, ha="right",
                       fontsize=8)
    ax.plot([], [], color=_BEFORE, linewidth=8, alpha=0.75, label=r"$\sigma \|\nabla_h L\|$ (correct images)")
    ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("layer h (sigma calibrated per layer)")
    ax.set_ylabel(r"robustness magnitude $\sigma\|\nabla_h L\|$ (logits)")
    ax.set_title(_title(label, f"robustness magnitude at a {100 * result.target_drop:g}-point clean-accuracy drop"))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_ranking(ranking: LayerRanking, path: str | os.PathLike[str], *, label: str = "") -> Path:
    """Bar chart of the ranking score per layer (best first); confirmation robust accuracy on a second axis."""
    rows = ranking.rows
    fig = Figure(figsize=(_width(len(rows)), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    pos = list(range(len(rows)))
    ax.bar(pos, [r["score"] for r in rows], color=_BEFORE, alpha=0.8, label=f"score ({ranking.metric})")
    ax.set_xticks(pos)
    ax.set_xticklabels([_short(r["layer"]) for r in rows], rotation=30, ha="right")
    ax.set_xlabel("layer (ranked, best first)")
    ax.set_ylabel({"magnitude": "median robustness magnitude (logits)"}.get(ranking.metric,
                                                                            "mean predicted P(wrong decision)"))
    handles, labels = ax.get_legend_handles_labels()
    if ranking.confirm:
        ax2 = ax.twinx()
        where = {r["layer"]: i for i, r in enumerate(rows)}
        cx = [where[c["layer"]] for c in ranking.confirm]
        ax2.plot(cx, [c["robust_accuracy"] for c in ranking.confirm], "o", color=_AFTER, markersize=9,
                 label=f"robust accuracy ({ranking.confirm[0]['attack']}, {ranking.confirm[0]['budget']} queries)")
        ax2.set_ylabel("robust accuracy")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8)
    ax.set_title(_title(label, f"layer ranking at a {100 * ranking.target_drop:g}-point drop "
                        f"(recommended: {_short(ranking.recommended)})"))
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
