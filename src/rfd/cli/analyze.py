"""`rfd analyze ratio|theorem1|magnitude|approx-error|layers --model M --out DIR`: the paper's analysis;
`rfd analyze agreement STORE --model M --prediction ratio.json ...`: its layer predictions against a per-layer study.

Each analysis writes PNG figures plus the numbers as JSON and CSV into --out and prints a summary (--json: one
JSON object). All logic lives in :mod:`rfd.analysis`; this module parses flags, loads model and data, calls it.
"""

from __future__ import annotations

import argparse
from typing import Any

from rfd.cli.common import CLIError, add_common, emit, resolve_device
from rfd.cli.data_args import add_data_args, data_spec_from_args
from rfd.cli.model_args import add_model_args, model_from_args

__all__ = ["ANALYSES", "register"]

ANALYSES = ("ratio", "theorem1", "magnitude", "approx-error", "layers", "agreement", "detectors")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="gradient-norm ratios, Theorem 1, robustness magnitude, first-order error, layer ranking",
        description="The paper's analysis of randomized feature noise (Sections 3.3-3.5, Appendix C and F): why "
        "noise on hidden features misleads query-based attackers, and at which layer to put it. Each analysis "
        "writes PNG figures, JSON and CSV into --out. Margin loss L = f_y - max_{i!=y} f_i; for the model split "
        "at layer h, ratio = ||dL/dh||^2 / ||dL/dx||^2 (x in [0,1] pixels). Layers: 'input', 'penultimate' "
        "(input of the final classifier layer) or names from model.named_modules(); default: the main blocks.",
    )
    a = p.add_subparsers(dest="analysis", metavar="ANALYSIS")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    q = a.add_parser("ratio", help="gradient-norm ratio per layer, clean vs after one attack step (Figure 1)",
                     description="Distribution over images of ||dL/dh||^2 / ||dL/dx||^2 per layer, on the clean "
                     "images and after one descent step of the margin loss: x' = clip(x - size * g/||g||_2) "
                     "(--step-norm l2) or clip(x - size * sign(g)) (linf), g = dL/dx.")
    _shared(q, n_default=200)
    _step_args(q)
    q.set_defaults(func=run_ratio)

    q = a.add_parser("theorem1", help="Theorem 1's predicted P(attacker misled) vs the rate measured through "
                     "the defended model", description="For each image, layer, defense variance nu and attacker "
                     "variance mu: the predicted probability 1/pi*arctan(-(2 nu r / mu)^-0.5) + 1/2 and the "
                     "measured fraction of proposals u ~ N(0, mu I) whose accept/reject decision through the "
                     "randomized model (two independent noise draws) differs from the clean model's. nu comes from "
                     "--nu (shared grid) or, by default, --nu-scale times each layer's sigma^2 calibrated to --drop.")
    _shared(q, n_default=10)
    _nu_args(q)
    q.add_argument("--mu", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3],
                   help="attacker proposal variances per pixel (pixel units^2; default 1e-5 1e-4 1e-3)")
    q.add_argument("--draws", type=int, default=200, help="proposals per image and cell (default 200)")
    q.set_defaults(func=run_theorem1)

    q = a.add_parser("magnitude", help="robustness magnitude sigma*||dL/dh|| per layer at equal accuracy cost "
                     "(Figure 2)", description="Calibrate sigma per layer to --drop on the calibration images, then "
                     "the distribution of sigma*||dL/dh|| over the correctly classified analysed images.")
    _shared(q, n_default=200)
    _calib_args(q)
    q.set_defaults(func=run_magnitude)

    q = a.add_parser("approx-error", help="error of the first-order approximation (Figure 3)",
                     description="|L(f(x+u)) - L(f(x)) - dL/dx . u| for u ~ N(0, mu I) over a --mu grid, and "
                     "|L(g(h+d)) - L(f(x)) - dL/dh . d| for d ~ N(0, nu I) at each hidden layer; reports where the "
                     "median relative error passes 0.5.")
    _shared(q, n_default=50)
    _nu_args(q)
    q.add_argument("--mu", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
                   help="attacker proposal variances (default 1e-6 ... 1e-1, decades)")
    q.add_argument("--draws", type=int, default=32, help="draws per image and variance (default 32)")
    q.set_defaults(func=run_approx_error)

    q = a.add_parser("layers", help="rank candidate layers by predicted robustness and recommend one "
                     "(Tables 6, 14)", description="Calibrate sigma per layer to --drop, then rank layers by "
                     "--metric: the mean Theorem-1 probability at nu = sigma^2 and --mu on clean images "
                     "(theorem1) or after one attack step (theorem1-step, default), or the median robustness "
                     "magnitude. --confirm K attacks the model defended at each of the top K layers with Square.")
    _shared(q, n_default=200)
    _calib_args(q)
    _step_args(q)
    q.add_argument("--mu", type=float, default=1e-3, help="attacker proposal variance per pixel for the "
                   "probability (pixel units^2, default 1e-3: about the mean per-pixel energy of an early Square "
                   "step at l_inf eps 0.1 on 28x28 images)")
    q.add_argument("--metric", choices=("theorem1", "theorem1-step", "magnitude"), default="theorem1-step")
    q.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="attack the top K layers to confirm the ranking (default 0: off)")
    q.add_argument("--attack", default="square", help="attack for --confirm (default square)")
    q.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model of --confirm")
    q.add_argument("--eps", type=float, default=0.1, help="radius of --confirm's threat model (default 0.1)")
    q.add_argument("--budget", type=int, default=200, help="queries per image for --confirm (default 200)")
    q.add_argument("--attack-n", type=int, default=50, help="images attacked by --confirm (default 50)")
    q.set_defaults(func=run_layers)

    q = a.add_parser("agreement", help="rank correlation of ratio/layers predictions with a per-layer study "
                     "(Tables 6, 14)", description="For one model: per layer, the values rfd analyze ratio and "
                     "rfd analyze layers predicted (their JSON) next to the robust accuracy a per-layer study measured "
                     "(rfd reproduce 6 / 14: one noisy layer per run; mean over its attacks, 95%% bootstrap "
                     "interval), and per predictor Spearman's rho with its exact permutation p-value and a bootstrap "
                     "interval over images, under each reading. Writes agreement.json and agreement.csv into --out.")
    q.add_argument("store", help="results store (SQLite) of a per-layer study")
    q.add_argument("--model", required=True, help="the model whose layers are compared (as named in the store)")
    q.add_argument("--prediction", action="append", required=True, metavar="JSON",
                   help="ratio.json of rfd analyze ratio or layers.json of rfd analyze layers (repeatable)")
    q.add_argument("--readings", default="paper,strict", metavar="R1,R2",
                   help="readings of the measured robust accuracy (default paper,strict)")
    q.add_argument("--budget", type=int, default=None, help="queries at which robustness is read (default: the "
                   "runs' budget)")
    q.add_argument("--out", required=True, help="folder for agreement.json and agreement.csv")
    q.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and permutation draws (default 0)")
    add_common(q, device=False)
    q.set_defaults(func=run_agreement)

    q = a.add_parser("detectors", help="benign false-positive rates (distinct images, re-sent changed copies) and "
                     "queries/s of stateful detectors",
                     description="Sends --n images of the analysis split (drawn with --seed: use one other than "
                     "the study's) as one benign account, then the same images each followed later by a slightly "
                     "changed copy, through each --detector; kNN thresholds come from the calibration images. "
                     "Writes detectors.json into --out.")
    _shared(q, n_default=1000)
    q.add_argument("--detector", action="append", required=True, metavar="SPEC",
                   help="a detector (blacklight, knn, knn:embedding=penultimate, ...); repeat for several")
    q.set_defaults(func=run_detectors)


