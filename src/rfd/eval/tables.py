"""The paper's tables, computed from a results store (never from logs): :func:`build_table` lays a kind out
(:mod:`rfd.eval.layouts`), :func:`render` writes it as Markdown, CSV or LaTeX (:mod:`rfd.eval.render`).

Kinds (paper tables in brackets):

* ``robust`` [1, 2, 4, 9]: robust accuracy by model / method / noise level, one column per attack and budget,
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

from rfd.eval.layouts import DEFAULT_READINGS, PAPER_TABLES, TABLE_KINDS, Table, build_table, resolve_kind
from rfd.eval.render import render, to_csv, to_latex, to_markdown

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
