"""Sanity flags on the runs of a results store, in the spirit of AutoAttack's checks: signs that a robust
accuracy says more about the evaluation than about the defense. Each flag says what to try next.

* ``early``: most successes come in the first few queries (a randomized model answering by luck);
* ``stalled``: robust accuracy hardly moves from a tenth of the budget to the full budget while images remain
  unbroken (the search stalled; it was not beaten);
* ``lucky``: the ``paper`` and ``strict`` readings differ by more than 5 points (lucky passes of the check);
* ``calibration``: the noise level's calibration did not converge to its target drop;
* ``unstable``: clean predictions unstable across forwards: the majority vote hides more than 2 points of the
  clean accuracy of one forward, or more than 20% of the clean images are misclassified in 10-90% of forwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rfd.eval.labels import run_label
from rfd.eval.results import Results, robust_accuracy

__all__ = ["FLAG_CODES", "SanityFlag", "sanity_flags"]

FLAG_CODES = ("early", "stalled", "lucky", "calibration", "unstable")
EARLY_QUERIES = 10  # "the first few queries"
EARLY_SHARE = 0.5  # flag when more than this share of the successes came that early
STALL_POINTS = 1.0  # flag when robust accuracy falls by less than this (points) from budget/10 to budget
LUCKY_POINTS = 5.0  # flag when paper and strict differ by more than this (points)
# flag when the majority vote hides more than this many points of the clean accuracy of one forward, or when more
# than UNSTABLE_SHARE of the clean images are misclassified in 10-90% of forwards
UNSTABLE_POINTS = 2.0
UNSTABLE_SHARE = 0.2


@dataclass(frozen=True)
class SanityFlag:
    run_id: int
    label: str
    code: str  # one of FLAG_CODES
    message: str  # what was seen, with the numbers
    advice: str  # what to try next

    def text(self) -> str:
        return f"[{self.code}] run {self.run_id} ({self.label}): {self.message}. Try: {self.advice}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sanity_flags(res: Results) -> list[SanityFlag]:
    """Every flag raised by any run of ``res`` (in run order)."""
    out: list[SanityFlag] = []
    by_run = dict(tuple(res.samples.groupby("run_id")))
    for _, r in res.runs.iterrows():
        s = by_run.get(r.run_id)
        if s is None or len(s) == 0:
            continue
        lab = run_label(r, with_id=False)
        broken = s[s.success & s.clean_correct]
        budget = int(r.budget)
        if len(broken) >= 5 and r.family != "none":  # a deterministic model's early success is real
            share = float((broken.queries <= EARLY_QUERIES).mean())
            if share > EARLY_SHARE and budget > 10 * EARLY_QUERIES:
                out.append(SanityFlag(int(r.run_id), lab, "early",
                                      f"{100 * share:.0f}% of the {len(broken)} successes came within "
                                      f"{EARLY_QUERIES} queries (median {float(broken.queries.median()):g})",
                                      "the strict reading and a strict check (verify: 100), so that a lucky answer "
                                      "neither decides success nor stops the attack"))
        low = max(1, budget // 10)
        if budget >= 10:
            r_low, r_full = robust_accuracy(s, low), robust_accuracy(s, budget)
            if r_full > 0.05 and 100 * (r_low - r_full) < STALL_POINTS and r.family != "none":
                out.append(SanityFlag(int(r.run_id), lab, "stalled",
                                      f"robust accuracy {100 * r_low:.1f}% at {low} queries and {100 * r_full:.1f}% "
                                      f"at {budget}: the search stalled",
                                      "an adaptive variant: Square/SignHunt resample (re-evaluate the incumbent), "
                                      "NES momentum with plateau decay, EOT (eot: 5 or 10), or larger steps"))
        strict = robust_accuracy(s, budget, "strict")
        paper = robust_accuracy(s, budget, "paper")
        if not np.isnan(strict) and 100 * abs(strict - paper) > LUCKY_POINTS:
            n_lucky = int((broken.p_wrong <= 0.5).sum())
            out.append(SanityFlag(int(r.run_id), lab, "lucky",
                                  f"paper {100 * paper:.1f}% vs strict {100 * strict:.1f}%: {n_lucky} of "
                                  f"{len(broken)} broken images are misclassified in at most half of the "
                                  "re-evaluation forwards",
                                  "report the strict reading; run a strict check (verify: 100) to see whether "
                                  "the attack finds real adversarial images when a lucky pass does not stop it"))
        if r.calibration_converged is False:
            out.append(SanityFlag(int(r.run_id), lab, "calibration",
                                  f"the calibration of sigma {r.sigma:.4g} did not converge to its target drop",
                                  "more calibration draws or images (study 'calibration'), or a fixed sigma"))
        cp = s.clean_p_wrong
        if not cp.isna().any():
            unstable = float(((cp > 0.1) & (cp < 0.9)).mean())
            gap = 100 * (float(s.clean_correct.mean()) - (1 - float(cp.mean())))
            if unstable > UNSTABLE_SHARE or gap > UNSTABLE_POINTS:
                out.append(SanityFlag(int(r.run_id), lab, "unstable",
                                      f"{100 * unstable:.0f}% of the clean images are misclassified in 10-90% of "
                                      "forwards (expected clean accuracy "
                                      f"{100 * (1 - float(cp.mean())):.1f}% vs majority vote "
                                      f"{100 * float(s.clean_correct.mean()):.1f}%)",
                                      "a smaller noise level, or report the expected reading next to Acc"))
    return out
