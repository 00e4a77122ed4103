"""What the surrogate-based attacks (:class:`~rfd.attacks.transfer.Transfer`,
:class:`~rfd.attacks.prgf.PRGF`) share: the surrogate setting, loading the attacker's own model, its gradients.

The surrogate is a model the *attacker* owns (white-box to them), never the target: the attack differentiates it
freely, at no query cost, and still reaches the target only through :class:`~rfd.attacks.base.AttackState`.
It is named by a registry name (``"fmnist-resnet"``, loaded with :func:`rfd.models.load_model` on the black
box's device and cached per process), or handed over as a module with :meth:`SurrogateAttack.with_surrogate`
(tests, a user's own model).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rfd.attacks.base import Attack, AttackConfig, AttackState
from rfd.attacks.whitebox import Objective

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MODULE_PREFIX", "SurrogateAttack", "SurrogateAttackConfig", "load_surrogate", "surrogate_gradient"]

# ``surrogate`` value of an attack built around an in-process module (SurrogateAttack.with_surrogate)
MODULE_PREFIX = "module:"

def _check_surrogate_name(name: object) -> None:
    from rfd.models.registry import list_models

    if not isinstance(name, str) or not name:
        raise ValueError(f"surrogate must be a registered model name, got {name!r}")
    if name.startswith(MODULE_PREFIX):
        return  # set by with_surrogate; checked at run time (the module must be attached)
    known = list_models()
    if name not in known:
        raise ValueError(f"surrogate {name!r} is not a registered model; registered models: {', '.join(known)} "
                         "(or pass your own module with .with_surrogate(model))")


@dataclass(frozen=True, kw_only=True)
class SurrogateAttackConfig(AttackConfig):
    """Settings shared by the surrogate-based attacks (plus norm, eps, budget, seed, eot of
    :class:`AttackConfig`)."""

    # the attacker's own model: a registry name (rfd.models.list_models()), loaded with its shipped weights on
    # the black box's device; "module:<class>" when built with .with_surrogate(model)
    surrogate: str = "fmnist-resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_surrogate_name(self.surrogate)


@functools.lru_cache(maxsize=8)
def _cached_surrogate(name: str, device: str) -> nn.Module:
    from rfd.models.loading import load_model

    model = load_model(name, device=device).eval()
    for p in model.parameters():  # the cached copy is ours: no parameter gradients, ever
        p.requires_grad_(False)
    return model


def load_surrogate(name: str, device: torch.device | str) -> nn.Module:
    """Registered model ``name`` with its shipped weights, in eval mode on ``device``; one instance per (name,
    device) and process (the attacks only differentiate it w.r.t. their inputs, never change it)."""
    _check_surrogate_name(name)
    if name.startswith(MODULE_PREFIX):
        raise ValueError(f"surrogate {name!r} names an in-process module: build the attack with "
                         ".with_surrogate(model)")
    return _cached_surrogate(name, str(torch.device(device)))


def surrogate_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, obj: Objective,
                       transform: Any = None) -> torch.Tensor:
    """Gradient (B, C, H, W) of ``obj(model(transform(x)), y).sum()`` w.r.t. images x (B, C, H, W): one forward
    and backward of the surrogate (free: no query of the target). ``transform`` (differentiable, e.g. input
    diversity) defaults to the identity. Parameter gradients are neither computed into ``.grad`` nor kept."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        inp = xg if transform is None else transform(xg)
        value = obj(model(inp), y).sum()
        (grad,) = torch.autograd.grad(value, xg)
    return grad.detach()


class SurrogateAttack(Attack):
    """Base of attacks that use a surrogate model: resolves the surrogate for a run (:meth:`surrogate_for`),
    checks its class count against the target's, and offers :meth:`with_surrogate`."""

    def __init__(self, config: AttackConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._module: nn.Module | None = None

    @classmethod
    def with_surrogate(cls, model: nn.Module, config: AttackConfig | None = None, **settings: Any) -> Self:
        """The attack with ``model`` (any classifier mapping [0, 1] images to logits, on the black box's device)
        as its surrogate instead of a registry model; its config records ``surrogate="module:<class name>"``.

        Example: ``PRGF.with_surrogate(my_model, norm="l2", eps=1.0)``; tests pass the target itself."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"with_surrogate needs an nn.Module, got {type(model).__name__}")
        settings = {**settings, "surrogate": f"{MODULE_PREFIX}{type(model).__name__}"}
        attack = cls(config, **settings)
        attack._module = model.eval()
        return attack

    def surrogate_for(self, state: AttackState) -> nn.Module:
        """The surrogate module for this run, on the black box's device; fails if its class count differs from
        the target's (a surrogate must share the label space)."""
        name: str = self.config.surrogate  # type: ignore[attr-defined]
        if name.startswith(MODULE_PREFIX):
            if self._module is None:
                raise ValueError(f"surrogate {name!r} names an in-process module, but none is attached: build the "
                                 f"attack with {type(self).__name__}.with_surrogate(model)")
            model = self._module
        else:
            model = load_surrogate(name, state.x0.device)
        with torch.no_grad():
            k = model(state.x0[:1]).shape[1]
        try:
            target_k = state.bb.num_classes
        except AttributeError:  # a black box that does not know K yet: nothing to compare
            return model
        if k != target_k:
            raise ValueError(f"surrogate {name!r} has {k} classes, the target {target_k}: they must share labels")
        return model
