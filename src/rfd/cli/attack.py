"""`rfd attack --model M --attack NAME --norm linf|l2 --budget B --n N`: attack a (defended) model through a
black box on a class-balanced, seeded selection of the bundled evaluation images and report robust accuracy."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfd.cli.common import (
    CLIError,
    add_common,
    add_fast_arg,
    add_output_arg,
    emit,
    fast_from_args,
    parse_key_values,
    resolve_device,
)
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.defense_args import add_defense_args, defend_from_args
from rfd.cli.model_args import add_model_args, model_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from rfd.attacks import list_attacks
    from rfd.eval.presets import EPS_PRESETS

    presets = "; ".join(f"{k}: linf {v.linf:g}, l2 {v.l2:g}" for k, v in EPS_PRESETS.items())
    p = sub.add_parser(
        "attack", help="run one attack on N evaluation images and report robust accuracy",
        description="Attack a (defended) model through a black box that counts every query, on a class-balanced "
        "seeded selection of N images of the evaluation split (default: the bundled one). A sample counts as broken only when the "
        "majority of --verify forwards (not charged, unless --check charged) misclassify an image inside the "
        "eps-ball. Each final image is then classified again with --reevaluate fresh forwards, and robust "
        "accuracy is read three ways: paper (the check passed), strict (the final image is also misclassified in "
        "more than half of the re-evaluation forwards) and expected (the chance the model is right on the final "
        "image), each with a 95%% interval, at every --checkpoints budget from one run.",
    )
    add_model_args(p)
    add_data_args(p)
    add_defense_args(p)
    g = p.add_argument_group("served model (rfd serve)")
    g.add_argument("--remote", default=None, metavar="URL",
                   help="attack the model served at URL by `rfd serve` instead of a local one; the defense lives in "
                   "the server (leave --defense none); --model still names the model, for the eps preset and the "
                   "image shape")
    g.add_argument("--api-key", default=None, help="API key for --remote, charged for every query (and for the "
                   "uncounted success checks unless --verify-api-key is given)")
    g.add_argument("--verify-api-key", default=None,
                   help="second API key for the success checks, so the --api-key count equals the attack's queries")
    p.add_argument("--attack", required=True, choices=list_attacks(), help="attack name")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat model norm (default linf)")
    p.add_argument("--eps", type=float, default=None,
                   help=f"radius in pixel units of [0,1] images (default: the dataset preset; {presets})")
    p.add_argument("--budget", type=int, required=True, help="queries per image (EOT repetitions included)")
    p.add_argument("--checkpoints", default=None, metavar="B1,B2,...",
                   help="also report robust accuracy at these budgets (each <= --budget), e.g. 100,1000")
    p.add_argument("--n", type=int, required=True, help="number of images (class-balanced, at most the split's size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image selection and the attack (default 0)")
    p.add_argument("--verify", type=int, default=9,
                   help="votes per success check, majority decides, voting stops once decided (default 9; 1 = "
                   "lucky mode; 100 = the strict check, the strict reading's test as the stop rule)")
    p.add_argument("--check", choices=["free", "charged"], default="free",
                   help="success checks free (the paper, default) or charged: each vote costs the image one query")
    p.add_argument("--reevaluate", type=int, default=100, metavar="R",
                   help="fresh uncounted forwards that classify each final image again (strict and expected "
                   "readings; default 100)")
    p.add_argument("--eot", type=int, default=1, help="forwards averaged per loss evaluation; each one is a query")
    add_output_arg(p, what="what the attacker sees of each answer", default=None,
                   default_text="logits; with --remote, the server's setting")
    g = p.add_argument_group("stateful detector (query history)")
    g.add_argument("--detector", default=None, metavar="SPEC",
                   help="a query-history detector in front of the model, e.g. blacklight, knn, "
                   "blacklight:action=ban (one account per attacked image); OARS, the adaptive attack against "
                   "it: --attack-arg oars=true (square, nes, hsja)")
    g.add_argument("--detector-seed", type=int, default=0,
                   help="the detector's secret salt seed (Blacklight; default 0)")
    p.add_argument("--attack-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="an attack setting of its config, repeatable, e.g. --attack-arg p_init=0.1 (VALUE as JSON)")
    p.add_argument("--output-images", default=None, metavar="PATH",
                   help="save clean and final images, labels, success and queries (.safetensors)")
    add_fast_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def _parse_checkpoints(text: str | None, budget: int) -> list[int]:
    if not text:
        return []
    try:
        cps = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise CLIError(f"--checkpoints must be comma-separated integers, got {text!r}") from None
    bad = [c for c in cps if not 1 <= c <= budget]
    if bad:
        raise CLIError(f"--checkpoints must lie in [1, --budget={budget}], got {bad}")
    return cps


def make_blackbox(args: argparse.Namespace, model: nn.Module, *, access: str, budget: int) -> Any:
    """The black box the attack queries. One place to build it, so another backend (a remote endpoint) can be
    chosen here from the flags."""
    from rfd.blackbox import LocalBlackBox, RemoteBlackBox

    if getattr(args, "remote", None):
        if not args.api_key:
            raise CLIError("--remote needs --api-key")
        if args.defense != "none":
            raise CLIError("--defense applies to a local model; with --remote the defense lives in the server")
        if args.fast is not None:
            raise CLIError("--fast applies to a local model; with --remote the server forwards")
        bb = RemoteBlackBox(args.remote, args.api_key, access=access, output=args.output,  # type: ignore[arg-type]
                            budget=budget, verify=args.verify, verify_api_key=args.verify_api_key, check=args.check,
                            reevaluate=args.reevaluate)
        if bb.info["model"] != args.model:
            log.warning("--model is %s but the server at %s serves %s", args.model, args.remote, bb.info["model"])
        return bb
    return LocalBlackBox(model, access=access, output=args.output or "logits",  # type: ignore[arg-type]
                         budget=budget, verify=args.verify, check=args.check, reevaluate=args.reevaluate,
                         fast=fast_from_args(args))


def _with_detector(args: argparse.Namespace, bb: Any, model: nn.Module, calib: torch.Tensor) -> Any:
    """``bb`` behind the --detector (kNN thresholds from the calibration images, the clean model's features)."""
    from rfd.blackbox.stateful import StatefulBlackBox
    from rfd.detect import build_detector, parse_detector

    try:
        spec = parse_detector(args.detector)
    except ValueError as exc:
        raise CLIError(f"--detector: {exc}") from None
    return StatefulBlackBox(bb, build_detector(spec, seed=args.detector_seed, model=model, benign=calib))


def run(args: argparse.Namespace) -> int:
    from rfd.attacks import make_attack
    from rfd.blackbox import RemoteError
    from rfd.blackbox.stateful import detection_figures
    from rfd.data import select_data
    from rfd.eval.presets import model_eps

    for flag in ("budget", "verify", "eot", "reevaluate"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    checkpoints = _parse_checkpoints(args.checkpoints, args.budget)
    device = resolve_device(args.device)
    if args.eps is None:
        eps, dataset = model_eps(args.model, args.norm)
        log.info("eps %g: the %s preset for %s", eps, dataset, args.norm)
    else:
        eps = args.eps
    attack = make_attack(args.attack, norm=args.norm, eps=eps, budget=args.budget, seed=args.seed, eot=args.eot,
                         **parse_key_values(args.attack_arg, "--attack-arg"))
    data = data_spec_from_args(args)
    model = model_from_args(args, device)
    selected = select_data(data, args.n, args.seed, input_shape=getattr(model, "input_shape", None))
    x, y, indices, data_name = selected.images, selected.labels, selected.dataset_index, selected.name
    defended, info = defend_from_args(args, model, data, indices)
    try:
        bb = make_blackbox(args, defended, access=attack.blackbox_access(), budget=args.budget)
        if args.detector:
            bb = _with_detector(args, bb, model, selected.calib_images.to(device))
        t0 = time.perf_counter()
        res = attack.run(bb, x, y, progress=not args.quiet)
        elapsed = time.perf_counter() - t0
    except RemoteError as exc:  # the server refused (budget, rate limit) or went away
        raise CLIError(str(exc)) from exc
    finally:
        defended.remove()
    summary = res.summary(checkpoints)
    payload = {
        "model": args.model, "data": data_name, "attack": args.attack, "norm": args.norm, "eps": eps,
        "budget": args.budget, "seed": args.seed, "verify": args.verify, "check": args.check,
        "reevaluate": args.reevaluate, "eot": args.eot, "output": str(bb.output),
        "clean_accuracy": summary["clean_accuracy"], "expected_clean_accuracy": summary["expected_clean_accuracy"],
        "robust_accuracy": summary["robust_accuracy"], "readings": summary["readings"], "lucky": summary["lucky"],
        "checks": summary["checks"], "check_forwards": summary["check_forwards"],
        "reevaluation_forwards": summary["reevaluation_forwards"],
        "success_rate": summary["success_rate"], "queries_mean": summary["queries_mean"],
        "queries_median": summary["queries_median"], "n": res.n, "sigma": info["sigma"],
        "elapsed_s": elapsed, "verification_forwards": res.verification_forwards, "attack_config": res.config,
        "defense": info,
    }
    if args.detector:
        att = res.clean_correct
        det = detection_figures(bb.flagged[att].tolist(), bb.first_flag[att].tolist(), bb.queries[att].tolist())
        payload["detector"] = {"spec": str(bb.detector.spec), **det}
    if args.remote:  # what the server says about itself, and the images it was sent (queries + success checks)
        payload["remote"] = {"url": args.remote, "server": bb.info, "images_sent": bb.sent}
    if args.output_images:
        _save_images(Path(args.output_images), x, y, indices, res)
        payload["output_images"] = args.output_images
    sigma = "" if info["sigma"] is None else f" sigma {info['sigma']:.4g}"
    lines = [(f"{args.attack} {args.norm} eps {eps:g} on {args.model} + {info['family']}{sigma}, {res.n} images, "
              f"output {bb.output}, check {args.verify} votes ({args.check}), re-evaluation {args.reevaluate} forwards:"),
             (f"  clean accuracy {100 * summary['clean_accuracy']:.1f}% (majority vote), "
              f"{100 * summary['expected_clean_accuracy']:.1f}% expected per forward")]
    for b in summary["robust_accuracy"]:
        cells = "; ".join(f"{r} {res.robust_estimate(b, r).percent()}" for r in ("paper", "strict", "expected"))
        lines.append(f"  robust accuracy (%) at {b} queries: {cells}")
    lines.append(f"  {int(res.success.sum())} broken by the check, {summary['lucky']} of them lucky (misclassified "
                 f"in at most half of the re-evaluation forwards); queries median {summary['queries_median']:.1f}; "
                 f"{summary['checks']} checks, {summary['check_forwards']} check forwards; {elapsed:.1f} s")
    if args.detector:
        d = payload["detector"]
        lines.append(f"  detector {d['spec']}: {d['detected']:.0f}% of attacked images flagged (first flag at query "
                     f"{d['first_flag']:.0f}, median), {d['flagged']:.1f}% of their queries flagged")
    text = "\n".join(lines)
    emit(args, payload, text)
    return 0


def _save_images(path: Path, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, res: Any) -> None:
    from safetensors.torch import save_file

    if path.suffix != ".safetensors":
        raise CLIError(f"--output-images must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clean": x.contiguous(), "adversarial": res.x_adv.contiguous(), "labels": y.contiguous(),
               "eval_index": indices.contiguous(), "success": res.success.contiguous(),
               "queries": res.queries.contiguous()}, str(path),
              metadata={"attack": res.attack, "norm": res.norm, "eps": str(res.eps), "budget": str(res.budget)})
