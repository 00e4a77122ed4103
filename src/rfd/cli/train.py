"""`rfd train MODEL --out PATH`: train a registry model on Fashion-MNIST."""

from __future__ import annotations

import argparse
import sys

from rfd.cli.common import add_common, emit, resolve_device
from rfd.models import list_models
from rfd.models.training import TrainConfig, train_reference


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a reference model on Fashion-MNIST (seeded)",
                       description="Train MODEL from scratch on the 60k Fashion-MNIST training images, report test "
                       "accuracy on the 10k test images after every epoch, and save a safetensors checkpoint.")
    p.add_argument("model", help=f"registry name ({', '.join(list_models())})")
    p.add_argument("--out", required=True, help="checkpoint path to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="disable random shifts and flips")
    p.add_argument("--adv", choices=["none", "pgd"], default="none", help="adversarial training (PGD, Madry et al.)")
    p.add_argument("--eps", type=float, default=0.1, help="l_inf radius of PGD adversarial training (with --adv pgd)")
    p.add_argument("--adv-steps", type=int, default=7, help="PGD steps per batch (with --adv pgd)")
    p.add_argument("--data-path", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's "
                   "dataset-fashion-mnist, or RFD_FASHION_MNIST_DIR)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      augment=not args.no_augment, adv_eps=args.eps if args.adv == "pgd" else 0.0,
                      adv_steps=args.adv_steps)

    def on_epoch(s):  # type: ignore[no-untyped-def]
        if not args.quiet:
            print(f"epoch {s.epoch:3d}  loss {s.train_loss:.4f}  train acc {s.train_accuracy:.4f}  "
                  f"test acc {s.test_accuracy:.4f}  ({s.seconds:.0f}s)", file=sys.stderr, flush=True)

    res = train_reference(args.model, args.out, cfg, data_dir=args.data_path, device=resolve_device(args.device),
                          progress=not args.quiet, on_epoch=on_epoch)
    emit(args, {"model": args.model, "out": args.out, "test_accuracy": res.test_accuracy, "config": res.config,
                "epochs": res.epochs},
         f"trained {args.model}: test accuracy {res.test_accuracy:.4f} on 10k test images -> {args.out}")
    return 0