# ------------------------------------------------------------------------------------------------ flag groups
def _shared(q: argparse.ArgumentParser, *, n_default: int) -> None:
    add_model_args(q)
    add_data_args(q)
    q.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="layers to analyse: 'input', 'penultimate' or module names (default: the model's main "
                   "blocks, see rfd.analysis.candidate_layers)")
    q.add_argument("--n", type=int, default=n_default,
                   help=f"class-balanced images drawn from the analysis split (default {n_default})")
    q.add_argument("--all-images", action="store_true",
                   help="keep misclassified images too (default: only correctly classified ones, as attacked)")
    q.add_argument("--seed", type=int, default=0, help="seed of image selection and every random draw (default 0)")
    q.add_argument("--batch-size", type=int, default=256, help="images (or image x draw rows) per forward")
    q.add_argument("--out", required=True, help="folder for the PNG/JSON/CSV outputs")
    add_common(q)


def _step_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--step-norm", choices=("l2", "linf"), default="l2", help="geometry of the attack step")
    q.add_argument("--step-size", type=float, default=0.5,
                   help="l2 length (l2) or per-pixel size (linf) of the step, pixel units (default 0.5)")


def _calib_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--drop", type=float, default=0.02, help="clean-accuracy drop every sigma costs (default 0.02)")
    q.add_argument("--calib-draws", type=int, default=10, help="noise draws per sigma while calibrating (default 10)")


