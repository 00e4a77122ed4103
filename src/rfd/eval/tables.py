"""The paper's table layouts, computed from a results store (never from logs).

Kinds (paper tables in brackets):

* ``robust`` [1, 2, 9]: robust accuracy by model / method / noise level, one column per attack and budget,
  with clean accuracy ("Acc");
* ``decision`` [5, 10, 11]: one column per (decision-based) attack at the full budget, with Acc;
* ``strength`` [3]: rows attack x strength setting (the attack parameter that varies), columns model x noise
  level x method;
* ``layer`` [6, 14]: rows model x noised layer, one column per attack;
* ``eot`` [7]: rows attack x method, columns model x (EOT M, query budget), with Acc;
* ``lucky`` [15]: runs verified with a single forward (verify=1): rows model x method, columns budgets;
* ``runs``: one row per run with every setting (a flat overview).

Every robust accuracy is shown under the readings asked for (default ``paper`` and ``strict`` side by side, a
column level "Reading"; :mod:`rfd.attacks.readings` defines them) with its 95% interval: ``62.0 [55.1, 68.4]``.
All values are percentages. "Acc" is the fraction of the evaluated images that the (defended) model classifies
correctly by majority vote, "E[Acc]" the expected accuracy of one forward on them (from the re-evaluation), each
averaged over the runs of a row.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from rfd.attacks.readings import check_reading
from rfd.eval.results import LEGACY_SEEDING, Results, default_budgets, level_label, robust_estimate_of
from rfd.stats import Estimate

__all__ = [
    "DEFAULT_READINGS",
    "PAPER_TABLES",
    "TABLE_KINDS",
    "Table",
    "build_table",
    "render",
    "resolve_kind",
    "to_csv",
    "to_latex",
    "to_markdown",
]

log = logging.getLogger(__name__)

DEFAULT_READINGS = ("paper", "strict")
TABLE_KINDS = ("robust", "decision", "strength", "layer", "eot", "lucky", "runs")
PAPER_TABLES = {"1": "robust", "2": "robust", "9": "robust", "5": "decision", "10": "decision", "11": "decision",
                "3": "strength", "6": "layer", "14": "layer", "7": "eot", "15": "lucky"}


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


# ---------------------------------------------------------------------------------------------- labelling
def _params_text(params: str, keys: Sequence[str] | None = None) -> str:
    d = json.loads(params)
    return ", ".join(f"{k}={d[k]}" for k in sorted(d) if keys is None or k in keys)


def _label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``level``, ``method_label`` and ``attack_label``: the settings that vary within the table are
    appended, so two different runs never share a cell."""
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
        for col, fmt in (("norm", "{}"), ("eps", "eps={:g}"), ("eot", "M={}"), ("verify", "k={}")):
            if g[col].nunique() > 1:
                parts.append(g[col].map(fmt.format))
        if g.params.nunique() > 1:
            varying = _varying_params(g.params)
            parts.append(g.params.map(lambda p, keys=varying: _params_text(p, keys)))
        if parts:
            extra = parts[0]
            for p in parts[1:]:
                extra = extra + " " + p
            attack[g.index] = g.attack + " " + extra
        elif (g.norm == "l2").all():
            attack[g.index] = g.attack + " (l2)"
    runs["attack_label"] = attack
    return runs


def _varying_params(params: pd.Series) -> list[str]:
    dicts = [json.loads(p) for p in params]
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k)) for d in dicts}) > 1]


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


# ------------------------------------------------------------------------------------------------- kinds
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
    runs = _label_runs(res.runs)
    bs = sorted(int(b) for b in (budgets or default_budgets(res)))
    fn = {"robust": _robust, "decision": _decision, "strength": _strength, "layer": _layer, "eot": _eot,
          "lucky": _lucky, "runs": _runs}[kind]
    table = fn(res, runs, bs, budget, rds)
    from rfd.eval.sanity import sanity_flags

    flags = sanity_flags(res)
    if flags:  # a count per flag here; every flag with its numbers and advice: rfd check
        counts = {c: sum(f.code == c for f in flags) for c in dict.fromkeys(f.code for f in flags)}
        table.notes.append("sanity flags (rfd check STORE lists each with what to try next): " + "; ".join(
            f"{c}: runs {', '.join(str(f.run_id) for f in flags if f.code == c)}" for c in counts))
    return table


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


