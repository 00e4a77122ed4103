"""Do the analysis' predictions order the layers as the attacks do? (The paper's Tables 6 and 14.)

The paper ties the robustness that noise at one layer buys to quantities computed without attacking: the mean
gradient norm of the margin loss at the layer (Table 6), the change of the gradient-norm ratio after one attack
step (Table 14), and, through Theorem 1, the probability that the noise misleads the attacker. ``rfd analyze
ratio`` and ``rfd analyze layers`` compute these per layer; a per-layer study (``rfd reproduce 6 / 14``, one
noisy layer per run) measures the robustness. This module puts the two side by side: per layer the predicted
value and the measured robust accuracy (mean over the study's attacks, per image, with a bootstrap interval),
and per predictor Spearman's rank correlation with its exact permutation p-value and a bootstrap interval over
images (the measured ranks are themselves uncertain: with 100 images neighbouring layers often swap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfd.attacks.readings import check_reading
from rfd.eval.results import Results, sample_values
from rfd.stats import Estimate, average_ranks, bootstrap_mean, spearman, spearman_exact_p

__all__ = ["PREDICTORS", "LayerAgreement", "MeasuredLayers", "agreements", "layer_agreement", "measured_by_layer",
           "predictions_from"]

# predictor -> (the analysis that computes it, what the paper ties it to). Higher always predicts more robust.
PREDICTORS: dict[str, tuple[str, str]] = {
    "grad_norm": ("ratio", "mean ||dL/dh|| on clean images (Table 6)"),
    "ratio_change": ("ratio", "mean change of the ratio ||dL/dh||^2/||dL/dx||^2 after one attack step (Table 14)"),
    "ratio_after": ("ratio", "median ratio after one attack step (Figure 1)"),
    "prob_step": ("layers", ("Theorem-1 probability after one attack step at the calibrated sigma (rfd analyze "
                             "layers' default score)")),
    "prob_clean": ("layers", "Theorem-1 probability on clean images at the calibrated sigma"),
    "magnitude": ("layers", "median robustness magnitude sigma * ||dL/dh|| (Figure 2)"),
}
_BOOT = 2000


def predictions_from(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """predictor -> {layer: value} from the JSON summary ``rfd analyze ratio`` (``ratio.json``) or ``rfd analyze
    layers`` (``layers.json``) wrote."""
    if isinstance(summary.get("ranking"), list):
        rows = summary["ranking"]
        keys = {"prob_step": "prob_step", "prob_clean": "prob_clean", "magnitude": "magnitude_median"}
        return {p: {str(r["layer"]): float(r[k]) for r in rows} for p, k in keys.items()}
    rows = summary.get("layers")
    if isinstance(rows, list) and rows and isinstance(rows[0], Mapping) and "ratio_after" in rows[0]:
        return {"grad_norm": {str(r["layer"]): float(r["grad_norm_mean"]) for r in rows},
                "ratio_change": {str(r["layer"]): float(r["change_mean"]) for r in rows},
                "ratio_after": {str(r["layer"]): float(r["ratio_after"]["median"]) for r in rows}}
    raise ValueError("not the JSON of `rfd analyze ratio` (ratio.json) or `rfd analyze layers` (layers.json): "
                     "it has neither a 'ranking' list nor per-layer ratio rows")


@dataclass(frozen=True)
class MeasuredLayers:
    """Per-image robustness of one model with noise at one layer per run.

    Attributes:
        model, reading, budget: what was read.
        layers: (L,) layer names as in the store (``"penultimate"`` or module names).
        attacks: the attack labels averaged over (every layer has one run of each).
        values: (L, N) per image, the mean over ``attacks`` of its robustness (0/1 or a probability), on the N
            images every run attacked (same images: the study's paired selection).
    """

    model: str
    reading: str
    budget: int
    layers: tuple[str, ...]
    attacks: tuple[str, ...]
    values: np.ndarray

    def estimate(self, i: int) -> Estimate:
        return bootstrap_mean(self.values[i])


def measured_by_layer(res: Results, model: str, *, reading: str = "strict", budget: int | None = None
                      ) -> MeasuredLayers:
    """The single-layer feature-noise runs of ``model`` in ``res`` (a per-layer study), read at ``budget``
    (default: the smallest run budget)."""
    check_reading(reading)
    runs = res.runs[(res.runs.model == model) & (res.runs.family == "feature")]
    if runs.empty:
        models = sorted(set(res.runs.model))
        raise ValueError(f"no feature-noise runs of {model!r} in the store (models: {', '.join(models) or 'none'})")
    multi = sorted({ly for ly in runs.layers if "+" in ly})
    if multi:
        raise ValueError(f"runs with noise at several layers at once ({', '.join(multi)}): a per-layer comparison "
                         "needs one noisy layer per run (rfd reproduce 6 / 14)")
    dup = runs.groupby(["layers", "attack"]).size()
    if (dup > 1).any():
        (ly, atk), _ = next(iter(dup[dup > 1].items()))
        raise ValueError(f"{model}: more than one run of layer {ly!r} under attack {atk!r} (several noise levels?); "
                         "pass a store of one per-layer study")
    attacks = tuple(sorted(set(runs.attack)))
    layers = tuple(dict.fromkeys(runs.layers))
    missing = [(ly, a) for ly in layers for a in attacks if runs[(runs.layers == ly) & (runs.attack == a)].empty]
    if missing:
        raise ValueError(f"{model}: layer {missing[0][0]!r} has no run of attack {missing[0][1]!r}; every layer "
                         "needs the same attacks")
    bud = int(budget) if budget is not None else int(runs.budget.min())
    if bud > int(runs.budget.min()):
        raise ValueError(f"budget {bud} exceeds a run's budget ({int(runs.budget.min())})")
    per_run = {}
    for _, r in runs.iterrows():
        s = res.samples[res.samples.run_id == r.run_id].set_index("dataset_index").sort_index()
        per_run[(r.layers, r.attack)] = s
    common = sorted(set.intersection(*(set(s.index) for s in per_run.values())))
    if not common:
        raise ValueError(f"{model}: the per-layer runs share no image")
    values = np.empty((len(layers), len(common)))
    for i, ly in enumerate(layers):
        cols = [sample_values(per_run[(ly, a)].loc[common], bud, reading) for a in attacks]
        stacked = np.stack(cols)
        if np.isnan(stacked).any():
            raise ValueError(f"the {reading!r} reading is unknown in this store (from before re-evaluation); "
                             "use reading 'paper'")
        values[i] = stacked.mean(0)
    return MeasuredLayers(model=model, reading=reading, budget=bud, layers=layers, attacks=attacks, values=values)


@dataclass(frozen=True)
class LayerAgreement:
    """One predictor against the measured per-layer robustness of one model.

    Attributes:
        predictor: a key of :data:`PREDICTORS`.
        layers: (L,) the layers both sides have, in the store's order.
        predicted: (L,) the predictor's values.
        measured: (L,) mean robust accuracy over the attacks, with 95% bootstrap intervals over images.
        rho: Spearman's rank correlation of predicted and measured (1: the same order).
        p_value: its two-sided exact permutation p-value (L = 5 layers: rho = 1 gives p = 2/120 = 0.017).
        low, high: 95% percentile-bootstrap interval of rho, images resampled (the predictions held fixed).
    """

    predictor: str
    model: str
    reading: str
    budget: int
    attacks: tuple[str, ...]
    layers: tuple[str, ...]
    predicted: tuple[float, ...]
    measured: tuple[Estimate, ...]
    rho: float
    p_value: float
    low: float
    high: float
    images: int

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer (CSV)."""
        pr = _ranks_desc(np.array(self.predicted))
        mr = _ranks_desc(np.array([m.value for m in self.measured]))
        return [{"model": self.model, "predictor": self.predictor, "reading": self.reading, "budget": self.budget,
                 "layer": ly, "predicted": p, "predicted_rank": float(a), "measured": m.value,
                 "measured_low": m.low, "measured_high": m.high, "measured_rank": float(b)}
                for ly, p, m, a, b in zip(self.layers, self.predicted, self.measured, pr, mr)]

    def to_dict(self) -> dict[str, Any]:
        return {"predictor": self.predictor, "source": PREDICTORS[self.predictor][0],
                "meaning": PREDICTORS[self.predictor][1], "model": self.model, "reading": self.reading,
                "budget": self.budget, "attacks": list(self.attacks), "images": self.images, "rho": self.rho,
                "p_value": self.p_value, "rho_low": self.low, "rho_high": self.high, "layers": self.rows()}

    def text(self) -> str:
        return (f"{self.model} {self.predictor} vs {self.reading} @ {self.budget}: rho {self.rho:+.2f} "
                f"[{self.low:+.2f}, {self.high:+.2f}], exact p = {self.p_value:.3g} ({len(self.layers)} layers, "
                f"{self.images} images)")


def _ranks_desc(v: np.ndarray) -> np.ndarray:
    """1 = largest (most robust); ties share their average rank."""
    return average_ranks(-v)


def layer_agreement(predicted: Mapping[str, float], measured: MeasuredLayers, predictor: str, *, seed: int = 0,
                    resamples: int = _BOOT) -> LayerAgreement:
    """Spearman's rho between ``predicted`` ({layer: value}) and ``measured`` on their common layers (>= 3)."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; allowed: {', '.join(PREDICTORS)}")
    idx = [i for i, ly in enumerate(measured.layers) if ly in predicted and math.isfinite(predicted[ly])]
    if len(idx) < 3:
        raise ValueError(f"{measured.model}: the prediction and the store share {len(idx)} layer(s) "
                         f"(store: {', '.join(measured.layers)}; prediction: {', '.join(predicted)}); a rank "
                         "correlation needs 3 or more (run rfd analyze with --layers set to the study's layers)")
    layers = tuple(measured.layers[i] for i in idx)
    pred = np.array([predicted[ly] for ly in layers], dtype=np.float64)
    vals = measured.values[idx]  # (L, N)
    means = vals.mean(1)
    rho = float(spearman(pred, means))
    p = spearman_exact_p(pred, means, seed=seed)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, vals.shape[1], size=(resamples, vals.shape[1]))
    boot = spearman(pred[None, :], vals[:, pick].mean(-1).T)  # (resamples,)
    boot = boot[np.isfinite(boot)]
    low, high = (np.quantile(boot, [0.025, 0.975]) if boot.size else (math.nan, math.nan))
    return LayerAgreement(predictor=predictor, model=measured.model, reading=measured.reading, budget=measured.budget,
                          attacks=measured.attacks, layers=layers, predicted=tuple(float(v) for v in pred),
                          measured=tuple(bootstrap_mean(vals[i]) for i in range(len(layers))), rho=rho, p_value=p,
                          low=float(low), high=float(high), images=int(vals.shape[1]))


def agreements(predictions: Sequence[Mapping[str, Any]], res: Results, model: str, *,
               readings: Sequence[str] = ("paper", "strict"), budget: int | None = None, seed: int = 0
               ) -> list[LayerAgreement]:
    """Every predictor found in ``predictions`` (JSON summaries of rfd analyze ratio / layers) against the
    per-layer runs of ``model`` in ``res``, under each of ``readings``."""
    preds: dict[str, dict[str, float]] = {}
    for summary in predictions:
        preds.update(predictions_from(summary))
    out = []
    for rd in readings:
        m = measured_by_layer(res, model, reading=rd, budget=budget)
        out += [layer_agreement(v, m, k, seed=seed) for k, v in preds.items()]
    return out