def _nu_args(q: argparse.ArgumentParser) -> None:
    _calib_args(q)
    q.add_argument("--nu", type=float, nargs="+", default=None,
                   help="defense noise variances shared by every layer (instead of calibrating)")
    q.add_argument("--nu-scale", type=float, nargs="+", default=[0.25, 1.0, 4.0],
                   help="without --nu: multiples of each layer's calibrated sigma^2 (default 0.25 1 4)")


# ------------------------------------------------------------------------------------------------ glue
def _setup(args: argparse.Namespace) -> dict[str, Any]:
    """Model, analysed images and calibration images the flags describe."""
    from rfd.analysis import candidate_layers, select_images
    from rfd.data import calibration_indices

    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    device = resolve_device(args.device)
    model = model_from_args(args, device)
    data = data_spec_from_args(args)
    ev = data.load(data.eval_split)
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(ev.images.shape[1:]) != tuple(shape):
        raise CLIError(f"{ev.name} images are {tuple(ev.images.shape[1:])} but {args.model} expects {tuple(shape)}; "
                       "pick --data of the model's dataset")
    x, y, idx = select_images(model, ev.images, ev.labels, args.n, seed=args.seed,
                              correct_only=not args.all_images)
    cal, cidx = calibration_indices(data, idx, args.seed, ev=ev)
    cal_x, cal_y = cal.images[cidx], cal.labels[cidx]
    layers = list(args.layers) if args.layers else candidate_layers(model)
    meta = {"model": args.model, "checkpoint": args.checkpoint, "data": ev.name, "images": int(idx.numel()),
            "correct_only": not args.all_images, "seed": args.seed, "layers": layers}
    return {"model": model, "x": x, "y": y, "index": idx, "calib_x": cal_x, "calib_y": cal_y, "layers": layers,
            "meta": meta}


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _nus(args: argparse.Namespace, s: dict[str, Any], layers: list[str]) -> tuple[Any, dict[str, Any] | None]:
    from rfd.analysis import calibrate_layers, calibrated_nus

    if args.nu is not None:
        return list(args.nu), None
    cal = calibrate_layers(s["model"], layers, args.drop, s["calib_x"], s["calib_y"], seed=args.seed,
                           draws=args.calib_draws, progress=_progress(args))
    return calibrated_nus(cal, args.nu_scale), cal


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


# ------------------------------------------------------------------------------------------------ commands
def run_ratio(args: argparse.Namespace) -> int:
    from rfd.analysis import StepConfig, gradient_ratios
    from rfd.analysis.outputs import write_ratio

    s = _setup(args)
    step = StepConfig(norm=args.step_norm, size=args.step_size)
    res = gradient_ratios(s["model"], s["x"], s["y"], s["layers"], step=step, batch_size=args.batch_size,
                          index=s["index"], progress=_progress(args))
    out = write_ratio(res, args.out, meta=s["meta"], label=args.model)
    rows = [["layer", "median before", "median after", "change: mean", "median", "mean |dL/dh|"]]
    for r in out["layers"]:
        rows.append([r["layer"], f"{r['ratio_before']['median']:.4g}", f"{r['ratio_after']['median']:.4g}",
                     f"{r['change_mean']:.4g}", f"{r['change_median']:.4g}", f"{r['grad_norm_mean']:.4g}"])
    emit(args, out, f"{args.model}: {out['images']} images, step {step.norm} {step.size:g} "
         f"(fooled by the step alone: {out['fooled_by_step']:.3f})\n{_table(rows)}\nwrote {', '.join(out['files'])}")
    return 0


