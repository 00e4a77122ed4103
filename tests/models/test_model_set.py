"""Model-set randomization: members drawn per row, uniformly, from a seeded stream; feature noise at
'penultimate' reaches every member; the registered set loads its members' shipped weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rfd.defenses import DefenseSpec, defend
from rfd.models import create_model
from rfd.models.model_set import ModelSet


class Constant(nn.Module):
    """Answers logit 1 for class ``k`` on every image (so the output tells which member answered)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.input_shape = (1, 4, 4)
        self.num_classes = 3
        self.head = "fc"
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.one_hot(torch.full((x.shape[0],), self.k), 3).float())


def test_members_are_drawn_per_row_uniformly_and_seeded() -> None:
    s = ModelSet([Constant(0), Constant(1), Constant(2)], seed=4)
    x = torch.zeros(30000, 1, 4, 4)
    first = s(x).argmax(1)
    counts = torch.bincount(first, minlength=3)
    # uniform: each member 10000 +- 3 sd (sd = sqrt(30000 * 1/3 * 2/3) = 82)
    assert bool(((counts - 10000).abs() < 250).all()), counts
    again = s.manual_seed(4)(x).argmax(1)
    assert torch.equal(first, again)  # same seed, same draws
    assert not torch.equal(first, s.manual_seed(5)(x).argmax(1))


def test_set_rejects_mismatched_members() -> None:
    other = Constant(0)
    other.num_classes = 4
    with pytest.raises(ValueError, match="share input_shape and num_classes"):
        ModelSet([Constant(0), other])
    with pytest.raises(ValueError, match="at least 2 members"):
        ModelSet([Constant(0)])


@pytest.mark.slow
def test_registered_set_answers_like_its_members_and_takes_feature_noise(bundled_eval) -> None:  # type: ignore[no-untyped-def]
    s = create_model("fmnist-set")
    members = [create_model(n) for n in ("fmnist-vgg", "fmnist-resnet", "fmnist-vit")]
    x = bundled_eval.images[:64]
    with torch.no_grad():
        choice = s.manual_seed(0).draw(64, x.device)
        want = torch.stack([m(x) for m in members])[choice, torch.arange(64)]
        got = s.manual_seed(0)(x)
    assert torch.allclose(got, want, atol=1e-5)
    d = defend(s, DefenseSpec(family="feature", sigma=0.5), seed=0)
    assert [t.module_name for t in d.targets] == list(s.heads)
    with torch.no_grad():
        d(x)
    assert sum(d.injections.values()) == 3  # each member noised its own rows once