def _robust(res: Results, runs: pd.DataFrame, bs: list[int], budget: int | None, rds: Sequence[str]) -> Table:
    runs = _label_runs(runs[(runs.verify > 1) | (runs.verify == runs.verify.max())])
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
    runs = _label_runs(runs)
    strength = pd.Series("", index=runs.index)
    for _, g in runs.groupby("attack_name"):
        varying = _varying_params(g.params)
        parts = (g.params.map(lambda p, keys=varying: _params_text(p, keys)) if varying
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
    runs = _label_runs(runs)
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
    runs = _label_runs(runs)
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
    t = runs[["run_id", "model", "method_label", "level", "sigma", "attack", "norm", "eps", "eot", "budget",
              "verify", "check", "n", "n_expected", "clean_acc", "clean_acc_expected"]].copy()
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
    t = t.rename(columns={"method_label": "method", "clean_acc": "Acc", "clean_acc_expected": "E[Acc]"})
    t = t.set_index("run_id")
    return Table("runs", "All runs (robust accuracy in %, median queries of successful attacks; lucky = broken by "
                 "the check but misclassified in at most half of the re-evaluation forwards)", t, _notes(runs))


# ---------------------------------------------------------------------------------------------- renderers
def _fmt(v: object, digits: int = 1) -> str:
    if isinstance(v, Estimate):
        return v.percent(digits)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def _flat_header(frame: pd.DataFrame) -> list[str]:
    cols = []
    for c in frame.columns:
        if isinstance(c, tuple):
            cols.append(" ".join(str(x) for x in c if str(x) != ""))
        else:
            cols.append(str(c))
    return cols


def _body(frame: pd.DataFrame, digits: int, blank_repeats: bool = True) -> tuple[list[str], list[list[str]]]:
    """Index columns then value columns, as strings; repeated leading index values blanked (paper layout)."""
    names = [str(n) if n is not None else "" for n in frame.index.names]
    rows: list[list[str]] = []
    prev: tuple[object, ...] = ()
    for idx, vals in zip(frame.index, frame.itertuples(index=False)):
        key = idx if isinstance(idx, tuple) else (idx,)
        cells = []
        for i, k in enumerate(key):
            same_prefix = blank_repeats and len(prev) > i and prev[: i + 1] == key[: i + 1]
            cells.append("" if same_prefix else _fmt(k))
        prev = key
        rows.append(cells + [_fmt(v, digits) for v in vals])
    return names, rows


def to_markdown(table: Table, *, digits: int = 1) -> str:
    names, rows = _body(table.frame, digits)
    header = names + _flat_header(table.frame)
    align = ["---"] * len(names) + ["---:"] * (len(header) - len(names))
    lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One column per value; an estimate's column is followed by its interval ends ("... low", "... high")."""
    frame = table.frame.copy()
    frame.columns = _flat_header(frame)
    out = pd.DataFrame(index=frame.index)
    for c in frame.columns:
        col = frame[c]
        if any(isinstance(v, Estimate) for v in col):
            for part in ("value", "low", "high"):
                name = c if part == "value" else f"{c} {part}"
                out[name] = [100 * getattr(v, part) if isinstance(v, Estimate) else float("nan") for v in col]
        else:
            out[c] = col
    return out.reset_index().to_csv(index=False)


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("≈", r"$\approx$"), ("σ", r"$\sigma$"), ("–", "--")):
        s = s.replace(a, b)
    return s


def to_latex(table: Table, *, digits: int = 1) -> str:
    """booktabs tabular; two-level column headers become \\multicolumn groups."""
    frame = table.frame
    names, rows = _body(frame, digits)
    ncol = len(names) + frame.shape[1]
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(table.title)}}}",
             f"\\begin{{tabular}}{{{'l' * len(names)}{'r' * frame.shape[1]}}}", r"\toprule"]
    if isinstance(frame.columns, pd.MultiIndex) and frame.columns.nlevels >= 2:
        top = [str(c[0]) for c in frame.columns]
        groups: list[tuple[str, int]] = []
        for t in top:
            if groups and groups[-1][0] == t:
                groups[-1] = (t, groups[-1][1] + 1)
            else:
                groups.append((t, 1))
        cells = [""] * len(names)
        rules = []
        col = len(names) + 1
        for t, k in groups:
            cells.append(f"\\multicolumn{{{k}}}{{c}}{{{_tex(t)}}}" if k > 1 else _tex(t))
            if k > 1:
                rules.append(f"\\cmidrule(lr){{{col}-{col + k - 1}}}")
            col += k
        lines.append(" & ".join(cells) + r" \\")
        if rules:
            lines.append(" ".join(rules))
        sub = [" ".join(str(x) for x in c[1:] if str(x) != "") for c in frame.columns]
        lines.append(" & ".join([_tex(n) for n in names] + [_tex(s) for s in sub]) + r" \\")
    else:
        lines.append(" & ".join([_tex(n) for n in names] + [_tex(str(c)) for c in frame.columns]) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines.append(r"\par\footnotesize " + _tex(" ".join(table.notes)))
    lines.append(r"\end{table}")
    assert ncol > 0
    return "\n".join(lines) + "\n"


def render(table: Table, fmt: str, *, digits: int = 1) -> str:
    """Text of ``table`` in ``fmt``: md, csv or latex."""
    if fmt == "md":
        return to_markdown(table, digits=digits)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table, digits=digits)
    raise ValueError(f"unknown format {fmt!r} (allowed: md, csv, latex)")
