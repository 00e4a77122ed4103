"""How runs are named where people read them: a defense's noise level, one line per run (comparisons, sanity
flags), and the method / attack labels of tables and plots, which append exactly the settings that vary among
the runs shown, so two different runs never share a label."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd

__all__ = ["label_runs", "level_label", "params_text", "run_label", "varying_params"]


def level_label(drop: float | None, sigma_fixed: float | None) -> str:
    """A defense's noise level as tables show it: ``≈2%`` (a target drop), ``σ=0.5`` (a fixed sigma) or ``""``."""
    if drop is not None and not (isinstance(drop, float) and math.isnan(drop)):
        return f"≈{100 * drop:g}%"
    if sigma_fixed is not None and not (isinstance(sigma_fixed, float) and math.isnan(sigma_fixed)):
        return f"σ={sigma_fixed:g}"
    return ""


def run_label(r: pd.Series, *, with_id: bool = True) -> str:
    """One line naming a run (a row of ``Results.runs``) with every setting that tells it from its neighbours:
    ``#5 fmnist-vgg Feature @net.features.10 (scaled) ≈2% square resample=3 k=9`` (without ``#5`` when
    ``with_id`` is False)."""
    where = f" @{r.layers}" if r.family == "feature" and r.layers not in ("", "penultimate") else ""
    scaled = " (scaled)" if r.family == "feature" and r.scaled else ""
    level = level_label(r.target_drop, r.sigma_fixed)
    params = json.loads(r.params) if r.params else {}
    extra = "".join(f" {k}={v}" for k, v in sorted(params.items()))
    extra += (f" M={r.eot}" if r.eot > 1 else "") + (f" {r.norm}" if r.norm != "linf" else "")
    extra += f" {r.output}" if getattr(r, "output", "logits") != "logits" else ""
    head = f"#{r.run_id} " if with_id else ""
    return (f"{head}{r.model} {r.method}{where}{scaled}{' ' + level if level else ''} {r.attack}{extra} "
            f"k={r.verify}")


def params_text(params: str, keys: Sequence[str] | None = None) -> str:
    """Attack or defense parameters (a JSON object, as in ``Results.runs.params``) as ``k=v, ...`` sorted by
    key; only ``keys`` when given."""
    d = json.loads(params)
    return ", ".join(f"{k}={d[k]}" for k in sorted(d) if keys is None or k in keys)


def varying_params(params: pd.Series) -> list[str]:
    """The parameter names (sorted) whose values differ among the JSON objects of ``params``; a name missing
    from some objects counts as a difference."""
    dicts = [json.loads(p) for p in params]
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k)) for d in dicts}) > 1]


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``runs`` (rows of ``Results.runs``) with ``level``, ``method_label`` and ``attack_label``: the
    settings that vary within the table are appended, so two different runs never share a cell."""
    runs = runs.copy()
    runs["level"] = [level_label(d, s) for d, s in zip(runs.target_drop, runs.sigma_fixed)]
    method = runs.method.copy()
    for fam, g in runs.groupby("family"):
        if g.layers.nunique() > 1 and fam == "feature":
            method[g.index] = g.method + " @" + g.layers
        if g.scaled.nunique() > 1:
            method[g.index] = method[g.index] + g.scaled.map({True: " (scaled)", False: ""})
        if g.defense_params.nunique() > 1:
            method[g.index] = method[g.index] + " " + g.defense_params
    runs["method_label"] = method
    attack = runs.attack.copy()
    for _, g in runs.groupby("attack"):
        parts = []
        for col, fmt in (("norm", "{}"), ("eps", "eps={:g}"), ("eot", "M={}"), ("verify", "k={}"), ("output", "{}")):
            if g[col].nunique() > 1:
                parts.append(g[col].map(fmt.format))
        if g.params.nunique() > 1:
            varying = varying_params(g.params)
            parts.append(g.params.map(lambda p, keys=varying: params_text(p, keys)))
        if parts:
            extra = parts[0]
            for p in parts[1:]:
                extra = extra + " " + p
            attack[g.index] = g.attack + " " + extra
        elif (g.norm == "l2").all():
            attack[g.index] = g.attack + " (l2)"
    runs["attack_label"] = attack
    return runs
