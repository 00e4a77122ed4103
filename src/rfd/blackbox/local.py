"""A black box around an in-process PyTorch model (possibly randomized by a defense)."""

from __future__ import annotations

import torch
from torch import nn

from rfd.blackbox.base import Access, BlackBox, CheckMode
from rfd.blackbox.outputs import OutputSpec
from rfd.models.fast import FastSpec, accelerate

__all__ = ["CPU_MAX_BATCH", "LocalBlackBox"]

CPU_MAX_BATCH = 256  # rows per forward on CPU (see LocalBlackBox)


class LocalBlackBox(BlackBox):
    """Query a local classifier (a module mapping [0, 1] images to logits).

    Args:
        model: the (defended) classifier, in eval mode.
        output: what the model answers (:mod:`rfd.blackbox.outputs`): ``"logits"`` (default), ``"probs"``,
            ``"topk:K"``, ``"top1"``, ``"rounded:D"`` or ``"labels"``.
        max_batch: split larger query batches into chunks of this many rows (bounds memory); None = 256 on
            CPU, 4096 on other devices. On CPU a small CNN forwards ~1.5x more images per second at 128-256 rows
            than at 3000 (activations stop fitting in cache; measured on the reference models), and NES asks for
            n x 60 rows at once. A randomized model draws its noise per chunk.
        access, budget, verify, check, reevaluate: see :class:`BlackBox`.
        fast: forward speed-ups (:mod:`rfd.models.fast`): ``"compile"``, ``"channels_last"``, ``"inference"``
            (comma-separated), ``"all"``; None / ``"plain"`` = the model's own eager forward. The black box then
            forwards (and differentiates) a private fast copy of ``model`` (its ``manual_seed`` restarts the
            copy's noise); answers equal the plain ones up to float tolerance.

    It supports gradients (:meth:`logits_with_grad`), so white-box attacks run through it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        access: Access = "scores",
        output: str | OutputSpec = "logits",
        budget: int | None = None,
        verify: int = 9,
        check: CheckMode = "free",
        reevaluate: int = 100,
        max_batch: int | None = None,
        num_classes: int | None = None,
        fast: str | FastSpec | None = None,
    ) -> None:
        super().__init__(access=access, output=output, budget=budget, verify=verify, check=check,
                         reevaluate=reevaluate)
        self.model = accelerate(model.eval(), fast)
        try:
            self._device = next(model.parameters()).device
        except StopIteration:
            self._device = torch.device("cpu")
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if self._device.type == "cpu" else 4096
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive number of rows or None, got {max_batch!r}")
        self.max_batch = max_batch
        self._num_classes = num_classes if num_classes is not None else int(getattr(model, "num_classes", 0)) or None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            raise AttributeError("num_classes unknown: pass num_classes= to LocalBlackBox")
        return self._num_classes

    @property
    def supports_gradients(self) -> bool:
        """True: the in-process model can be differentiated (:meth:`logits_with_grad`)."""
        return True

    def logits_with_grad(self, x: torch.Tensor, idx: torch.Tensor, *, repeats: int = 1) -> torch.Tensor:
        """White-box access (PGD, C&W): logits (repeats, B, K) of ``repeats`` independent forwards of images x
        (B, C, H, W) in [0, 1] for samples idx (int64 (B,)), keeping the autograd graph so callers can
        differentiate w.r.t. x (see :meth:`BlackBox.logits_with_grad`).

        Always raw logits (``output`` only shapes score answers), whatever ``access`` is. Each row costs
        ``repeats`` queries: a white-box gradient pass is charged like the forward it needs, so budgets compare
        with score-based attacks. The repeats run as one batch of repeats * B rows (in chunks of ``max_batch``);
        a randomized model draws fresh noise for every row."""
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self._charge(idx, x, repeats)
        xr = x.repeat(repeats, *([1] * (x.dim() - 1))) if repeats > 1 else x
        outs = [self.model(xr[i: i + self.max_batch]) for i in range(0, xr.shape[0], self.max_batch)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.view(repeats, x.shape[0], -1)

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.model(x[i: i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self._num_classes is None:
            self._num_classes = out.shape[1]
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.answer(self._logits(x))

    def _forward_labels(self, x: torch.Tensor) -> torch.Tensor:
        # the model's own prediction in every output setting (a rounded or partial answer can tie or hide it)
        return self._logits(x).argmax(1)
