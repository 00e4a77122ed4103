"""`rfd models`: list registry models with size, checkpoint and clean accuracy on the bundled eval split."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from rfd.cli.common import add_common, emit, resolve_device
from rfd.models import create_model, evaluate_accuracy, get_entry, list_models

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list registry models with parameters and measured clean accuracy",
        description="List the registered reference models: parameter count, whether the shipped checkpoint is "
        "present, and clean accuracy measured now on the bundled eval split (1000 Fashion-MNIST test images). "
        "Any timm model can also be used where a model is asked for, as timm:NAME with --checkpoint.",
    )
    p.add_argument("--filter", default="*", help="shell pattern on names, e.g. 'fmnist-v*' (default: all)")
    p.add_argument("--no-accuracy", action="store_true", help="skip measuring clean accuracy")
    add_common(p)
    p.set_defaults(func=run)


def _describe(name: str, eval_set: Any, device: Any) -> dict[str, Any]:
    entry = get_entry(name)
    params = sum(p.numel() for p in entry.build().parameters())
    path = entry.checkpoint_path()
    present = path is not None and path.is_file()
    if entry.members:  # a model set: present when every member's weights are
        present = all((p := get_entry(m).checkpoint_path()) is not None and p.is_file() for m in entry.members)
    row: dict[str, Any] = {"name": name, "dataset": entry.dataset, "description": entry.description,
                           "parameters": params, "checkpoint": str(path) if path else None,
                           "checkpoint_present": present, "clean_accuracy": None, "note": None}
    if not present:
        row["note"] = f"checkpoint absent; train it with `rfd train {name} --out PATH`"
    elif eval_set is None:
        row["note"] = "accuracy not measured (--no-accuracy)"
    elif entry.dataset != "fashion-mnist":
        row["note"] = f"no bundled eval set for dataset {entry.dataset!r}"
    else:
        logger.info("measuring clean accuracy of %s on %s", name, eval_set.name)
        model = create_model(name, device=device)
        row["clean_accuracy"] = evaluate_accuracy(model, eval_set.images, eval_set.labels)
    return row


def run(args: argparse.Namespace) -> int:
    names = list_models(args.filter)
    if not names:
        raise ValueError(f"no registered model matches {args.filter!r}; registered: {', '.join(list_models())}")
    device = resolve_device(args.device)
    eval_set = None
    if not args.no_accuracy:
        from rfd.data.bundled import load_bundled

        eval_set = load_bundled("eval")
    rows = [_describe(n, eval_set, device) for n in names]
    lines = [f"{'model':<15} {'params':>9}  {'clean acc':>9}  description"]
    for r in rows:
        acc = f"{r['clean_accuracy']:.4f}" if r["clean_accuracy"] is not None else "-"
        lines.append(f"{r['name']:<15} {r['parameters']:>9,}  {acc:>9}  {r['description']}")
        if r["note"]:
            lines.append(f"{'':<15} {r['note']}")
    if eval_set is not None:
        lines.append(f"clean accuracy on {eval_set.name} ({len(eval_set)} images). Any timm model: --model timm:NAME")
    payload = {"eval_set": {"name": eval_set.name, "size": len(eval_set)} if eval_set is not None else None,
               "models": rows}
    emit(args, payload, "\n".join(lines))
    return 0
