"""Data flags shared by every command that reads images: one data path (``--data NAME [--split S]``)."""

from __future__ import annotations

import argparse

from rfd.data import DATASETS, DataSpec
from rfd.jsonable import freeze

__all__ = ["add_data_args", "data_spec_from_args"]


def add_data_args(p: argparse.ArgumentParser, *, calib_default: int | None = None) -> None:
    """Add --data, --split, --calib-split, --data-path, --image-size and --calib-n (in their own help group)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="bundled", choices=list(DATASETS),
                   help="dataset (default bundled: Fashion-MNIST test images shipped in the package, disjoint eval "
                   "and calib splits); see `rfd data`")
    g.add_argument("--split", default=None,
                   help="split the evaluated images come from (default: the dataset's: eval for bundled, else test)")
    g.add_argument("--calib-split", default=None,
                   help="split calibration images come from (default: calib for bundled, else the --split, whose "
                   "images not evaluated are used: calibration and evaluation images never overlap)")
    g.add_argument("--data-path", default=None, help="folder of --data (cifar10, imagefolder; fashion-mnist "
                   "defaults to Debian's dataset-fashion-mnist)")
    g.add_argument("--image-size", type=int, default=None, help="imagefolder: side of the center crop, pixels")
    g.add_argument("--calib-n", type=int, default=calib_default,
                   help="calibration images, class-balanced and seeded (default: "
                   + ("every image of the calibration split" if calib_default is None else str(calib_default)) + ")")


def data_spec_from_args(args: argparse.Namespace) -> DataSpec:
    """The :class:`rfd.data.DataSpec` the flags of :func:`add_data_args` describe."""
    options = {"size": args.image_size} if args.image_size is not None else {}
    return DataSpec(dataset=args.data, eval_split=args.split or "", calib_split=args.calib_split or "",
                    path=args.data_path, calib_images=args.calib_n, options=freeze(options))
