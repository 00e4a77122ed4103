"""Robust accuracy versus queries, from the results store: one panel per (model, attack), one line per
method (defense and noise level), the reporting budgets marked on every line; solid lines are the ``paper``
reading, dashed lines of the same colour the ``strict`` reading (where the store has the re-evaluation)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rfd.eval.labels import label_runs
from rfd.eval.results import Results, default_budgets, robust_curve

__all__ = ["plot_robust_curves"]


def plot_robust_curves(res: Results, out: str | os.PathLike[str], *, budgets: Sequence[int] | None = None,
                       title: str | None = None, log_x: bool = True, dpi: int = 130) -> Path:
    """Write a PNG (or any matplotlib format, by suffix) of robust accuracy (%) against queries per image.

    Lines start at 1 query (log x axis by default: most images fall in the first queries); markers sit at the
    reporting ``budgets`` (default: the studies' checkpoints and each run's budget)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if len(res.runs) == 0:
        raise ValueError("the results store holds no runs yet")
    runs = label_runs(res.runs)
    marks = sorted(int(b) for b in (budgets or default_budgets(res)))
    panels = list(dict.fromkeys(zip(runs.model, runs.attack_label)))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    by_run = dict(tuple(res.samples.groupby("run_id")))
    methods = list(dict.fromkeys(runs.method_label + " " + runs.level))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for ax, (model, attack) in zip(axes.flat, panels):
        sel = runs[(runs.model == model) & (runs.attack_label == attack)]
        top = int(sel.budget.max())
        for _, r in sel.iterrows():
            s = by_run.get(r.run_id)
            if s is None:
                continue
            grid = np.unique(np.concatenate([np.geomspace(1, r.budget, 200).astype(np.int64), [r.budget]]))
            curve = 100 * robust_curve(s, grid)
            name = f"{r.method_label} {r.level}".strip()
            ax.plot(grid, curve, color=colors[f"{r.method_label} {r.level}"], lw=1.8, drawstyle="steps-post",
                    label=f"{name} (Acc {100 * r.clean_acc:.1f})")
            strict = 100 * robust_curve(s, grid, "strict")
            if not np.isnan(strict).any():
                ax.plot(grid, strict, color=colors[f"{r.method_label} {r.level}"], lw=1.3, ls="--",
                        drawstyle="steps-post")
            cps = np.array([b for b in marks if b <= r.budget], dtype=np.int64)
            if len(cps):
                ax.plot(cps, 100 * robust_curve(s, cps), "o", color=colors[f"{r.method_label} {r.level}"], ms=5)
        for b in marks:
            if b <= top:
                ax.axvline(b, color="0.8", lw=0.8, ls=":", zorder=0)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(1, top)
        ax.set_ylim(0, 100)
        ax.set_title(f"{model} - {attack}", fontsize=11)
        ax.set_xlabel("queries per image")
        ax.set_ylabel("robust accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title or "Robust accuracy vs queries (solid: paper reading, dashed: strict; markers: reported "
                 "budgets)", fontsize=12)
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
