"""rfd.analysis: gradients and ratios against closed forms, Theorem 1 against hand computation and against the
measured flip rate, first-order error, magnitude, candidate layers and ranking, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rfd.analysis import (
    INPUT,
    PENULTIMATE,
    StepConfig,
    adversarial_step,
    candidate_layers,
    feature_approx_error,
    gradient_ratios,
    input_approx_error,
    margin_gradients,
    predicted_flip_probability,
    rank_layers,
    robustness_magnitude,
    theorem1,
)
from rfd.models.classifier import ImageClassifier


def _two_layer(k: int = 3, d: int = 16, hdim: int = 6, seed: int = 0) -> tuple[ImageClassifier, torch.Tensor, torch.Tensor]:
    """f(x) = W2 (W1 x) on 1x4x4 images (identity normalization); h = W1 x is ``net.1`` and also penultimate."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(hdim, d, generator=g), torch.randn(k, hdim, generator=g)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hdim, bias=False), nn.Linear(hdim, k, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(w1)
        net[2].weight.copy_(w2)
    model = ImageClassifier(net, mean=[0.0], std=[1.0], input_shape=(1, 4, 4), num_classes=k, head="2").eval()
    return model, w1, w2


def _closed_form(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    logits = x.flatten(1) @ w1.T @ w2.T
    other = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    gh = w2[y] - w2[other]  # dL/dh for L = f_y - f_{j*}
    gx = gh @ w1
    return logits, gh, gx


def _tanh_model(seed: int = 0) -> ImageClassifier:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(3 * torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight.shape[1]))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return ImageClassifier(net, mean=[0.5], std=[0.25], input_shape=(1, 4, 4), num_classes=3, head="5").eval()


# ---------------------------------------------------------------------------------------------- gradients
def test_gradients_and_ratio_match_closed_form() -> None:
    model, w1, w2 = _two_layer()
    x = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    g = margin_gradients(model, x, y, [INPUT, "net.1", PENULTIMATE], batch_size=3)
    logits, gh, gx = _closed_form(w1, w2, x, y)
    torch.testing.assert_close(g.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.grad_x_norm, gx.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.grad_h_norm["net.1"], gh.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.grad_h_norm[PENULTIMATE], gh.norm(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.ratio("net.1"), gh.square().sum(1) / gx.square().sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.ratio(INPUT), torch.ones(7))
    loss = logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)
    torch.testing.assert_close(g.loss, loss, rtol=1e-5, atol=1e-5)


def test_gradient_behind_inplace_relu_is_taken_before_the_activation() -> None:
    # net.1 (Linear) is followed by an in-place ReLU: the gradient at net.1 must be w.r.t. its own output,
    # i.e. masked by the ReLU, not the gradient w.r.t. the activation's output.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(inplace=True), nn.Linear(12, 3))
    model = ImageClassifier(net, mean=[0.0], std=[1.0], input_shape=(1, 4, 4), num_classes=3, head="3").eval()
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    g = margin_gradients(model, x, y, ["net.1", "net.2"])
    with torch.no_grad():
        pre = x.flatten(1) @ net[1].weight.T + net[1].bias
        logits = pre.clamp_min(0) @ net[3].weight.T + net[3].bias
    other = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    g_act = net[3].weight[y] - net[3].weight[other]  # dL/d relu(pre)
    g_pre = g_act * (pre > 0)
    torch.testing.assert_close(g.grad_h_norm["net.2"], g_act.norm(dim=1).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.grad_h_norm["net.1"], g_pre.norm(dim=1).detach(), rtol=1e-5, atol=1e-6)
    assert bool((g.grad_h_norm["net.1"] < g.grad_h_norm["net.2"]).all())


class _Twice(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.lin(x))


def test_module_called_twice_sums_squared_gradients_over_calls() -> None:
    torch.manual_seed(0)
    lin, head = nn.Linear(16, 16, bias=False), nn.Linear(16, 2, bias=False)
    net = nn.Sequential(nn.Flatten(), _Twice(lin), head)
    model = ImageClassifier(net, mean=[0.0], std=[1.0], input_shape=(1, 4, 4), num_classes=2, head="2").eval()
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 0])
    g = margin_gradients(model, x, y, ["net.1.lin"])
    sign = torch.where(y == 0, 1.0, -1.0)[:, None]
    w = sign * (head.weight[0] - head.weight[1]).detach()  # dL/d(second output)
    first = w @ lin.weight.detach()  # dL/d(first output)
    expected = (w.square().sum(1) + first.square().sum(1)).sqrt()
    torch.testing.assert_close(g.grad_h_norm["net.1.lin"], expected, rtol=1e-5, atol=1e-6)


