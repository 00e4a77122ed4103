"""PGD strength side by side: rfd's PGD vs torchattacks' PGD and the APGD attacks of AutoAttack.

    python benchmarks/bench_pgd_peers.py [--quick] [--out benchmarks/results/pgd_peers.json]

fmnist-vgg, 100 class-balanced bundled eval images (quick: 20), l_inf eps 0.05 (the Fashion-MNIST preset), no
defense. Robust accuracy is the fraction of all images the plain model still classifies correctly on the attack's
final images (clean mistakes count as broken), checked inside the eps-ball and [0, 1] here, for every attack alike.

* rfd PGD-20 (Madry's step 2.5 eps / steps) and PGD-100 (cross-entropy, step eps / 20), one restart;
* torchattacks PGD with the same steps and step sizes (same algorithm, another implementation);
* torchattacks APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020; 100 steps, the targeted one over 9 classes):
  the reference of what a strong white-box attack leaves at this eps.

Goal: rfd PGD-100 within 2 points of torchattacks' PGD-100, and within 3 points of the best APGD: what a
near-zero robust accuracy means for this model is what the strongest attack leaves. Skipped peers (torchattacks
not installed: ``pip install --no-deps torchattacks``) are reported as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from _result import write_result  # benchmarks/ is on sys.path when a script runs
from torch import nn

from rfd.attacks.pgd import PGD
from rfd.blackbox import LocalBlackBox
from rfd.data.bundled import load_bundled
from rfd.data.selection import balanced_indices
from rfd.models import create_model
from rfd.models.registry import get_entry

MODEL = "fmnist-vgg"
EPS = 0.05


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor) -> float:
    """Fraction of images still correct on ``adv``, counting any image outside the ball or box as broken."""
    with torch.no_grad():
        correct = model(adv).argmax(1) == y
    inside = ((adv - x).flatten(1).abs().amax(1) <= EPS + 1e-6) & (adv.flatten(1).amin(1) >= 0) & \
        (adv.flatten(1).amax(1) <= 1)
    if not bool(inside.all()):
        raise RuntimeError(f"{int((~inside).sum())} adversarial images lie outside the eps-ball or [0, 1]")
    return float(correct.float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 images")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--n", type=int, default=None, help="images (default 100, quick 20)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (20 if args.quick else 100)
    path = get_entry(MODEL).checkpoint_path()
    if path is None or not path.is_file():
        print(f"the trained {MODEL} checkpoint is missing ({path}); this benchmark needs it", file=sys.stderr)
        return 1
    model = create_model(MODEL).eval()
    data = load_bundled("eval")
    sel = balanced_indices(data.labels, n, seed=0, num_classes=10)
    x, y = data.images[sel].contiguous(), data.labels[sel]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())

    rows: list[dict[str, Any]] = []

    def record(name: str, run: Any) -> None:
        rng = torch.get_rng_state()  # torchattacks reseeds the global RNG
        t0 = time.perf_counter()
        adv = run()
        wall = time.perf_counter() - t0
        torch.set_rng_state(rng)
        model.eval()  # torchattacks may leave the model in train mode
        row = {"attack": name, "robust_accuracy": robust_accuracy(model, x, y, adv.detach()), "wall_s": wall}
        rows.append(row)
        print(f"{name:16s} robust {row['robust_accuracy']:.3f}  {wall:.1f}s", file=sys.stderr, flush=True)

    settings = {"pgd20": (20, 2.5 * EPS / 20), "pgd100": (100, EPS / 20)}
    for tag, (steps, alpha) in settings.items():
        def ours(steps: int = steps, alpha: float = alpha) -> torch.Tensor:
            # verify=1: the model is deterministic; early stops do not change the final robust accuracy
            res = PGD(norm="linf", eps=EPS, steps=steps, step_size=alpha, loss="ce", seed=0,
                      budget=steps).run(LocalBlackBox(model, verify=1), x, y)
            return res.x_adv
        record(f"rfd-{tag}", ours)
    try:
        import torchattacks
    except ImportError:
        rows.append({"attack": "torchattacks", "skipped": "not installed (pip install --no-deps torchattacks)"})
    else:
        for tag, (steps, alpha) in settings.items():
            atk = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=steps, random_start=True)
            record(f"torchattacks-{tag}", lambda atk=atk: atk(x, y))
        for tag, atk in (
            ("apgd-ce", torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100, loss="ce", seed=0)),
            ("apgd-dlr", torchattacks.APGD(model, norm="Linf", eps=EPS, steps=100, loss="dlr", seed=0)),
            ("apgd-t", torchattacks.APGDT(model, norm="Linf", eps=EPS, steps=100, n_classes=10, seed=0)),
        ):
            record(tag, lambda atk=atk: atk(x, y))
    by = {r["attack"]: r for r in rows if "robust_accuracy" in r}
    result: dict[str, Any] = {
        "target": "PGD strength: rfd PGD vs torchattacks PGD and APGD (robust accuracy, l_inf eps 0.05)",
        "goal": "rfd PGD-100 <= torchattacks PGD-100 + 0.02 and <= best APGD + 0.03",
        "model": MODEL, "n": n, "eps": EPS, "clean_accuracy": clean, "quick": args.quick, "threads": args.threads,
        "torch": torch.__version__, "rows": rows,
    }
    apgd = [by[k]["robust_accuracy"] for k in ("apgd-ce", "apgd-dlr", "apgd-t") if k in by]
    if "torchattacks-pgd100" in by and apgd:
        ours100 = by["rfd-pgd100"]["robust_accuracy"]
        result["rfd_pgd100"] = ours100
        result["best_apgd"] = min(apgd)
        result["meets_goal"] = (ours100 <= by["torchattacks-pgd100"]["robust_accuracy"] + 0.02
                                and ours100 <= min(apgd) + 0.03)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
