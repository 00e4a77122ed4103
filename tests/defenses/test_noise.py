"""Noise of the randomized defenses: seeded determinism, statistics, per-sample independence, antithetic pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rfd.defenses import DefenseSpec, defend
from rfd.models import create_model


class Probe(nn.Module):
    """logits = fc(feat(flatten(x))) with identity feat/fc: the injected noise is readable from the output."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(d))
        self.input_shape = (1, 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.feat(x.flatten(1)))


def _x(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", [
    DefenseSpec(family="feature", sigma=0.3, layers=("feat",)),
    DefenseSpec(family="feature", sigma=0.3, layers=("penultimate",)),
    DefenseSpec(family="input", sigma=0.3),
    DefenseSpec(family="logits", sigma=0.3),
])
def test_injected_noise_has_std_sigma_mean_zero_and_is_fresh(spec: DefenseSpec) -> None:
    m = Probe()
    x = _x(2000)
    with torch.no_grad(), defend(m, spec) as d:
        a = d(x) - m(x)
        b = d(x) - m(x)
    assert a.std().item() == pytest.approx(0.3, rel=0.03)
    assert abs(a.mean().item()) < 0.01
    assert not torch.equal(a, b)  # fresh noise on every forward
    # independent per sample and per feature: correlation between two features and two samples is ~0
    assert abs(torch.corrcoef(a[:, :2].T)[0, 1].item()) < 0.07
    assert abs(torch.corrcoef(a[:2])[0, 1].item()) < 0.8  # two 16-d rows: loose, but rules out a shared draw
    assert not torch.equal(a[0], a[1])


def test_same_seed_same_outputs_different_seed_different() -> None:
    torch.manual_seed(0)
    m = create_model("fmnist-resnet", pretrained=False)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    spec = DefenseSpec(family="feature", sigma=0.5, layers=("net.layer1", "penultimate"))
    with torch.no_grad():
        with defend(m, spec, seed=11) as d1, defend(m, spec, seed=11) as d2:
            seq1 = [d1(x) for _ in range(3)]
            seq2 = [d2(x) for _ in range(3)]
        with defend(m, spec, seed=12) as d3:
            other = d3(x)
    for a, b in zip(seq1, seq2):
        assert torch.equal(a, b)
    assert not torch.equal(seq1[0], seq1[1])
    assert not torch.equal(other, seq1[0])


def test_manual_seed_restarts_the_stream_and_global_rng_is_untouched() -> None:
    m = Probe()
    x = _x(5)
    with torch.no_grad(), defend(m, DefenseSpec(family="input", sigma=0.1), seed=4) as d:
        torch.manual_seed(123)
        first = d(x)
        g_after = torch.rand(1)
        d(x)
        d.manual_seed()
        assert torch.equal(d(x), first)
        torch.manual_seed(123)
        assert torch.equal(torch.rand(1), g_after)  # the defense drew nothing from the global generator
        d.manual_seed(5)
        assert d.seed == 5 and not torch.equal(d(x), first)


def test_input_noise_is_pixel_units_and_not_clipped() -> None:
    m = Probe()
    x = torch.full((500, 1, 4, 4), 0.99)
    with torch.no_grad(), defend(m, DefenseSpec(family="input", sigma=0.2)) as d:
        out = d(x)  # Probe returns the (noisy) pixels themselves
    assert out.max().item() > 1.2 and (out > 1).float().mean().item() > 0.4


def test_scaled_noise_follows_the_per_feature_std() -> None:
    m = Probe()
    calib = _x(400, seed=3)
    calib[:, :, 0, :] *= 0.1  # features 0..3 spread 10x less than the rest
    clean_std = calib.flatten(1).std(0)
    with defend(m, DefenseSpec(family="feature", sigma=2.0, layers=("feat",), scaled=True), calib_images=calib) as d:
        torch.testing.assert_close(d.scale_0, clean_std, rtol=1e-5, atol=1e-6)
        x = _x(3000, seed=9)
        with torch.no_grad():
            noise = d(x) - m(x)
    ratio = noise.std(0) / (2.0 * clean_std)
    assert ratio.min().item() > 0.93 and ratio.max().item() < 1.07


def test_scaled_noise_on_conv_maps_has_their_shape() -> None:
    torch.manual_seed(0)
    m = create_model("fmnist-vgg", pretrained=False)
    calib = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with defend(m, DefenseSpec(family="feature", sigma=1.0, layers=("net.features.1", "penultimate"), scaled=True),
                calib_images=calib) as d:
        with torch.no_grad():
            feat = m.net.features[:2]((calib - m.mean) / m.std)
        assert d.scale_0.shape == feat.shape[1:] and d.scale_1.dim() == 1
        assert d(calib[:2]).shape == (2, 10)


@pytest.mark.parametrize("spec", [
    DefenseSpec(family="feature", sigma=0.4, layers=("feat", "penultimate")),
    DefenseSpec(family="input", sigma=0.4),
    DefenseSpec(family="logits", sigma=0.4),
])
def test_antithetic_pairs_negate_the_noise_exactly(spec: DefenseSpec) -> None:
    m = Probe()
    x = _x(6)
    with torch.no_grad(), defend(m, spec) as d:
        clean = m(x)
        plus, minus = d.antithetic_pair(x)
        torch.testing.assert_close(plus - clean, -(minus - clean), rtol=0, atol=1e-6)
        assert (plus - clean).abs().min() > 0
        plus2, _ = d.antithetic_pair(x)
        assert not torch.equal(plus, plus2)  # the next pair uses new noise
    # the stream after a pair continues exactly like after one ordinary forward
    with torch.no_grad(), defend(m, spec) as a, defend(m, spec) as b:
        a.antithetic_pair(x)
        b(x)
        assert torch.equal(a(x), b(x))


def test_set_sigma_scales_the_same_draws() -> None:
    m = Probe()
    x = _x(4)
    with torch.no_grad(), defend(m, DefenseSpec(family="feature", sigma=0.1, layers=("feat",))) as d:
        n1 = d(x) - m(x)
        d.set_sigma(0.3).manual_seed()
        n3 = d(x) - m(x)
    torch.testing.assert_close(n3, 3 * n1, rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_noisy_model() -> None:
    m = Probe()
    x = _x(2).requires_grad_(True)
    with defend(m, DefenseSpec(family="feature", sigma=0.5, layers=("feat",))) as d:
        d(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
