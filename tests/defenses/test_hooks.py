"""Feature-noise hooks: where they fire, that they leave, and that the undefended path is untouched."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from rfd.defenses import DefenseSpec, classifier_name, defend
from rfd.models import create_model


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist-vgg", pretrained=False)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("fmnist-vit", pretrained=False)


def _x(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _outputs(model: nn.Module, fn, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Output of every leaf module during ``fn(x)``, via hooks registered after the defense's own."""
    rec: dict[str, torch.Tensor] = {}
    hs = [m.register_forward_hook(lambda mod, a, o, n=n: rec.__setitem__(n, o.detach().clone()))
          for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            fn(x)
    finally:
        for h in hs:
            h.remove()
    return rec


def test_noise_changes_only_the_named_layer_and_what_follows(vgg: nn.Module) -> None:
    names = [n for n, m in vgg.named_modules() if n and not list(m.children())]
    layer = "net.features.4"
    assert layer in names
    x = _x()
    clean = _outputs(vgg, vgg, x)
    with defend(vgg, DefenseSpec(family="feature", sigma=0.5, layers=(layer,))) as d:
        noisy = _outputs(vgg, d, x)
        assert d.injections == {layer: 1}
    k = names.index(layer)
    for n in names[:k]:  # everything before the layer is exactly clean
        assert torch.equal(clean[n], noisy[n]), n
    assert not torch.equal(clean[layer], noisy[layer])


@pytest.mark.parametrize("layers", [("net.features.1",), ("net.features.1", "net.features.6", "penultimate")])
def test_hooks_fire_once_per_forward_at_each_named_layer(vgg: nn.Module, layers: tuple[str, ...]) -> None:
    before = _hook_count(vgg)
    d = defend(vgg, DefenseSpec(family="feature", sigma=0.1, layers=layers))
    assert _hook_count(vgg) == before + len(layers)
    with torch.no_grad():
        for _ in range(3):
            d(_x())
    assert dict(d.injections) == {n: 3 for n in layers}
    d.remove()
    assert _hook_count(vgg) == before


def test_penultimate_is_the_input_of_the_head(vgg: nn.Module, vit: nn.Module) -> None:
    assert classifier_name(vgg) == "net.classifier.4" and classifier_name(vit) == "net.head"
    head = dict(vgg.named_modules())["net.classifier.4"]
    seen: list[torch.Tensor] = []
    x = _x()
    with defend(vgg, DefenseSpec(family="feature", sigma=1.0)) as d:
        # registered after the defense's pre-hook, so it sees what the head really receives
        h = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        try:
            with torch.no_grad():
                vgg(x)
                out = d(x)
        finally:
            h.remove()
    clean_feat, noisy_feat = seen
    # the logits are exactly the head applied to the noisy penultimate feature
    torch.testing.assert_close(out, head(noisy_feat), rtol=0, atol=1e-5)
    assert (noisy_feat - clean_feat).std().item() == pytest.approx(1.0, rel=0.15)


def test_sigma_zero_and_none_are_bit_identical(vgg: nn.Module) -> None:
    x = _x(8)
    with torch.no_grad():
        ref = vgg(x)
        for spec in (DefenseSpec(), DefenseSpec(family="feature", sigma=0.0, layers=("net.features.1", "penultimate")),
                     DefenseSpec(family="input", sigma=0.0), DefenseSpec(family="logits", sigma=0.0)):
            with defend(vgg, spec) as d:
                assert torch.equal(d(x), ref), spec


def test_original_model_stays_clean_while_defended_exists(vgg: nn.Module) -> None:
    x = _x()
    with torch.no_grad():
        ref = vgg(x)
        with defend(vgg, DefenseSpec(family="feature", sigma=5.0, layers=("net.features.1",))) as d:
            assert not torch.equal(d(x), ref)
            assert torch.equal(vgg(x), ref)  # the raw model is not noisy, even with the hooks installed


def test_context_manager_and_remove_leave_no_hooks_and_forbid_use(vgg: nn.Module) -> None:
    before = _hook_count(vgg)
    state = {k: v.clone() for k, v in vgg.state_dict().items()}
    with defend(vgg, DefenseSpec(family="feature", sigma=1.0, layers=("net.features.1", "penultimate"))) as d:
        assert _hook_count(vgg) == before + 2
    assert _hook_count(vgg) == before
    with pytest.raises(RuntimeError, match="removed"):
        d(_x())
    d.remove()  # idempotent
    assert all(torch.equal(v, state[k]) for k, v in vgg.state_dict().items())
    assert not hasattr(vgg, "spec")


def test_hooks_leave_when_the_defended_module_is_dropped(vgg: nn.Module) -> None:
    before = _hook_count(vgg)
    d = defend(vgg, DefenseSpec(family="feature", sigma=1.0, layers=("net.features.1",)))
    assert _hook_count(vgg) == before + 1
    del d
    gc.collect()
    assert _hook_count(vgg) == before


def test_an_exception_inside_forward_deactivates_the_hooks(vgg: nn.Module) -> None:
    x = _x()
    with torch.no_grad():
        ref = vgg(x)
    d = defend(vgg, DefenseSpec(family="feature", sigma=1.0, layers=("net.features.1",)))
    with pytest.raises(ValueError):
        d(torch.rand(2, 3, 28, 28))
    with torch.no_grad():
        assert torch.equal(vgg(x), ref)
    d.remove()


def test_deepcopy_gives_an_independent_defended_copy(vgg: nn.Module) -> None:
    before = _hook_count(vgg)
    d = defend(vgg, DefenseSpec(family="feature", sigma=1.0, layers=("net.features.1",)), seed=3)
    c = copy.deepcopy(d)
    assert c.model is not vgg and _hook_count(vgg) == before + 1 and _hook_count(c.model) == before + 1
    x = _x()
    with torch.no_grad():
        assert torch.equal(d(x), c(x))  # same weights, same seed, same stream position
    assert c.injections["net.features.1"] == 1 and d.injections["net.features.1"] == 1
    d.remove()
    c.remove()
    assert _hook_count(vgg) == before


def test_token_tensors_of_vit_blocks(vit: nn.Module) -> None:
    x = _x()
    with torch.no_grad():
        ref = vit(x)
        rec = _outputs(vit, vit, x)
        with defend(vit, DefenseSpec(family="feature", sigma=0.2, layers=("net.blocks.3",))) as d:
            out = d(x)
            assert d.injections == {"net.blocks.3": 1}
    assert rec  # leaf outputs recorded
    assert out.shape == ref.shape and not torch.equal(out, ref)


def test_unknown_layer_lists_closest_names(vgg: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'net.feature.4'.*closest: .*net\.features\.4"):
        defend(vgg, DefenseSpec(family="feature", sigma=1.0, layers=("net.feature.4",)))


def test_non_tensor_output_fails_clearly() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.pair(x.flatten(1))
            return self.fc(a + b)

    with defend(M(), DefenseSpec(family="feature", sigma=1.0, layers=("pair",))) as d, \
            pytest.raises(ValueError, match="returns tuple, not a tensor"):
        d(torch.rand(2, 1, 2, 2))


@pytest.mark.parametrize("bad, match", [
    (torch.rand(1, 28, 28), r"shape \(N, C, H, W\)"),
    (torch.rand(2, 3, 28, 28), r"expects images of shape \(N, 1, 28, 28\)"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating point"),
    ([[0.0]], "torch.Tensor"),
])
def test_wrong_inputs_fail_clearly(vgg: nn.Module, bad: object, match: str) -> None:
    with defend(vgg, DefenseSpec(family="input", sigma=0.1)) as d, pytest.raises(ValueError, match=match):
        d(bad)  # type: ignore[arg-type]


def test_defend_rejects_non_modules_and_scaled_without_images(vgg: nn.Module) -> None:
    with pytest.raises(ValueError, match="nn.Module"):
        defend(lambda x: x, DefenseSpec())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibration images"):
        defend(vgg, DefenseSpec(family="feature", sigma=1.0, scaled=True))


def test_defend_accepts_a_spec_dict(vgg: nn.Module) -> None:
    with defend(vgg, {"family": "input", "sigma": 0.1}, seed=2) as d:
        assert d.spec == DefenseSpec(family="input", sigma=0.1) and d.seed == 2
        assert d.input_shape == (1, 28, 28) and d.num_classes == 10
