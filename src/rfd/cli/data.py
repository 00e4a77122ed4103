"""`rfd data`: list the datasets rfd reads and which of them are available here."""

from __future__ import annotations

import argparse

from rfd.cli.common import add_common, emit
from rfd.data.registry import DATASETS, dataset_status, list_datasets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="list datasets and whether their files are available",
        description="List the datasets rfd can load (Fashion-MNIST, the bundled eval/calib set, CIFAR-10 python "
        "batches, ImageFolder trees) with their splits, sizes and locations. Give a NAME and --path to check "
        "files somewhere else, e.g. `rfd data cifar10 --path ~/data/cifar-10-batches-py`.",
    )
    p.add_argument("name", nargs="?", choices=sorted(DATASETS), help="check only this dataset")
    p.add_argument("--path", default=None, help="folder to check for NAME (default: its standard location)")
    add_common(p, device=False)
    p.set_defaults(func=run)


def _text(rows: list[dict]) -> str:
    lines = []
    for d in rows:
        lines.append(f"{d['name']}: {d['description']}")
        for s in d["splits"]:
            state = {True: "available", False: "missing", None: "needs --path"}[s["available"]]
            size = f"{s['size']} images" if s["size"] is not None else ""
            where = s["path"] or ""
            lines.append(f"  {s['split']:<6} {state:<13} {size:<14} {where}")
            if s["available"] is False and s.get("reason"):
                lines.append(f"         {s['reason']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.path is not None:
            raise ValueError("--path needs a dataset NAME, e.g. `rfd data cifar10 --path DIR`")
        rows = list_datasets()
    else:
        e = DATASETS[args.name]
        rows = [{"name": e.name, "description": e.description, "needs_path": e.needs_path,
                 "splits": dataset_status(e.name, args.path)}]
    emit(args, {"datasets": rows}, _text(rows))
    return 0
