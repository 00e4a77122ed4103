"""Faster forwards of any classifier, opt-in: inference mode, channels-last memory format, ``torch.compile``, a
kept heap.

A :class:`FastSpec` names the options (text ``"compile,channels_last"``, ``"all"`` or ``"plain"``);
:func:`accelerate` returns a :class:`FastModel` that forwards like the model it was given, up to float tolerance
of the undefended model (labels equal; the tests check it on the reference models):

* ``inference``: forwards without gradients run under :func:`torch.inference_mode` instead of ``no_grad`` (the
  answer is copied out of it, so callers may modify it in place);
* ``channels_last``: 4-D weights and inputs in NHWC layout (oneDNN's and cuDNN's fast convolution layout);
* ``compile``: :func:`torch.compile` (inductor: C++ on CPU, Triton on CUDA; the same code path) of every
  maximal sub-module that is neither randomized nor hooked, run eagerly around them;
* ``heap`` (process-wide, glibc only; nothing elsewhere): glibc serves blocks above a dynamic threshold (at most
  32 MiB) with ``mmap`` and returns them on ``free``, so a CPU forward whose activations are tens of MiB (VGG at
  batch 256: 51 MiB per conv output) maps, zero-fills and unmaps them on every call. ``mallopt`` raising the
  mmap threshold to 1 GiB and disabling heap trimming keeps that memory in the process (its resident size stays
  at its peak); measured 12-15% faster forwards of fmnist-vgg at 1 thread (``benchmarks/bench_fast_forward.py``).
  It changes nothing about the model (:func:`accelerate` returns the model itself for ``heap`` alone) and no
  answer, bit for bit, so the ``rfd`` commands default to it (``--fast plain`` turns it off); the library does not,
  because it would change the allocator of the process that imports it.

Why not one compiled graph with the defense inside: a randomized module (a defense, a model set: anything with a
``manual_seed``) draws from its own seeded ``torch.Generator``, which dynamo cannot put in a graph (an opaque
object: a graph break at every draw), and a feature-noise forward hook is traced into the compiled code of the
module it sits on. Measured on fmnist-vgg / fmnist-resnet with penultimate feature noise, compiling the whole
defended module ran 0.6-1.0x as fast as eager, and with the noise on ``net.features.2`` it answered *without the
noise* (a compiled call of a hooked sub-module does not see a hook's effect reliably). rfd therefore compiles only
hook-free, seed-free sub-trees: the noise is drawn eagerly from the defense's generator between them, so every
draw is the one the eager forward makes (same seed, same noise).

The fast model is a private copy of the module tree that *shares* the given model's parameters and buffers (no
second copy of the weights; with ``channels_last`` it holds its own NHWC copy of the 4-D ones): dynamo does not
notice a hook registered on a compiled module after compiling (measured: silently ignored), so rfd never compiles
the caller's own modules. Hence hooks added to the original model later, and its ``injections`` counters, do not
concern the copy; :meth:`FastModel.manual_seed` restarts the copy's noise stream.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["FAST_OPTIONS", "FastModel", "FastSpec", "accelerate", "keep_heap", "parse_fast"]

FAST_OPTIONS = ("inference", "channels_last", "compile", "heap")

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_heap_kept: bool | None = None  # None: not tried yet in this process


@dataclass(frozen=True)
class FastSpec:
    """Which forward speed-ups to use (all off: the plain eager forward)."""

    inference: bool = False
    channels_last: bool = False
    compile: bool = False
    heap: bool = False

    @property
    def plain(self) -> bool:
        """True when no option is on."""
        return not (self.inference or self.channels_last or self.compile or self.heap)

    def __str__(self) -> str:
        on = [o for o in FAST_OPTIONS if getattr(self, o)]
        return ",".join(on) if on else "plain"


def parse_fast(text: str | FastSpec | None) -> FastSpec:
    """``"compile,channels_last"`` (any of inference, channels_last, compile, comma- or plus-separated), ``"all"``,
    ``"plain"`` / ``""`` / None (all off), or a :class:`FastSpec`."""
    if text is None:
        return FastSpec()
    if isinstance(text, FastSpec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a fast-forward setting is text like 'compile,channels_last', got {type(text).__name__}")
    words = [w.strip().replace("-", "_") for w in text.replace("+", ",").split(",") if w.strip()]
    if words in ([], ["plain"], ["none"]):
        return FastSpec()
    if words == ["all"]:
        return FastSpec(inference=True, channels_last=True, compile=True, heap=True)
    bad = [w for w in words if w not in FAST_OPTIONS]
    if bad:
        raise ValueError(f"unknown fast-forward option(s) {', '.join(map(repr, bad))} in {text!r}: choose from "
                         f"{', '.join(FAST_OPTIONS)} (comma-separated), 'all' or 'plain'")
    return FastSpec(**{w: True for w in words})


def keep_heap() -> bool:
    """Keep freed memory in this process's heap (the ``heap`` option; see the module docstring). Returns whether
    it is in effect: False where the C library is not glibc (logged once). Idempotent; cannot be undone."""
    global _heap_kept
    if _heap_kept is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            mallopt = getattr(libc, "mallopt", None) if libc is not None else None
            _heap_kept = bool(mallopt and mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
        except OSError:
            _heap_kept = False
        if not _heap_kept:
            log.info("fast option 'heap' has no effect here: the C library (%s) has no glibc mallopt", name)
    return _heap_kept


def _eager(m: nn.Module) -> bool:
    """True for a module that must run eagerly: hooked, or randomized by its own generator."""
    hooked = bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    return hooked or callable(getattr(m, "manual_seed", None))


def _compile_around(m: nn.Module, compiled: list[str], prefix: str = "") -> None:
    """Compile (in place) every maximal sub-tree of ``m`` without an eager module; names go to ``compiled``."""
    if not any(_eager(s) for s in m.modules()):
        # a parameter-free leaf (an activation between two hooked layers) is not worth a dynamo frame of its own
        if next(itertools.chain(m.parameters(), m.buffers()), None) is not None or list(m.children()):
            m.compile()
            compiled.append(prefix or "<model>")
        return
    for name, child in m.named_children():
        _compile_around(child, compiled, f"{prefix}.{name}" if prefix else name)


def _shared_copy(model: nn.Module, *, own_4d: bool) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original's own tensors (but for the 4-D ones
    when ``own_4d``: those are copied, so a layout change of the copy leaves the original as it was)."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())
                            if not (own_4d and t.dim() == 4)}
    return copy.deepcopy(model, memo)


class FastModel(nn.Module):
    """``model``'s forward with the speed-ups of ``spec`` (see the module docstring); use :func:`accelerate`.

    Attributes: ``inner`` (the private copy that runs), ``spec``, ``compiled`` (dotted names of the compiled
    sub-modules; empty without ``compile``), ``heap_kept`` (whether ``heap`` is in effect); ``input_shape`` /
    ``num_classes`` when the model has them.
    """

    def __init__(self, model: nn.Module, spec: FastSpec) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"accelerate() needs a torch.nn.Module, got {type(model).__name__}")
        self.spec = spec
        self.inner = _shared_copy(model, own_4d=spec.channels_last)
        for attr in ("input_shape", "num_classes"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        if spec.channels_last:
            self.inner.to(memory_format=torch.channels_last)
        self.compiled: list[str] = []
        if spec.compile:
            _compile_around(self.inner, self.compiled)
        self.heap_kept = keep_heap() if spec.heap else False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of images ``x`` (N, C, H, W), as ``model(x)``."""
        if self.spec.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.spec.inference and not torch.is_grad_enabled():
            with torch.inference_mode():
                out = self.inner(x)
            return out.clone()  # an inference tensor cannot be modified in place outside inference mode
        return self.inner(x)

    def manual_seed(self, seed: int | None = None) -> FastModel:
        """Restart the copy's random streams (a defense, a model set) from ``seed``; returns self."""
        inner = getattr(self.inner, "manual_seed", None)
        if callable(inner):
            inner(seed)
        return self

    def remove(self) -> None:
        """Remove the copy's hooks (a defended copy's noise), as ``DefendedModel.remove`` does."""
        inner = getattr(self.inner, "remove", None)
        if callable(inner):
            inner()

    def extra_repr(self) -> str:
        return f"fast={self.spec}, compiled={self.compiled}"


def accelerate(model: nn.Module, fast: str | FastSpec | None) -> nn.Module:
    """``model`` with the forward speed-ups ``fast`` (:func:`parse_fast`): a :class:`FastModel`, or ``model``
    itself when no option changes the model (all off, or ``heap`` alone: that one is applied to the process here)
    or it already is a fast model with the same options."""
    spec = parse_fast(fast)
    if spec.heap:
        keep_heap()
    if spec.plain or spec == FastSpec(heap=True) or (isinstance(model, FastModel) and model.spec == spec):
        return model
    if isinstance(model, FastModel):
        model = model.inner
    return FastModel(model, spec)
