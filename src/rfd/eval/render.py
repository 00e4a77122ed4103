"""Text formats of a :class:`~rfd.eval.layouts.Table`: Markdown, CSV and LaTeX (booktabs). Estimates print as
``62.0 [55.1, 68.4]`` (percent, 95% interval); in CSV an estimate's column is followed by its interval ends."""

from __future__ import annotations

import math

import pandas as pd

from rfd.eval.layouts import Table
from rfd.stats import Estimate

__all__ = ["render", "to_csv", "to_latex", "to_markdown"]


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
