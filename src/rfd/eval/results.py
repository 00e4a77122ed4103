"""Read a results store into pandas: one row per run (with its settings) and one row per sample, and robust
accuracy at any budget, under any reading (``paper``, ``strict``, ``expected``; :mod:`rfd.attacks.readings`),
computed from the per-sample query counts and re-evaluations."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rfd.attacks.readings import robust_estimate, robust_values
from rfd.defenses.detector_spec import parse_detector
from rfd.defenses.families import FAMILIES
from rfd.defenses.spec import method_label
from rfd.eval.store import SAMPLE_COLUMNS, ResultStore
from rfd.stats import Estimate

__all__ = ["LEGACY_SEEDING", "Results", "default_budgets", "load_results", "robust_accuracy", "robust_curve",
           "robust_estimate_of", "sample_values"]

LEGACY_SEEDING = "per-run (rfd 0.1)"  # attack seeds derived from the whole run key: defenses not paired


@dataclass
class Results:
    """``runs``: one row per run; ``samples``: one row per (run, sample); ``budgets``: the reporting budgets
    declared by the studies in the store (their checkpoints)."""

    runs: pd.DataFrame
    samples: pd.DataFrame
    budgets: list[int]

    def subset(self, mask: pd.Series) -> Results:
        runs = self.runs[mask]
        return Results(runs, self.samples[self.samples.run_id.isin(runs.run_id)], self.budgets)


def _method(d: dict[str, Any]) -> str:
    """The table label of a stored defense (its spec's label; the family name for an unknown family)."""
    if d["family"] not in FAMILIES:
        return str(d["family"])
    params = d.get("params") or {}
    label = method_label(d["family"], params.get("gate"))
    if params.get("detector"):
        det = parse_detector(params["detector"]).label
        label = det if d["family"] == "none" else f"{label}+{det}"
    return label


def load_results(db: str | os.PathLike[str]) -> Results:
    """Everything a report needs from the store ``db`` (which must exist)."""
    with ResultStore(db, create=False) as store:
        runs = store.runs()
        rows = store.samples()
        studies = store.studies()
    samples = pd.DataFrame(rows, columns=["run_id", "chunk", *SAMPLE_COLUMNS])
    for c in ("clean_correct", "success"):
        samples[c] = samples[c].astype(bool)
    for c in ("p_wrong", "clean_p_wrong", "flagged", "rejected", "first_flag"):
        samples[c] = pd.to_numeric(samples[c], errors="coerce").astype(float)  # NULL -> NaN
    recs = []
    for r in runs:
        cfg, labels = r["config"], r["labels"]
        ident = cfg["identity"]
        d, a = ident["defense"], ident["attack"]
        layers = "+".join(d.get("layers") or [])
        recs.append({
            "run_id": r["run_id"], "key": r["key"],
            "model": labels.get("model") or ident["model"]["name"],
            "family": d["family"],
            "method": _method(d),
            "layers": layers if d["family"] == "feature" else ("input" if d["family"] == "input" else ""),
            "scaled": bool(d.get("scaled")), "target_drop": d.get("drop"), "sigma_fixed": d.get("sigma"),
            "sigma": cfg.get("sigma"), "gate": (d.get("params") or {}).get("gate"),
            # the gate is in the method label and its own column; the rest (AAA settings) labels by its JSON
            "detector": (d.get("params") or {}).get("detector"),
            "defense_params": json.dumps({k: v for k, v in (d.get("params") or {}).items()
                                          if k not in ("gate", "detector")}, sort_keys=True),
            "attack": labels.get("attack") or a["name"], "attack_name": a["name"], "norm": a["norm"],
            "eps": a["eps"], "eot": a["eot"], "budget": a["budget"], "verify": a["verify"],
            "check": a.get("check", "free"), "reevaluate": a.get("reevaluate"), "output": a.get("output", "logits"),
            "seeding": ident.get("seeding", LEGACY_SEEDING),
            "calibration_converged": (cfg.get("calibration") or {}).get("converged"),
            "params": json.dumps(a.get("params") or {}, sort_keys=True),
            "n_expected": ident["n"], "seed": ident["seed"], "study": labels.get("study", ""),
            "rfd_version": r["rfd_version"],
        })
    cols = ["run_id", "key", "model", "family", "method", "layers", "scaled", "target_drop", "sigma_fixed", "sigma",
            "gate", "detector", "defense_params", "attack", "attack_name", "norm", "eps", "eot", "budget", "verify", "check", "reevaluate",
            "output", "seeding", "calibration_converged",
            "params", "n_expected", "seed", "study", "rfd_version"]
    runs_df = pd.DataFrame(recs, columns=cols)
    if len(runs_df):
        g = samples.groupby("run_id")
        runs_df["n"] = runs_df.run_id.map(g.size()).fillna(0).astype(int)
        runs_df["clean_acc"] = runs_df.run_id.map(g.clean_correct.mean())
        # expected clean accuracy per forward (NaN when any image was not re-evaluated: an old store)
        runs_df["clean_acc_expected"] = runs_df.run_id.map(g.clean_p_wrong.apply(
            lambda v: float("nan") if v.isna().any() else float(1 - v.mean())))
    else:
        runs_df["n"] = pd.Series(dtype=int)
        runs_df["clean_acc"] = pd.Series(dtype=float)
        runs_df["clean_acc_expected"] = pd.Series(dtype=float)
    budgets = sorted({int(b) for s in studies.values() for b in s.get("checkpoints", [])})
    return Results(runs_df, samples, budgets)


def sample_values(samples: pd.DataFrame, budget: int, reading: str = "paper") -> np.ndarray:
    """Per image of ``samples`` (one run, ordered by sample), how robust it is at ``budget`` under ``reading``."""
    return robust_values(samples.clean_correct.to_numpy(), samples.success.to_numpy(), samples.queries.to_numpy(),
                         samples.p_wrong.to_numpy(dtype=float), budget, reading)


def robust_accuracy(samples: pd.DataFrame, budget: int, reading: str = "paper") -> float:
    """Robust accuracy of ``samples`` (one run) at ``budget`` queries under ``reading`` (NaN when unknown)."""
    if len(samples) == 0:
        return float("nan")
    return float(sample_values(samples, budget, reading).mean())


def robust_estimate_of(samples: pd.DataFrame, budget: int, reading: str = "paper") -> Estimate:
    """Robust accuracy of one run with its 95% interval (Wilson; bootstrap for ``expected``)."""
    return robust_estimate(sample_values(samples, budget, reading), reading)


def robust_curve(samples: pd.DataFrame, grid: np.ndarray, reading: str = "paper") -> np.ndarray:
    """Robust accuracy of one run at every budget in ``grid`` (sorted int array); one pass for ``paper``."""
    n = len(samples)
    if n == 0:
        return np.full(len(grid), np.nan)
    if reading == "paper":
        q = np.sort(samples.queries[samples.success & samples.clean_correct].to_numpy())
        broken = np.searchsorted(q, grid, side="right")
        return (int(samples.clean_correct.sum()) - broken) / n
    return np.array([robust_accuracy(samples, int(b), reading) for b in grid])


def default_budgets(res: Results) -> list[int]:
    """Budgets to report: the studies' checkpoints plus every run's full budget."""
    return sorted({*res.budgets, *(int(b) for b in res.runs.budget)})
