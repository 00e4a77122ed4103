"""Evaluation studies: specs (YAML), the runner with its SQLite results store (resume, shards, merge, Ray),
tables and plots in the paper's layouts, the demo and the paper presets.

Example::

    from rfd.eval import load_study, run_study, load_results, build_table, render

    study = load_study("study.yaml")
    run_study(study, "results.sqlite")          # run again after a crash: finished chunks are skipped
    table = build_table(load_results("results.sqlite"), "robust")
    print(render(table, "md"))
"""

from rfd.eval.merge import MergeSummary, merge_stores
from rfd.eval.results import Results, load_results, robust_accuracy, robust_curve
from rfd.eval.runner import Plan, RunSummary, Shard, parse_shard, plan_status, plan_study, run_study
from rfd.eval.store import ResultStore, SampleRow, StoreConflict, StoreError
from rfd.eval.study import (
                            AttackSetting,
                            Cell,
                            DataSpec,
                            DefenseSetting,
                            ModelSpec,
                            Study,
                            StudyError,
                            expand_cells,
                            load_study,
                            parse_study,
)
from rfd.eval.tables import TABLE_KINDS, Table, build_table, render

__all__ = [
                            "TABLE_KINDS",
                            "AttackSetting",
                            "Cell",
                            "DataSpec",
                            "DefenseSetting",
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