def run_theorem1(args: argparse.Namespace) -> int:
    from rfd.analysis import theorem1
    from rfd.analysis.outputs import write_theorem1

    if args.draws < 1:
        raise CLIError(f"--draws must be >= 1, got {args.draws}")
    s = _setup(args)
    nus, cal = _nus(args, s, s["layers"])
    res = theorem1(s["model"], s["x"], s["y"], s["layers"], nus, args.mu, draws=args.draws, seed=args.seed,
                   batch_size=max(args.batch_size, args.draws), index=s["index"], progress=_progress(args))
    meta = {**s["meta"], "calibration": cal, "nu_source": "given" if args.nu is not None else
            f"{args.nu_scale} x sigma^2 calibrated to a {args.drop} drop"}
    out = write_theorem1(res, args.out, meta=meta, label=args.model)
    c = out["correlations"]
    rows = [["layer", "nu", "mu", "predicted", "measured"]]
    for r in out["cells"]:
        rows.append([r["layer"], f"{r['nu']:.3g}", f"{r['mu']:.3g}", f"{r['predicted_mean']:.3f}",
                     f"{r['measured_mean']:.3f}"])
    emit(args, out, f"{args.model}: {out['images']} images x {args.draws} proposals per cell\n{_table(rows)}\n"
         f"correlation over cells: Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f}; over cell means: "
         f"Pearson {c['pearson_cell_means']:.3f}; mean |gap| {c['mean_abs_gap']:.3f}\n"
         f"first-order approximation breaks (median relative error > 0.5) at mu = {out['approx_breakdown_mu']}\n"
         f"wrote {', '.join(out['files'])}")
    return 0


def run_magnitude(args: argparse.Namespace) -> int:
    from rfd.analysis import robustness_magnitude
    from rfd.analysis.outputs import write_magnitude

    s = _setup(args)
    res = robustness_magnitude(s["model"], s["x"], s["y"], s["layers"], target_drop=args.drop,
                               calib_x=s["calib_x"], calib_y=s["calib_y"], seed=args.seed,
                               calib_draws=args.calib_draws, batch_size=args.batch_size, index=s["index"],
                               progress=_progress(args))
    out = write_magnitude(res, args.out, meta=s["meta"], label=args.model)
    rows = [["layer", "sigma", "calib acc", "median magnitude", "q25", "q75"]]
    for r in out["layers"]:
        m = r["magnitude"]
        rows.append([r["layer"], f"{r['sigma']:.4g}", f"{r['calib_accuracy']:.4f}", f"{m['median']:.4g}",
                     f"{m['q25']:.4g}", f"{m['q75']:.4g}"])
    emit(args, out, f"{args.model}: {out['correct']} correctly classified images, drop {args.drop}\n{_table(rows)}\n"
         f"wrote {', '.join(out['files'])}")
    return 0


def run_approx_error(args: argparse.Namespace) -> int:
    from rfd.analysis import INPUT, feature_approx_error, input_approx_error
    from rfd.analysis.outputs import write_approx_error

    if args.draws < 1:
        raise CLIError(f"--draws must be >= 1, got {args.draws}")
    s = _setup(args)
    hidden = [n for n in s["layers"] if n != INPUT]
    nus, cal = _nus(args, s, hidden) if hidden else ([], None)
    bs = max(args.batch_size, args.draws)
    results = [input_approx_error(s["model"], s["x"], s["y"], args.mu, draws=args.draws, seed=args.seed,
                                  batch_size=bs, progress=_progress(args))]
    for n in hidden:
        grid = nus[n] if isinstance(nus, dict) else nus
        results.append(feature_approx_error(s["model"], s["x"], s["y"], n, grid, draws=args.draws, seed=args.seed,
                                            batch_size=bs, progress=_progress(args)))
    out = write_approx_error(results, args.out, meta={**s["meta"], "calibration": cal}, label=args.model)
    rows = [["place", "variance", "median |error|", "median rel. error", "sign mismatch"]]
    for place in out["places"]:
        for r in place["summary"]:
            rows.append([place["layer"], f"{r['variance']:.3g}", f"{r['median_abs_error']:.3g}",
                         f"{r['median_rel_error']:.3g}", f"{r['sign_mismatch']:.3f}"])
    breaks = ", ".join(f"{p['layer']}: {p['breakdown_variance']}" for p in out["places"])
    emit(args, out, f"{args.model}: {s['meta']['images']} images x {args.draws} draws\n{_table(rows)}\n"
         f"median relative error passes 0.5 at variance ({breaks})\nwrote {', '.join(out['files'])}")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    from rfd.analysis import StepConfig, confirm_with_attack, rank_layers
    from rfd.analysis.outputs import write_ranking

    if args.confirm < 0:
        raise CLIError(f"--confirm must be >= 0, got {args.confirm}")
    s = _setup(args)
    step = StepConfig(norm=args.step_norm, size=args.step_size)
    ranking = rank_layers(s["model"], s["x"], s["y"], s["layers"], calib_x=s["calib_x"], calib_y=s["calib_y"],
                          target_drop=args.drop, mu=args.mu, metric=args.metric, step=step, seed=args.seed,
                          calib_draws=args.calib_draws, batch_size=args.batch_size, progress=_progress(args))
    if args.confirm:
        k = min(args.attack_n, s["x"].shape[0])
        ranking = confirm_with_attack(s["model"], ranking, s["x"][:k], s["y"][:k], top=args.confirm,
                                      attack=args.attack, norm=args.norm, eps=args.eps, budget=args.budget,
                                      seed=args.seed, progress=_progress(args))
    out = write_ranking(ranking, args.out, meta=s["meta"], label=args.model)
    rows = [["rank", "layer", "sigma", "P clean", "P step", "magnitude", "ratio change"]]
    for r in out["ranking"]:
        rows.append([str(r["rank"]), r["layer"], f"{r['sigma']:.4g}", f"{r['prob_clean']:.3f}",
                     f"{r['prob_step']:.3f}", f"{r['magnitude_median']:.4g}", f"{r['ratio_change_mean']:.3f}"])
    text = f"{args.model}: {out['images']} images, drop {args.drop}, metric {args.metric}\n{_table(rows)}\n"
    for c in out["confirm"]:
        text += (f"confirm {c['layer']}: robust accuracy {c['robust_accuracy']:.3f} under {c['attack']} "
                 f"{c['norm']} eps {c['eps']:g}, {c['budget']} queries, {c['images']} images\n")
    emit(args, out, text + f"recommended layer: {out['recommended']}\nwrote {', '.join(out['files'])}")
    return 0




