"""Shared fixtures. Torch uses one thread in tests: two cores are easily oversubscribed."""

from __future__ import annotations

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
