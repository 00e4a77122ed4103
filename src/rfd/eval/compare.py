"""Paired comparison of two runs of a results store: same images, same attack draws (the study's paired
seeding), the per-image difference of their robustness with its interval, and McNemar's exact test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rfd.attacks.readings import check_reading, robust_estimate
from rfd.eval.labels import run_label
from rfd.eval.results import LEGACY_SEEDING, Results, sample_values
from rfd.stats import Estimate, PairedDifference, paired_difference

__all__ = ["Comparison", "compare_runs"]


@dataclass(frozen=True)
class Comparison:
    """Run ``a`` minus run ``b`` under one reading at one budget, on the images both runs attacked."""

    a: int
    b: int
    a_label: str
    b_label: str
    reading: str
    budget: int
    a_value: Estimate
    b_value: Estimate
    difference: PairedDifference
    paired_draws: bool  # same attack settings, seeds drawn by attack and chunk only: the same attack draws
    why_unpaired: str = ""  # when not paired: an older store's seeding, or two different attacks

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "a_label": self.a_label, "b_label": self.b_label,
                "reading": self.reading, "budget": self.budget, "a_value": self.a_value.to_dict(),
                "b_value": self.b_value.to_dict(), "difference": self.difference.to_dict(),
                "paired_draws": self.paired_draws, "why_unpaired": self.why_unpaired}

    def text(self) -> str:
        d = self.difference
        p = "" if np.isnan(d.p_value) else f", McNemar exact p = {d.p_value:.3g} ({d.a_only} vs {d.b_only} discordant)"
        warn = "" if self.paired_draws else f" [attack draws not shared: {self.why_unpaired}]"
        return (f"{self.reading} @ {self.budget}: {self.a_label} {self.a_value.percent()} vs {self.b_label} "
                f"{self.b_value.percent()}; difference {100 * d.difference:+.1f} points "
                f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] on {d.n} images{p}{warn}")


def compare_runs(res: Results, a: int, b: int, *, budget: int | None = None, reading: str = "strict",
                 seed: int = 0) -> Comparison:
    """Paired comparison of runs ``a`` and ``b`` (run ids) at ``budget`` (default: the smaller run budget)."""
    check_reading(reading)
    ids = set(res.runs.run_id)
    for rid in (a, b):
        if rid not in ids:
            raise ValueError(f"run {rid} is not in the store (run ids: {', '.join(map(str, sorted(ids)))}; "
                             "see rfd report --table runs)")
    ra, rb = (res.runs[res.runs.run_id == r].iloc[0] for r in (a, b))
    bud = int(budget) if budget is not None else int(min(ra.budget, rb.budget))
    if bud > min(ra.budget, rb.budget):
        raise ValueError(f"budget {bud} exceeds a run's budget ({ra.budget}, {rb.budget})")
    sa = res.samples[res.samples.run_id == a].set_index("dataset_index")
    sb = res.samples[res.samples.run_id == b].set_index("dataset_index")
    common = sa.index.intersection(sb.index)
    if len(common) == 0:
        raise ValueError(f"runs {a} and {b} share no image: a paired comparison needs the same images")
    sa, sb = sa.loc[common].sort_values("sample"), sb.loc[common]
    sb = sb.loc[sa.index]
    va, vb = sample_values(sa, bud, reading), sample_values(sb, bud, reading)
    if np.isnan(va).any() or np.isnan(vb).any():
        raise ValueError(f"the {reading!r} reading is unknown for run {a if np.isnan(va).any() else b} (a store "
                         "from before re-evaluation); compare with reading='paper'")
    legacy = LEGACY_SEEDING in (ra.seeding, rb.seeding)
    same_attack = all(ra[c] == rb[c] for c in ("attack_name", "norm", "eps", "eot", "budget", "params"))

    return Comparison(
        a=a, b=b, a_label=run_label(ra), b_label=run_label(rb), reading=reading, budget=bud,
        a_value=robust_estimate(va, reading), b_value=robust_estimate(vb, reading),
        difference=paired_difference(va, vb, seed=seed),
        paired_draws=not legacy and same_attack,
        why_unpaired=("a store from rfd 0.1 (attack seeds per run)" if legacy
                      else "different attack settings (same images)" if not same_attack else ""))