def run_agreement(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rfd.analysis.agreement import agreements
    from rfd.analysis.outputs import write_agreement
    from rfd.eval.results import load_results

    if not Path(args.store).is_file():
        raise CLIError(f"results store not found: {args.store}")
    summaries = []
    for f in args.prediction:
        try:
            summaries.append(json.loads(Path(f).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"--prediction {f}: cannot read it as JSON ({e})") from None
    readings = [r.strip() for r in args.readings.split(",") if r.strip()]
    found = agreements(summaries, load_results(args.store), args.model, readings=readings, budget=args.budget,
                       seed=args.seed)
    out = write_agreement(found, args.out, meta={"store": args.store, "model": args.model,
                                                 "predictions": list(args.prediction)})
    rows = [["reading", "predictor", "rho", "95% interval", "exact p", "predicted order (best first)"]]
    for g in found:
        order = [r["layer"] for r in sorted(g.rows(), key=lambda r: r["predicted_rank"])]
        rows.append([g.reading, g.predictor, f"{g.rho:+.2f}", f"[{g.low:+.2f}, {g.high:+.2f}]", f"{g.p_value:.3g}",
                     " > ".join(order)])
    first = found[0]
    measured = [["layer", *(f"measured {rd}" for rd in readings)]]
    for i, ly in enumerate(first.layers):
        measured.append([ly, *(next(g for g in found if g.reading == rd).measured[i].percent() for rd in readings)])
    emit(args, out, f"{args.model}: {first.images} images, mean over {', '.join(first.attacks)} at {first.budget} "
         f"queries\n{_table(measured)}\n\n{_table(rows)}\nwrote {', '.join(out['files'])}")
    return 0


def run_detectors(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rfd.analysis.detectors import benign_report
    from rfd.defenses.detector_spec import parse_detector

    try:
        specs = [parse_detector(d) for d in args.detector]
    except ValueError as exc:
        raise CLIError(f"--detector: {exc}") from None
    s = _setup(args)
    found = benign_report(list(specs), benign=s["x"], calib=s["calib_x"], seed=args.seed, model=s["model"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detectors.json").write_text(json.dumps({"meta": s["meta"], "detectors": found}, indent=2))
    rows = [["detector", "FP distinct", "FP re-sent", "queries/s"]]
    for r in found:
        rows.append([r["detector"], f"{100 * r['fpr_distinct']:.1f}% of {r['n_distinct']}",
                     f"{100 * r['fpr_resend']:.1f}% of {r['n_resend']}", f"{r['queries_per_s']:.0f}"])
    print(_table(rows))
    print(f"wrote {out / 'detectors.json'}")
    return 0
