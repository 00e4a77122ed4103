"""Confidence-gated noise (``DefenseSpec.gate``): the boundary defense (logits noise below a top probability)
and gated input / feature noise change only the low-confidence rows, draw their noise from the seed, and
round-trip through the spec's dict form."""

from __future__ import annotations

import pytest
import torch

from rfd.defenses import DefenseSpec, defend
from tests.helpers.models import tiny_cnn


def batch() -> torch.Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("spec", [DefenseSpec(family="logits", sigma=0.5, gate=0.5),
                                  DefenseSpec(family="input", sigma=0.3, gate=0.9),
                                  DefenseSpec(family="feature", layers=("2",), sigma=2.0, gate=0.9)])
def test_gated_noise_changes_only_low_confidence_rows(spec: DefenseSpec) -> None:
    model = tiny_cnn()
    x = batch()
    with torch.no_grad():
        clean = model(x)
        low = clean.softmax(1).amax(1) < spec.gate
        assert 0 < int(low.sum()) < 64  # the batch holds both kinds of rows
        out = defend(model, spec, seed=0)(x)
        again = defend(model, spec, seed=0)(x)
    assert torch.equal(out[~low], clean[~low])  # confident rows: exactly the undefended answer
    assert bool((out[low] != clean[low]).any(1).all())  # every gated row got noise
    assert torch.equal(out, again)  # seeded


def test_gate_one_noises_everything_and_the_spec_round_trips() -> None:
    model = tiny_cnn()
    x = batch()
    spec = DefenseSpec(family="logits", sigma=0.1, gate=0.3)  # Aithal & Li's setting
    assert spec.method == "Logits p<0.3" and DefenseSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["params"] == {"gate": 0.3}
    with torch.no_grad():
        full = defend(model, DefenseSpec(family="logits", sigma=0.2, gate=1.0), seed=3)(x)
        plain = defend(model, DefenseSpec(family="logits", sigma=0.2), seed=3)(x)
    assert torch.equal(full, plain)  # p < 1 holds for every row: the same draws as ungated noise


@pytest.mark.parametrize("kwargs, match", [
    ({"family": "aaa", "gate": 0.3}, "noise defenses"),
    ({"family": "none", "gate": 0.3}, "noise defenses"),
    ({"family": "logits", "sigma": 0.1, "gate": 0.0}, r"in \(0, 1\]"),
    ({"family": "logits", "sigma": 0.1, "gate": 1.5}, r"in \(0, 1\]"),
])
def test_bad_gates_fail_clearly(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        DefenseSpec(**kwargs)
