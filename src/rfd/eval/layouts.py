"""Table layouts: which rows and columns each table kind has, computed from a results store's runs and samples
(see :mod:`rfd.eval.tables` for the kinds). A layout yields a :class:`Table` whose frame holds robust accuracy
:class:`~rfd.stats.Estimate` values and percentages; :mod:`rfd.eval.render` turns it into text."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from rfd.attacks.readings import check_reading
from rfd.blackbox.stateful import detection_figures
from rfd.eval.labels import label_runs, params_text, varying_params
from rfd.eval.results import LEGACY_SEEDING, Results, default_budgets, robust_estimate_of
from rfd.eval.sanity import sanity_flags

__all__ = ["DEFAULT_READINGS", "LAYOUTS", "PAPER_TABLES", "TABLE_KINDS", "Layout", "Table", "build_table",
           "resolve_kind"]

DEFAULT_READINGS = ("paper", "strict")
TABLE_KINDS = ("robust", "decision", "strength", "layer", "eot", "lucky", "runs", "detection")
PAPER_TABLES = {"1": "robust", "2": "robust", "4": "robust", "9": "robust", "5": "decision", "10": "decision",
                "11": "decision", "3": "strength", "6": "layer", "14": "layer", "7": "eot", "15": "lucky"}


@dataclass
class Table:
    """A rendered layout: ``frame`` holds numbers (percent), row labels in its index, column labels in its
    (possibly two-level) columns; ``notes`` are footnotes (incomplete runs, how Acc is computed, ...)."""

    kind: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def resolve_kind(name: str) -> str:
    """A kind name or a paper table number -> kind."""
    key = str(name).lower().removeprefix("table").strip()
    if key in PAPER_TABLES:
        return PAPER_TABLES[key]
    if key in TABLE_KINDS:
        return key
    raise ValueError(f"unknown table {name!r}: use a kind ({', '.join(TABLE_KINDS)}) or a paper table number "
                     f"({', '.join(sorted(PAPER_TABLES, key=int))})")


# ------------------------------------------------------------------------------------------------ helpers
def _robust_at(res: Results, runs: pd.DataFrame, budget_of: dict[int, int], reading: str = "paper") -> pd.Series:
    """Per run of ``runs``: its robust accuracy :class:`Estimate` at ``budget_of[run_id]`` under ``reading``."""
    by_run = dict(tuple(res.samples.groupby("run_id")))
    out = {}
    for rid in runs.run_id:
        out[rid] = robust_estimate_of(by_run.get(rid, res.samples.iloc[:0]), budget_of[rid], reading)
    return runs.run_id.map(out)


def _with_readings(res: Results, runs: pd.DataFrame, budget_of: dict[int, int], readings: Sequence[str]
                   ) -> pd.DataFrame:
    """Long frame: ``runs`` once per reading, with columns ``reading`` and ``value`` (an Estimate)."""
    parts = []
    for rd in readings:
        r = runs.copy()
        r["reading"] = rd
        r["value"] = _robust_at(res, runs, budget_of, rd).to_numpy()
        parts.append(r)
    return pd.concat(parts, ignore_index=True)


def _pivot(long: pd.DataFrame, index: list[str], columns: list[str]) -> pd.DataFrame:
    return long.pivot_table(index=index, columns=columns, values="value", aggfunc="first", sort=False)


def _order_readings(t: pd.DataFrame, readings: Sequence[str]) -> pd.DataFrame:
    """Columns in their pivot order, but the innermost "reading" level in the order asked for."""
    cols = list(t.columns)
    def key(c: object) -> tuple[int, int]:
        head = c[:-1] if isinstance(c, tuple) else ()
        first = next(i for i, d in enumerate(cols) if (d[:-1] if isinstance(d, tuple) else ()) == head)
        rd = c[-1] if isinstance(c, tuple) else c
        return first, list(readings).index(str(rd))
    return t.reindex(columns=sorted(cols, key=key))


def _notes(runs: pd.DataFrame) -> list[str]:
    notes = [("Values: robust accuracy (%) = clean-correct by majority vote and not broken within the budget, "
              "with its 95% interval (Wilson over images; bootstrap for 'expected'). Readings: paper = the claim "
              "passed the success check (the paper's protocol); strict = also misclassified in more than half of "
              "R fresh forwards of the final image; expected = chance the model is right on the final image. "
              "Acc: majority-vote clean accuracy (%); E[Acc]: expected clean accuracy of one forward (%).")]
    inc = runs[runs.n < runs.n_expected]
    for _, r in inc.iterrows():
        notes.append(f"incomplete: {r.model} / {r.method} {r.level} / {r.attack} has {r.n} of {r.n_expected} "
                     "images (resume with rfd run)")
    legacy = runs[runs.seeding == LEGACY_SEEDING]
    if len(legacy):
        notes.append(f"{len(legacy)} run(s) from an older rfd: attack seeds derived per run (defenses not paired) "
                     "and no re-evaluation (strict/expected shown as –)")
    bad = runs[runs.calibration_converged.map(lambda v: v is False)]  # None (fixed sigma) must not match
    for _, r in bad.iterrows():
        notes.append(f"calibration NOT converged: {r.model} / {r.method} {r.level} (sigma {r.sigma:.4g}): its "
                     "clean-accuracy drop differs from the target by more than the tolerance")
    return notes


def _acc_column(runs: pd.DataFrame, rows: list[str], col: str = "clean_acc") -> pd.Series:
    return runs.groupby(rows, sort=False)[col].mean() * 100


def _insert_acc(t: pd.DataFrame, runs: pd.DataFrame, rows: list[str]) -> None:
    """Acc and E[Acc] as the first columns of ``t`` (index ``rows``), padded to its column levels."""
    pad = ("",) * (t.columns.nlevels - 1)
    for i, (name, col) in enumerate((("Acc", "clean_acc"), ("E[Acc]", "clean_acc_expected"))):
        label = (name, *pad) if pad else name
        t.insert(i, label, _acc_column(runs, rows, col).reindex(t.index))


def _check_unique(runs: pd.DataFrame, cols: list[str], kind: str) -> None:
    dup = runs.duplicated(cols, keep=False)
    if dup.any():
        r = runs[dup].iloc[0]
        raise ValueError(f"table {kind!r}: several runs share { {c: r[c] for c in cols} }; filter the store "
                         "(--model/--attack/--method) or use --table runs")


def _per_budget(res: Results, runs: pd.DataFrame, bs: list[int], readings: Sequence[str]) -> pd.DataFrame:
    """Long frame: one row per (run, budget <= run budget, reading) with the robust accuracy Estimate."""
    rows = []
    for b in bs:
        sel = runs[runs.budget >= b]
        if len(sel) == 0:
            continue
        r = _with_readings(res, sel, {rid: b for rid in sel.run_id}, readings)
        r["B"] = b
        rows.append(r)
    if not rows:
        raise ValueError(f"no run has a budget as large as the smallest requested budget {bs[0]}")
    return pd.concat(rows, ignore_index=True)


def _budget_of(runs: pd.DataFrame, budget: int | None) -> dict[int, int]:
    return {rid: (min(budget, b) if budget else b) for rid, b in zip(runs.run_id, runs.budget)}


# ------------------------------------------------------------------------------------------------- layouts
def _robust(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = label_runs(runs[(runs.verify > 1) | (runs.verify == runs.verify.max())])
    _check_unique(runs, ["model", "method_label", "level", "attack_label"], "robust")
    long = _per_budget(res, runs, bs, rds)
    rows = ["model", "method_label", "level"]
    t = _pivot(long, rows, ["attack_label", "B", "reading"])
    order = list(runs.attack_label.unique())
    t = t.reindex(columns=sorted(t.columns, key=lambda c: (order.index(c[0]), c[1], list(rds).index(c[2]))))
    _insert_acc(t, runs, rows)
    t.index.names = ["Model", "Method", "Drop"]
    t.columns.names = ["Attack", "Queries", "Reading"]
    return Table("robust", "Robust accuracy (%) by attack and query budget", t, _notes(runs))


def _decision(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    _check_unique(runs, ["model", "method_label", "level", "attack_label"], "decision")
    b_of = _budget_of(runs, budget)
    long = _with_readings(res, runs, b_of, rds)
    rows = ["model", "method_label", "level"]
    t = _order_readings(_pivot(long, rows, ["attack_label", "reading"]), rds)
    _insert_acc(t, runs, rows)
    t.index.names = ["Model", "Method", "Drop"]
    t.columns.names = ["Attack", "Reading"]
    qs = sorted(set(b_of.values()))
    return Table("decision", f"Robust accuracy (%) under decision-based attacks at {'/'.join(map(str, qs))} queries",
                 t, _notes(runs))


def _strength(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = runs[runs.family != "none"].copy()
    if len(runs) == 0:
        raise ValueError("table 'strength' needs defended runs (input/feature noise)")
    runs = label_runs(runs)
    strength = pd.Series("", index=runs.index)
    for _, g in runs.groupby("attack_name"):
        varying = varying_params(g.params)
        parts = (g.params.map(lambda p, keys=varying: params_text(p, keys)) if varying
                 else pd.Series("", index=g.index))
        if g.eps.nunique() > 1:
            parts = g.eps.map(lambda e: f"eps={e:g}") + (", " + parts if varying else "")
        strength[g.index] = parts
    runs["strength"] = strength
    _check_unique(runs, ["attack_name", "strength", "model", "level", "method_label"], "strength")
    b_of = _budget_of(runs, budget)
    long = _with_readings(res, runs, b_of, rds)
    t = _order_readings(_pivot(long, ["attack_name", "strength"], ["model", "level", "method_label", "reading"]), rds)
    t.index.names = ["Attack", "Strength"]
    t.columns.names = ["Model", "Drop", "Method", "Reading"]
    qs = sorted(set(b_of.values()))
    return Table("strength", f"Robust accuracy (%) as the attack strength varies ({'/'.join(map(str, qs))} queries)",
                 t, _notes(runs))


def _layer(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = runs[runs.family.isin(["feature", "input"])].copy()
    if len(runs) == 0:
        raise ValueError("table 'layer' needs feature-noise runs (one per layer)")
    runs = label_runs(runs)
    runs["layer"] = runs.layers + runs.level.map(lambda lv: f" ({lv})" if lv else "")
    if runs.level.nunique() == 1:
        runs["layer"] = runs.layers
    _check_unique(runs, ["model", "layer", "attack_label"], "layer")
    b_of = _budget_of(runs, budget)
    long = _with_readings(res, runs, b_of, rds)
    t = _order_readings(_pivot(long, ["model", "layer"], ["attack_label", "reading"]), rds)
    _insert_acc(t, runs, ["model", "layer"])
    t.index.names = ["Model", "Layer"]
    t.columns.names = ["Attack", "Reading"]
    qs = sorted(set(b_of.values()))
    return Table("layer", f"Robust accuracy (%) with noise at one layer ({'/'.join(map(str, qs))} queries)", t,
                 _notes(runs))


def _eot(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = runs.copy()
    runs["attack_base"] = runs.attack + runs.norm.map(lambda n: " (l2)" if n == "l2" else "")
    _check_unique(runs, ["attack_base", "method_label", "level", "model", "eot"], "eot")
    long = _per_budget(res, runs, bs, rds)
    long["setting"] = [f"M={m} QC={b}" for m, b in zip(long.eot, long.B)]
    order = sorted(long.setting.unique(), key=lambda s: (int(s.split()[0][2:]), int(s.split()[1][3:])))
    t = _pivot(long, ["attack_base", "method_label", "level"], ["model", "setting", "reading"])
    models = list(runs.model.unique())
    acc = runs.groupby(["attack_base", "method_label", "level", "model"], sort=False).clean_acc.mean().unstack("model")
    for m in models:
        t[(m, "Acc", "")] = acc[m].reindex(t.index) * 100
    t = t.reindex(columns=[(m, s, r) for m in models for s in ["Acc", *order] for r in ["", *rds]
                           if (m, s, r) in t.columns])
    t.index.names = ["Attack", "Method", "Drop"]
    t.columns.names = ["Model", "Setting", "Reading"]
    return Table("eot", "Robust accuracy (%) under EOT attacks (M forwards per query; QC = query budget)", t,
                 _notes(runs))


def _lucky(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = runs[runs.verify == 1]
    if len(runs) == 0:
        raise ValueError("table 'lucky' needs runs verified by a single forward (verify: 1 in the study)")
    runs = label_runs(runs)
    _check_unique(runs, ["model", "method_label", "level", "attack_label"], "lucky")
    long = _per_budget(res, runs, bs, rds)
    long["N"] = long.B.map(lambda b: f"N={b}")
    rows = ["model", "method_label", "level"]
    t = _pivot(long, rows, ["attack_label", "N", "reading"])
    t = t.reindex(columns=sorted(t.columns, key=lambda c: (c[0], int(c[1][2:]), list(rds).index(c[2]))))
    _insert_acc(t, runs, rows)
    t.index.names = ["Model", "Method", "Drop"]
    t.columns.names = ["Attack", "Budget", "Reading"]
    return Table("lucky", "Robust accuracy (%) when one forward decides success (verify=1, 'lucky' attacks)", t,
                 _notes(runs))


def _runs(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    t = runs[["run_id", "model", "method_label", "level", "sigma", "attack_label", "norm", "eps", "eot", "budget",
              "verify", "check", "output", "n", "n_expected", "clean_acc", "clean_acc_expected"]].copy()
    t["clean_acc"] = t.clean_acc * 100
    t["clean_acc_expected"] = t.clean_acc_expected * 100
    t["sigma"] = t.sigma.map(lambda v: "–" if v is None or math.isnan(v) else f"{v:.4g}")
    for b in bs:
        sel = runs[runs.budget >= b]
        for rd in rds:
            t[f"robust@{b} {rd}"] = _robust_at(res, sel, {rid: b for rid in sel.run_id}, rd).reindex(t.index)
    by_run = dict(tuple(res.samples.groupby("run_id")))
    t["queries_median"] = [
        float(g.queries[g.success].median()) if (g := by_run.get(r)) is not None and g.success.any() else float("nan")
        for r in runs.run_id]
    t["lucky"] = [int((g.success & ~(g.p_wrong > 0.5)).sum()) if (g := by_run.get(r)) is not None
                  and not g.p_wrong[g.success].isna().any() else None for r in runs.run_id]
    t = t.rename(columns={"method_label": "method", "attack_label": "attack", "clean_acc": "Acc",
                          "clean_acc_expected": "E[Acc]"})
    t = t.set_index("run_id")
    return Table("runs", "All runs (robust accuracy in %, median queries of successful attacks; lucky = broken by "
                 "the check but misclassified in at most half of the re-evaluation forwards)", t, _notes(runs))


def detection_metrics(g: pd.DataFrame) -> dict[str, float]:
    """Stateful-detector figures (:func:`rfd.blackbox.stateful.detection_figures`) of one run's samples ``g`` over
    its attacked (clean-correct) images; NaN without a detector."""
    att = g[g.clean_correct]
    if len(att) == 0 or att.flagged.isna().any():
        return {"detected": math.nan, "first_flag": math.nan, "flagged": math.nan, "queries": math.nan}
    return detection_figures(att.flagged.tolist(), att.first_flag.tolist(), att.queries.tolist())


def _detection(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    _check_unique(runs, ["model", "method_label", "level", "attack_label"], "detection")
    budget_of = _budget_of(runs, budget)
    by_run = dict(tuple(res.samples.groupby("run_id")))
    recs = []
    for _, r in runs.iterrows():
        g = by_run.get(r.run_id, res.samples.iloc[:0])
        rec = {"model": r.model, "method_label": r.method_label, "level": r.level, "attack_label": r.attack_label}
        for rd in rds:
            rec[f"robust {rd}"] = robust_estimate_of(g, budget_of[r.run_id], rd)
        m = detection_metrics(g)
        rec.update({"detected %": m["detected"], "first flag (median q)": m["first_flag"],
                    "queries flagged %": m["flagged"], "queries (mean, rejected incl.)": m["queries"]})
        recs.append(rec)
    long = pd.DataFrame(recs)
    t = long.set_index(["model", "method_label", "level", "attack_label"])
    t.index.names = ["Model", "Method", "Drop", "Attack"]
    return Table("detection", "Stateful detection: robust accuracy (%) and detector figures per run (detected = "
                 "attacked images flagged at least once; first flag = median query number of the first flag)", t,
                 _notes(runs))


# A layout: (results, labelled runs, budgets shown as columns, the single budget or None, readings) -> Table.
Layout = Callable[[Results, pd.DataFrame, list[int], int | None, Sequence[str]], Table]
LAYOUTS: dict[str, Layout] = {"robust": _robust, "decision": _decision, "strength": _strength, "layer": _layer,
                              "eot": _eot, "lucky": _lucky, "runs": _runs, "detection": _detection}


def build_table(res: Results, kind: str, *, budgets: Sequence[int] | None = None, budget: int | None = None,
                readings: Sequence[str] = DEFAULT_READINGS) -> Table:
    """Compute table ``kind`` (or a paper table number) from ``res``.

    Args:
        budgets: budgets shown as columns (robust, eot, lucky); default: the studies' checkpoints and each run's
            full budget.
        budget: the single budget of decision/strength/layer tables; default: each run's full budget.
        readings: readings of robust accuracy shown side by side (``paper``, ``strict``, ``expected``).
    """
    kind = resolve_kind(kind)
    if len(res.runs) == 0:
        raise ValueError("the results store holds no runs yet")
    rds = [check_reading(r) for r in readings]
    if not rds:
        raise ValueError("readings: give at least one of paper, strict, expected")
    runs = label_runs(res.runs)
    bs = sorted(int(b) for b in (budgets or default_budgets(res)))
    table = LAYOUTS[kind](res, runs, bs, budget, rds)
    flags = sanity_flags(res)
    if flags:  # a count per flag here; every flag with its numbers and advice: rfd check
        counts = {c: sum(f.code == c for f in flags) for c in dict.fromkeys(f.code for f in flags)}
        table.notes.append("sanity flags (rfd check STORE lists each with what to try next): " + "; ".join(
            f"{c}: runs {', '.join(str(f.run_id) for f in flags if f.code == c)}" for c in counts))
    return table
