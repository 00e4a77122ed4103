"""`rfd merge OUT.sqlite A.sqlite B.sqlite ...`: combine results stores (e.g. the shards of a study)."""

from __future__ import annotations

import argparse

from rfd.cli.common import CLIError, add_common, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge", help="combine results stores (shards of a study) into one",
        description="Copy every run, calibration and finished chunk of the input stores into OUT (created if "
        "missing). Runs match by content key; identical duplicates are stored once, conflicting ones are an error.")
    p.add_argument("out", help="output store (SQLite)")
    p.add_argument("inputs", nargs="+", help="input stores")
    add_common(p, device=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rfd.eval.merge import merge_stores
    from rfd.eval.store import StoreError

    try:
        s = merge_stores(args.out, args.inputs)
    except StoreError as exc:
        raise CLIError(f"cannot merge: {exc}") from exc
    emit(args, s.to_dict(),
         f"merged {len(s.inputs)} store(s) into {s.out}: {s.chunks_added} chunks ({s.samples_added} samples) added, "
         f"{s.chunks_identical} identical duplicates skipped; {s.runs} runs, {s.calibrations} calibrations in total")
    return 0
