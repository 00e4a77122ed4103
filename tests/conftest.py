"""Fixtures shared by the whole suite. Torch uses one thread in tests: two cores are easily oversubscribed.

- ``linear_model``: a 2-class linear model on 1x4x4 images with closed-form answers;
- ``bundled_eval`` / ``bundled_calib``: the Fashion-MNIST splits shipped inside the package;
- ``shipped_checkpoint`` / ``reference_model``: a registered model's shipped weights. A missing shipped
  checkpoint FAILS the test that needs it (it is part of the package), it is never skipped;
- ``ncm``: a nearest-class-mean classifier fitted in closed form, standing in for a trained model;
- ``tiny_eval``: the importable ``rfd_tiny`` module and its trained checkpoint (tests/helpers/tiny_eval.py).

Helpers that are not fixtures (tiny models, the ``rfd_tiny`` source) live in tests/helpers/."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class LinearClassifier(nn.Module):
    """logits = W x.flatten() + b: gradients and decision boundaries are known in closed form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(w)
            self.fc.bias.copy_(b)
        self.input_shape = input_shape
        self.num_classes = w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def linear_model() -> LinearClassifier:
    """A 2-class linear model on 1x4x4 images: class 1 iff mean pixel > 0.5."""
    d = 16
    w = torch.zeros(2, d)
    w[1] = 1.0 / d
    b = torch.tensor([0.5, 0.0])
    return LinearClassifier(w, b, (1, 4, 4)).eval()


@pytest.fixture(scope="session")
def bundled_eval():
    from rfd.data.bundled import load_bundled

    return load_bundled("eval")


@pytest.fixture(scope="session")
def bundled_calib():
    from rfd.data.bundled import load_bundled

    return load_bundled("calib")


# ---------------------------------------------------------------------------------------------- shipped models
@pytest.fixture(scope="session")
def shipped_checkpoint() -> Callable[[str], Path]:
    """``get(name)``: the checkpoint rfd ships for registered model ``name``; fails the test when it is absent."""
    from rfd.models.registry import get_entry

    def get(name: str) -> Path:
        path = get_entry(name).checkpoint_path()
        assert path is not None, f"{name} declares no shipped checkpoint"
        assert path.is_file(), f"the shipped checkpoint of {name} is missing: {path} (rfd ships it as package data)"
        return path

    return get


@pytest.fixture(scope="session")
def reference_model(shipped_checkpoint: Callable[[str], Path]) -> Callable[[str], nn.Module]:
    """``get(name)``: a fresh instance of registered model ``name`` with its shipped weights (fails if absent)."""
    from rfd.models.registry import create_model

    def get(name: str) -> nn.Module:
        shipped_checkpoint(name)
        return create_model(name)

    return get


# ---------------------------------------------------------------------------------------------- stand-in models
@pytest.fixture(scope="module")
def ncm(bundled_eval) -> nn.Module:  # type: ignore[no-untyped-def]
    """Nearest-class-mean classifier fitted in closed form on the eval split (~70% accurate on Fashion-MNIST):
    logits_k = <x, mu_k> - |mu_k|^2 / 2, i.e. a linear head on the flattened image."""
    from rfd.models import ImageClassifier

    x, y = bundled_eval.images.flatten(1), bundled_eval.labels
    mu = torch.stack([x[y == k].mean(0) for k in range(10)])
    fc = nn.Linear(784, 10)
    with torch.no_grad():
        fc.weight.copy_(mu)
        fc.bias.copy_(-0.5 * (mu * mu).sum(1))
    net = nn.Sequential(nn.Flatten(), nn.Identity(), fc)
    return ImageClassifier(net, mean=(0.0,), std=(1.0,), input_shape=(1, 28, 28), num_classes=10, head="2").eval()


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(folder, checkpoint) of the ``rfd_tiny`` module (tests/helpers/tiny_eval.py), importable by name for the
    session: studies name ``rfd_tiny:build`` and ``rfd_tiny:RandomSign``; subprocesses and Ray workers need
    ``folder`` on their PYTHONPATH."""
    from tests.helpers.tiny_eval import MODULE_NAME, write_tiny

    folder, ckpt = write_tiny(tmp_path_factory.mktemp("tiny"))
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(folder))
    try:
        yield folder, ckpt
    finally:
        mp.undo()
        sys.modules.pop(MODULE_NAME, None)
