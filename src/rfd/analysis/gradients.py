"""Per-sample gradients of the margin loss with respect to the input and to hidden features.

Definitions used throughout :mod:`rfd.analysis`:

- margin loss ``L(x) = f_y(x) - max_{i != y} f_i(x)`` (:func:`rfd.blackbox.losses.margin_loss`, the paper's eq. 3);
  positive while the true class wins, the attacker drives it below 0.
- for the model split as ``f = g o h`` at layer ``h``: ``grad_h = dL/dh`` evaluated at ``h(x)`` (``d(L o g)/dh``) and
  ``grad_x = dL/dx`` (``d(L o f)/dx``), both per sample, with ``x`` the [0, 1] image (pixel units, the place of the
  input-noise defense). ``grad_h`` is the gradient with respect to a perturbation ``delta`` added at the very place
  the feature defense adds its noise (``g(h(x) + delta)``, at ``delta = 0``), so in-place activations after the
  layer do not change its meaning. For layer ``"input"``, ``grad_h = grad_x``.
- ratio ``r = ||grad_h||_2^2 / ||grad_x||_2^2`` (norms over all feature dimensions of one sample).

A module called several times in one forward gets noise at every call, so its squared gradient norm is the sum
over the calls (the variance of the first-order loss change is ``nu`` times that sum).

The model must be in eval mode: then samples do not interact, and one backward pass of the summed loss gives every
sample's own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from rfd.analysis.taps import INPUT, check_layer_names, tap_layers
from rfd.blackbox.losses import margin_loss

__all__ = ["MarginGradients", "check_eval_mode", "margin_gradients", "model_device"]


def check_eval_mode(model: nn.Module) -> None:
    """Raise if ``model`` is in training mode (batch norm / dropout would mix samples or add randomness)."""
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() first (batch norm and dropout must be "
                         "in inference mode for per-sample gradients)")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameterless model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@dataclass(frozen=True)
class MarginGradients:
    """Per-sample margin loss and gradient norms.

    Attributes:
        loss: (N,) margin loss at ``x`` (logit units).
        logits: (N, K) clean logits.
        grad_x_norm: (N,) ``||dL/dx||_2`` (logit units per pixel unit).
        grad_h_norm: layer -> (N,) ``||dL/dh||_2`` (for ``"input"`` equal to ``grad_x_norm``).
        grad_x: (N, C, H, W) ``dL/dx`` when requested (``keep_grads`` or ``keep_input_grad``), else ``None``.
        grad_h: layer -> list over calls of (N, *feature_shape) ``dL/dh`` when requested, else empty.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    grad_x_norm: torch.Tensor
    grad_h_norm: dict[str, torch.Tensor]
    grad_x: torch.Tensor | None = None
    grad_h: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.grad_h_norm)

    def ratio(self, layer: str) -> torch.Tensor:
        """(N,) ``||grad_h||^2 / ||grad_x||^2`` at ``layer`` (``inf`` where ``grad_x`` vanishes)."""
        if layer not in self.grad_h_norm:
            raise ValueError(f"layer {layer!r} was not computed; computed: {list(self.grad_h_norm)}")
        return self.grad_h_norm[layer].square() / self.grad_x_norm.square()

    @property
    def correct(self) -> torch.Tensor:
        """(N,) bool: the clean prediction is the label (margin loss > 0)."""
        return self.loss > 0


def _batch_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, hidden: tuple[str, ...], keep: bool, keep_x: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None,
           dict[str, list[torch.Tensor]]]:
    probes: dict[str, list[torch.Tensor]] = {n: [] for n in hidden}

    def add_probe(name: str, _call: int, value: torch.Tensor) -> torch.Tensor:
        # A zero leaf added where the defense adds noise: d(loss)/d(probe) is the gradient w.r.t. that feature.
        p = torch.zeros_like(value, requires_grad=True)
        probes[name].append(p)
        return value + p

    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if hidden:
            with tap_layers(model, hidden, add_probe):
                logits = model(xg)
        else:
            logits = model(xg)
        loss = margin_loss(logits, y)
        flat = [p for n in hidden for p in probes[n]]
        for n in hidden:
            if not probes[n]:
                raise ValueError(f"layer {n!r} was never called in the forward pass; it does not feed the output")
        grads = torch.autograd.grad(loss.sum(), [xg] + flat, allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(xg)
    gx_norm = gx.flatten(1).norm(dim=1)
    norms: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {}
    i = 1
    for n in hidden:
        sq = torch.zeros_like(gx_norm)
        parts = []
        for p in probes[n]:
            g = grads[i] if grads[i] is not None else torch.zeros_like(p)
            i += 1
            sq = sq + g.flatten(1).square().sum(1)
            parts.append(g.detach())
        norms[n] = sq.sqrt()
        if keep:
            kept[n] = parts
    return loss.detach(), logits.detach(), gx_norm.detach(), norms, (gx.detach() if keep_x else None), kept


def margin_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layers: Sequence[str] = (),
    *,
    batch_size: int = 128,
    keep_grads: bool = False,
    keep_input_grad: bool = False,
    progress: bool = False,
) -> MarginGradients:
    """Margin loss and per-sample gradient norms at ``layers`` for images ``x`` with labels ``y``.

    Args:
        model: classifier in eval mode, [0, 1] images -> logits.
        x: float (N, C, H, W) images in [0, 1] (values slightly outside are allowed: analysis probes near x).
        y: int64 (N,) labels.
        layers: ``"input"``, ``"penultimate"`` or module names.
        batch_size: images per forward/backward pass (bounds memory; results do not depend on it).
        keep_grads: also return the full gradients, input and layers (memory N x feature size per layer).
        keep_input_grad: also return the full input gradient ``grad_x`` (implied by ``keep_grads``).
        progress: show a progress bar.

    Returns:
        :class:`MarginGradients` on the model's device.
    """
    check_eval_mode(model)
    names = check_layer_names(model, layers) if layers else ()
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = model_device(model)
    x, y = x.to(dev), y.to(dev)
    hidden = tuple(n for n in names if n != INPUT)
    keep_x = keep_grads or keep_input_grad
    out: dict[str, list] = {"loss": [], "logits": [], "gx": [], "gxf": []}
    norms: dict[str, list[torch.Tensor]] = {n: [] for n in hidden}
    full: dict[str, list[list[torch.Tensor]]] = {n: [] for n in hidden}
    for s in tqdm(range(0, x.shape[0], batch_size), desc="gradients", disable=not progress, leave=False):
        loss, logits, gxn, hn, gx, kept = _batch_gradients(model, x[s:s + batch_size], y[s:s + batch_size],
                                                           hidden, keep_grads, keep_x)
        out["loss"].append(loss)
        out["logits"].append(logits)
        out["gx"].append(gxn)
        if gx is not None:
            out["gxf"].append(gx)
        for n in hidden:
            norms[n].append(hn[n])
            if keep_grads:
                full[n].append(kept[n])
    gx_norm = torch.cat(out["gx"])
    grad_h_norm = {n: (gx_norm if n == INPUT else torch.cat(norms[n])) for n in names}
    grad_h: dict[str, list[torch.Tensor]] = {}
    if keep_grads:
        for n in hidden:
            calls = len(full[n][0])
            grad_h[n] = [torch.cat([b[c] for b in full[n]]) for c in range(calls)]
    return MarginGradients(
        loss=torch.cat(out["loss"]), logits=torch.cat(out["logits"]), grad_x_norm=gx_norm, grad_h_norm=grad_h_norm,
        grad_x=torch.cat(out["gxf"]) if keep_x else None, grad_h=grad_h,
    )
