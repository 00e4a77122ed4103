"""Evaluation studies: specs (YAML), the runner with its SQLite results store (resume, shards, merge, Ray),
tables and plots in the paper's layouts, the demo and the paper presets.

Modules, one idea each: ``specs`` (study, model and attack specs), ``schema`` (the YAML file), ``cells`` (a
study's runs), ``plan`` (what is left to run), ``executors``, ``runner`` (the loop), ``progress``, ``summary``,
``worker`` (one chunk), ``store`` (the only SQL), ``results`` (store -> pandas), ``labels``, ``layouts``,
``render``, ``tables``, ``reporting``, ``plots``, ``compare``, ``sanity``, ``demo``, ``paper_presets``,
``reproduce``, ``estimate``, ``presets`` (eps), ``resources`` (models), ``merge``, ``ray_executor``.

Example::

    from rfd.eval import load_study, run_study, load_results, build_table, render

    study = load_study("study.yaml")
    run_study(study, "results.sqlite")          # run again after a crash: finished chunks are skipped
    table = build_table(load_results("results.sqlite"), "robust")
    print(render(table, "md"))
"""

from rfd.eval.cells import Cell, expand_cells
from rfd.eval.merge import MergeSummary, merge_stores
from rfd.eval.plan import Plan, Shard, parse_shard, plan_status, plan_study
from rfd.eval.results import Results, load_results, robust_accuracy, robust_curve
from rfd.eval.runner import run_study
from rfd.eval.schema import load_study, parse_study
from rfd.eval.specs import AttackSpec, ModelSpec, Study, StudyError
from rfd.eval.store import ResultStore, SampleRow, StoreConflict, StoreError
from rfd.eval.summary import RunSummary
from rfd.eval.tables import TABLE_KINDS, Table, build_table, render

__all__ = [
    "TABLE_KINDS",
    "AttackSpec",
    "Cell",
    "MergeSummary",
    "ModelSpec",
    "Plan",
    "ResultStore",
    "Results",
    "RunSummary",
    "SampleRow",
    "Shard",
    "StoreConflict",
    "StoreError",
    "Study",
    "StudyError",
    "Table",
    "build_table",
    "expand_cells",
    "load_results",
    "load_study",
    "merge_stores",
    "parse_shard",
    "parse_study",
    "plan_status",
    "plan_study",
    "render",
    "robust_accuracy",
    "robust_curve",
    "run_study",
]
