"""Report helpers: filter a store's results, export per-sample rows, write a report folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from rfd.eval.compare import Comparison, compare_runs
from rfd.eval.results import Results, load_results
from rfd.eval.tables import build_table, render

__all__ = ["filter_results", "paired_comparisons", "raw_rows", "write_report"]


def filter_results(res: Results, *, models: Sequence[str] | None = None, attacks: Sequence[str] | None = None,
                   methods: Sequence[str] | None = None) -> Results:
    """Keep only runs of the given models / attacks (label or registry name) / methods (Base, Input, ...)."""
    mask = pd.Series(True, index=res.runs.index)
    for col, want, alt in (("model", models, None), ("attack", attacks, "attack_name"), ("method", methods, "family")):
        if want:
            m = res.runs[col].isin(want)
            if alt is not None:
                m |= res.runs[alt].isin(want) | res.runs[col].str.lower().isin([w.lower() for w in want])
            mask &= m
    if not mask.any():
        raise ValueError(f"no run matches the filters (models={models}, attacks={attacks}, methods={methods}); "
                         f"the store has models {sorted(res.runs.model.unique())}, attacks "
                         f"{sorted(res.runs.attack.unique())}")
    return res.subset(mask)


def raw_rows(res: Results) -> pd.DataFrame:
    """One row per attacked image: the run's settings, then the stored outcome (for your own analysis)."""
    cols = ["run_id", "model", "method", "layers", "target_drop", "sigma", "attack", "norm", "eps", "eot", "budget",
            "verify", "check"]
    return res.samples.merge(res.runs[cols], on="run_id")[
        cols + ["sample", "dataset_index", "label", "clean_correct", "success", "queries", "linf", "l2", "checks",
                "check_forwards", "claims", "p_wrong", "clean_p_wrong"]]


def paired_comparisons(res: Results, readings: Sequence[str] = ("paper", "strict")) -> list[Comparison]:
    """Feature minus input noise for every (model, attack, check, noise level) that has both, under each reading
    whose values are known, at the runs' full budget."""
    runs = res.runs[res.runs.family.isin(["feature", "input"])]
    keys = ["model", "attack", "attack_name", "norm", "eps", "eot", "budget", "verify", "check", "output", "params",
            "target_drop", "sigma_fixed", "gate"]
    out = []
    for _, g in runs.groupby(keys, dropna=False, sort=False):
        feat, inp = g[g.family == "feature"], g[g.family == "input"]
        for fid in feat.run_id:
            for iid in inp.run_id:
                for rd in readings:
                    try:
                        out.append(compare_runs(res, int(fid), int(iid), reading=rd))
                    except ValueError:  # a reading unknown in an old store
                        continue
    return out


def write_report(db: str | os.PathLike[str], out_dir: str | os.PathLike[str], tables: Sequence[str],
                 *, title: str, intro: str = "", budgets: Sequence[int] | None = None,
                 run_keys: set[str] | None = None) -> dict[str, str]:
    """Write ``report.md`` (tables + plot), one CSV per table, ``samples.csv`` and ``robust_vs_queries.png``
    into ``out_dir``; returns {name: path}. ``run_keys``: only these runs (default: all in the store)."""
    from rfd.eval.plots import plot_robust_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = load_results(db)
    if run_keys is not None:
        res = res.subset(res.runs.key.isin(run_keys))
    paths: dict[str, str] = {}
    md = [f"# {title}", ""]
    if intro:
        md += [intro, ""]
    for kind in tables:
        t = build_table(res, kind, budgets=budgets)
        md += [render(t, "md"), ""]
        p = out / f"table_{t.kind}.csv"
        p.write_text(render(t, "csv"))
        paths[f"table_{t.kind}"] = str(p)
    pairs = paired_comparisons(res)
    if pairs:
        md += [("**Feature vs input noise, paired** (same images, same attack draws; difference in points with its "
                "95% interval, exact McNemar p-value on the discordant images)"), ""]
        md += [f"- {c.text()}" for c in pairs] + [""]
    png = plot_robust_curves(res, out / "robust_vs_queries.png", budgets=budgets)
    paths["plot"] = str(png)
    md += ["![robust accuracy vs queries](robust_vs_queries.png)", ""]
    raw = out / "samples.csv"
    raw_rows(res).to_csv(raw, index=False)
    paths["samples"] = str(raw)
    report = out / "report.md"
    report.write_text("\n".join(md))
    paths["report"] = str(report)
    return paths
