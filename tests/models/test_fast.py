"""Fast forwards (rfd.models.fast): the same answers as plain eager PyTorch, the caller's model left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rfd.blackbox import LocalBlackBox
from rfd.defenses import DefenseSpec, defend
from rfd.models.fast import FastModel, FastSpec, accelerate, parse_fast

REFERENCE = ("fmnist-vgg", "fmnist-resnet", "fmnist-vit")


def test_parse_fast_forms_and_errors() -> None:
    assert parse_fast(None).plain and parse_fast("plain").plain and parse_fast("").plain
    assert parse_fast("compile,channels-last") == FastSpec(channels_last=True, compile=True)
    assert parse_fast("inference+compile") == FastSpec(inference=True, compile=True)
    assert parse_fast("all") == FastSpec(True, True, True, True)
    assert str(parse_fast("compile,inference")) == "inference,compile"
    assert parse_fast(str(parse_fast("all"))) == parse_fast("all")
    with pytest.raises(ValueError, match="unknown fast-forward option.*'jit'.*choose from inference, channels_last, compile, heap"):
        parse_fast("compile,jit")
    model = nn.Linear(3, 2)
    assert accelerate(model, "plain") is model  # all off: the model itself, no copy
    fast = accelerate(model, "inference")
    assert accelerate(fast, "inference") is fast


@pytest.mark.parametrize("name", REFERENCE)
def test_every_option_gives_the_plain_labels_on_the_reference_models(name, reference_model,  # type: ignore[no-untyped-def]
                                                                     bundled_eval) -> None:
    model = reference_model(name).eval()
    x = bundled_eval.images[:48]
    with torch.no_grad():
        plain = model(x)
    for option in ("inference", "channels_last", "compile,channels_last"):
        fast = accelerate(model, option)
        with torch.no_grad():
            out = fast(x)
        assert torch.equal(out.argmax(1), plain.argmax(1)), (name, option)
        torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
        out.add_(1.0)  # an answer is an ordinary tensor (inference mode's is copied out)
    if "compile" in option:
        assert fast.compiled, "compile must compile the model's hook-free sub-modules"  # type: ignore[union-attr]
    # the caller's model is not compiled, and its weights keep their layout
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("layer", ["penultimate", "net.features.2"])
def test_a_compiled_defense_draws_exactly_the_eager_noise(layer, reference_model, bundled_eval) -> None:  # type: ignore[no-untyped-def]
    model = reference_model("fmnist-vgg").eval()
    spec = DefenseSpec(family="feature", layers=(layer,), sigma=0.2)
    x = bundled_eval.images[:32]
    with torch.no_grad():
        clean = model(x)
        eager = defend(model, spec, seed=5)
        want = torch.cat([eager(x), eager(x)])
        fast = accelerate(defend(model, spec, seed=5), "compile,channels_last")
        assert isinstance(fast, FastModel)
        # the noisy layer and every module around it run eagerly; hook-free sub-trees are compiled
        target = fast.inner.targets[0].module  # type: ignore[union-attr]
        holders = [m for m in fast.inner.modules() if any(s is target for s in m.modules())]
        assert fast.compiled and all(getattr(m, "_compiled_call_impl", None) is None for m in holders)
        got = torch.cat([fast(x), fast(x)])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # same seed, same draws
        assert (got[:32] - clean).abs().amax() > 0.1  # the noise is there
        assert (got[:32] - got[32:]).abs().amax() > 0.1  # and fresh on every forward
        fast.manual_seed(5)
        torch.testing.assert_close(fast(x), want[:32], rtol=1e-4, atol=1e-4)
    # a hook the caller adds to the original model later still acts on it (its modules were not compiled)
    seen: list[int] = []
    h = model.net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    assert seen == [32]


def test_a_fast_black_box_counts_and_answers_as_the_plain_one(reference_model, bundled_eval) -> None:  # type: ignore[no-untyped-def]
    model = reference_model("fmnist-resnet").eval()
    x, idx = bundled_eval.images[:20], torch.arange(20)
    plain, fast = LocalBlackBox(model, budget=10), LocalBlackBox(model, budget=10, fast="inference,channels_last")
    plain.start(20)
    fast.start(20)
    a, b = plain.scores(x, idx), fast.scores(x, idx)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert torch.equal(plain.queries, fast.queries) and int(fast.queries.sum()) == 20
    # white-box gradients go through the fast copy too
    xg = x[:4].clone().requires_grad_(True)
    fast.logits_with_grad(xg, idx[:4]).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_calibration_with_fast_forwards_finds_the_plain_sigma(reference_model, bundled_eval) -> None:  # type: ignore[no-untyped-def]
    from rfd.defenses import calibrate

    model = reference_model("fmnist-vgg").eval()
    x, y = bundled_eval.images[:300], bundled_eval.labels[:300]
    spec = DefenseSpec(family="feature", layers=("penultimate",), drop=0.02)
    plain = calibrate(model, spec, x, y, draws=2, max_iter=8)
    fast = calibrate(model, spec, x, y, draws=2, max_iter=8, fast="inference,channels_last")
    assert fast.sigma == pytest.approx(plain.sigma, rel=1e-4)  # the same draws, the same accuracies
    assert fast.accuracy == pytest.approx(plain.accuracy, abs=1e-9)


def test_keep_heap_is_idempotent_and_in_effect_on_glibc() -> None:
    import platform

    from rfd.models.fast import keep_heap

    first = keep_heap()
    assert keep_heap() is first
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first, "glibc has mallopt: the heap option must take effect"
    lin = nn.Linear(3, 2)
    assert accelerate(lin, "heap") is lin  # heap alone changes the process, not the model: no copy
    fast = accelerate(lin, "inference,heap")
    assert isinstance(fast, FastModel) and fast.heap_kept is first