def test_gradients_reject_training_mode_and_unknown_layers() -> None:
    model, _, _ = _two_layer()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="unknown layer"):
        margin_gradients(model, x, y, ["net.9"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        margin_gradients(model, x, y, [INPUT])


def test_layer_with_tuple_output_is_rejected() -> None:
    from rfd.models import create_model

    vit = create_model("fmnist-vit", pretrained=False)
    with pytest.raises(ValueError, match="not a tensor"):
        margin_gradients(vit, torch.rand(1, 1, 28, 28), torch.tensor([0]), ["net.blocks.0.attn"])
    assert not any(m._forward_hooks for m in vit.modules())  # hooks removed after the failure


# ---------------------------------------------------------------------------------------------- steps, ratios
def test_adversarial_step_sizes_and_direction() -> None:
    model, _, _ = _two_layer()
    x = 0.4 + 0.2 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    g = margin_gradients(model, x, y, (), keep_input_grad=True)
    assert g.grad_x is not None
    x2 = adversarial_step(x, g.grad_x, StepConfig(norm="l2", size=0.05))
    torch.testing.assert_close((x2 - x).flatten(1).norm(dim=1), torch.full((4,), 0.05), rtol=1e-4, atol=1e-6)
    x3 = adversarial_step(x, g.grad_x, StepConfig(norm="linf", size=0.01))
    torch.testing.assert_close((x3 - x).abs().amax(dim=(1, 2, 3)), torch.full((4,), 0.01), rtol=1e-4, atol=1e-6)
    after = margin_gradients(model, x2, y, ()).loss
    assert bool((after < g.loss).all())  # a descent step on the margin loss
    with pytest.raises(ValueError, match="step size"):
        StepConfig(size=0.0)


def test_gradient_ratios_summary_and_rows() -> None:
    model, _, _ = _two_layer()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    res = gradient_ratios(model, x, y, [INPUT, "net.1"], step=StepConfig(norm="l2", size=0.1))
    s = res.summary()
    assert [r["layer"] for r in s["layers"]] == [INPUT, "net.1"]
    assert s["layers"][0]["ratio_before"]["median"] == pytest.approx(1.0)
    assert len(res.rows()) == 6 * 2 * 2
    assert s["loss_after_mean"] < s["loss_before_mean"]


# ---------------------------------------------------------------------------------------------- Theorem 1
def test_predicted_probability_hand_values() -> None:
    # ratio 2, nu 0.5, mu 1: s = 2 nu r / mu = 2 -> 1/pi * arctan(-1/sqrt(2)) + 1/2
    p = predicted_flip_probability(torch.tensor([2.0]), 0.5, 1.0)
    assert float(p) == pytest.approx(0.5 - math.atan(1 / math.sqrt(2)) / math.pi, abs=1e-12)
    assert float(p) == pytest.approx(0.3040867239846963, abs=1e-12)
    edge = predicted_flip_probability(torch.tensor([0.0, 1.0, float("inf")]), torch.tensor([1.0, 0.0, 1.0]), 1.0)
    assert edge.tolist() == [0.0, 0.0, 0.5]
    grid = predicted_flip_probability(torch.logspace(-4, 4, 50), 1.0, 1.0)
    assert bool((grid.diff() > 0).all()) and float(grid.max()) < 0.5
    with pytest.raises(ValueError, match="mu > 0"):
        predicted_flip_probability(1.0, 1.0, 0.0)


def test_theorem1_prediction_matches_hand_computation_and_measurement_on_linear_model() -> None:
    # Two classes: the margin loss is exactly linear in x and in h, so the Cauchy argument is exact and the
    # measured rate must match the prediction up to sampling error, for any noise size.
    model, w1, w2 = _two_layer(k=2)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    nus, mus = [1e-3, 1e-1], [1e-3, 1e-1]
    res = theorem1(model, x, y, [INPUT, "net.1"], nus, mus, draws=1500, seed=0, batch_size=3000)
    _, gh, gx = _closed_form(w1, w2, x, y)
    r = gh.square().sum(1) / gx.square().sum(1)
    for vi, nu in enumerate(nus):
        for mi, mu in enumerate(mus):
            hand = 1 / math.pi * torch.atan(-(2 * nu * r.double() / mu) ** -0.5) + 0.5
            torch.testing.assert_close(res.predicted[1, vi, mi], hand, rtol=1e-6, atol=1e-6)
            # sampling error of a mean over 4 x 1500 Bernoulli draws is <= 0.0065
            assert float(res.measured[:, vi, mi].mean(-1).sub(res.predicted[:, vi, mi].mean(-1)).abs().max()) < 0.03
    c = res.correlations()
    assert c["pearson_cell_means"] > 0.98
    assert float(res.approx_rel_error.max()) < 1e-3  # first order is exact here (float rounding only)


def test_measured_rate_approaches_prediction_as_noise_shrinks() -> None:
    model = _tanh_model()
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    gaps, rel = [], []
    for scale in (1e-6, 1.0):
        res = theorem1(model, x, y, ["net.2"], [scale], [scale], draws=1500, seed=0, batch_size=3000)
        gaps.append(float((res.predicted - res.measured).abs().mean()))
        rel.append(float(res.approx_rel_error[0]))
    assert gaps[0] < 0.025  # per image: about 1.3x the binomial standard error of 0.009 at p = 0.15
    assert gaps[1] > 2 * gaps[0] and gaps[1] > 0.05
    assert rel[0] < 0.05 and rel[1] > 0.5


def test_theorem1_is_deterministic_for_a_seed() -> None:
    model = _tanh_model()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    y = model(x).argmax(1)
    kw = {"draws": 200, "batch_size": 300}
    a = theorem1(model, x, y, [INPUT, "net.2"], [1e-2], [1e-2], seed=3, **kw)
    b = theorem1(model, x, y, [INPUT, "net.2"], [1e-2], [1e-2], seed=3, **kw)
    c = theorem1(model, x, y, [INPUT, "net.2"], [1e-2], [1e-2], seed=4, **kw)
    assert torch.equal(a.measured, b.measured) and torch.equal(a.predicted, b.predicted)
    assert not torch.equal(a.measured, c.measured)
    with pytest.raises(ValueError, match="same length"):
        theorem1(model, x, y, [INPUT, "net.2"], {INPUT: [1.0], "net.2": [1.0, 2.0]}, [1e-2], **kw)


# ---------------------------------------------------------------------------------------------- approximation error
def test_first_order_error_vanishes_on_linear_model_and_grows_with_noise_on_tanh() -> None:
    model, _, _ = _two_layer(k=2)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    y = model(x).argmax(1)
    lin_in = input_approx_error(model, x, y, [1e-2, 1.0], draws=16)
    lin_h = feature_approx_error(model, x, y, "net.1", [1e-2, 1.0], draws=16)
    for res in (lin_in, lin_h):
        assert float((res.error / res.change.abs().clamp_min(1e-3)).max()) < 1e-3
        assert res.sign_mismatch.tolist() == [0.0, 0.0]
    tanh = _tanh_model()
    yt = tanh(x).argmax(1)
    res = input_approx_error(tanh, x, yt, [1e-6, 1e-3, 1.0], draws=64)
    med = [r["median_rel_error"] for r in res.summary()]
    assert med[0] < med[1] < med[2] and med[0] < 0.05
    assert res.breakdown(0.5) == 1.0
    feat = feature_approx_error(tanh, x, yt, "net.2", [1e-6, 1.0], draws=64)
    fm = [r["median_rel_error"] for r in feat.summary()]
    assert fm[0] < 0.05 < fm[1]
    again = feature_approx_error(tanh, x, yt, "net.2", [1e-6, 1.0], draws=64)
    assert torch.equal(feat.error, again.error)


# ---------------------------------------------------------------------------------------------- magnitude, ranking
def _mean_threshold_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    return x, (x.mean(dim=(1, 2, 3)) > 0.5).long()


def test_magnitude_is_sigma_times_gradient_norm_on_correct_images(linear_model) -> None:
    x, y = _mean_threshold_data(40, 8)
    cx, cy = _mean_threshold_data(200, 9)
    res = robustness_magnitude(linear_model, x, y, [INPUT, PENULTIMATE], target_drop=0.05, calib_x=cx, calib_y=cy,
                               calib_draws=4)
    for layer in (INPUT, PENULTIMATE):
        cal = res.calibration[layer]
        assert cal["sigma"] > 0 and abs(cal["drop"] - 0.05) < 0.03
        expected = cal["sigma"] * res.grads.grad_h_norm[layer][res.correct]
        torch.testing.assert_close(res.magnitude(layer), expected)
    # the model is linear and its input is its penultimate feature: both calibrate the same noise
    assert res.sigma(INPUT) == pytest.approx(res.sigma(PENULTIMATE), rel=0.3)
    s = res.summary()
    assert s["correct"] == int(res.correct.sum()) and len(s["layers"]) == 2
    assert 0.8 < s["layers"][0]["predicted_accuracy"] <= 1.0


def test_rank_layers_sorts_by_score(linear_model) -> None:
    x, y = _mean_threshold_data(30, 10)
    cx, cy = _mean_threshold_data(200, 11)
    rk = rank_layers(linear_model, x, y, [INPUT, PENULTIMATE], calib_x=cx, calib_y=cy, target_drop=0.05,
                     calib_draws=4, metric="magnitude")
    scores = [r["score"] for r in rk.rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rk.rows] == [1, 2]
    assert rk.recommended == rk.rows[0]["layer"]
    assert all(0.0 <= r["prob_clean"] <= 0.5 for r in rk.rows)
    with pytest.raises(ValueError, match="unknown ranking metric"):
        rank_layers(linear_model, x, y, [INPUT], calib_x=cx, calib_y=cy, metric="best")  # type: ignore[arg-type]


def test_recommendation_needs_a_clear_confirmation_to_override_the_ranking() -> None:
    from rfd.analysis import LayerRanking

    rows = [{"layer": "a", "rank": 1, "score": 0.4}, {"layer": "b", "rank": 2, "score": 0.3}]

    def ranking(acc_a: float, acc_b: float, n: int) -> LayerRanking:
        confirm = [{"layer": "a", "rank": 1, "robust_accuracy": acc_a, "images": n},
                   {"layer": "b", "rank": 2, "robust_accuracy": acc_b, "images": n}]
        return LayerRanking(metric="theorem1", target_drop=0.02, mu=1e-3, step=StepConfig(), rows=rows, images=n,
                            confirm=confirm)

    assert LayerRanking(metric="theorem1", target_drop=0.02, mu=1e-3, step=StepConfig(), rows=rows,
                        images=10).recommended == "a"
    assert ranking(0.46, 0.54, 50).recommended == "a"  # gap 0.08 < 2 SE (0.20) on 50 images
    assert ranking(0.40, 0.60, 1000).recommended == "b"  # gap 0.20 > 2 SE (0.044)


# ---------------------------------------------------------------------------------------------- candidate layers
@pytest.mark.parametrize("name,expected", [
    ("fmnist-vgg", ["input", "net.features.2", "net.features.6", "net.features.10", "net.features.13",
                    "penultimate"]),
    ("fmnist-resnet", ["input", "net.stem", "net.layer1", "net.layer2", "net.layer3", "penultimate"]),
    ("fmnist-vit", ["input", "net.patch_embed"] + [f"net.blocks.{i}" for i in range(6)] + ["penultimate"]),
])
def test_candidate_layers_of_reference_models(name: str, expected: list[str]) -> None:
    from rfd.models import create_model

    model = create_model(name, pretrained=False)
    assert candidate_layers(model) == expected
    x = torch.rand(2, 1, 28, 28)
    g = margin_gradients(model, x, torch.tensor([0, 1]), expected)
    assert all(bool((g.grad_h_norm[n] > 0).all()) for n in expected)


@pytest.mark.parametrize("name,kwargs,must", [
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, ["net.patch_embed", "net.blocks.0", "net.blocks.1"]),
    ("resnet10t", {}, ["net.act1", "net.layer1", "net.layer2", "net.layer3", "net.layer4"]),
])
def test_candidate_layers_of_tiny_timm_models(name: str, kwargs: dict, must: list[str]) -> None:
    from rfd.models.timm_adapter import create_timm_classifier

    model = create_timm_classifier(name, num_classes=10, **kwargs).eval()  # random weights, no download
    layers = candidate_layers(model)
    assert layers[0] == INPUT and layers[-1] == PENULTIMATE
    assert layers[1:-1] == must
    c, h, w = model.input_shape
    x = torch.rand(2, c, min(h, 32), min(w, 32))
    g = margin_gradients(model, x, torch.tensor([0, 1]), layers)
    assert all(bool(torch.isfinite(g.grad_h_norm[n]).all()) for n in layers)
